"""A fake Slack Web API on loopback, so tests drive the real slack_sdk / slack_bolt clients over HTTP.

It answers the methods shipit uses with Slack's response shapes, keeps the messages it was sent (so a
test can read a deploy card's current blocks after its updates), records every call, and can be told
to fail the way Slack fails: 429 + Retry-After, 5xx, ``{"ok": false, "error": ...}``.

Point clients at it with ``AsyncWebClient(base_url=slack.url, token=slack.bot_token)``.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import hashlib
import json
import secrets
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from aiohttp import web

from tests.fakes._server import Answer, Call, FakeServer, lower_headers, peer_of

# Form-encoded calls carry these as JSON strings; slack_sdk's JSON calls carry them as JSON values.
_JSON_ARGS = frozenset({"blocks", "attachments", "metadata", "user_auth_blocks"})
# A bot token's scopes when a test names none: what manifests/slack-app.yaml asks for.
BOT_SCOPES = (
    "commands,chat:write,chat:write.public,app_mentions:read,users:read,channels:history,groups:history"
)


class SlackError(Exception):
    """Raised inside a method handler to answer ``{"ok": false, "error": error}``."""

    def __init__(self, error: str, *, status: int = 200, **extra: Any) -> None:
        super().__init__(error)
        self.error = error
        self.status = status
        self.extra = extra


@dataclasses.dataclass
class Workspace:
    team_id: str
    name: str
    domain: str
    bot_token: str
    bot_user_id: str
    bot_id: str
    app_id: str
    enterprise_id: str | None = None


@dataclasses.dataclass
class _Token:
    workspace: Workspace
    kind: str  # "bot" | "user"
    user_id: str
    scope: str
    # A bot token's own bot and app (auth.test says the bot; its messages carry both).
    bot_id: str | None = None
    app_id: str | None = None


@dataclasses.dataclass
class _OAuthCode:
    team_id: str
    team_name: str
    installer_user_id: str
    scope: str
    user_scope: str | None


@dataclasses.dataclass
class _Message:
    channel: str
    payload: dict[str, Any]
    versions: list[dict[str, Any]]
    deleted: bool = False


@dataclasses.dataclass
class _ResponseUrl:
    channel: str | None
    user: str | None
    message_ts: str | None
    payloads: list[dict[str, Any]]


@dataclasses.dataclass
class _Ctx:
    """What a method handler sees: the arguments and who is calling."""

    args: dict[str, Any]
    token: _Token | None
    headers: dict[str, str]

    @property
    def caller(self) -> _Token:
        assert self.token is not None
        return self.token

    def require(self, name: str, error: str | None = None) -> Any:
        value = self.args.get(name)
        if value in (None, ""):
            raise SlackError(
                error or "invalid_arguments", response_metadata={"messages": [f"missing {name}"]}
            )
        return value


class FakeSlack(FakeServer):
    """Fake Slack Web API. ``url`` ends with ``/api/`` like ``https://slack.com/api/``.

    Methods: auth.test, chat.postMessage, chat.update, chat.delete, chat.postEphemeral, users.info,
    conversations.info, conversations.history, conversations.replies, oauth.v2.access; plus ``POST /response/<key>`` for
    response_url posts.  A message's ``metadata`` is kept and shown by conversations.history with
    ``include_all_metadata``; conversations.history and .replies check the token's history scope and the bot's
    membership as Slack does (missing_scope with ``needed``, not_in_channel, channel_not_found).
    """

    def __init__(
        self,
        *,
        bot_token: str = "xoxb-fake-bot-token",
        team_id: str = "T0FAKE0001",
        team_name: str = "Shipit Test",
        client_id: str = "1111.2222",
        client_secret: str = "fake-client-secret",
        strict: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        """`strict`: unknown users and channels answer user_not_found / channel_not_found instead of
        being made up on the fly."""
        super().__init__(host=host, port=port)
        self.client_id = client_id
        self.client_secret = client_secret
        self.strict = strict
        self._workspaces: dict[str, Workspace] = {}
        self._tokens: dict[str, _Token] = {}
        self._revoked: set[str] = set()
        self._users: dict[str, dict[str, Any]] = {}
        self._channels: dict[str, dict[str, Any]] = {}
        self._messages: dict[tuple[str, str], _Message] = {}
        self._ephemerals: list[dict[str, Any]] = []
        self._response_urls: dict[str, _ResponseUrl] = {}
        self._oauth_codes: dict[str, _OAuthCode] = {}
        self._used_codes: set[str] = set()
        self._last_ts = 0
        self._accepted_hooks: list[tuple[str, Callable[[dict[str, Any]], None]]] = []
        self._methods: dict[str, tuple[Callable[[_Ctx], dict[str, Any]], bool]] = {
            "api.test": (self._api_test, False),
            "auth.test": (self._auth_test, True),
            "chat.postMessage": (self._chat_post_message, True),
            "chat.update": (self._chat_update, True),
            "chat.delete": (self._chat_delete, True),
            "chat.postEphemeral": (self._chat_post_ephemeral, True),
            "users.info": (self._users_info, True),
            "conversations.info": (self._conversations_info, True),
            "conversations.history": (self._conversations_history, True),
            "conversations.replies": (self._conversations_replies, True),
            "oauth.v2.access": (self._oauth_v2_access, False),
        }
        default = self.add_workspace(team_id=team_id, name=team_name, bot_token=bot_token)
        self.default_workspace = default

    # ---- configuration ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Web API base URL for ``AsyncWebClient(base_url=...)``; ends with ``/api/``."""
        return f"{self.origin}/api/"

    @property
    def bot_token(self) -> str:
        return self.default_workspace.bot_token

    @property
    def team_id(self) -> str:
        return self.default_workspace.team_id

    @property
    def bot_user_id(self) -> str:
        return self.default_workspace.bot_user_id

    @property
    def bot_id(self) -> str:
        return self.default_workspace.bot_id

    @property
    def app_id(self) -> str:
        return self.default_workspace.app_id

    def add_workspace(
        self, *, team_id: str, name: str, bot_token: str | None = None, scopes: str = BOT_SCOPES
    ) -> Workspace:
        """A workspace with a bot installed; its bot token is valid (with `scopes`) from now on."""
        suffix = team_id.removeprefix("T")
        with self._lock:
            ws = Workspace(
                team_id=team_id,
                name=name,
                domain=name.lower().replace(" ", "-"),
                bot_token=bot_token or f"xoxb-{team_id}-{secrets.token_hex(8)}",
                bot_user_id=f"U0BOT{suffix}",
                bot_id=f"B0BOT{suffix}",
                app_id="A0SHIPIT01",
            )
            self._workspaces[team_id] = ws
            self._tokens[ws.bot_token] = _Token(ws, "bot", ws.bot_user_id, scopes, ws.bot_id, ws.app_id)
            self._users.setdefault(
                ws.bot_user_id, self._user_shape(ws.bot_user_id, "shipit", "shipit", None, ws, is_bot=True)
            )
        return ws

    def workspace(self, team_id: str) -> Workspace:
        with self._lock:
            return self._workspaces[team_id]

    def add_token(
        self,
        token: str,
        *,
        team_id: str | None = None,
        user_id: str,
        kind: str = "user",
        bot_id: str | None = None,
        app_id: str | None = None,
        scopes: str = "chat:write",
    ) -> None:
        """Make `token` valid, acting as `user_id` in the workspace (default: the default one).  A bot
        token (`kind="bot"`) is its own bot (`bot_id`, default from `user_id`) of its own app: what
        auth.test answers and what its messages are stamped with, as Slack does."""
        with self._lock:
            ws = self._workspaces[team_id or self.team_id]
            if kind == "bot":
                bot_id = bot_id or f"B{user_id.removeprefix('U')}"
                app_id = app_id or f"A{user_id.removeprefix('U')}"
            self._tokens[token] = _Token(ws, kind, user_id, scopes, bot_id, app_id)

    def add_bot(
        self, *, user_id: str, team_id: str | None = None, name: str = "shipit", scopes: str = BOT_SCOPES
    ) -> str:
        """Another app's bot installed in the workspace (default: the default one), e.g. a second
        shipit: returns its bot token, whose bot id auth.test tells (`bot_id_of`)."""
        token = f"xoxb-{user_id}-{secrets.token_hex(8)}"
        self.add_token(token, team_id=team_id, user_id=user_id, kind="bot", scopes=scopes)
        with self._lock:
            ws = self._tokens[token].workspace
            self._users.setdefault(user_id, self._user_shape(user_id, name, name, None, ws, is_bot=True))
        return token

    def bot_id_of(self, token: str) -> str | None:
        with self._lock:
            return self._tokens[token].bot_id

    def set_scopes(self, token: str, scopes: str) -> None:
        """What `token` is granted from now on (comma-separated), e.g. an app installed before a scope
        was added to its manifest."""
        with self._lock:
            self._tokens[token].scope = scopes

    def revoke_token(self, token: str) -> None:
        """Later calls with `token` answer ``token_revoked``."""
        with self._lock:
            self._revoked.add(token)

    def add_user(
        self,
        user_id: str,
        *,
        name: str,
        real_name: str | None = None,
        email: str | None = None,
        team_id: str | None = None,
        is_admin: bool = False,
        is_bot: bool = False,
        tz: str = "Europe/Paris",
    ) -> dict[str, Any]:
        with self._lock:
            ws = self._workspaces[team_id or self.team_id]
            user = self._user_shape(
                user_id, name, real_name or name.title(), email, ws, is_admin=is_admin, is_bot=is_bot, tz=tz
            )
            self._users[user_id] = user
            return copy.deepcopy(user)

    def add_channel(
        self, channel_id: str, *, name: str, is_private: bool = False, is_member: bool = True
    ) -> dict[str, Any]:
        """`is_member=False`: the bot is not in it (it may still post there with chat:write.public,
        but not read its history)."""
        with self._lock:
            channel = self._channel_shape(channel_id, name, is_private=is_private)
            channel["is_member"] = is_member
            self._channels[channel_id] = channel
            return copy.deepcopy(channel)

    def add_oauth_code(
        self,
        code: str,
        *,
        team_id: str,
        team_name: str,
        installer_user_id: str,
        scope: str = "chat:write,commands,users:read",
        user_scope: str | None = None,
    ) -> None:
        """Make `code` exchangeable (once) by oauth.v2.access for an install into `team_id`."""
        with self._lock:
            self._oauth_codes[code] = _OAuthCode(team_id, team_name, installer_user_id, scope, user_scope)

    def response_url(
        self,
        key: str | None = None,
        *,
        channel: str | None = None,
        user: str | None = None,
        message_ts: str | None = None,
    ) -> str:
        """A response_url to put in a signed slash-command / interactivity payload.

        Posts to it are recorded (`responses`); bound to a message (`channel` + `message_ts`), a post
        with ``replace_original`` / ``delete_original`` changes that message as Slack does.
        """
        key = key or secrets.token_hex(8)
        with self._lock:
            self._response_urls[key] = _ResponseUrl(channel, user, message_ts, [])
        return f"{self.origin}/response/{key}"

    def when_accepted(self, method: str, hook: Callable[[dict[str, Any]], None]) -> None:
        """Call `hook(answer)` once, on the fake's thread, when the next `method` call succeeds, after
        Slack has done it and before the answer is sent: e.g. the caller's process dies there."""
        with self._lock:
            self._accepted_hooks.append((method, hook))

    # ---- failure injection -----------------------------------------------------------------------

    def fail(
        self,
        method: str = "*",
        *,
        times: int = 1,
        status: int = 200,
        error: str = "internal_error",
        retry_after: int | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        """The next `times` calls of `method` ("*" = any, "response_url" = response_url posts) answer
        `status` with ``{"ok": false, "error": error}`` (or `body`)."""
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        self._add_failure(
            method,
            times=times,
            status=status,
            body=body if body is not None else {"ok": False, "error": error},
            headers=headers,
        )

    def rate_limit(self, method: str = "*", *, times: int = 1, retry_after: int = 1) -> None:
        """HTTP 429, ``Retry-After: <retry_after>``, ``{"ok": false, "error": "ratelimited"}``."""
        self.fail(method, times=times, status=429, error="ratelimited", retry_after=retry_after)

    def server_error(self, method: str = "*", *, times: int = 1, status: int = 500) -> None:
        self.fail(method, times=times, status=status, error="internal_error")

    def api_error(self, method: str, error: str, *, times: int = 1) -> None:
        """HTTP 200 with ``{"ok": false, "error": error}`` (e.g. invalid_auth, channel_not_found)."""
        self.fail(method, times=times, status=200, error=error)

    # ---- state accessors -------------------------------------------------------------------------

    def find_message(self, channel: str, ts: str) -> dict[str, Any] | None:
        with self._lock:
            msg = self._messages.get((channel, ts))
            return None if msg is None or msg.deleted else copy.deepcopy(msg.payload)

    def message(self, channel: str, ts: str) -> dict[str, Any]:
        """The current state of a message (after its updates): text, blocks, attachments, thread_ts..."""
        found = self.find_message(channel, ts)
        if found is None:
            raise AssertionError(f"no message {ts} in {channel}; messages: {self._message_keys()}")
        return found

    def message_versions(self, channel: str, ts: str) -> list[dict[str, Any]]:
        """Every version of a message, first post first, current last."""
        with self._lock:
            return copy.deepcopy(self._messages[(channel, ts)].versions)

    def messages(self, channel: str | None = None, *, include_replies: bool = True) -> list[dict[str, Any]]:
        """Live messages in posting order, with a ``channel`` key added."""
        with self._lock:
            out = []
            for msg in self._messages.values():
                if msg.deleted or (channel is not None and msg.channel != channel):
                    continue
                if (
                    not include_replies
                    and msg.payload.get("thread_ts", msg.payload["ts"]) != msg.payload["ts"]
                ):
                    continue
                out.append({**copy.deepcopy(msg.payload), "channel": msg.channel})
            return out

    def thread(self, channel: str, thread_ts: str) -> list[dict[str, Any]]:
        """Replies in a thread (the parent excluded), oldest first."""
        return [m for m in self.messages(channel) if m.get("thread_ts") == thread_ts and m["ts"] != thread_ts]

    def ephemerals(self, channel: str | None = None, *, user: str | None = None) -> list[dict[str, Any]]:
        """Ephemeral messages (chat.postEphemeral and ephemeral response_url posts)."""
        with self._lock:
            return [
                copy.deepcopy(e)
                for e in self._ephemerals
                if (channel is None or e.get("channel") == channel)
                and (user is None or e.get("user") == user)
            ]

    def responses(self, key_or_url: str | None = None) -> list[dict[str, Any]]:
        """JSON payloads posted to response URLs (one URL by key or full URL, or all), in order."""
        with self._lock:
            if key_or_url is None:
                return [copy.deepcopy(p) for r in self._response_urls.values() for p in r.payloads]
            key = key_or_url.rstrip("/").rsplit("/", 1)[-1]
            entry = self._response_urls.get(key)
            return copy.deepcopy(entry.payloads) if entry else []

    def _message_keys(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._messages)

    # ---- HTTP ------------------------------------------------------------------------------------

    def _serve(self, request: web.Request, raw: bytes) -> Answer:
        headers = lower_headers(request)
        query = dict(request.query)
        path = request.path
        if path.startswith("/response/"):
            return self._serve_response_url(request, raw, headers, query)
        if not path.startswith("/api/"):
            return self._finish(request, raw, "unknown", headers, query, None, Answer(404, {"ok": False}))
        method = path.removeprefix("/api/")
        try:
            args = _parse_args(request, raw)
        except ValueError:
            answer = Answer(200, {"ok": False, "error": "invalid_json"})
            return self._finish(request, raw, method, headers, query, None, answer)
        injected = self._take_failure(method)
        if injected is not None:
            return self._finish(request, raw, method, headers, query, args, injected, injected=True)
        answer = self._call_method(method, args, headers)
        return self._finish(request, raw, method, headers, query, args, answer)

    def _call_method(self, method: str, args: dict[str, Any], headers: dict[str, str]) -> Answer:
        entry = self._methods.get(method)
        if entry is None:
            return _error("unknown_method", req_method=method)
        handler, needs_token = entry
        with self._lock:
            token_value = _bearer(headers) or args.get("token")
            token: _Token | None = None
            if needs_token:
                if not token_value:
                    return _error("not_authed")
                if token_value in self._revoked:
                    return _error("token_revoked")
                token = self._tokens.get(token_value)
                if token is None:
                    return _error("invalid_auth")
            try:
                body = handler(_Ctx(args, token, headers))
            except SlackError as e:
                return Answer(e.status, {"ok": False, "error": e.error, **e.extra}, _slack_headers())
            hook = next((h for h in self._accepted_hooks if h[0] == method), None)
            if hook is not None:
                self._accepted_hooks.remove(hook)
                hook[1](copy.deepcopy(body))
            return Answer(200, {"ok": True, **body}, _slack_headers())

    def _finish(
        self,
        request: web.Request,
        raw: bytes,
        api: str,
        headers: dict[str, str],
        query: dict[str, str],
        args: dict[str, Any] | None,
        answer: Answer,
        *,
        injected: bool = False,
    ) -> Answer:
        self._record(
            Call(
                api=api,
                http_method=request.method,
                path=request.path,
                query=query,
                headers=headers,
                body=args,
                raw_body=raw,
                status=answer.status,
                response=answer.body if answer.text is None else answer.text,
                injected=injected,
                peer=peer_of(request),
            )
        )
        return answer

    # ---- methods ---------------------------------------------------------------------------------

    def _api_test(self, ctx: _Ctx) -> dict[str, Any]:
        return {"args": {k: v for k, v in ctx.args.items() if k != "token"}}

    def _auth_test(self, ctx: _Ctx) -> dict[str, Any]:
        tok, ws = ctx.caller, ctx.caller.workspace
        user = self._users.get(tok.user_id)
        body: dict[str, Any] = {
            "url": f"https://{ws.domain}.slack.com/",
            "team": ws.name,
            "user": user["name"] if user else tok.user_id.lower(),
            "team_id": ws.team_id,
            "user_id": tok.user_id,
            "is_enterprise_install": False,
        }
        if tok.kind == "bot":
            body["bot_id"] = tok.bot_id
        return body

    def _chat_post_message(self, ctx: _Ctx) -> dict[str, Any]:
        channel = self._resolve_channel(ctx.require("channel", "channel_not_found"))
        _require_content(ctx.args)
        ts = self._next_ts()
        payload = self._message_payload(ctx, ts)
        thread_ts = ctx.args.get("thread_ts")
        if thread_ts:
            payload["thread_ts"] = str(thread_ts)
            parent = self._messages.get((channel, str(thread_ts)))
            if parent is not None:
                parent.payload.setdefault("thread_ts", parent.payload["ts"])
                parent.payload["reply_count"] = parent.payload.get("reply_count", 0) + 1
                parent.payload["latest_reply"] = ts
        self._messages[(channel, ts)] = _Message(channel, payload, [copy.deepcopy(payload)])
        return {"channel": channel, "ts": ts, "message": copy.deepcopy(payload)}

    def _chat_update(self, ctx: _Ctx) -> dict[str, Any]:
        channel = self._resolve_channel(ctx.require("channel", "channel_not_found"))
        ts = str(ctx.require("ts", "message_not_found"))
        msg = self._messages.get((channel, ts))
        if msg is None or msg.deleted:
            raise SlackError("message_not_found")
        if msg.payload.get("user") != ctx.caller.user_id:
            raise SlackError("cant_update_message")
        _require_content(ctx.args)
        self._apply_update(msg, ctx.args, editor=ctx.caller.user_id)
        return {
            "channel": channel,
            "ts": ts,
            "text": msg.payload.get("text", ""),
            "message": copy.deepcopy(msg.payload),
        }

    def _chat_delete(self, ctx: _Ctx) -> dict[str, Any]:
        channel = self._resolve_channel(ctx.require("channel", "channel_not_found"))
        ts = str(ctx.require("ts", "message_not_found"))
        msg = self._messages.get((channel, ts))
        if msg is None or msg.deleted:
            raise SlackError("message_not_found")
        msg.deleted = True
        return {"channel": channel, "ts": ts}

    def _chat_post_ephemeral(self, ctx: _Ctx) -> dict[str, Any]:
        channel = self._resolve_channel(ctx.require("channel", "channel_not_found"))
        user = str(ctx.require("user", "user_not_in_channel"))
        if self.strict and user not in self._users:
            raise SlackError("user_not_in_channel")
        _require_content(ctx.args)
        ts = self._next_ts()
        entry = {"channel": channel, "user": user, "message_ts": ts, **_content(ctx.args)}
        if ctx.args.get("thread_ts"):
            entry["thread_ts"] = str(ctx.args["thread_ts"])
        self._ephemerals.append(entry)
        return {"message_ts": ts}

    def _users_info(self, ctx: _Ctx) -> dict[str, Any]:
        user_id = str(ctx.require("user", "user_not_found"))
        user = self._users.get(user_id)
        if user is None:
            if self.strict or not _looks_like_user_id(user_id):
                raise SlackError("user_not_found")
            user = self._user_shape(user_id, user_id.lower(), f"User {user_id}", None, ctx.caller.workspace)
            self._users[user_id] = user
        return {"user": copy.deepcopy(user)}

    def _conversations_info(self, ctx: _Ctx) -> dict[str, Any]:
        channel_id = self._resolve_channel(ctx.require("channel", "channel_not_found"))
        return {"channel": copy.deepcopy(self._channels[channel_id])}

    def _conversations_history(self, ctx: _Ctx) -> dict[str, Any]:
        channel = self._readable_channel(ctx)
        # Top-level messages only (replies live in conversations.replies), newest first.
        return self._read(
            ctx,
            lambda m: m.channel == channel and m.payload.get("thread_ts", m.payload["ts"]) == m.payload["ts"],
            newest_first=True,
            extra={"pin_count": 0, "channel_actions_ts": None, "channel_actions_count": 0},
        )

    def _conversations_replies(self, ctx: _Ctx) -> dict[str, Any]:
        channel = self._readable_channel(ctx)
        ts = str(ctx.require("ts", "thread_not_found"))
        parent = self._messages.get((channel, ts))
        if parent is None or parent.deleted:
            raise SlackError("thread_not_found")
        # The parent, then its replies, oldest first.
        return self._read(
            ctx,
            lambda m: m.channel == channel and m.payload.get("thread_ts", m.payload["ts"]) == ts,
            newest_first=False,
        )

    def _readable_channel(self, ctx: _Ctx) -> str:
        """The channel id whose messages the caller may read, or Slack's error for why not."""
        value = str(ctx.require("channel", "channel_not_found"))
        # Reading takes a channel id only (a name is channel_not_found), unlike chat.postMessage.
        if value not in self._channels:
            if self.strict or not (value[:1] in ("C", "G", "D") and value[1:].isalnum() and value.isupper()):
                raise SlackError("channel_not_found")
            self._resolve_channel(value)
        channel = self._channels[value]
        needed = (
            "im:history"
            if channel["is_im"]
            else "groups:history"
            if channel["is_private"]
            else "channels:history"
        )
        if needed not in ctx.caller.scope.split(","):
            raise SlackError("missing_scope", needed=needed, provided=ctx.caller.scope)
        if not channel["is_member"]:
            raise SlackError("channel_not_found" if channel["is_private"] else "not_in_channel")
        return value

    def _read(
        self,
        ctx: _Ctx,
        wanted: Callable[[_Message], bool],
        *,
        newest_first: bool,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One page of the live messages `wanted` picks, within oldest / latest, `limit` at a time;
        the cursor (base64 of ``next_ts:<ts without the dot>``, as Slack's) goes on from the last."""
        try:
            limit = max(1, min(int(ctx.args.get("limit") or 100), 999))
            oldest = float(ctx.args.get("oldest") or 0)
            latest = float(ctx.args["latest"]) if ctx.args.get("latest") else float("inf")
        except ValueError:
            raise SlackError("invalid_arguments") from None
        inclusive = _truthy(ctx.args.get("inclusive"))
        after: float | None = None
        if ctx.args.get("cursor"):
            try:
                digits = base64.b64decode(str(ctx.args["cursor"])).decode().removeprefix("next_ts:")
                after = float(f"{digits[:-6]}.{digits[-6:]}")
            except ValueError:
                raise SlackError("invalid_cursor") from None

        def within(m: _Message) -> bool:
            ts = float(m.payload["ts"])
            if after is not None and (ts >= after if newest_first else ts <= after):
                return False
            return oldest <= ts <= latest if inclusive else oldest < ts < latest

        found = sorted(
            (m.payload for m in self._messages.values() if not m.deleted and wanted(m) and within(m)),
            key=lambda p: float(p["ts"]),
            reverse=newest_first,
        )
        page = [copy.deepcopy(p) for p in found[:limit]]
        if not _truthy(ctx.args.get("include_all_metadata")):
            for p in page:
                p.pop("metadata", None)
        body: dict[str, Any] = {"messages": page, "has_more": len(found) > limit, **(extra or {})}
        if len(found) > limit:
            next_ts = page[-1]["ts"].replace(".", "")
            body["response_metadata"] = {
                "next_cursor": base64.b64encode(f"next_ts:{next_ts}".encode()).decode()
            }
        return body

    def _oauth_v2_access(self, ctx: _Ctx) -> dict[str, Any]:
        client_id, client_secret = _basic_auth(ctx.headers)
        client_id = client_id or ctx.args.get("client_id")
        client_secret = client_secret or ctx.args.get("client_secret")
        if client_id != self.client_id:
            raise SlackError("invalid_client_id")
        if client_secret != self.client_secret:
            raise SlackError("bad_client_secret")
        code = str(ctx.args.get("code") or "")
        grant = self._oauth_codes.get(code)
        if grant is None or code in self._used_codes:
            raise SlackError("invalid_code")
        self._used_codes.add(code)
        ws = self._workspaces.get(grant.team_id)
        if ws is None:
            ws = self.add_workspace(team_id=grant.team_id, name=grant.team_name, scopes=grant.scope)
        self._users.setdefault(
            grant.installer_user_id,
            self._user_shape(grant.installer_user_id, grant.installer_user_id.lower(), "Installer", None, ws),
        )
        authed_user: dict[str, Any] = {"id": grant.installer_user_id}
        if grant.user_scope:
            user_token = f"xoxp-{ws.team_id}-{secrets.token_hex(8)}"
            self._tokens[user_token] = _Token(ws, "user", grant.installer_user_id, grant.user_scope)
            authed_user.update(scope=grant.user_scope, access_token=user_token, token_type="user")
        return {
            "app_id": ws.app_id,
            "authed_user": authed_user,
            "scope": grant.scope,
            "token_type": "bot",
            "access_token": ws.bot_token,
            "bot_user_id": ws.bot_user_id,
            "team": {"id": ws.team_id, "name": ws.name},
            "enterprise": None,
            "is_enterprise_install": False,
        }

    # ---- response_url ----------------------------------------------------------------------------

    def _serve_response_url(
        self, request: web.Request, raw: bytes, headers: dict[str, str], query: dict[str, str]
    ) -> Answer:
        key = request.path.removeprefix("/response/").strip("/")
        try:
            payload = json.loads(raw) if raw else {}
        except ValueError:
            payload = None
        injected = self._take_failure("response_url")
        if injected is not None:
            return self._finish(
                request, raw, "response_url", headers, query, payload, injected, injected=True
            )
        if request.method != "POST" or not isinstance(payload, dict):
            answer = Answer(400, None, text="invalid_payload")
            return self._finish(request, raw, "response_url", headers, query, payload, answer)
        with self._lock:
            entry = self._response_urls.setdefault(key, _ResponseUrl(None, None, None, []))
            entry.payloads.append(copy.deepcopy(payload))
            self._apply_response(entry, payload)
        return self._finish(
            request, raw, "response_url", headers, query, payload, Answer(200, None, text="ok")
        )

    def _apply_response(self, entry: _ResponseUrl, payload: dict[str, Any]) -> None:
        original = (
            self._messages.get((entry.channel, entry.message_ts))
            if entry.channel and entry.message_ts
            else None
        )
        if payload.get("delete_original"):
            if original is not None:
                original.deleted = True
            return
        if payload.get("replace_original") and original is not None:
            self._apply_update(original, payload, editor=entry.user or "")
            return
        if payload.get("response_type") == "in_channel" and entry.channel:
            ts = self._next_ts()
            ws = self.default_workspace
            message = {
                "type": "message",
                "user": ws.bot_user_id,
                "bot_id": ws.bot_id,
                "app_id": ws.app_id,
                "team": ws.team_id,
                "ts": ts,
                **_content(payload),
            }
            if payload.get("thread_ts"):
                message["thread_ts"] = str(payload["thread_ts"])
            self._messages[(entry.channel, ts)] = _Message(entry.channel, message, [copy.deepcopy(message)])
            return
        self._ephemerals.append(
            {"channel": entry.channel, "user": entry.user, "message_ts": self._next_ts(), **_content(payload)}
        )

    # ---- helpers ---------------------------------------------------------------------------------

    def _next_ts(self) -> str:
        # Slack's ts is the message's time (seconds.microseconds), unique: conversations.history's
        # oldest / latest bounds are times.
        with self._lock:
            n = max(time.time_ns() // 1000, self._last_ts + 100)
            self._last_ts = n
        return f"{n // 1_000_000}.{n % 1_000_000:06d}"

    def _message_payload(self, ctx: _Ctx, ts: str) -> dict[str, Any]:
        ws = ctx.caller.workspace
        payload: dict[str, Any] = {
            "type": "message",
            "user": ctx.caller.user_id,
            "team": ws.team_id,
            "ts": ts,
            **_content(ctx.args),
        }
        if ctx.caller.kind == "bot":
            # Stamped with the poster's own bot and app, as Slack does.
            bot_id, app_id = ctx.caller.bot_id or ws.bot_id, ctx.caller.app_id or ws.app_id
            payload.update(bot_id=bot_id, app_id=app_id)
            payload["bot_profile"] = {
                "id": bot_id,
                "app_id": app_id,
                "name": "shipit",
                "team_id": ws.team_id,
            }
        if ctx.args.get("metadata"):
            payload["metadata"] = ctx.args["metadata"]
        return payload

    def _apply_update(self, msg: _Message, args: dict[str, Any], *, editor: str) -> None:
        # chat.update keeps fields it was not given (Slack: "omit to keep the previous value").
        for key in ("text", "blocks", "attachments", "metadata"):
            if key in args and args[key] is not None:
                msg.payload[key] = copy.deepcopy(args[key])
        msg.payload["edited"] = {"user": editor, "ts": self._next_ts()}
        msg.versions.append(copy.deepcopy(msg.payload))

    def _resolve_channel(self, raw: Any) -> str:
        value = str(raw)
        if value in self._channels:
            return value
        name = value.lstrip("#")
        for channel_id, channel in self._channels.items():
            if channel["name"] == name:
                return channel_id
        if self.strict:
            raise SlackError("channel_not_found")
        if value[:1] in ("C", "G", "D") and value[1:].isalnum() and value.upper() == value:
            channel_id = value
        elif _looks_like_user_id(value):
            # Posting to a user id goes to the app's DM with that user.
            channel_id = "D" + hashlib.sha1(value.encode()).hexdigest()[:9].upper()
        else:
            channel_id = "C" + hashlib.sha1(name.encode()).hexdigest()[:9].upper()
        self._channels[channel_id] = self._channel_shape(
            channel_id, name if channel_id != value else value.lower()
        )
        return channel_id

    def _channel_shape(self, channel_id: str, name: str, *, is_private: bool = False) -> dict[str, Any]:
        now = int(time.time())
        return {
            "id": channel_id,
            "name": name,
            "is_channel": not is_private,
            "is_group": is_private,
            "is_im": channel_id.startswith("D"),
            "is_mpim": False,
            "is_private": is_private,
            "created": now,
            "is_archived": False,
            "is_general": False,
            "unlinked": 0,
            "name_normalized": name,
            "is_shared": False,
            "is_org_shared": False,
            "is_member": True,
            "is_pending_ext_shared": False,
            "pending_shared": [],
            "context_team_id": next(iter(self._workspaces)),
            "creator": "U0CREATOR1",
            "is_ext_shared": False,
            "shared_team_ids": [],
            "topic": {"value": "", "creator": "", "last_set": 0},
            "purpose": {"value": "", "creator": "", "last_set": 0},
            "previous_names": [],
        }

    def _user_shape(
        self,
        user_id: str,
        name: str,
        real_name: str,
        email: str | None,
        ws: Workspace,
        *,
        is_admin: bool = False,
        is_bot: bool = False,
        tz: str = "Europe/Paris",
    ) -> dict[str, Any]:
        profile: dict[str, Any] = {
            "avatar_hash": hashlib.md5(user_id.encode()).hexdigest()[:12],
            "status_text": "",
            "status_emoji": "",
            "real_name": real_name,
            "display_name": name,
            "real_name_normalized": real_name,
            "display_name_normalized": name,
            "image_24": f"https://avatars.slack-edge.com/{user_id}_24.png",
            "image_48": f"https://avatars.slack-edge.com/{user_id}_48.png",
            "image_72": f"https://avatars.slack-edge.com/{user_id}_72.png",
            "team": ws.team_id,
        }
        if email:
            profile["email"] = email
        return {
            "id": user_id,
            "team_id": ws.team_id,
            "name": name,
            "deleted": False,
            "color": "9f69e7",
            "real_name": real_name,
            "tz": tz,
            "tz_label": "Central European Time",
            "tz_offset": 3600,
            "profile": profile,
            "is_admin": is_admin,
            "is_owner": False,
            "is_primary_owner": False,
            "is_restricted": False,
            "is_ultra_restricted": False,
            "is_bot": is_bot,
            "is_app_user": False,
            "updated": int(time.time()),
            "has_2fa": False,
        }


def _parse_args(request: web.Request, raw: bytes) -> dict[str, Any]:
    args: dict[str, Any] = dict(request.query)
    ctype = request.content_type
    if raw and ctype == "application/json":
        doc = json.loads(raw)
        if not isinstance(doc, dict):
            raise ValueError("JSON body is not an object")
        args.update(doc)
    elif raw and ctype in ("application/x-www-form-urlencoded", ""):
        args.update(dict(urllib.parse.parse_qsl(raw.decode(), keep_blank_values=True)))
    for key in _JSON_ARGS:
        value = args.get(key)
        if isinstance(value, str) and value[:1] in ("[", "{"):
            args[key] = json.loads(value)
    return args


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() in ("1", "true")


def _content(args: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"text": args.get("text") or ""}
    for key in ("blocks", "attachments"):
        if args.get(key) is not None:
            out[key] = copy.deepcopy(args[key])
    return out


def _require_content(args: dict[str, Any]) -> None:
    if not (args.get("text") or args.get("blocks") or args.get("attachments")):
        raise SlackError("no_text")


def _bearer(headers: dict[str, str]) -> str | None:
    value = headers.get("authorization", "")
    if value.lower().startswith("bearer "):
        return value[7:].strip()
    return None


def _basic_auth(headers: dict[str, str]) -> tuple[str | None, str | None]:
    value = headers.get("authorization", "")
    if not value.lower().startswith("basic "):
        return None, None
    user, _, password = base64.b64decode(value[6:].strip()).decode().partition(":")
    return user, password


def _looks_like_user_id(value: str) -> bool:
    return value[:1] in ("U", "W") and value[1:].isalnum() and value.upper() == value


def _error(error: str, **extra: Any) -> Answer:
    return Answer(200, {"ok": False, "error": error, **extra}, _slack_headers())


def _slack_headers() -> dict[str, str]:
    return {"X-Slack-Req-Id": secrets.token_hex(16)}
