"""Real receivers for notices: an SMTP server (aiosmtpd) and an HTTP endpoint (aiohttp) that records
what it is sent and answers as told (500 first, or never)."""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.conftest import free_port, serving_posts


@dataclass
class Mail:
    sender: str
    recipients: list[str]
    message: EmailMessage


class SmtpSink:
    """aiosmtpd's handler: every message accepted, parsed and kept."""

    def __init__(self) -> None:
        self.got: list[Mail] = []
        self.logins: list[tuple[bytes, bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.got.append(Mail(sender=envelope.mail_from, recipients=list(envelope.rcpt_tos), message=message))
        return "250 OK"

    def to(self, address: str) -> list[Mail]:
        return [m for m in self.got if address in m.recipients]


@contextmanager
def smtp_server(login: tuple[str, str] | None = None) -> Iterator[tuple[SmtpSink, int]]:
    """A real SMTP server on a free loopback port (aiosmtpd runs it in its own thread); with `login`,
    AUTH is offered (over plain TCP, as a test allows) and only that user and password get in."""
    sink = SmtpSink()
    port = free_port()

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = (
            login is not None
            and isinstance(data, LoginPassword)
            and (data.login.decode(), data.password.decode()) == login
        )
        return AuthResult(success=ok)

    extra: dict[str, Any] = {"authenticator": authenticator, "auth_require_tls": False} if login else {}
    controller = Controller(sink, hostname="127.0.0.1", port=port, **extra)
    controller.start()
    try:
        yield sink, port
    finally:
        controller.stop()


@dataclass
class Hit:
    headers: dict[str, str]
    body: bytes
    status: int


@dataclass
class Receiver:
    """POST /<name>: records each request; `plan[name]` lists statuses to answer first (then 204),
    and a name in `hang` never answers."""

    url: str = ""
    hits: dict[str, list[Hit]] = field(default_factory=dict)
    plan: dict[str, list[int]] = field(default_factory=dict)
    hang: set[str] = field(default_factory=set)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        body = await request.read()
        statuses = self.plan.get(name) or []
        status = statuses.pop(0) if statuses else 204
        self.hits.setdefault(name, []).append(Hit(headers=dict(request.headers), body=body, status=status))
        self.arrived.set()
        if name in self.hang:
            await asyncio.Event().wait()
        return web.Response(status=status, headers={"Retry-After": "0"} if status >= 500 else None)

    def accepted(self, name: str) -> list[Hit]:
        return [h for h in self.hits.get(name, []) if h.status < 300]


@asynccontextmanager
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    # A token in the path too, as Teams and Discord have.
    async with serving_posts(r.handle, paths=("/{name}", "/{name}/{tail:.*}")) as url:
        r.url = url
        yield r


def readme_verify() -> Any:
    """The webhook verification snippet exactly as the README shows it, run as is."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    m = re.search(r"<!-- verify-webhook -->\n```python\n(.*?)```", readme, re.DOTALL)
    assert m, "the README lost its webhook verification snippet"
    scope: dict[str, Any] = {}
    exec(compile(m.group(1), "README.md", "exec"), scope)
    return scope["verify"]
