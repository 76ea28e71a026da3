"""Email notices over SMTP (aiosmtplib): one message per deploy outcome, threaded per deploy.

Configured by SHIPIT_SMTP_URL (smtp://user:pass@host:port, or smtps:// for TLS from the start;
plain smtp:// upgrades with STARTTLS when the server offers it) and SHIPIT_SMTP_FROM.  Each message
has a plain-text and an HTML part.  Its Message-ID names the deploy, the outcome and the target, so a
retried delivery sends the same id; every message after a deploy's first carries In-Reply-To and
References pointing at that first one, so mail clients show one thread per deploy.  Errors name the
target by id and the SMTP reply code, never the server's password.
"""

from __future__ import annotations

import html
import urllib.parse
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate

import aiosmtplib

from core import metrics
from core.context import Core
from core.errors import PermanentError, TransientError
from core.notices import (
    OUTCOMES,
    TEST_KIND,
    Audience,
    Delivered,
    Notice,
    delivery,
    ref_key,
    render,
    short_kind,
)

NAME = "email"


@dataclass(frozen=True, kw_only=True)
class Smtp:
    host: str
    port: int
    sender: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False  # smtps: TLS from the first byte

    @classmethod
    def parse(cls, url: str, *, sender: str) -> Smtp:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            # Never echo the URL: it holds the password.
            raise ValueError("SHIPIT_SMTP_URL must look like smtp[s]://user:pass@host:port")
        tls = parts.scheme == "smtps"
        return cls(
            host=parts.hostname,
            port=parts.port or (465 if tls else 25),
            sender=sender,
            username=urllib.parse.unquote(parts.username) if parts.username else None,
            password=urllib.parse.unquote(parts.password) if parts.password else None,
            tls=tls,
        )


class EmailNotifier:
    name = NAME

    def __init__(self, *, ctx: Core, smtp: Smtp | None, timeout: float = 20.0) -> None:
        self.ctx = ctx
        self.smtp = smtp
        self.timeout = timeout
        self.pacer = delivery.Pacer(rate=1.0, burst=5)

    def wants(self, kind: str) -> bool:
        return kind in OUTCOMES

    def wants_event(self, audience: Audience) -> bool:
        # A preview reports on its pull request; a chat or inbox hears about real environments.
        return audience.target is not None and not audience.preview

    async def close(self) -> None:
        return None

    def message(self, notice: Notice) -> tuple[EmailMessage, str]:
        """The message for this notice and its Message-ID (pure: tests read it without a server)."""
        target = notice.target
        assert target is not None and self.smtp is not None
        s = render.summary(notice)
        domain = self.smtp.sender.rpartition("@")[2] or "shipit.local"
        d = notice.deployment
        if notice.kind == TEST_KIND or d is None:
            msgid = f"<shipit.e{notice.event_id}.t{target.id}@{domain}>"
            first = None
        else:
            msgid = f"<shipit.d{d.id}.{short_kind(notice.kind)}.t{target.id}@{domain}>"
            first = (d.refs.get(ref_key(NAME, target)) or {}).get("first")
        msg = EmailMessage()
        msg["From"] = self.smtp.sender
        msg["To"] = target.address
        msg["Subject"] = f"[shipit] {s.title}"
        msg["Date"] = formatdate(notice.created_at.timestamp(), usegmt=True)
        msg["Message-ID"] = msgid
        if first and first != msgid:
            msg["In-Reply-To"] = first
            msg["References"] = first
        msg["X-Shipit-Event"] = notice.kind
        msg["Auto-Submitted"] = "auto-generated"
        link = delivery.link(self.ctx, app=s.app)
        text = [s.title, ""] + [f"{k}: {v}" for k, v in s.facts]
        if s.error:
            text += ["", f"Error: {s.error}"]
        if s.logs:
            text += ["", "Last log lines:", *(f"  {line}" for line in s.logs)]
        text += ["", link, ""]
        msg.set_content("\n".join(text))
        rows = "".join(
            f"<tr><th align='left'>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in s.facts
        )
        body = f"<h2>{html.escape(s.title)}</h2><table>{rows}</table>"
        if s.error:
            body += f"<p><strong>Error:</strong> {html.escape(s.error)}</p>"
        if s.logs:
            body += "<pre>" + html.escape("\n".join(s.logs)) + "</pre>"
        body += f"<p><a href='{html.escape(link, quote=True)}'>Open in shipit</a></p>"
        msg.add_alternative(f"<!doctype html><html><body>{body}</body></html>", subtype="html")
        return msg, msgid

    async def deliver(self, notice: Notice) -> Delivered | None:
        target = notice.target
        if target is None:
            return None
        what = delivery.where(target)
        if self.smtp is None:
            raise PermanentError(f"{what}: email is not configured on this server (SHIPIT_SMTP_URL)")
        msg, msgid = self.message(notice)
        await self.pacer.wait(f"target #{target.id}")
        try:
            await aiosmtplib.send(
                msg,
                hostname=self.smtp.host,
                port=self.smtp.port,
                username=self.smtp.username,
                password=self.smtp.password,
                use_tls=self.smtp.tls,
                timeout=self.timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as e:
            metrics.NOTIFICATIONS_BY.labels(NAME, "failed").inc()
            codes = sorted({str(r.code) for r in e.recipients})
            raise PermanentError(
                f"{what}: the SMTP server refused the recipient ({', '.join(codes)})"
            ) from None
        except aiosmtplib.SMTPAuthenticationError as e:
            metrics.NOTIFICATIONS_BY.labels(NAME, "failed").inc()
            raise PermanentError(f"{what}: SMTP authentication failed ({e.code})") from None
        except aiosmtplib.SMTPResponseException as e:
            metrics.NOTIFICATIONS_BY.labels(NAME, "retry").inc()
            if 500 <= e.code < 600:
                raise PermanentError(f"{what}: the SMTP server answered {e.code}") from None
            raise TransientError(f"{what}: the SMTP server answered {e.code}") from None
        except (aiosmtplib.SMTPException, OSError) as e:
            metrics.NOTIFICATIONS_BY.labels(NAME, "retry").inc()
            raise TransientError(f"{what}: {type(e).__name__}") from None
        metrics.NOTIFICATIONS_BY.labels(NAME, "ok").inc()
        d = notice.deployment
        if d is None or notice.kind == TEST_KIND:
            return None
        first = (d.refs.get(ref_key(NAME, target)) or {}).get("first")
        return None if first else Delivered(deployment_refs={"first": msgid})
