"""POST /registry/webhook: registry push notifications that deploy apps with an image policy.

Two shapes: the CNCF distribution notification envelope (Debian's docker-registry, Harbor, GitLab:
`{"events": [{"action": "push", "target": {"repository", "tag", "digest", ...}, "request":
{"host"}}]}`, media type application/vnd.docker.distribution.events.v1+json) and Docker Hub's webhook
(`{"push_data": {"tag"}, "repository": {"repo_name"}, "callback_url"}`).  GitHub's `package` and
`registry_package` events come through /github/webhook (parsed here, routed by webhooks.table).

Authenticated with SHIPIT_REGISTRY_WEBHOOK_TOKEN, compared in constant time, sent as
`Authorization: Bearer` (distribution's endpoint `headers`) or `?token=` (Docker Hub cannot send
headers).  Each event is recorded (webhook_delivery, source "registry") in the transaction that
queues its deploy, so a redelivered notification is answered and dropped; the deploy's own dedupe
key (app and digest) holds even across different notifications of the same image.  Docker Hub's
callback_url is not called: shipit makes no request to an address a notification names.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from core import deliveries, image_policies
from core.context import Core
from core.gitops import Outcome
from core.image_policies import Pushed

log = logging.getLogger(__name__)

PATH = "/registry/webhook"
MAX_BODY_BYTES = 1024 * 1024
SOURCE = "registry"
MANIFEST_TYPES = frozenset(
    {
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        "application/vnd.docker.distribution.manifest.v1+json",
    }
)


class BadPayload(Exception):
    """JSON, but not a shape this route reads (answered 400)."""


def _str(d: Any, key: str) -> str | None:
    value = d.get(key) if isinstance(d, Mapping) else None
    return value if isinstance(value, str) and value else None


def _body_id(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def parse_distribution(payload: Mapping[str, Any]) -> list[Pushed]:
    """The manifest pushes of an envelope (pulls, blob pushes and deletes are left out)."""
    found = payload.get("events")
    if not isinstance(found, list):
        raise BadPayload("events is not a list")
    pushed: list[Pushed] = []
    for event in found:
        if not isinstance(event, Mapping) or event.get("action") != "push":
            continue
        target = event.get("target")
        if not isinstance(target, Mapping):
            continue
        media_type = _str(target, "mediaType")
        if (media_type is not None and media_type not in MANIFEST_TYPES) or not _str(target, "tag"):
            continue  # a layer or config blob, or a manifest pushed by digest (its tag event follows)
        path = _str(target, "repository")
        host = _str(event.get("request"), "host") or urlsplit(_str(target, "url") or "").netloc
        repository = image_policies.repository_of(f"{host}/{path}") if host and path else None
        if repository is None:
            continue
        event_id = _str(event, "id") or _body_id(json.dumps(event, sort_keys=True).encode())
        pushed.append(
            Pushed(
                repository=repository,
                tag=_str(target, "tag"),
                digest=image_policies.valid_digest(repository, _str(target, "digest")),
                source="registry notification",
                delivery=f"distribution:{event_id}",
            )
        )
    return pushed


def parse_docker_hub(payload: Mapping[str, Any], *, body: bytes) -> list[Pushed]:
    repo_name = _str(payload.get("repository"), "repo_name")
    if repo_name is None:
        raise BadPayload("repository.repo_name is missing")
    repository = image_policies.repository_of(repo_name)
    if repository is None:
        raise BadPayload("repository.repo_name is not a repository name")
    # No id in the payload: the callback URL is unique per push, else the body itself.
    delivery = _str(payload, "callback_url") or _body_id(body)
    return [
        Pushed(
            repository=repository,
            tag=_str(payload.get("push_data"), "tag"),
            digest=None,
            source="Docker Hub",
            delivery=f"dockerhub:{hashlib.sha256(delivery.encode()).hexdigest()}",
        )
    ]


def parse_github_package(payload: Mapping[str, Any], *, key: str) -> Pushed | None:
    """A GitHub `package` / `registry_package` event; None when it is not a container image."""
    package = payload.get(key)
    if not isinstance(package, Mapping):
        raise BadPayload(f"{key} is missing or not an object")
    ecosystem = (_str(package, "ecosystem") or _str(package, "package_type") or "").lower()
    version = package.get("package_version")
    version = version if isinstance(version, Mapping) else {}
    url = _str(version, "package_url") or ""
    if ecosystem not in ("docker", "container") and not url.startswith("ghcr.io/"):
        return None
    name = url.rsplit(":", 1)[0] if url.count(":") and not url.endswith("/") else url
    if not name:
        owner = _str(package.get("owner"), "login")
        name = f"ghcr.io/{owner}/{_str(package, 'name')}" if owner and _str(package, "name") else ""
    repository = image_policies.repository_of(name) if name else None
    if repository is None:
        raise BadPayload(f"{key}.package_version.package_url names no image repository")
    metadata = version.get("container_metadata")
    tag_info = metadata.get("tag") if isinstance(metadata, Mapping) else None
    digest = next(
        (
            d
            for d in (_str(tag_info, "digest"), _str(version, "version"), _str(version, "name"))
            if image_policies.valid_digest(repository, d)
        ),
        None,
    )
    version_id = version.get("id")
    return Pushed(
        repository=repository,
        tag=_str(tag_info, "name"),
        digest=digest,
        source="GitHub Packages",
        delivery=f"github-package:{version_id}:{_str(tag_info, 'name') or ''}",
    )


def parse(payload: Mapping[str, Any], *, body: bytes) -> list[Pushed]:
    if "events" in payload:
        return parse_distribution(payload)
    if "push_data" in payload:
        return parse_docker_hub(payload, body=body)
    raise BadPayload("neither a distribution notification envelope (events) nor a Docker Hub webhook")


def _error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status)


def _authenticated(request: Request, *, token: str) -> bool:
    header = request.headers.get("authorization", "")
    given = (
        header[7:].strip() if header.lower().startswith("bearer ") else request.query_params.get("token", "")
    )
    return bool(given) and hmac.compare_digest(given.encode(), token.encode())


async def _read_capped(request: Request) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _decisions(outcome: Outcome) -> list[dict[str, Any]]:
    return [
        {
            "app": d.app,
            "action": d.action,
            "reason": d.reason,
            **({"deployment": d.deployment_id} if d.deployment_id is not None else {}),
            **({"image": d.image} if d.image else {}),
        }
        for d in outcome.decisions
    ]


def router(*, token: str | None, core_of: Callable[[Request], Core]) -> APIRouter:
    """The route; with no token it answers 503 (switched off)."""
    api = APIRouter()

    @api.post(PATH, include_in_schema=False)
    async def registry_webhook(request: Request) -> JSONResponse:
        if token is None:
            return _error(
                503, "ChannelOff", "registry notifications are off: set SHIPIT_REGISTRY_WEBHOOK_TOKEN"
            )
        if not _authenticated(request, token=token):
            log.warning("registry webhook: unauthenticated request refused")
            return _error(401, "Unauthenticated", "unauthenticated")
        body = await _read_capped(request)
        if body is None:
            return _error(413, "PayloadTooLarge", f"body is larger than {MAX_BODY_BYTES} bytes")
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return _error(400, "MalformedPayload", "body is not valid JSON")
        if not isinstance(payload, Mapping):
            return _error(400, "MalformedPayload", "body is not a JSON object")
        try:
            pushes = parse(payload, body=body)
        except BadPayload as e:
            return _error(400, "MalformedPayload", str(e))
        ctx = core_of(request)
        results: list[dict[str, Any]] = []
        async with ctx.sessionmaker.begin() as session:
            for pushed in pushes:
                base = {"repository": pushed.repository, "tag": pushed.tag, "digest": pushed.digest}
                if not await deliveries.first_time(
                    session, source=SOURCE, delivery_id=pushed.delivery, kind=pushed.source
                ):
                    results.append({**base, "result": "duplicate", "message": "handled before"})
                    continue
                outcome = await image_policies.on_pushed(session, ctx=ctx, pushed=pushed)
                results.append(
                    {
                        **base,
                        "result": "accepted",
                        "message": outcome.summary,
                        "decisions": _decisions(outcome),
                    }
                )
        for r in results:
            log.info("registry notification %s:%s: %s", r["repository"], r["tag"], r["message"])
        return JSONResponse({"ok": True, "events": results}, status_code=202)

    return api
