"""The live deploy and build cards: one Slack message per deploy (and per build from source),
posted once and then updated in place.

The core calls `deliver` from a notify job, one event at a time per deploy, with
a Notice built from the deploy's state *now*: so every delivery simply redraws
the whole card, and a late or retried delivery still shows the truth.  What we
post is remembered through the returned refs ({"channel", "ts"}), so the next
event updates that message instead of posting another.

Slack's limits are respected here, not hoped for: writes are paced per channel
(about one per second, small bursts allowed) and a 429 becomes a TransientError
carrying Retry-After, so the job queue retries later without holding a worker.
Only a write takes a slot: a notice whose card another notice is posting or updating (its write
paced, or under way) comes back just after that write instead of reserving a slot of its own, which
it would find the card drawn and leave unused (issue 13: after a burst of deploys, 94 of 150 slots).
A card that cannot be updated never fails the deploy: the notify job is
separate from the deploy job.

A build's card is the same: every build event (queued, started, succeeded, failed) redraws it
from the build row, and where it is is kept in the database under the build, its run and the
target (core.shared.save_mark), as a deploy card's is kept on the deploy.  A failed build's card
is its one announcement in Slack.

Posted once, even across a crash: chat.postMessage has no idempotency key, so every
card and failure thread carries Slack message metadata naming what it is for (the
deploy or build, and the target).  A delivery whose job ran
before (attempt > 1: a crash, a lost lease, a failure after the post; our own pacing
is not an attempt) and knows no ts looks for that metadata in the channel's recent
history (a thread's replies) first, and adopts what it finds if its own bot posted it
(auth.test names the token's bot, asked once per token): another app's message carrying the
same metadata, a second shipit's in the same workspace say, is never adopted nor edited.
A first attempt never looks: it costs nothing extra.  Without the history scopes (channels:history,
groups:history) or outside the channel, it posts as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.web.async_client import AsyncWebClient

from bot import views
from core import events, logctx, notices, shared
from core.errors import Deferred, Paced, PermanentError, TransientError, retry_after_seconds
from core.notices import render

log = logging.getLogger(__name__)

NAME = "slack"
TokenFor = Callable[[str | None], Awaitable[str | None]]

# Errors that retrying will not fix; anything else unknown is retried a few times by the queue.
_PERMANENT = frozenset(
    {
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "token_expired",
        "no_permission",
        "missing_scope",
        "invalid_blocks",
        "invalid_blocks_format",
        "msg_too_long",
        "restricted_action",
        "team_access_not_granted",
    }
)
# Of those, the ones that say the bot token itself is gone, not that one call was wrong.
_DEAD_TOKEN = frozenset({"invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired"})

# Message metadata event types: what a message is for, so a retry can find what it posted before.
CARD_EVENT = "shipit_deploy_card"
BUILD_CARD_EVENT = "shipit_build_card"
FAILURE_EVENT = "shipit_deploy_failure"  # the failure's details, threaded under its card
# A retry looks back from its event's time, less this: shipit's clock and Slack's differ a little.
LOOK_BACK = dt.timedelta(minutes=5)
# Newest first, a page at a time: what a crashed attempt posted is among the channel's latest.
HISTORY_LIMIT = 20
HISTORY_PAGES = 5
# conversations.history refusing to read the channel: a retry then posts as it always did.
_NO_HISTORY = frozenset({"missing_scope", "not_in_channel", "channel_not_found"})


def _metadata_key(metadata: Any) -> tuple[str, tuple[tuple[str, str], ...]] | None:
    """Message metadata as a comparable value (Slack may give numbers back as strings)."""
    if not isinstance(metadata, dict) or not isinstance(metadata.get("event_payload"), dict):
        return None
    payload = metadata["event_payload"]
    return str(metadata.get("event_type")), tuple(sorted((str(k), str(v)) for k, v in payload.items()))


def _posted_by(message: dict[str, Any], own: tuple[str | None, str | None]) -> bool:
    """Whether `message` is the token's own bot's: its bot_id (else its bot user) is the one auth.test
    named.  Nothing known about the token: nothing is."""
    bot_id, user_id = own
    if bot_id:
        return message.get("bot_id") == bot_id
    return user_id is not None and message.get("user") == user_id


class Pacer:
    """Per-channel token bucket: `rate` writes per second, bursts of `burst`.

    A write that would wait longer than `max_wait` is not made to wait in a
    worker slot: it raises Paced(retry_after), a TransientError that counts neither
    against the target nor as an attempt, and the queue retries it.
    With a `key` (which delivery this is), the slot is reserved for it, so a
    backlog drains in order with one retry per write instead of every waiting
    job coming back again and again to race for the next free second.
    """

    HELD_FOR = shared.HELD_FOR  # a reservation whose job never came back is forgotten after this

    def __init__(self, *, rate: float = 1.0, burst: int = 3, max_wait: float = 3.0) -> None:
        self.interval = 1.0 / rate
        self.burst = burst
        self.max_wait = max_wait
        self._next: dict[str, float] = {}
        self._held: dict[tuple[str, Hashable], float] = {}

    async def wait(self, channel: str, *, key: Hashable | None = None) -> None:
        now = time.monotonic()
        slot = self._held.pop((channel, key), None) if key is not None else None
        if slot is None:
            # The bucket is full when _next is `burst` intervals in the past.
            slot = max(self._next.get(channel, 0.0), now - (self.burst - 1) * self.interval)
            delay = slot - now
            if delay > self.max_wait and key is None:
                raise Paced(f"pacing messages to Slack channel {channel}", retry_after=delay)
            self._next[channel] = slot + self.interval
        delay = slot - now
        if delay > self.max_wait:
            self._hold(channel, key, slot, now)
            raise Paced(f"pacing messages to Slack channel {channel}", retry_after=delay)
        if delay > 0:
            await asyncio.sleep(delay)

    def _hold(self, channel: str, key: Hashable, slot: float, now: float) -> None:
        self._held[(channel, key)] = slot
        if len(self._held) > 1000:
            for k, at in list(self._held.items()):
                if at < now - self.HELD_FOR:
                    del self._held[k]

    def backoff(self, channel: str, seconds: float) -> None:
        """Slack said 429: nothing goes to this channel before Retry-After."""
        self._next[channel] = max(self._next.get(channel, 0.0), time.monotonic() + seconds)

    async def backoff_shared(self, channel: str, seconds: float) -> None:
        self.backoff(channel, seconds)


class SharedPacer(Pacer):
    """The same token bucket, its state in the database: replicas posting to one channel share it.

    The next free slot per channel is a row (core.shared.advance, under a row lock) holding a wall
    clock time, since replicas share no monotonic clock.  A slot reserved for a retried delivery is
    kept in the database too (core.shared.keep_held): the retry may be claimed by another replica,
    which then writes in that slot instead of taking one more (the reserved one would go unused: a
    second of the channel lost for every card paced across replicas).
    """

    def __init__(self, *, sessionmaker: Any, **kw: Any) -> None:
        super().__init__(**kw)
        self.sessionmaker = sessionmaker

    @staticmethod
    def _key(channel: str) -> str:
        return f"slack-pace:{channel}"

    @staticmethod
    def _held_key(channel: str, key: Hashable) -> str:
        return shared.held_key(f"slack-pace:{channel}:{key!r}")

    async def wait(self, channel: str, *, key: Hashable | None = None) -> None:
        now = time.time()
        slot = (
            await shared.take_held(self.sessionmaker, key=self._held_key(channel, key))
            if key is not None
            else None
        )
        if slot is None:

            def take(next_free: float) -> tuple[float | None, float]:
                free = max(next_free, now - (self.burst - 1) * self.interval)
                if free - now > self.max_wait and key is None:
                    return None, free  # not reserved: the caller retries later
                return free + self.interval, free

            slot = await shared.advance(self.sessionmaker, key=self._key(channel), fn=take)
        delay = slot - now
        if delay > self.max_wait:
            if key is not None:
                self._hold(channel, key, slot, now)
                await shared.keep_held(self.sessionmaker, key=self._held_key(channel, key), at=slot)
            raise Paced(f"pacing messages to Slack channel {channel}", retry_after=delay)
        if delay > 0:
            await asyncio.sleep(delay)

    def _hold(self, channel: str, key: Hashable, slot: float, now: float) -> None:
        return None  # kept in the database (wait), the copy every replica sees: none in memory

    async def backoff_shared(self, channel: str, seconds: float) -> None:
        until = time.time() + seconds
        await shared.advance(self.sessionmaker, key=self._key(channel), fn=lambda n: (max(n, until), None))


def _shared(sessionmaker: Any) -> bool:
    """Whether replicas may share this database: PostgreSQL.  On SQLite one process owns the queue
    (DESIGN.md section 5), so the bucket in memory is the shared one, without a write transaction
    per card write competing with the requests for SQLite's one writer (issue 13)."""
    if sessionmaker is None:
        return False
    bind = sessionmaker.kw.get("bind")
    return bind is None or bind.dialect.name != "sqlite"


@dataclasses.dataclass(frozen=True)
class _Turn:
    """A card's pending write in this process: the notice (event) whose post or update of the card
    holds a paced slot, and when that slot is (monotonic); or, `failed`, that its post failed."""

    holder: int
    at: float
    failed: bool = False


@dataclasses.dataclass
class _DeployCard:
    """One delivery's deploy card: where it is and what it shows.  `channel_id` and `ts` move when the
    card is posted (or posted again); `out` is what the delivery has to record on the deploy, and
    `saved`, of `out`, what _post_card has recorded already."""

    notice: events.Notice
    d: events.DeploymentView
    card: views.Message
    refs: dict[str, Any]
    out: dict[str, Any]
    saved: dict[str, Any]
    channel_id: str
    ts: str | None
    team: str | None
    token: str | None
    key: str
    posted: tuple[int, str]
    look_since: dt.datetime | None
    app_name: str
    dlog: logctx.ContextLogger


class SlackNotifier:
    """core.events.Notifier for Slack."""

    name = NAME
    # A card's holder this late for its slot is not coming back here (its retry went to another
    # replica, or it found nothing to send before drawing): the notices waiting for it go ahead.
    LATE = 10.0

    def __init__(
        self,
        *,
        client: AsyncWebClient,
        token_for: TokenFor | None = None,
        pacer: Pacer | None = None,
        sessionmaker: Any = None,
    ) -> None:
        self.client = client
        self.token_for = token_for
        # With the database: pacing and the posted-card record are shared by every replica.
        self.sessionmaker = sessionmaker
        self.pacer = pacer or (SharedPacer(sessionmaker=sessionmaker) if _shared(sessionmaker) else Pacer())
        # Replicas: what a deploy card shows (recorded with its refs on the deploy) and whose turn it is
        # to write it (core.shared.keep_held) are in the database, so a notice that another replica
        # takes neither redraws a card that already shows the deploy nor reserves a slot of its own.
        self.shares_cards = _shared(sessionmaker)
        # Cards posted in this process, so a retry after a failure *after* posting updates the card
        # instead of posting a second one (the refs are only saved when deliver returns).
        self._posted: OrderedDict[tuple[int, str], tuple[str, str]] = OrderedDict()
        # Cards whose post or update holds a paced slot, by card: another notice of the same card
        # waits for that write instead of reserving a slot of its own (it would find the card drawn
        # and send nothing, and the channel's second would be lost to every other card; issue 13).
        # With replicas, a turn that outlives one write attempt is kept in the database too.
        self._turns: OrderedDict[tuple[int, str], _Turn] = OrderedDict()
        # What each card shows now: an event that would redraw the same card makes no API call.
        self._shown: OrderedDict[tuple[str, str], str] = OrderedDict()
        # Why a retry could not read a channel's history, logged once per workspace (missing_scope:
        # not asked again) or channel.
        self._unreadable: set[tuple[str, str]] = set()
        # Who each bot token is (auth.test: its bot_id and bot user), learned when a retry first finds
        # a message carrying what it looks for: only its own bot's message is adopted.
        self._whoami: OrderedDict[str, tuple[str | None, str | None]] = OrderedDict()
        # Set when Slack says the bot token is gone (app_uninstalled, tokens_revoked; bot.channel):
        # cards are not posted, rather than failing every deploy's notice against a dead token.
        self.revoked: str | None = None

    def wants(self, kind: str) -> bool:
        return kind.startswith("deploy.") or kind in notices.BUILD_KINDS

    def wants_event(self, audience: events.Audience) -> bool:
        if audience.kind in notices.BUILD_KINDS:
            return audience.target is not None  # no command's channel to fall back on: a push made it
        return not audience.preview  # previews report on their pull request, not in Slack

    async def close(self) -> None:
        return None  # the channel owns (and closes) the client

    async def deliver(self, notice: events.Notice) -> events.Delivered | None:
        if notice.kind in notices.BUILD_KINDS:
            await self._build_card(notice)
            return None
        d = notice.deployment
        if d is None or notice.preview is not None:
            return None  # previews report on their pull request, not in Slack
        if self.revoked is not None:
            notices.logger_for(log, notice).info("slack: card not posted: %s", self.revoked)
            return None
        # One card per deploy and target (each channel a target); with no target, the project's
        # channel as given in the notice, else the channel the command was typed in.
        key = notices.ref_key(self.name, notice.target)
        dlog = notices.logger_for(log, notice)
        refs: dict[str, Any] = dict(d.refs.get(key) or {})
        channel: str | None = refs.get("channel")
        ts: str | None = refs.get("ts")
        out: dict[str, Any] = {}
        saved: dict[str, Any] = {}  # of `out`, what _post_card has recorded on the deploy already
        posted = (d.id, key)
        if ts is None and posted in self._posted:
            channel, ts = self._posted[posted]
            out = {"channel": channel, "ts": ts}
        if notice.target is not None:
            configured: str | None = notice.target.address
        else:
            configured = notice.project.slack_channel if notice.project else None
        where = configured or refs.get("origin")  # "T123/C123" names the workspace, "C123" does not
        if channel is None:
            channel = where
        if not channel:
            dlog.debug("no Slack channel for project; card not posted")
            return None
        if ts is None and d.status == "superseded":
            # Replaced before anyone saw it (a burst of deploys): a card would only be noise.
            return None
        team, channel_id = views.split_channel(channel)
        # A posted card's ref holds the bare channel id; its workspace is recorded beside it (or, on
        # cards from before, is the configured one): an update must use that workspace's token.
        team = team or refs.get("team") or (views.split_channel(where)[0] if where else None)
        token = await self.token_for(team) if self.token_for else None
        if self.token_for is not None and token is None:
            dlog.warning("slack: card not posted: no installation of shipit serves workspace %s", team or "?")
            return None
        app_name = notice.app.name if notice.app else "app"
        card = views.card(deployment=d, app=notice.app, project=notice.project)
        # A retry may have posted before it could record the post: it looks before posting again.
        look_since = notice.created_at if notice.attempt > 1 else None

        c = _DeployCard(
            notice=notice, d=d, card=card, refs=refs, out=out, saved=saved, channel_id=channel_id, ts=ts,
            team=team, token=token, key=key, posted=posted, look_since=look_since, app_name=app_name,
            dlog=dlog,
        )  # fmt: skip
        try:
            return await self._draw(c)
        except Paced as e:
            if out.get("ts") and saved.get("ts") != out["ts"]:
                # Posted (now or by an earlier attempt here) and not recorded: the retry must count as
                # an attempt, so that on any replica it looks for the card before posting one.
                raise Deferred(str(e), retry_after=e.retry_after) from None
            raise

    async def _draw(self, c: _DeployCard) -> events.Delivered | None:
        """Post or update the card, and thread a failure's details once.  `c.out` and `c.saved` are
        filled in place, so the caller sees what was posted even when a later call raises."""
        notice, d, dlog = c.notice, c.d, c.dlog
        shown = None
        if c.ts is not None:
            shown = self._shown.get((c.channel_id, c.ts))
            if shown is None and c.refs.get("ts") == c.ts:
                shown = c.refs.get("shown")  # drawn on another replica (or before a restart)
        writes = c.ts is None or self._fingerprint(c.card) != shown
        async with self._card_turn(c.posted, holder=notice.event_id, writes=writes) as failed_here:
            await self._draw_card(
                c, writes=writes, look_since=c.look_since or (notice.created_at if failed_here else None)
            )

        if d.status == "failed" and not c.refs.get("failure_posted"):
            thread = views.failure_thread(deployment=d, app_name=c.app_name)
            metadata = {"event_type": FAILURE_EVENT, "event_payload": {"deployment_id": d.id, "ref": c.key}}
            found = (
                await self._find_posted(
                    c.channel_id, metadata=metadata, since=c.look_since, token=c.token, team=c.team,
                    dlog=dlog, thread_ts=c.ts,
                )
                if c.look_since is not None
                else None
            )  # fmt: skip
            if found is None:
                await self._call(
                    "chat_postMessage", c.channel_id, key=(notice.event_id, "thread"), dlog=dlog,
                    token=c.token, thread_ts=c.ts, text=thread.text, blocks=thread.blocks, metadata=metadata,
                )  # fmt: skip
                dlog.info("failure details posted in the card's thread in %s", c.channel_id)
            else:
                dlog.info(
                    "failure details found in the card's thread in %s, posted by an earlier attempt",
                    c.channel_id,
                )
            c.out["failure_posted"] = True
        # Only what is not on the deploy yet: a card just posted was recorded by _post_card, and
        # writing it again was a transaction of its own per posted card (issue 13).
        unsaved = {k: v for k, v in c.out.items() if k not in c.saved or c.saved[k] != v}
        return events.Delivered(deployment_refs=unsaved) if unsaved else None

    async def _draw_card(self, c: _DeployCard, *, writes: bool, look_since: dt.datetime | None) -> None:
        """Post the card, or update it if `writes`; `c.channel_id` and `c.ts` say where it is then."""
        notice, d, card, dlog = c.notice, c.d, c.card, c.dlog
        if c.ts is None:
            got, got_saved = await self._post_card(
                card, c.channel_id, dlog=dlog, key=(notice.event_id, "card"), token=c.token,
                posted=c.posted, metadata=self._card_metadata(d.id, c.key),
                save=self._saver(d.id, key=c.key, dlog=dlog), look_since=look_since,
                **({"team": c.team} if c.team else {}), **self._shown_ref(card),
            )  # fmt: skip
            c.out.update(got)
            c.saved.update(got_saved)
            c.channel_id, c.ts = c.out["channel"], c.out["ts"]
            dlog.info("card posted in %s (ts %s, %s)", c.channel_id, c.ts, d.status)
        elif writes:
            try:
                await self._call(
                    "chat_update", c.channel_id, key=(notice.event_id, "card"), dlog=dlog, token=c.token,
                    ts=c.ts, text=card.text, blocks=card.blocks,
                )  # fmt: skip
            except PermanentError as e:
                if "message_not_found" not in str(e):
                    raise
                # Someone deleted the card: post a fresh one rather than going silent.
                got, got_saved = await self._post_card(
                    card, c.channel_id, dlog=dlog, key=(notice.event_id, "repost"), token=c.token,
                    posted=c.posted, metadata=self._card_metadata(d.id, c.key),
                    save=self._saver(d.id, key=c.key, dlog=dlog), look_since=look_since,
                    failure_posted=False, **({"team": c.team} if c.team else {}), **self._shown_ref(card),
                )  # fmt: skip
                c.out.clear()
                c.out.update(got)
                c.saved.clear()
                c.saved.update(got_saved)
                c.channel_id, c.ts = c.out["channel"], c.out["ts"]
                c.refs["failure_posted"] = False
            dlog.info("card updated in %s (%s)", c.channel_id, d.status)
            c.out.update(self._shown_ref(card))  # recorded on the deploy when the delivery returns
        assert c.ts is not None
        self._remember_shown(c.channel_id, c.ts, card)

    async def _build_card(self, notice: events.Notice) -> None:
        """Post or update the build's card in the target's channel: one per build, run and target."""
        dlog = notices.logger_for(log, notice)
        b = notice.build
        if b is None:
            return
        if self.revoked is not None:
            dlog.info("slack: build card not posted: %s", self.revoked)
            return
        # A push is typed in no channel: only the project's own Slack targets hear of its build.
        where = notice.target.address if notice.target is not None else None
        if not where:
            return
        key = notices.ref_key(self.name, notice.target)
        mark = shared.build_card_mark(build_id=b.id, runs=b.runs, target=key)
        posted = (b.id, f"build:{b.runs}:{key}")
        refs: dict[str, Any] = {}
        if posted in self._posted:
            refs = dict(zip(("channel", "ts"), self._posted[posted], strict=True))
        elif self.sessionmaker is not None:
            refs = json.loads(await shared.read_mark(self.sessionmaker, key=mark) or "{}")
        ts: str | None = refs.get("ts")
        if ts is None and b.status == "superseded":
            return  # replaced before anyone saw it: a card would only be noise
        team, channel_id = views.split_channel(where)
        channel_id = refs.get("channel") or channel_id
        token = await self.token_for(team) if self.token_for else None
        if self.token_for is not None and token is None:
            dlog.warning(
                "slack: build card not posted: no installation of shipit serves workspace %s", team or "?"
            )
            return
        app_name = notice.app.name if notice.app else str(notice.payload.get("app") or "app")
        card = views.build_card(
            build=b, app=notice.app, project=notice.project, where=render.place(notice),
            logs=render.build_logs_command(notice, app=app_name, build=b.id),
        )  # fmt: skip
        metadata = {
            "event_type": BUILD_CARD_EVENT,
            "event_payload": {"build_id": b.id, "run": b.runs, "ref": key},
        }

        async def save(out: dict[str, Any]) -> bool:
            if self.sessionmaker is None:
                return False
            try:
                await shared.save_mark(self.sessionmaker, key=mark, value=json.dumps(out))
            except Exception:
                dlog.warning("could not record the posted build card yet", exc_info=True)
                return False
            return True

        # A retry may have posted it and died before recording it: it looks before posting again.
        look_since = notice.created_at if notice.attempt > 1 else None
        writes = ts is None or self._fingerprint(card) != self._shown.get((channel_id, ts))
        async with self._card_turn(posted, holder=notice.event_id, writes=writes) as failed_here:
            await self._draw_build_card(
                notice, b, card, channel_id=channel_id, ts=ts, token=token, posted=posted, metadata=metadata,
                save=save, writes=writes, look_since=look_since or (notice.created_at if failed_here else None),
                dlog=dlog,
            )  # fmt: skip

    async def _draw_build_card(
        self,
        notice: events.Notice,
        b: events.BuildView,
        card: views.Message,
        *,
        channel_id: str,
        ts: str | None,
        token: str | None,
        posted: tuple[int, str],
        metadata: dict[str, Any],
        save: Callable[[dict[str, Any]], Awaitable[bool]],
        writes: bool,
        look_since: dt.datetime | None,
        dlog: logctx.ContextLogger,
    ) -> None:
        """Post the build's card, or update it if `writes`."""
        if ts is None:
            out, _ = await self._post_card(
                card, channel_id, dlog=dlog, key=(notice.event_id, "card"), token=token, posted=posted,
                metadata=metadata, save=save, look_since=look_since,
            )  # fmt: skip
            channel_id, ts = out["channel"], out["ts"]
            dlog.info("build #%s card posted in %s (ts %s, %s)", b.id, channel_id, ts, b.status)
        elif writes:
            try:
                await self._call(
                    "chat_update", channel_id, key=(notice.event_id, "card"), dlog=dlog, token=token, ts=ts,
                    text=card.text, blocks=card.blocks,
                )  # fmt: skip
            except PermanentError as e:
                if "message_not_found" not in str(e):
                    raise
                # Someone deleted the card: post a fresh one rather than going silent.
                out, _ = await self._post_card(
                    card, channel_id, dlog=dlog, key=(notice.event_id, "repost"), token=token, posted=posted,
                    metadata=metadata, save=save, look_since=look_since,
                )  # fmt: skip
                channel_id, ts = out["channel"], out["ts"]
            dlog.info("build #%s card updated in %s (%s)", b.id, channel_id, b.status)
        self._remember_shown(channel_id, ts, card)

    async def _find_posted(
        self,
        channel: str,
        *,
        metadata: dict[str, Any],
        since: dt.datetime,
        token: str | None,
        team: str | None,
        dlog: logctx.ContextLogger,
        thread_ts: str | None = None,
    ) -> str | None:
        """The ts of the bot's message in `channel` (with `thread_ts`: among that thread's replies)
        carrying `metadata`, posted since `since` less LOOK_BACK; at most HISTORY_PAGES pages of
        HISTORY_LIMIT (a channel newest first, a thread oldest first); else None.

        None too when Slack will not show it (no channels:history / groups:history scope, not in the
        channel): the caller then posts, as before there was a look, and it is logged once.
        """
        if (team or "", "missing_scope") in self._unreadable:
            return None
        if since.tzinfo is None:
            since = since.replace(tzinfo=dt.UTC)
        method = "conversations.replies" if thread_ts else "conversations.history"
        args: dict[str, Any] = {
            "channel": channel,
            "oldest": f"{(since - LOOK_BACK).timestamp():.6f}",
            "limit": HISTORY_LIMIT,
            "include_all_metadata": True,
            **({"token": token} if token else {}),
        }
        wanted = _metadata_key(metadata)
        cursor: str | None = None
        for _ in range(HISTORY_PAGES):
            try:
                if thread_ts:
                    response = await self.client.conversations_replies(ts=thread_ts, cursor=cursor, **args)
                else:
                    response = await self.client.conversations_history(cursor=cursor, **args)
            except SlackApiError as e:
                status = e.response.status_code
                error = str(e.response.get("error") or "") if isinstance(e.response.data, dict) else ""
                if status == 429:
                    retry_after = retry_after_seconds(e.response.headers, default=30.0, minimum=1.0)
                    raise TransientError(f"Slack {method}: rate limited", retry_after=retry_after) from None
                if error in _NO_HISTORY:
                    needed = e.response.get("needed")
                    self._cannot_read(channel, error=error, team=team, needed=needed, dlog=dlog)
                    return None
                if error == "thread_not_found":
                    return None  # the card is gone: nothing was threaded under it
                if error in _PERMANENT:
                    raise PermanentError(f"Slack {method} in {channel}: {error}") from None
                raise TransientError(f"Slack {method}: {error or f'HTTP {status}'}") from None
            except (aiohttp.ClientError, TimeoutError, SlackRequestError) as e:
                raise TransientError(f"Slack {method}: {type(e).__name__}: {e}") from None
            page = response.data if isinstance(response.data, dict) else {}
            for message in page.get("messages") or []:
                # (A thread's parent comes first: it carries the card's metadata, not what is wanted.)
                if not message.get("bot_id") or _metadata_key(message.get("metadata")) != wanted:
                    continue
                # Another app's message (a second shipit in the workspace, an app copying the
                # metadata) is not ours to adopt and edit: only this token's own bot's is.
                if _posted_by(message, await self._own(token, dlog=dlog)):
                    return str(message["ts"])
                dlog.info(
                    "slack: a message in %s (ts %s) carries this card's metadata but another bot (%s) "
                    "posted it: not adopted", channel, message.get("ts"), message.get("bot_id"),
                )  # fmt: skip
            cursor = (page.get("response_metadata") or {}).get("next_cursor") or None
            if not page.get("has_more") or not cursor:
                return None
        dlog.warning(
            "slack: no earlier post found in the %d messages of %s looked at; posting",
            HISTORY_LIMIT * HISTORY_PAGES, channel,
        )  # fmt: skip
        return None

    async def _own(self, token: str | None, *, dlog: logctx.ContextLogger) -> tuple[str | None, str | None]:
        """The bot id and bot user id of `token` (None: the client's own), from auth.test, cached per
        token (a digest of it: the token itself is not kept as a key)."""
        key = hashlib.sha256((token or "").encode()).hexdigest()
        if key in self._whoami:
            self._whoami.move_to_end(key)
            return self._whoami[key]
        try:
            response = await self.client.auth_test(**({"token": token} if token else {}))
        except SlackApiError as e:
            status = e.response.status_code
            error = str(e.response.get("error") or "") if isinstance(e.response.data, dict) else ""
            if status == 429:
                retry_after = retry_after_seconds(e.response.headers, default=30.0, minimum=1.0)
                raise TransientError("Slack auth.test: rate limited", retry_after=retry_after) from None
            if error in _PERMANENT:
                raise PermanentError(f"Slack auth.test: {error}") from None
            raise TransientError(f"Slack auth.test: {error or f'HTTP {status}'}") from None
        except (aiohttp.ClientError, TimeoutError, SlackRequestError) as e:
            raise TransientError(f"Slack auth.test: {type(e).__name__}: {e}") from None
        data = response.data if isinstance(response.data, dict) else {}
        own = (str(data.get("bot_id") or "") or None, str(data.get("user_id") or "") or None)
        dlog.debug("slack: this token posts as bot %s (user %s)", own[0] or "?", own[1] or "?")
        self._whoami[key] = own
        while len(self._whoami) > 1000:
            self._whoami.popitem(last=False)
        return own

    def _cannot_read(
        self, channel: str, *, error: str, team: str | None, needed: Any, dlog: logctx.ContextLogger
    ) -> None:
        # A missing scope holds for the whole installation until it is reinstalled: not asked again.
        seen = (team or "", error) if error == "missing_scope" else (channel, error)
        if seen in self._unreadable:
            return
        self._unreadable.add(seen)
        dlog.warning(
            "slack: cannot read the history of %s (%s%s), so a retried post cannot check it was "
            "posted already; add the channels:history and groups:history scopes and reinstall the app",
            channel, error, f", needs {needed}" if needed else "",
        )  # fmt: skip

    async def _call(
        self,
        method: str,
        channel: str,
        *,
        dlog: logctx.ContextLogger,
        key: Hashable | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        await self.pacer.wait(channel, key=key)
        if kwargs.get("token") is None:
            kwargs.pop("token", None)
        try:
            response = await getattr(self.client, method)(channel=channel, **kwargs)
        except SlackApiError as e:
            status = e.response.status_code
            error = str(e.response.get("error") or "") if isinstance(e.response.data, dict) else ""
            if status == 429:
                retry_after = retry_after_seconds(e.response.headers, default=30.0, minimum=1.0)
                await self.pacer.backoff_shared(channel, retry_after)
                dlog.warning("Slack rate-limited %s in %s; retrying in %.0fs", method, channel, retry_after)
                raise TransientError(f"Slack {method}: rate limited", retry_after=retry_after) from None
            if status >= 500 or error in ("internal_error", "fatal_error", "service_unavailable"):
                raise TransientError(f"Slack {method}: {error or f'HTTP {status}'}") from None
            if error in _DEAD_TOKEN and self.token_for is None:
                # The one configured bot token is dead: every replica learns it from its first
                # refused call (only the one Slack sent tokens_revoked to learns it from the event).
                self.revoked = (
                    f"Slack refused the bot token ({error}); set a new SHIPIT_SLACK_BOT_TOKEN and restart"
                )
                dlog.error("slack: %s", self.revoked)
            if error in _PERMANENT or error == "message_not_found":
                raise PermanentError(f"Slack {method} in {channel}: {error}") from None
            raise TransientError(f"Slack {method}: {error or f'HTTP {status}'}") from None
        except (aiohttp.ClientError, TimeoutError, SlackRequestError) as e:
            raise TransientError(f"Slack {method}: {type(e).__name__}: {e}") from None
        data = response.data
        return data if isinstance(data, dict) else {}

    async def _post_card(
        self,
        card: views.Message,
        channel: str,
        *,
        dlog: logctx.ContextLogger,
        key: Hashable,
        token: str | None,
        posted: tuple[int, str],
        metadata: dict[str, Any],
        save: Callable[[dict[str, Any]], Awaitable[bool]],
        look_since: dt.datetime | None = None,
        **extra: Any,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Post a new card carrying `metadata` and remember where (here, and in the database through
        `save`: on the deploy, or under the build), so later events update it.

        `look_since` (a retry): first look for the card an earlier attempt posted since then, and
        adopt it.  Returns the refs and, of them, what is recorded (nothing if that failed)."""
        found = (
            await self._find_posted(
                channel, metadata=metadata, since=look_since, token=token, team=extra.get("team"), dlog=dlog
            )
            if look_since is not None
            else None
        )
        if found is not None:
            # An earlier attempt posted it and died before recording it: this is the card; redraw it.
            await self._call(
                "chat_update", channel, dlog=dlog, key=key, token=token, ts=found, text=card.text,
                blocks=card.blocks,
            )  # fmt: skip
            dlog.info(
                "card found in %s (ts %s), posted by an earlier attempt: not posted again", channel, found
            )
            answer: dict[str, Any] = {"channel": channel, "ts": found}
        else:
            answer = await self._call(
                "chat_postMessage", channel, dlog=dlog, key=key, token=token, text=card.text,
                blocks=card.blocks, metadata=metadata,
            )  # fmt: skip
        out = {"channel": str(answer["channel"]), "ts": str(answer["ts"]), **extra}
        self._remember_post(posted, out["channel"], out["ts"])
        saved = await save(out)
        return out, (dict(out) if saved else {})

    @staticmethod
    def _card_metadata(deployment_id: int, key: str) -> dict[str, Any]:
        return {"event_type": CARD_EVENT, "event_payload": {"deployment_id": deployment_id, "ref": key}}

    def _saver(
        self, deployment_id: int, *, key: str, dlog: logctx.ContextLogger
    ) -> Callable[[dict[str, Any]], Awaitable[bool]]:
        async def save(refs: dict[str, Any]) -> bool:
            return await self._save_post(deployment_id, refs, key=key, dlog=dlog)

        return save

    async def _save_post(
        self, deployment_id: int, refs: dict[str, Any], *, key: str = NAME, dlog: logctx.ContextLogger
    ) -> bool:
        """Record the card at once, not when deliver returns: a retry of this delivery, on any
        replica, then updates this card instead of posting a second one.  False: not recorded."""
        if self.sessionmaker is None:
            return False
        try:
            await shared.save_refs(self.sessionmaker, deployment_id=deployment_id, notifier=key, refs=refs)
        except Exception:
            dlog.warning("could not record the posted card yet", exc_info=True)
            return False
        return True

    def _remember_post(self, posted: tuple[int, str], channel: str, ts: str) -> None:
        self._posted[posted] = (channel, ts)
        while len(self._posted) > 2000:
            self._posted.popitem(last=False)

    @staticmethod
    def _fingerprint(card: views.Message) -> str:
        raw = json.dumps([card.text, card.blocks], sort_keys=True).encode()
        return hashlib.sha256(raw).hexdigest()

    def _shown_ref(self, card: views.Message) -> dict[str, str]:
        """What a deploy card's refs record of its content, for the other replicas; nothing on
        SQLite, where one process draws every card and remembers them itself."""
        return {"shown": self._fingerprint(card)} if self.shares_cards else {}

    def _remember_shown(self, channel: str, ts: str, card: views.Message) -> None:
        self._shown[(channel, ts)] = self._fingerprint(card)
        self._shown.move_to_end((channel, ts))
        while len(self._shown) > 2000:
            self._shown.popitem(last=False)

    @contextlib.asynccontextmanager
    async def _card_turn(self, card: tuple[int, str], *, holder: int, writes: bool) -> AsyncIterator[bool]:
        """Around drawing a card (posting or updating it, if `writes`) for the notice `holder`.

        While another notice's write of the same card is under way or holds a paced slot (here, or on
        another replica: the turn is then kept in the database), a notice that would write too does
        not reserve a slot of its own: it raises Paced to come back just after that write, when it
        finds the card drawn and writes again only if what it shows has changed.  Otherwise its own
        write is the card's turn until it is made or fails.  Yields whether an earlier write of this
        card failed: Slack may have taken that post, so a post looks for it first, as a retry does."""
        turn = self._turns.get(card)
        if turn is None and writes and self.shares_cards:
            turn = await self._read_turn(card)
        if turn is not None and turn.holder != holder and not turn.failed and writes:
            late = time.monotonic() - turn.at
            if late <= self.LATE:
                # Before its slot: the slot after it; late (in flight, or its job not claimed yet):
                # a wait doubling with the delay, so a holder that never comes back costs a few runs.
                raise Paced(
                    f"pacing messages to Slack: the card's write by event {turn.holder} is due first",
                    retry_after=max(-late, 0.0) + max(self.pacer.interval, late),
                )
        failed = turn is not None and turn.failed
        if writes:
            self._set_turn(card, _Turn(holder=holder, at=time.monotonic()))
        try:
            yield failed
        except Paced as e:
            if writes:
                await self._hold_turn(
                    card, _Turn(holder=holder, at=time.monotonic() + (e.retry_after or 0.0))
                )
            raise
        except Exception:
            if writes:
                # The write failed, perhaps after Slack took it: the notices waiting for it write
                # themselves when they come back, and a post looks for the card first.
                await self._hold_turn(card, _Turn(holder=holder, at=time.monotonic(), failed=True))
            raise
        mine = self._turns.get(card)
        if mine is not None and mine.holder == holder:
            del self._turns[card]
        if writes and turn is not None and self.shares_cards:
            await self._end_turn(card)  # drawn: the turn kept for the other replicas is over

    @staticmethod
    def _turn_key(card: tuple[int, str]) -> str:
        return shared.held_key(f"slack-turn:{card[0]}:{card[1]}")

    async def _read_turn(self, card: tuple[int, str]) -> _Turn | None:
        """The card's turn another replica (or this one, before a restart) kept in the database."""
        try:
            kept = await shared.read_held(self.sessionmaker, key=self._turn_key(card))
            if kept is None:
                return None
            wall, who = kept
            holder, _, failed = who.partition(" ")
            # Kept as wall-clock time: replicas share no monotonic clock.
            return _Turn(holder=int(holder), at=time.monotonic() + wall - time.time(), failed=failed == "1")
        except Exception:
            log.warning("slack: could not read the turn of card %s; drawing it", card, exc_info=True)
            return None

    async def _hold_turn(self, card: tuple[int, str], turn: _Turn) -> None:
        """The card's turn is `turn`'s until its write is made: here, and for the other replicas."""
        self._set_turn(card, turn)
        if not self.shares_cards:
            return
        wall = time.time() + turn.at - time.monotonic()
        try:
            await shared.keep_held(
                self.sessionmaker,
                key=self._turn_key(card),
                at=wall,
                holder=f"{turn.holder} {int(turn.failed)}",
            )
        except Exception:
            log.warning("slack: could not keep the turn of card %s for other replicas", card, exc_info=True)

    async def _end_turn(self, card: tuple[int, str]) -> None:
        try:
            await shared.take_held(self.sessionmaker, key=self._turn_key(card))
        except Exception:
            log.warning("slack: could not end the turn of card %s", card, exc_info=True)

    def _set_turn(self, card: tuple[int, str], turn: _Turn) -> None:
        self._turns[card] = turn
        self._turns.move_to_end(card)
        while len(self._turns) > 2000:
            self._turns.popitem(last=False)
