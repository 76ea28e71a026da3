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

import json
import logging
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from prometheus_client import Counter

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


def _error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status)


class _TooLarge(Exception):
    pass


async def _read_capped(request: Request, *, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _decode(body: bytes, content_type: str) -> Any:
    """GitHub sends JSON, or the same JSON in a `payload` form field when the hook says so."""
    if content_type.split(";", 1)[0].strip().lower() == "application/x-www-form-urlencoded":
        fields = urllib.parse.parse_qs(body.decode("utf-8"), strict_parsing=False)
        if "payload" not in fields:
            raise ValueError("form body without a payload field")
        return json.loads(fields["payload"][0])
    return json.loads(body)


def _outcome_body(outcome: Outcome) -> list[dict[str, Any]]:
    return [
        {
            "app": d.app,
            "action": d.action,
            "reason": d.reason,
            **({"deployment": d.deployment_id} if d.deployment_id is not None else {}),
            **({"image": d.image} if d.image else {}),
            **({"preview": d.preview} if d.preview else {}),
        }
        for d in outcome.decisions
    ]


def router(
    *, secret: str | None, off_reason: str, core_of: Callable[[Request], Core], ingest: Ingest | None = None
) -> APIRouter:
    """The route.  With no `secret` the channel is off and every delivery gets 503 and `off_reason`.

    `ingest` records deliveries and runs their handlers with group commit (see webhooks.ingest).
    """
    ingest = ingest or Ingest()
    api = APIRouter()

    @api.post(PATH, include_in_schema=False)
    async def github_webhook(request: Request) -> JSONResponse:
        if secret is None:
            return _error(503, "ChannelOff", f"the GitHub channel is switched off: {off_reason}")
        started = time.perf_counter()
        headers = request.headers
        header = headers.get("x-hub-signature-256")
        event = headers.get("x-github-event")
        delivery = headers.get("x-github-delivery")
        if not header:
            return _error(400, "MissingSignature", "X-Hub-Signature-256 header is missing")
        if not event:
            return _error(400, "MissingEvent", "X-GitHub-Event header is missing")
        try:
            body = await _read_capped(request, limit=MAX_BODY_BYTES)
        except _TooLarge:
            DELIVERIES.labels(event=event, result="too_large").inc()
            return _error(413, "PayloadTooLarge", f"body is larger than {MAX_BODY_BYTES} bytes")
        if not signature.verify(secret=secret, body=body, header=header):
            DELIVERIES.labels(event=event, result="bad_signature").inc()
            log.warning("github delivery %s (%s): bad signature; refused", delivery, event)
            return _error(401, "BadSignature", "X-Hub-Signature-256 does not match the body")
        try:
            payload = _decode(body, headers.get("content-type", "application/json"))
        except (ValueError, UnicodeDecodeError):
            return _error(400, "MalformedPayload", "body is not valid JSON")
        if not isinstance(payload, Mapping):
            return _error(400, "MalformedPayload", "body is not a JSON object")
        if event == "ping":
            DELIVERIES.labels(event=event, result="pong").inc()
            return JSONResponse({"ok": True, "result": "pong", "zen": payload.get("zen")}, status_code=200)
        if not delivery:
            return _error(400, "MissingDelivery", "X-GitHub-Delivery header is missing")
        action = payload.get("action") if isinstance(payload.get("action"), str) else None
        found = table.lookup(event, action)
        base = {"ok": True, "delivery": delivery, "event": event, "action": action}
        if isinstance(found, str):
            DELIVERIES.labels(event=event, result="ignored").inc()
            log.info("github delivery %s: %s", delivery, found)
            return JSONResponse({**base, "result": "ignored", "message": found}, status_code=202)
        try:
            parsed = found.parse(payload)
        except table.BadPayload as e:
            DELIVERIES.labels(event=event, result="malformed").inc()
            return _error(400, "MalformedPayload", f"{event} payload: {e}")
        result = await ingest.submit(
            ctx=core_of(request),
            delivery=delivery,
            kind=f"{event}.{action or ''}",
            handler=found,
            parsed=parsed,
        )
        if not isinstance(result, Outcome):
            DELIVERIES.labels(event=event, result="duplicate").inc()
            log.info("github delivery %s (%s): seen before; dropped", delivery, event)
            return JSONResponse(
                {**base, "result": "duplicate", "message": "this delivery was handled before"},
                status_code=200,
            )
        outcome = result
        DELIVERIES.labels(event=event, result="accepted").inc()
        log.info(
            "github delivery %s %s%s: %s (%.1f ms)",
            delivery, event, f".{action}" if action else "", outcome.summary,
            (time.perf_counter() - started) * 1000,
        )  # fmt: skip
        return JSONResponse(
            {**base, "result": "accepted", "message": outcome.summary, "decisions": _outcome_body(outcome)},
            status_code=202,
        )

    return api
