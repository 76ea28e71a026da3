"""Semantic versions and npm-style ranges, for image policies (`^1.4`, `~1.4.2`, `>=2.0.0 <3`, `1.x`).

Small on purpose: tags are `MAJOR.MINOR.PATCH[-pre][+build]` with an optional `v` (Docker tags cannot
hold `+`, so build metadata is accepted but ignores ordering).  Ranges follow node-semver's grammar:
comparator sets joined by `||`, each a list of comparators (`>=1.2.0 <2`), X-ranges (`1.x`, `1.2.*`,
`1`), tilde (`~1.2.3`), caret (`^1.2.3`, `^0.2`) and hyphen ranges (`1.2 - 2.3.4`).  As in npm, a
pre-release (`2.0.0-rc.1`) satisfies a range only when a comparator of the same set names a
pre-release of the very same MAJOR.MINOR.PATCH (`>=2.0.0-rc.0`): `^1.4` never picks `1.5.0-beta`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.errors import InvalidInput

_NUM = r"0|[1-9]\d*"
_PRE_ID = r"(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)"
_VERSION = re.compile(
    rf"[vV]?(?P<major>{_NUM})\.(?P<minor>{_NUM})\.(?P<patch>{_NUM})"
    rf"(?:-(?P<pre>{_PRE_ID}(?:\.{_PRE_ID})*))?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?"
)
_X = r"x|X|\*|0|[1-9]\d*"
_PARTIAL = re.compile(
    rf"[vV]?(?P<major>{_X})(?:\.(?P<minor>{_X})(?:\.(?P<patch>{_X})"
    rf"(?:-(?P<pre>{_PRE_ID}(?:\.{_PRE_ID})*))?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?)?)?"
)
_COMPARATOR = re.compile(r"(?P<op><=|>=|<|>|=|~>|~|\^)?\s*(?P<partial>\S+)")
_HYPHEN = re.compile(r"^\s*(?P<low>\S+)\s+-\s+(?P<high>\S+)\s*$")
MAX_RANGE = 300


@dataclass(frozen=True, order=False)
class Version:
    major: int
    minor: int
    patch: int
    pre: tuple[int | str, ...] = ()

    @property
    def release(self) -> tuple[int, int, int]:
        return (self.major, self.minor, self.patch)

    def key(self) -> tuple[object, ...]:
        """Sorts by semver precedence: a release after its pre-releases; numeric ids before alphanumeric."""
        pre: tuple[object, ...] = tuple((0, p, "") if isinstance(p, int) else (1, 0, p) for p in self.pre)
        # No pre-release sorts after every pre-release of the same release.
        return (self.major, self.minor, self.patch, 1 if not self.pre else 0, pre)

    def __lt__(self, other: Version) -> bool:
        return self.key() < other.key()

    def __le__(self, other: Version) -> bool:
        return self.key() <= other.key()

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        return text + ("-" + ".".join(str(p) for p in self.pre) if self.pre else "")


def _pre(text: str | None) -> tuple[int | str, ...]:
    if not text:
        return ()
    return tuple(int(p) if p.isdigit() else p for p in text.split("."))


def parse(tag: str) -> Version | None:
    """The version a tag names, or None when it is not a full semantic version."""
    m = _VERSION.fullmatch(tag)
    if m is None:
        return None
    return Version(int(m["major"]), int(m["minor"]), int(m["patch"]), _pre(m["pre"]))


# A comparator is (operator, version); operators are <, <=, >, >=, =.
Comparator = tuple[str, Version]


def _is_x(part: str | None) -> bool:
    return part is None or part in ("x", "X", "*")


def _zero(major: int, minor: int = 0, patch: int = 0) -> Version:
    # The lowest pre-release: an exclusive upper bound `<2.0.0-0` keeps 2.0.0's pre-releases out too.
    return Version(major, minor, patch, (0,))


def _partial(text: str, *, field: str) -> tuple[int | None, int | None, int | None, tuple[int | str, ...]]:
    m = _PARTIAL.fullmatch(text)
    if m is None:
        raise InvalidInput(f"{field}: {text!r} is not a version such as 1.4.2, 1.4, 1.x or *", field=field)
    major = None if _is_x(m["major"]) else int(m["major"])
    minor = None if major is None or _is_x(m["minor"]) else int(m["minor"])
    patch = None if minor is None or _is_x(m["patch"]) else int(m["patch"])
    return major, minor, patch, _pre(m["pre"]) if patch is not None else ()


def _x_range(
    major: int | None, minor: int | None, patch: int | None, pre: tuple[int | str, ...]
) -> list[Comparator]:
    if major is None:
        return [(">=", Version(0, 0, 0))]
    if minor is None:
        return [(">=", Version(major, 0, 0)), ("<", _zero(major + 1))]
    if patch is None:
        return [(">=", Version(major, minor, 0)), ("<", _zero(major, minor + 1))]
    return [("=", Version(major, minor, patch, pre))]


def _comparator(op: str, text: str, *, field: str) -> list[Comparator]:
    major, minor, patch, pre = _partial(text, field=field)
    if op in ("", "="):
        return _x_range(major, minor, patch, pre)
    if op in ("~", "~>"):
        if major is None:
            return [(">=", Version(0, 0, 0))]
        if minor is None:
            return [(">=", Version(major, 0, 0)), ("<", _zero(major + 1))]
        return [(">=", Version(major, minor, patch or 0, pre)), ("<", _zero(major, minor + 1))]
    if op == "^":
        if major is None:
            return [(">=", Version(0, 0, 0))]
        low = Version(major, minor or 0, patch or 0, pre)
        if major > 0 or minor is None:
            return [(">=", low), ("<", _zero(major + 1))]
        if minor > 0 or patch is None:
            return [(">=", low), ("<", _zero(0, minor + 1))]
        return [(">=", low), ("<", _zero(0, 0, patch + 1))]
    # <, <=, >, >= with a partial version, as node-semver reads them.
    if major is None:
        return [("<", Version(0, 0, 0, (0,)))] if op in ("<", ">") else [(">=", Version(0, 0, 0))]
    if patch is not None:
        return [(op, Version(major, minor or 0, patch, pre))]
    if op == ">":  # >1 is >=2.0.0, >1.2 is >=1.3.0
        return [(">=", Version(major + 1, 0, 0) if minor is None else Version(major, minor + 1, 0))]
    if op == ">=":
        return [(">=", Version(major, minor or 0, 0))]
    if op == "<":
        return [("<", _zero(major, minor or 0))]
    # <=1 is <2.0.0-0, <=1.2 is <1.3.0-0
    return [("<", _zero(major + 1) if minor is None else _zero(major, minor + 1))]


def _hyphen(low: str, high: str, *, field: str) -> list[Comparator]:
    lmaj, lmin, lpat, lpre = _partial(low, field=field)
    out: list[Comparator] = [(">=", Version(lmaj or 0, lmin or 0, lpat or 0, lpre))]
    hmaj, hmin, hpat, hpre = _partial(high, field=field)
    if hmaj is None:
        return out
    if hmin is None:
        return [*out, ("<", _zero(hmaj + 1))]
    if hpat is None:
        return [*out, ("<", _zero(hmaj, hmin + 1))]
    return [*out, ("<=", Version(hmaj, hmin, hpat, hpre))]


@dataclass(frozen=True)
class Range:
    text: str
    sets: tuple[tuple[Comparator, ...], ...]

    def __contains__(self, version: Version) -> bool:
        return any(_satisfies(version, s) for s in self.sets)


def _test(op: str, a: Version, b: Version) -> bool:
    ka, kb = a.key(), b.key()
    return {
        "<": ka < kb,
        "<=": ka <= kb,
        ">": ka > kb,
        ">=": ka >= kb,
        "=": ka == kb,
    }[op]


def _satisfies(version: Version, comparators: tuple[Comparator, ...]) -> bool:
    if not all(_test(op, version, bound) for op, bound in comparators):
        return False
    if not version.pre:
        return True
    # A pre-release only where the range names one of the same release (npm's rule).  Our `-0` upper
    # bounds never admit one: nothing of that release sorts below its `-0`.
    return any(bound.pre and bound.release == version.release for _, bound in comparators)


def parse_range(text: str, *, field: str = "semver") -> Range:
    """Read an npm-style range; InvalidInput naming `field` when it is not one."""
    if len(text) > MAX_RANGE:
        raise InvalidInput(f"{field} is longer than {MAX_RANGE} characters", field=field)
    sets: list[tuple[Comparator, ...]] = []
    for part in text.split("||"):
        hyphen = _HYPHEN.match(part)
        if hyphen:
            sets.append(tuple(_hyphen(hyphen["low"], hyphen["high"], field=field)))
            continue
        # `>= 1.2` is `>=1.2`: an operator binds to the version after it.
        squeezed = re.sub(r"(<=|>=|<|>|=|~>|~|\^)\s+", r"\1", part.strip())
        comparators: list[Comparator] = []
        for token in squeezed.split():
            m = _COMPARATOR.fullmatch(token)
            if m is None:  # pragma: no cover - \S+ always matches a token
                raise InvalidInput(f"{field}: cannot read {token!r}", field=field)
            comparators.extend(_comparator(m["op"] or "", m["partial"], field=field))
        if not comparators:
            if text.strip():
                raise InvalidInput(f"{field}: an empty alternative between '||'", field=field)
            comparators = [(">=", Version(0, 0, 0))]
        sets.append(tuple(comparators))
    return Range(text=text, sets=tuple(sets))
