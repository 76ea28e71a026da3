"""POST /github/webhook: verify, deduplicate, queue, answer — in milliseconds.

Order matters: the signature is checked on the raw bytes before anything is
parsed; the body is capped at 25 MB (GitHub's own limit) while it is read; the
delivery id is recorded in the same transaction as the deploys it queues
(deliveries arriving together share one transaction: webhooks.ingest), so a
redelivery of a delivery that committed is answered and dropped, while one
whose transaction never committed runs.  Nothing slow happens before the
answer: the worker does the Kubernetes and GitHub API calls afterwards.
"""

from __future__ import annotations

import logging
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from fastapi import APIRouter, Request
from prometheus_client import Counter
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from core import metrics
from core.context import Core
from core.gitops import Outcome
from webhooks import signature, table
from webhooks.ingest import Ingest

log = logging.getLogger(__name__)

PATH = "/github/webhook"
MAX_BODY_BYTES = 25 * 1024 * 1024

DELIVERIES = Counter(
    "shipit_github_deliveries_total", "GitHub webhook deliveries by event and result", ["event", "result"]
)


def _json(status: int, content: Any) -> tuple[int, bytes]:
    # The bytes Starlette's JSONResponse would send (compact, UTF-8, no NaN): orjson's by design.
    return status, orjson.dumps(content)


def _error(status: int, kind: str, message: str) -> tuple[int, bytes]:
    return _json(status, {"error": {"type": kind, "message": message}})


# The answers that name nothing of the request: built once.
_MISSING_SIGNATURE = _error(400, "MissingSignature", "X-Hub-Signature-256 header is missing")
_MISSING_EVENT = _error(400, "MissingEvent", "X-GitHub-Event header is missing")
_TOO_LARGE = _error(413, "PayloadTooLarge", f"body is larger than {MAX_BODY_BYTES} bytes")
_BAD_SIGNATURE = _error(401, "BadSignature", "X-Hub-Signature-256 does not match the body")
_NOT_JSON = _error(400, "MalformedPayload", "body is not valid JSON")
_NOT_AN_OBJECT = _error(400, "MalformedPayload", "body is not a JSON object")
_MISSING_DELIVERY = _error(400, "MissingDelivery", "X-GitHub-Delivery header is missing")


class _TooLarge(Exception):
    pass


class _Gone(Exception):
    """The client went away (or the edge refused the body) before the body was read."""


async def _read_capped(receive: Receive, *, declared: bytes | None, limit: int) -> bytes:
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise _Gone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _decode(body: bytes, content_type: str) -> Any:
    """GitHub sends JSON, or the same JSON in a `payload` form field when the hook says so."""
    if content_type == "application/json":  # what GitHub sends by default: no parsing of the type
        return orjson.loads(body)
    if content_type.split(";", 1)[0].strip().lower() == "application/x-www-form-urlencoded":
        fields = urllib.parse.parse_qs(body.decode("utf-8"), strict_parsing=False)
        if "payload" not in fields:
            raise ValueError("form body without a payload field")
        return orjson.loads(fields["payload"][0])
    return orjson.loads(body)


def _outcome_body(outcome: Outcome) -> list[dict[str, Any]]:
    return [
        {
            "app": d.app,
            "action": d.action,
            "reason": d.reason,
            **({"deployment": d.deployment_id} if d.deployment_id is not None else {}),
            **({"build": d.build_id} if d.build_id is not None else {}),
            **({"image": d.image} if d.image else {}),
            **({"preview": d.preview} if d.preview else {}),
        }
        for d in outcome.decisions
    ]


_JSON_TYPE = (b"content-type", b"application/json")


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None


class Webhook:
    """POST /github/webhook as a plain ASGI app (issue 13): the route's own work is a few
    microseconds, and FastAPI's per-request machinery (a Request, the dependency solver, a
    JSONResponse) cost more than it; the route still sits in FastAPI's table (404, 405, HEAD as
    before) and behind shipit.app.Edge (request id, headers, metrics, body cap)."""

    def __init__(
        self, *, secret: str | None, off_reason: str, core_of: Callable[[Request], Core], ingest: Ingest
    ) -> None:
        self.secret, self.off_reason, self.core_of, self.ingest = secret, off_reason, core_of, ingest
        self._verifier = signature.Verifier(secret=secret) if secret is not None else None
        self.route: Route | None = None  # set by `router`: named in the scope, as Starlette's router does
        # (event, result): events are GitHub's names, but a caller may send any (the memo's bound).
        self._counts = metrics.Children(DELIVERIES)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.route is not None:
            scope["route"] = self.route  # the metrics' and traces' route template
        try:
            status, body = await self._answer(scope, receive)
        except _Gone:
            return
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-length", b"%d" % len(body)), _JSON_TYPE],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _answer(self, scope: Scope, receive: Receive) -> tuple[int, bytes]:
        verifier = self._verifier
        if verifier is None:
            return _error(503, "ChannelOff", f"the GitHub channel is switched off: {self.off_reason}")
        started = time.perf_counter()
        # Names arrive lower-cased (ASGI); reversed, so that the first of repeated headers wins, as
        # in Starlette.  One dict built in C, where a loop in Python tested every header (issue 13).
        wanted: dict[bytes, bytes] = dict(reversed(scope["headers"]))
        header = _text(wanted.get(b"x-hub-signature-256"))
        event = _text(wanted.get(b"x-github-event"))
        delivery = _text(wanted.get(b"x-github-delivery"))
        declared = wanted.get(b"content-length")
        content_type = _text(wanted.get(b"content-type")) or "application/json"
        if not header:
            return _MISSING_SIGNATURE
        if not event:
            return _MISSING_EVENT
        try:
            body = await _read_capped(receive, declared=declared, limit=MAX_BODY_BYTES)
        except _TooLarge:
            self._counts.labels(event, "too_large").inc()
            return _TOO_LARGE
        if not verifier.verify(body=body, header=header):
            self._counts.labels(event, "bad_signature").inc()
            log.warning("github delivery %s (%s): bad signature; refused", delivery, event)
            return _BAD_SIGNATURE
        try:
            payload = _decode(body, content_type)
        except (ValueError, UnicodeDecodeError):
            return _NOT_JSON
        # orjson gives a dict for an object; isinstance(..., Mapping) goes through the ABC machinery.
        if type(payload) is not dict and not isinstance(payload, Mapping):
            return _NOT_AN_OBJECT
        if event == "ping":
            self._counts.labels(event, "pong").inc()
            return _json(200, {"ok": True, "result": "pong", "zen": payload.get("zen")})
        if not delivery:
            return _MISSING_DELIVERY
        action = payload.get("action") if isinstance(payload.get("action"), str) else None
        found = table.lookup(event, action)
        base = {"ok": True, "delivery": delivery, "event": event, "action": action}
        if isinstance(found, str):
            self._counts.labels(event, "ignored").inc()
            log.info("github delivery %s: %s", delivery, found)
            return _json(202, {**base, "result": "ignored", "message": found})
        try:
            parsed = found.parse(payload)
        except table.BadPayload as e:
            self._counts.labels(event, "malformed").inc()
            return _error(400, "MalformedPayload", f"{event} payload: {e}")
        result = await self.ingest.submit(
            ctx=self.core_of(Request(scope)),
            delivery=delivery,
            kind=f"{event}.{action or ''}",
            handler=found,
            parsed=parsed,
        )
        if not isinstance(result, Outcome):
            self._counts.labels(event, "duplicate").inc()
            log.info("github delivery %s (%s): seen before; dropped", delivery, event)
            return _json(200, {**base, "result": "duplicate", "message": "this delivery was handled before"})
        outcome = result
        self._counts.labels(event, "accepted").inc()
        if log.isEnabledFor(logging.INFO):
            log.info(
                "github delivery %s %s%s: %s (%.1f ms)",
                delivery, event, f".{action}" if action else "", outcome.summary,
                (time.perf_counter() - started) * 1000,
            )  # fmt: skip
        return _json(
            202,
            {**base, "result": "accepted", "message": outcome.summary, "decisions": _outcome_body(outcome)},
        )


def router(
    *, secret: str | None, off_reason: str, core_of: Callable[[Request], Core], ingest: Ingest | None = None
) -> APIRouter:
    """The route.  With no `secret` the channel is off and every delivery gets 503 and `off_reason`.

    `ingest` records deliveries and runs their handlers with group commit (see webhooks.ingest).
    """
    webhook = Webhook(secret=secret, off_reason=off_reason, core_of=core_of, ingest=ingest or Ingest())
    api = APIRouter()
    # Not a function, so Starlette's Route calls it as the ASGI app it is.
    api.add_route(PATH, webhook, methods=["POST"], include_in_schema=False)  # type: ignore[arg-type]
    route = api.routes[-1]
    assert isinstance(route, Route) and route.path == PATH
    webhook.route = route
    return api
