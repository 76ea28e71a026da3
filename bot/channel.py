"""The Slack channel, assembled once at start: bolt AsyncApp, HTTP route, notifier, Socket Mode.

`build()` is the only entry point the composition root (shipit) calls.  The bolt
app is built here once and never per request.  It runs with
process_before_response: the listener does the core's cheap transaction, then
acks with the reply, and Slack gets the answer when the listener returns; the
only thing that runs after the answer is slow, optional follow-up (asking a
cluster, replying to a mention) in tracked background tasks.

Unconfigured (no signing secret and no app token) the channel is switched off
with one log line, and /slack/events answers 503 with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import re
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import aiohttp
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from slack_bolt.adapter.fastapi.async_handler import AsyncSlackRequestHandler
from slack_bolt.async_app import AsyncApp
from slack_bolt.authorization.async_authorize import AsyncInstallationStoreAuthorize
from slack_bolt.listener.async_builtins import AsyncTokenRevocationListeners
from slack_bolt.oauth.async_oauth_settings import AsyncOAuthSettings
from slack_sdk.oauth.state_store.sqlalchemy import AsyncSQLAlchemyOAuthStateStore
from slack_sdk.web.async_client import AsyncWebClient

from bot import handlers, install_store, notifier, views
from core import logctx, tasks
from core.context import Core

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
INSTALL_PATH = "/slack/install"
REDIRECT_PATH = "/slack/oauth_redirect"
# As manifests/slack-app.yaml; the history scopes let a retried post find what it may have posted.
BOT_SCOPES = (
    "commands",
    "chat:write",
    "chat:write.public",
    "app_mentions:read",
    "users:read",
    "channels:history",
    "groups:history",
)
FOLLOW_UP_TIMEOUT = 20.0
_MENTION = re.compile(r"^\s*<@[UW][A-Z0-9]+(?:\|[^>]*)?>\s*")

Respond = Callable[..., Awaitable[Any]]


class SlackChannel:
    """What shipit plugs in: `handle` (called by the routes of `routes()`), `notifier` (when on),
    and `start()` / `close()` for the lifespan."""

    def __init__(
        self,
        *,
        enabled: bool,
        reason: str = "",
        http: bool = False,
        oauth: bool = False,
        bolt: AsyncApp | None = None,
        notifier: notifier.SlackNotifier | None = None,
        signing_secret: str | None = None,
    ) -> None:
        self.enabled = enabled
        self.reason = reason
        self.http = http  # HTTP mode is on (a signing secret is set)
        self.oauth = oauth
        self.bolt = bolt
        self.notifier = notifier
        self.signing_secret = signing_secret.encode() if signing_secret else None
        self._handler = AsyncSlackRequestHandler(bolt) if bolt is not None and http else None
        self._tasks: set[asyncio.Task[None]] = set()
        self._starters: list[Callable[[], Awaitable[None]]] = []
        self._closers: list[Callable[[], Awaitable[None]]] = []

    async def handle(self, request: Request) -> Response:
        if self._handler is None:
            return unavailable(self.reason)
        if request.method == "GET" and not self.oauth:
            return JSONResponse({"error": {"type": "not_found", "message": "no OAuth install"}}, 404)
        if request.method == "POST" and self.signing_secret is not None:
            # Verified here first, on the raw bytes, so that a refusal logs one line and nothing of
            # the body (bolt's own check, still on behind this one, logs the whole body on failure)
            # and a malformed timestamp is a 401, not a crash in bolt.
            refusal = signature_refusal(
                secret=self.signing_secret,
                timestamp=request.headers.get("x-slack-request-timestamp"),
                signature=request.headers.get("x-slack-signature"),
                body=await request.body(),
                now=time.time(),
            )
            if refusal is not None:
                client = request.client.host if request.client else "?"
                log.warning("slack: refused a request from %s: %s", client, refusal)
                return JSONResponse({"error": {"type": "bad_signature", "message": refusal}}, 401)
        return await self._handler.handle(request)

    def spawn(self, coro: Coroutine[Any, Any, None], *, name: str) -> None:
        """Run work after the ack; kept referenced so it is not collected, cancelled on close."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self) -> None:
        for start in self._starters:
            await start()

    async def close(self) -> None:
        await tasks.end(self._tasks)
        for close in reversed(self._closers):
            with contextlib.suppress(Exception):
                await close()


SIGNATURE_WINDOW_SECONDS = 5 * 60
_TIMESTAMP = re.compile(r"[0-9]{1,12}")  # ASCII digits only: int() would take "١٢" or " 12"


def signature_refusal(
    *, secret: bytes, timestamp: str | None, signature: str | None, body: bytes, now: float
) -> str | None:
    """Why a request is not Slack's (v0 signature, 5-minute window), or None when it is.

    The reason never quotes the request: it goes to the log and to the sender.
    """
    if not timestamp or not _TIMESTAMP.fullmatch(timestamp):
        return "X-Slack-Request-Timestamp is missing or not a number"
    if abs(now - int(timestamp)) > SIGNATURE_WINDOW_SECONDS:
        return "X-Slack-Request-Timestamp is outside the 5-minute window"
    if not signature:
        return "X-Slack-Signature is missing"
    base = b"v0:" + timestamp.encode() + b":" + body
    expected = b"v0=" + hmac.new(secret, base, hashlib.sha256).hexdigest().encode()
    if not hmac.compare_digest(expected, signature.encode("utf-8", "replace")):
        return "X-Slack-Signature does not match the body"
    return None


class _NoRequestBodies(logging.Filter):
    """Drops bolt's "Invalid request signature detected (… body: …)" line: the body of a refused
    request can hold a secret (`/shipit secrets set web K=…`).  Bolt copies its base logger's filters
    onto the loggers it creates (slack_bolt.RequestVerification among them).  Also its debug line
    "Responding with status: 200 body: …": a reply can hold a one-time link code (`/shipit link`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(
            ("Invalid request signature detected", "Responding with status")
        )


def _bolt_logger() -> logging.Logger:
    for name in ("slack_bolt.RequestVerification", "bot.bolt"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoRequestBodies) for f in logger.filters):
            logger.addFilter(_NoRequestBodies())
    return logger


def unavailable(reason: str) -> JSONResponse:
    return JSONResponse({"error": {"type": "unavailable", "message": f"slack: {reason}"}}, status_code=503)


def routes(lookup: Callable[[Request], SlackChannel | None]) -> APIRouter:
    """The HTTP routes, mountable before the channel exists (it is built in the lifespan)."""
    router = APIRouter()

    async def dispatch(request: Request) -> Response:
        channel = lookup(request)
        if channel is None:
            return unavailable("not started yet")
        return await channel.handle(request)

    router.add_api_route(EVENTS_PATH, dispatch, methods=["POST"], include_in_schema=False)
    router.add_api_route(INSTALL_PATH, dispatch, methods=["GET"], include_in_schema=False)
    router.add_api_route(REDIRECT_PATH, dispatch, methods=["GET"], include_in_schema=False)
    return router


def switched_off(reason: str) -> SlackChannel:
    log.info("slack: switched off (%s)", reason)
    return SlackChannel(enabled=False, reason=f"switched off ({reason})")


def build(
    *,
    core: Core,
    signing_secret: str | None,
    bot_token: str | None,
    api_url: str,
    app_token: str | None = None,
    client_id: str | None = None,
    client_secret: str | None = None,
    public_url: str | None = None,
    pacer: notifier.Pacer | None = None,
) -> SlackChannel:
    """Build the Slack channel once.  HTTP mode needs the signing secret; Socket Mode the app token."""
    if not signing_secret and not app_token:
        return switched_off("SHIPIT_SLACK_SIGNING_SECRET is not set")
    oauth = bool(client_id and client_secret)
    if not bot_token and not oauth:
        return switched_off(
            "neither SHIPIT_SLACK_BOT_TOKEN nor SHIPIT_SLACK_CLIENT_ID/SECRET (OAuth install) is set"
        )

    engine = core.sessionmaker.kw["bind"]
    store: install_store.EncryptedInstallationStore | None = None
    state_store: AsyncSQLAlchemyOAuthStateStore | None = None
    oauth_settings = None
    if oauth:
        assert client_id and client_secret
        store = install_store.EncryptedInstallationStore(
            client_id=client_id, engine=engine, cipher=core.cipher
        )
        state_store = AsyncSQLAlchemyOAuthStateStore(expiration_seconds=600, engine=engine)
        oauth_settings = AsyncOAuthSettings(
            client_id=client_id,
            client_secret=client_secret,
            scopes=list(BOT_SCOPES),
            install_path=INSTALL_PATH,
            redirect_uri_path=REDIRECT_PATH,
            redirect_uri=f"{public_url.rstrip('/')}{REDIRECT_PATH}" if public_url else None,
            installation_store=store,
            state_store=state_store,
        )

    # One Web API client for everything; base_url lets tests (and Slack-compatible gateways) point
    # it elsewhere.
    client = AsyncWebClient(base_url=api_url, token=None if oauth else bot_token)
    authorize = None
    if store is not None:
        # The installation is looked up on every request (so an uninstall takes effect at once), but
        # the auth.test answer per token is cached: no Web API round trip before the ack.
        authorize = AsyncInstallationStoreAuthorize(
            installation_store=store,
            client_id=client_id,
            client_secret=client_secret,
            cache_enabled=True,
            client=client,
            logger=_bolt_logger(),
        )
    bolt = AsyncApp(
        name="shipit",
        signing_secret=signing_secret or "",
        client=client,
        process_before_response=True,
        request_verification_enabled=True,
        oauth_settings=oauth_settings,
        installation_store=store,
        authorize=authorize,  # type: ignore[arg-type]  # an AsyncAuthorize instance is accepted too
        logger=_bolt_logger(),
    )

    async def token_for(team_id: str | None) -> str | None:
        if store is None:
            return bot_token
        if not team_id:  # a channel that names no workspace: the one set up (the token, else the latest)
            if bot_token:
                return bot_token
            bot = await store.latest_bot()
            return bot.bot_token if bot is not None else None
        bot = await store.async_find_bot(enterprise_id=None, team_id=team_id)
        if bot is None and bot_token:
            return bot_token
        if bot is None:
            # Never another workspace's token for this one's channel (tenancy): only an org-wide
            # install, which covers the workspace, and otherwise no card.
            bot = await store.org_wide_bot()
        return bot.bot_token if bot is not None else None

    note = notifier.SlackNotifier(
        client=client, token_for=token_for, pacer=pacer, sessionmaker=core.sessionmaker
    )
    channel = SlackChannel(
        enabled=True,
        reason="SHIPIT_SLACK_SIGNING_SECRET is not set (Socket Mode only)",
        http=bool(signing_secret),
        oauth=oauth,
        bolt=bolt,
        notifier=note,
        signing_secret=signing_secret,
    )
    _listen(bolt, core=core, channel=channel, store=store)
    _pooled(channel, client=client)
    if store is not None:
        tables = (store, state_store)

        async def create_tables() -> None:
            # slack_sdk's own tables, created if missing (CREATE TABLE IF NOT EXISTS semantics).
            for owner in tables:
                if owner is not None:
                    await owner.create_tables()  # type: ignore[no-untyped-call]

        channel._starters.append(create_tables)

    if app_token:
        _socket_mode(channel, bolt=bolt, app_token=app_token)

    mode = ", ".join(
        m
        for m, on in (
            ("HTTP at " + EVENTS_PATH, bool(signing_secret)),
            ("Socket Mode", bool(app_token)),
            ("OAuth install at " + INSTALL_PATH, oauth),
        )
        if on
    )
    log.info("slack: on (%s; Web API %s)", mode, api_url)
    return channel


def _pooled(channel: SlackChannel, *, client: AsyncWebClient) -> None:
    """One aiohttp session, and so one connection pool, for the client's Web API calls while the
    channel runs.  Without it slack_sdk opens a session and a new connection per call: per deploy
    card, a TCP (and TLS) handshake and a session's set-up and tear-down (issue 13).  Before start
    and after close the client falls back to that, so nothing depends on the order."""

    async def open_session() -> None:
        if client.session is None or client.session.closed:
            client.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=client.timeout))

    async def close_session() -> None:
        session, client.session = client.session, None
        if session is not None:
            await session.close()

    channel._starters.append(open_session)
    channel._closers.append(close_session)


def _socket_mode(channel: SlackChannel, *, bolt: AsyncApp, app_token: str) -> None:
    # For teams without a public URL: Slack pushes the same payloads over a websocket we open.
    from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler

    socket = AsyncSocketModeHandler(bolt, app_token)

    async def connect() -> None:
        await socket.connect_async()  # type: ignore[no-untyped-call]
        log.info("slack: Socket Mode connected")

    async def close() -> None:
        await socket.close_async()  # type: ignore[no-untyped-call]

    channel._starters.append(connect)
    channel._closers.append(close)


def _command_caller(body: dict[str, Any]) -> handlers.Caller:
    return handlers.Caller(
        user_id=str(body.get("user_id") or ""),
        user_name=str(body.get("user_name") or ""),
        team_id=body.get("team_id"),
        channel_id=body.get("channel_id"),
    )


def _action_caller(body: dict[str, Any]) -> handlers.Caller:
    user = body.get("user") or {}
    return handlers.Caller(
        user_id=str(user.get("id") or ""),
        user_name=str(user.get("username") or user.get("name") or ""),
        team_id=(body.get("team") or {}).get("id") or user.get("team_id"),
        channel_id=(body.get("channel") or {}).get("id"),
    )


def _workspace(body: dict[str, Any]) -> str:
    """The workspace a request names, for log lines: team and/or enterprise (an org-wide install)."""
    team = body.get("team_id") or (body.get("team") or {}).get("id")
    enterprise = body.get("enterprise_id") or (body.get("enterprise") or {}).get("id")
    return "/".join(str(part) for part in (enterprise, team) if part) or "?"


def _listen_for_revocations(
    bolt: AsyncApp, *, channel: SlackChannel, store: install_store.EncryptedInstallationStore | None
) -> None:
    """tokens_revoked and app_uninstalled: stop using what Slack took back.

    With OAuth installs the workspace's installation rows are deleted (bolt's own revocation logic),
    so nothing is posted there again until it is installed anew.  With one SHIPIT_SLACK_BOT_TOKEN the
    token is dead: the notifier stops posting cards (in this process) until a new token is set.
    """
    revocations = AsyncTokenRevocationListeners(store) if store is not None else None

    async def revoked(kind: str, ack: Any, body: dict[str, Any], event: dict[str, Any], context: Any) -> None:
        await ack()
        tokens = event.get("tokens") or {}
        bot = kind == "app_uninstalled" or bool(tokens.get("bot"))
        where, event_id = _workspace(body), body.get("event_id")
        if revocations is not None:
            if kind == "app_uninstalled":
                await revocations.handle_app_uninstalled_events(context)
            else:
                await revocations.handle_tokens_revoked_events(event, context)
            log.warning(
                "slack: %s from workspace %s (event %s): its %s deleted; nothing is posted there until "
                "it is installed again",
                kind, where, event_id, "installation was" if kind == "app_uninstalled" else "revoked tokens were",
            )  # fmt: skip
            return
        if not bot:
            log.info("slack: %s from workspace %s (event %s): no bot token revoked", kind, where, event_id)
            return
        reason = f"the bot token was revoked ({kind}); set a new SHIPIT_SLACK_BOT_TOKEN and restart"
        if channel.notifier is not None:
            channel.notifier.revoked = reason
        log.warning("slack: %s from workspace %s (event %s): %s", kind, where, event_id, reason)

    @bolt.event("tokens_revoked")
    async def on_tokens_revoked(ack: Any, body: dict[str, Any], event: dict[str, Any], context: Any) -> None:
        await revoked("tokens_revoked", ack, body, event, context)

    @bolt.event("app_uninstalled")
    async def on_app_uninstalled(ack: Any, body: dict[str, Any], event: dict[str, Any], context: Any) -> None:
        await revoked("app_uninstalled", ack, body, event, context)


def _acknowledge_the_rest(bolt: AsyncApp) -> None:
    """Interactivity shipit has no listener for (another app's buttons in a shared message, a shortcut
    or modal added to the Slack app config, a legacy attachment or dialog): acknowledged with one log
    line, so the user sees no error and Slack does not retry.  Bolt would answer 404 "unhandled
    request".  Registered last: bolt runs the first listener that matches."""
    anything = re.compile(r".*")

    def note(body: dict[str, Any], what: str) -> None:
        user = (body.get("user") or {}).get("id") or body.get("user_id") or "?"
        log.info(
            "slack: %s %r from %s in workspace %s is not shipit's; acknowledged",
            body.get("type") or "request", what, user, _workspace(body),
        )  # fmt: skip

    @bolt.action(anything)
    async def on_other_action(ack: Any, body: dict[str, Any]) -> None:
        await ack()
        action = (body.get("actions") or [{}])[0]
        note(body, str(action.get("action_id") or action.get("name") or body.get("callback_id") or ""))

    @bolt.options(anything)
    async def on_other_options(ack: Any, body: dict[str, Any]) -> None:
        await ack(options=[])  # nothing to suggest
        note(body, str(body.get("action_id") or body.get("callback_id") or ""))

    @bolt.view(anything)
    async def on_other_view(ack: Any, body: dict[str, Any]) -> None:
        await ack()
        note(body, str((body.get("view") or {}).get("callback_id") or ""))

    @bolt.view({"type": "view_closed", "callback_id": anything})
    async def on_other_view_closed(ack: Any, body: dict[str, Any]) -> None:
        await ack()
        note(body, str((body.get("view") or {}).get("callback_id") or ""))

    @bolt.shortcut(anything)
    async def on_other_shortcut(ack: Any, body: dict[str, Any]) -> None:
        await ack()
        note(body, str(body.get("callback_id") or ""))


def _listen(
    bolt: AsyncApp,
    *,
    core: Core,
    channel: SlackChannel,
    store: install_store.EncryptedInstallationStore | None = None,
) -> None:
    async def follow_up(
        later: Callable[[], Awaitable[views.Message]], respond: Respond, caller: handlers.Caller
    ) -> None:
        what = "a command's follow-up"
        try:
            message = await asyncio.wait_for(later(), FOLLOW_UP_TIMEOUT)
        except Exception as e:
            message = handlers.failure(e, what=what, caller=caller).message
        try:
            await respond(
                text=message.text, blocks=message.blocks, response_type="ephemeral", replace_original=True
            )
        except Exception:
            log.warning("slack: could not send the follow-up of %s", what, exc_info=True)

    async def say_ephemeral(respond: Respond, message: views.Message, what: str) -> None:
        try:
            await respond(
                text=message.text, blocks=message.blocks, response_type="ephemeral", replace_original=False
            )
        except Exception:
            log.warning("slack: could not answer %s", what, exc_info=True)

    @bolt.command(re.compile(r".*"))
    async def on_command(ack: Any, body: dict[str, Any], respond: Respond) -> None:
        caller = _command_caller(body)
        # Slack makes a new trigger_id for every invocation: a replayed request (same signed body,
        # within the 5-minute window) carries the same one and is acknowledged, not run again.
        trigger = str(body.get("trigger_id") or "") or None
        outcome = await handlers.run_command(
            core=core, caller=caller, text=str(body.get("text") or ""), trigger_id=trigger
        )
        await ack(text=outcome.message.text, blocks=outcome.message.blocks, response_type="ephemeral")
        if outcome.later is not None:
            channel.spawn(follow_up(outcome.later, respond, caller), name="slack-follow-up")

    @bolt.action(re.compile(r"^shipit\."))
    async def on_button(ack: Any, body: dict[str, Any], respond: Respond) -> None:
        caller = _action_caller(body)
        action = (body.get("actions") or [{}])[0]
        outcome = await handlers.run_action(
            core=core,
            caller=caller,
            action_id=str(action.get("action_id") or ""),
            value=str(action.get("value") or ""),
        )
        await ack()
        channel.spawn(say_ephemeral(respond, outcome.message, "a button"), name="slack-button-reply")

    @bolt.event("app_mention")
    async def on_mention(
        ack: Any, body: dict[str, Any], event: dict[str, Any], client: AsyncWebClient
    ) -> None:
        await ack()
        caller = handlers.Caller(
            user_id=str(event.get("user") or ""),
            user_name="",
            team_id=body.get("team_id"),
            channel_id=event.get("channel"),
        )
        text = _MENTION.sub("", str(event.get("text") or ""), count=1)
        event_id = str(body.get("event_id") or "") or None
        outcome = await handlers.run_command(core=core, caller=caller, text=text, delivery_id=event_id)

        async def reply() -> None:
            where = str(event.get("channel"))
            try:
                posted = await client.chat_postMessage(
                    channel=where,
                    thread_ts=str(event.get("thread_ts") or event.get("ts")),
                    text=outcome.message.text,
                    blocks=outcome.message.blocks,
                )
                if outcome.later is None:
                    return
                try:
                    message = await asyncio.wait_for(outcome.later(), FOLLOW_UP_TIMEOUT)
                except Exception as e:
                    message = handlers.failure(e, what="a mention's follow-up", caller=caller).message
                await client.chat_update(
                    channel=str(posted["channel"]),
                    ts=str(posted["ts"]),
                    text=message.text,
                    blocks=message.blocks,
                )
            except Exception:
                logctx.deploy_logger(log, delivery=event_id).warning(
                    "slack: could not reply to a mention", exc_info=True
                )

        if not outcome.duplicate:
            channel.spawn(reply(), name="slack-mention-reply")

    # Before the catch-all below: bolt runs the first listener that matches an event.
    _listen_for_revocations(bolt, channel=channel, store=store)

    @bolt.event(re.compile(r".*"))
    async def on_other_event(ack: Any) -> None:
        # Subscribed events we do not act on are acknowledged, so Slack does not retry them.
        await ack()

    _acknowledge_the_rest(bolt)
