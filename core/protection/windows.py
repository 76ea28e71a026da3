"""Deploy windows and freezes as pure arithmetic: parsing what people type, and whether a moment is
blocked and until when.  No database, no I/O: unit-tested with plain datetimes, and the settings
and request hook read the JSON columns through these functions.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from core.errors import InvalidInput

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$|^24:00$")


@dataclass(frozen=True, kw_only=True)
class Window:
    days: frozenset[int]  # 0 = Monday
    start: dt.time
    end: dt.time | None  # None: midnight at the end of the day ("24:00")


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidInput(f"unknown time zone {name!r}: use a name like Europe/Berlin", field="tz") from None


def parse_days(text: str) -> list[str]:
    """ "mon-fri", "sat,sun", "mon,wed-fri", "all": the day names in week order (a range may wrap: fri-mon)."""
    text = text.strip().lower()
    if text in ("all", "*", "daily", "every day"):
        return list(DAYS)
    picked: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        first, _, last = part.partition("-")
        a, b = _day(first), _day(last or first)
        i = a
        while True:
            picked.add(i)
            if i == b:
                break
            i = (i + 1) % 7
    if not picked:
        raise InvalidInput("days must name at least one day, like mon-fri", field="days")
    return [DAYS[i] for i in sorted(picked)]


def _day(text: str) -> int:
    key = text.strip().lower()[:3]
    if key not in DAYS:
        raise InvalidInput(f"unknown day {text!r}: use mon, tue, wed, thu, fri, sat, sun", field="days")
    return DAYS.index(key)


def parse_hhmm(text: str, *, field: str) -> str:
    if not HHMM.match(text.strip()):
        raise InvalidInput(f"{field} must be a time like 09:00 (24-hour clock), got {text!r}", field=field)
    return text.strip()


def _time(text: str) -> dt.time | None:
    if text == "24:00":
        return None
    hours, minutes = text.split(":")
    return dt.time(int(hours), int(minutes))


def windows_of(raw: list[Any] | None) -> list[Window]:
    out = []
    for w in raw or []:
        days = w.get("days") or list(DAYS)
        out.append(
            Window(
                days=frozenset(_day(d) for d in days),
                start=_time(w.get("start") or "00:00") or dt.time(0),
                end=_time(w.get("end") or "24:00"),
            )
        )
    return out


def _intervals_on(
    day: dt.date, *, windows: list[Window], tz: ZoneInfo
) -> list[tuple[dt.datetime, dt.datetime]]:
    """The windows opening on local date `day`, as aware datetimes (an end at or before the start runs overnight)."""
    spans = []
    for w in windows:
        if day.weekday() not in w.days:
            continue
        start = dt.datetime.combine(day, w.start, tzinfo=tz)
        if w.end is None or w.end <= w.start:
            end_day = day + dt.timedelta(days=1)
            end = dt.datetime.combine(end_day, w.end or dt.time(0), tzinfo=tz)
        else:
            end = dt.datetime.combine(day, w.end, tzinfo=tz)
        # Wall times normalised through UTC: a time in a DST gap lands just after it.
        spans.append((_norm(start), _norm(end)))
    return spans


def _norm(t: dt.datetime) -> dt.datetime:
    return t.astimezone(dt.UTC).astimezone(t.tzinfo)


def _in_window(t: dt.datetime, *, windows: list[Window], tz: ZoneInfo) -> bool:
    local = t.astimezone(tz).date()
    for day in (local - dt.timedelta(days=1), local):
        for start, end in _intervals_on(day, windows=windows, tz=tz):
            if start <= t < end:
                return True
    return False


def _next_opening(t: dt.datetime, *, windows: list[Window], tz: ZoneInfo) -> dt.datetime | None:
    local = t.astimezone(tz).date()
    for offset in range(0, 9):
        starts = sorted(
            start
            for start, _ in _intervals_on(local + dt.timedelta(days=offset), windows=windows, tz=tz)
            if start > t
        )
        if starts:
            return starts[0]
    return None


@dataclass(frozen=True, kw_only=True)
class Freeze:
    start: dt.datetime | None
    end: dt.datetime
    reason: str


def freezes_of(raw: list[Any] | None, *, tz: ZoneInfo) -> list[Freeze]:
    out = []
    for f in raw or []:
        end = instant(f.get("end"), tz=tz)
        if end is None:
            continue
        out.append(Freeze(start=instant(f.get("start"), tz=tz), end=end, reason=str(f.get("reason") or "")))
    return out


def instant(text: object, *, tz: ZoneInfo) -> dt.datetime | None:
    if not isinstance(text, str) or not text:
        return None
    t = dt.datetime.fromisoformat(text)
    return t if t.tzinfo is not None else t.replace(tzinfo=tz)


def _freeze_at(t: dt.datetime, freezes: list[Freeze]) -> Freeze | None:
    on = [f for f in freezes if (f.start is None or f.start <= t) and t < f.end]
    return max(on, key=lambda f: f.end) if on else None


@dataclass(frozen=True, kw_only=True)
class Blocked:
    why: str  # "window" or "freeze"
    next_allowed: dt.datetime | None  # in the environment's time zone; None: no window ever opens
    freeze: Freeze | None = None


def blocked_at(
    now: dt.datetime, *, windows: list[Window], freezes: list[Freeze], tz: ZoneInfo
) -> Blocked | None:
    """None when a deploy may start at `now`; else why not and the next moment it may (in `tz`)."""
    freeze = _freeze_at(now, freezes)
    if freeze is None and (not windows or _in_window(now, windows=windows, tz=tz)):
        return None
    t: dt.datetime | None = now
    for _ in range(200):  # each turn moves t forward past a freeze or to a window's opening
        assert t is not None
        on = _freeze_at(t, freezes)
        if on is not None:
            t = on.end
            continue
        if windows and not _in_window(t, windows=windows, tz=tz):
            t = _next_opening(t, windows=windows, tz=tz)
            if t is None:
                break
            continue
        break
    return Blocked(
        why="freeze" if freeze is not None else "window",
        next_allowed=t.astimezone(tz) if t is not None else None,
        freeze=freeze,
    )


def show_time(t: dt.datetime, *, tz: ZoneInfo) -> str:
    """How every message names a moment of an environment: "Mon 2026-12-07 09:00 CET (Europe/Berlin)"."""
    local = t.astimezone(tz)
    return f"{local:%a %Y-%m-%d %H:%M %Z} ({tz.key})"


def parse_instant(text: str | None, *, field: str, tz: ZoneInfo) -> dt.datetime:
    if not text:
        raise InvalidInput(f"{field} is needed: a date and time like 2026-12-27T18:00", field=field)
    try:
        t = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInput(
            f"{field} must be a date and time like 2026-12-27T18:00, got {text!r}", field=field
        ) from None
    return t if t.tzinfo is not None else t.replace(tzinfo=tz)


def parse_duration(text: str, *, field: str) -> int:
    """ "90s", "30m", "2h", "1d", "1h30m" -> seconds."""
    m = re.fullmatch(r"\s*(?:(\d+)d)?\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s)?\s*", text.lower())
    if not text.strip() or m is None or not any(m.groups()):
        raise InvalidInput(f"{field} must be a duration like 30m, 2h or 1d, got {text!r}", field=field)
    d, h, mi, s = (int(g or 0) for g in m.groups())
    return ((d * 24 + h) * 60 + mi) * 60 + s
