"""Private registries: credentials per registry host, pull secrets, and tags pinned to digests.

Credentials belong to a project (its admins manage them) or are global (project None: global admins
only); a deploy uses the project's own for the image's host first, then the global ones.  Passwords are
encrypted at rest, bound to their row (host and project), and never leave core except inside the pull
secret rendered for the cluster: no listing, audit row, log line or error carries one.

Digest pinning runs in the worker, before apply, never in the request path: the tag is resolved with
the OCI distribution API (`HEAD /v2/<name>/manifests/<tag>`, token or Basic auth) within a short
timeout, the digest is recorded in the revision's snapshot and `name@sha256:…` is what gets applied, so
a rollback runs the identical image even if the tag has moved since.  When the registry cannot answer
(unreachable, no such tag, refused), the deploy goes on by tag and says why.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import hashlib
import logging
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core import audit, identity, images, logctx, projects, tls
from core.context import Core
from core.errors import InvalidInput, NotFound
from core.identity import Actor, Role
from core.kube.spec import PullSecret, WorkloadSpec
from storage import models

log = logging.getLogger(__name__)

PURPOSE = "registry-password"
MAX_PASSWORD_BYTES = 16 * 1024
MAX_MANIFEST_BYTES = 4 * 1024 * 1024

# What `docker login` and image names call Docker Hub; stored as images.DEFAULT_DOMAIN.
DOCKER_HUB_ALIASES = frozenset(
    {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com", "hub.docker.com"}
)
# Docker Hub's API lives on another host than its image names say.
DOCKER_HUB_API = "registry-1.docker.io"
# The key the kubelet matches Docker Hub images against, as `docker login` writes it.
DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"

MANIFEST_ACCEPT = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)
_CHALLENGE_PARAM = re.compile(r'([A-Za-z][A-Za-z0-9_-]*)\s*=\s*"([^"]*)"')


@dataclass(frozen=True, kw_only=True)
class Credentials:
    host: str
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, kw_only=True)
class Pinned:
    """What to apply for an image: `name@digest` when resolved, else the image as given and why."""

    image: str
    digest: str | None
    note: str | None = None  # set when deploying by tag: the reason, shown to users


# ---------------------------------------------------------------------------- hosts


def normalize_host(text: str, *, field: str = "host") -> str:
    """`https://index.docker.io/v1/` → `docker.io`; `GHCR.io` → `ghcr.io`; refuses what is not a host."""
    host = text.strip()
    for scheme in ("https://", "http://"):
        host = host.removeprefix(scheme)
    host = host.split("/", 1)[0].lower()
    if not host:
        raise InvalidInput(f"{field} is empty: give a registry host such as ghcr.io", field=field)
    if host in DOCKER_HUB_ALIASES:
        return images.DEFAULT_DOMAIN
    # The same rule image names follow: a registry host has a dot or a port, or is localhost.
    try:
        parsed = images.parse(f"{host}/x", field=field)
    except InvalidInput:
        parsed = None
    if parsed is None or parsed.domain != host:
        raise InvalidInput(
            f"{field} must be a registry host[:port] such as ghcr.io or registry.local:5000, got {text!r}",
            field=field,
        )
    return host


def _auth_key(host: str) -> str:
    return DOCKER_HUB_AUTH_KEY if host == images.DEFAULT_DOMAIN else host


def _purpose(*, host: str, project_id: int | None) -> str:
    # Bound to the row: a ciphertext copied to another project's or host's row does not decrypt.
    return f"{PURPOSE}:{project_id if project_id is not None else 'global'}:{host}"


def password_of(row: models.Registry, *, ctx: Core) -> str:
    return ctx.cipher.decrypt_text(
        row.password_enc, purpose=_purpose(host=row.host, project_id=row.project_id)
    )


def rotation_purpose(row: models.Registry) -> str:
    """The purpose a row's password is encrypted under (for key rotation)."""
    return _purpose(host=row.host, project_id=row.project_id)


# ---------------------------------------------------------------------------- managing credentials


async def _scope(
    session: AsyncSession, *, actor: Actor, project: str | None, action: str
) -> models.Project | None:
    """The project whose credentials are meant (its admins), or None for global ones (global admins)."""
    if project is None:
        identity.require_admin(actor, action=f"{action} for every project (no --project)")
        return None
    return await projects.get_for(session, actor=actor, name=project, role=Role.ADMIN, action=action)


async def _row(session: AsyncSession, *, host: str, project_id: int | None) -> models.Registry | None:
    where = (
        models.Registry.project_id == project_id
        if project_id is not None
        else models.Registry.project_id.is_(None)
    )
    return await session.scalar(select(models.Registry).where(models.Registry.host == host, where))


async def add(
    session: AsyncSession,
    *,
    ctx: Core,
    actor: Actor,
    host: str,
    username: str,
    password: str,
    project: str | None = None,
) -> tuple[models.Registry, bool]:
    """Store (or replace) credentials for `host`; returns the row and whether it is new."""
    target = await _scope(session, actor=actor, project=project, action="managing registry credentials")
    host = normalize_host(host)
    username = username.strip()
    if not username or len(username) > 200 or any(c in username for c in ":\n\r"):
        raise InvalidInput(
            "username must be 1 to 200 characters, without ':' or line breaks", field="username"
        )
    if not password:
        raise InvalidInput("password is empty", field="password")
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        raise InvalidInput(f"password is larger than {MAX_PASSWORD_BYTES} bytes", field="password")
    project_id = target.id if target is not None else None
    row = await _row(session, host=host, project_id=project_id)
    created = row is None
    if row is None:
        row = models.Registry(host=host, project_id=project_id, username=username, created_by=actor.subject)
        session.add(row)
    row.username = username
    row.password_enc = ctx.cipher.encrypt_text(password, purpose=_purpose(host=host, project_id=project_id))
    row.updated_at = models.utcnow()
    await session.flush()
    await audit.record(
        session,
        actor=actor,
        action="registry.add" if created else "registry.update",
        target=f"registry/{host}",
        project_id=project_id,
        details={"host": host, "username": username, "project": target.name if target else None},
    )
    return row, created


async def remove(session: AsyncSession, *, actor: Actor, host: str, project: str | None = None) -> str:
    target = await _scope(session, actor=actor, project=project, action="managing registry credentials")
    host = normalize_host(host)
    row = await _row(session, host=host, project_id=target.id if target else None)
    if row is None:
        where = f"project {target.name}" if target else "every project (global)"
        raise NotFound(f"no credentials for registry {host} in {where}")
    await session.delete(row)
    await session.flush()
    await audit.record(
        session,
        actor=actor,
        action="registry.remove",
        target=f"registry/{host}",
        project_id=target.id if target else None,
        details={"host": host, "project": target.name if target else None},
    )
    return host


@dataclass(frozen=True, kw_only=True)
class Listed:
    host: str
    project: str | None  # None: global
    username: str
    created_by: str
    updated_at: dt.datetime


async def list_visible(session: AsyncSession, *, actor: Actor, project: str | None = None) -> list[Listed]:
    """Hosts and usernames (never passwords): one project's (viewers may look), or all the caller sees.

    Global credentials are listed to global admins only.
    """
    q = select(models.Registry, models.Project.name).outerjoin(
        models.Project, models.Project.id == models.Registry.project_id
    )
    if project is not None:
        p = await projects.get_for(
            session, actor=actor, name=project, role=Role.VIEWER, action="listing registry credentials"
        )
        q = q.where(models.Registry.project_id == p.id)
    else:
        visible = await identity.visible_project_ids(session, actor=actor)
        if visible is not None:
            q = q.where(models.Registry.project_id.in_(visible))
    rows = await session.execute(q.order_by(models.Registry.host, models.Project.name))
    return [
        Listed(
            host=r.host,
            project=name,
            username=r.username,
            created_by=r.created_by,
            updated_at=r.updated_at,
        )
        for r, name in rows.all()
    ]


async def credentials_for(
    session: AsyncSession, *, ctx: Core, project_id: int, host: str
) -> Credentials | None:
    """The credentials a deploy of `project_id` uses for `host`: the project's own, else the global ones."""
    row = await _row(session, host=host, project_id=project_id) or await _row(
        session, host=host, project_id=None
    )
    if row is None:
        return None
    return Credentials(host=host, username=row.username, password=password_of(row, ctx=ctx))


def pull_secret(credentials: Credentials) -> PullSecret:
    return PullSecret(
        server=_auth_key(credentials.host), username=credentials.username, password=credentials.password
    )


# ---------------------------------------------------------------------------- resolving digests


class _Unresolved(Exception):
    """Why a tag could not be resolved; the text is shown to users (no credentials in it)."""


def _answered(response: httpx.Response, *, ref: images.Reference, missing: str) -> None:
    """A registry's answer other than 200 as the reason users see; `missing` says what a 404 means."""
    if response.status_code == 401:
        raise _Unresolved(f"{ref.domain} refused the stored credentials (HTTP 401)")
    if response.status_code == 403:
        raise _Unresolved(f"{ref.domain} denied access to {ref.path} (HTTP 403)")
    if response.status_code == 404:
        raise _Unresolved(f"{ref.domain} {missing}")
    if response.status_code != 200:
        raise _Unresolved(f"{ref.domain} answered HTTP {response.status_code}")


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), {k.lower(): v for k, v in _CHALLENGE_PARAM.findall(rest)}


def _basic(credentials: Credentials) -> str:
    raw = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def _may_send_credentials(realm: str, *, registry: str) -> bool:
    """Credentials go to a token realm over TLS, or to the registry's own host (plain-HTTP test setups)."""
    parts = urlsplit(realm)
    return parts.scheme == "https" or parts.hostname == urlsplit(registry).hostname


async def _token(
    client: httpx.AsyncClient,
    *,
    params: dict[str, str],
    registry: str,
    repository: str,
    credentials: Credentials | None,
) -> str:
    realm = params.get("realm", "")
    if not realm.startswith(("https://", "http://")):
        raise _Unresolved("the registry asked for a token from no valid realm")
    query = {"scope": params.get("scope") or f"repository:{repository}:pull"}
    if params.get("service"):
        query["service"] = params["service"]
    headers = {}
    if credentials is not None and _may_send_credentials(realm, registry=registry):
        headers["Authorization"] = _basic(credentials)
    response = await client.get(realm, params=query, headers=headers)
    if response.status_code in (401, 403):
        raise _Unresolved(
            "the registry's token service refused "
            + ("the stored credentials" if credentials else "anonymous access (add credentials)")
            + f" (HTTP {response.status_code})"
        )
    if response.status_code != 200:
        raise _Unresolved(f"the registry's token service answered HTTP {response.status_code}")
    try:
        body = response.json()
    except ValueError:
        raise _Unresolved("the registry's token service answered something that is not JSON") from None
    token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token:
        raise _Unresolved("the registry's token service answered no token")
    return token


def _base_url(host: str, *, ctx: Core) -> str:
    api_host = DOCKER_HUB_API if host == images.DEFAULT_DOMAIN else host
    insecure = host in ctx.config.registry_insecure_hosts
    return f"{'http' if insecure else 'https'}://{api_host}"


async def _resolve(
    client: httpx.AsyncClient, *, ctx: Core, ref: images.Reference, credentials: Credentials | None
) -> str:
    base = _base_url(ref.domain, ctx=ctx)
    url = f"{base}/v2/{ref.path}/manifests/{ref.tag or 'latest'}"
    headers = {"Accept": MANIFEST_ACCEPT}
    response = await client.head(url, headers=headers)
    if response.status_code == 401:
        scheme, params = _challenge(response.headers.get("WWW-Authenticate", ""))
        if scheme == "bearer":
            token = await _token(
                client, params=params, registry=base, repository=ref.path, credentials=credentials
            )
            headers["Authorization"] = f"Bearer {token}"
        elif scheme == "basic" and credentials is not None:
            headers["Authorization"] = _basic(credentials)
        else:
            raise _Unresolved(f"{ref.domain} needs credentials: add them with `shipit registries add`")
        response = await client.head(url, headers=headers)
    _answered(response, ref=ref, missing=f"has no tag {ref.tag or 'latest'} in {ref.path}")
    digest = str(response.headers.get("Docker-Content-Digest", "")).strip()
    if not digest:
        # Not every registry sends the header on HEAD: the digest is the manifest bytes' sha256.
        response = await client.get(url, headers=headers)
        if response.status_code != 200 or len(response.content) > MAX_MANIFEST_BYTES:
            raise _Unresolved(f"{ref.domain} sent no digest for the tag (HTTP {response.status_code})")
        digest = str(response.headers.get("Docker-Content-Digest", "")).strip()
        digest = digest or "sha256:" + hashlib.sha256(response.content).hexdigest()
    try:
        images.parse(f"{ref.name}@{digest}")
    except InvalidInput:
        raise _Unresolved(f"{ref.domain} sent a malformed digest") from None
    return digest


def _client(budget: float) -> httpx.AsyncClient:
    """A registry client: no proxy or CA settings from the environment, and no automatic redirects."""
    return httpx.AsyncClient(
        timeout=budget, follow_redirects=False, trust_env=False, verify=tls.client_context(trust_env=False)
    )


async def resolve(*, ctx: Core, image: str, credentials: Credentials | None) -> Pinned:
    """Pin `image` to its digest, or say why not; never raises for registry trouble, never waits long."""
    ref = images.parse(image)
    if ref.digest:
        return Pinned(image=image, digest=ref.digest)
    budget = ctx.config.registry_timeout_seconds
    try:
        async with (
            asyncio.timeout(budget),
            _client(budget) as client,
        ):
            digest = await _resolve(client, ctx=ctx, ref=ref, credentials=credentials)
    except _Unresolved as e:
        return Pinned(image=image, digest=None, note=str(e))
    except TimeoutError:
        return Pinned(image=image, digest=None, note=f"{ref.domain} did not answer within {budget:g}s")
    except httpx.TimeoutException:
        return Pinned(image=image, digest=None, note=f"{ref.domain} did not answer within {budget:g}s")
    except httpx.HTTPError as e:
        # httpx's messages name the URL, never headers: no credentials in them.
        return Pinned(image=image, digest=None, note=f"{ref.domain} unreachable: {type(e).__name__}")
    return Pinned(image=f"{ref.name}@{digest}", digest=digest)


# ---------------------------------------------------------------------------- at deploy time


def _pinned_note(pinned: Pinned, *, image: str) -> str | None:
    return None if pinned.digest else f"deployed by tag {image}: {pinned.note}"


async def prepare(*, ctx: Core, deployment_id: int, project_id: int, spec: WorkloadSpec) -> WorkloadSpec:
    """The spec to apply for a deploy: its image pinned to a digest, and its pull secret if any.

    Runs in the worker before apply.  The digest is looked up once per revision and recorded in its
    snapshot (`digest`, and `digest_note` when deploying by tag), so a retried job, a resumed deploy
    and a rollback (which copies the snapshot) all apply the very image this revision first pinned.
    The registry is asked outside any transaction, within ctx.config.registry_timeout_seconds.
    """
    async with ctx.sessionmaker() as session:
        deployment = await session.get(models.Deployment, deployment_id)
        revision = (
            await session.get(models.Revision, deployment.revision_id)
            if deployment is not None and deployment.revision_id is not None
            else None
        )
        try:
            ref = images.parse(spec.image)
        except InvalidInput:
            # Stored before references were checked: leave it to the cluster to say what is wrong.
            return spec
        credentials = await credentials_for(session, ctx=ctx, project_id=project_id, host=ref.domain)
        recorded = str((revision.snapshot or {}).get("digest") or "") if revision is not None else ""
        # After an apply by tag, a resumed deploy keeps going by tag rather than switching images.
        resolve_now = not recorded and deployment is not None and deployment.applied_at is None
    spec = dataclasses.replace(spec, pull_secret=pull_secret(credentials) if credentials else None)
    if ref.digest:
        return spec
    if recorded:
        return dataclasses.replace(spec, image=f"{ref.name}@{recorded}")
    if not resolve_now or revision is None or not ctx.config.registry_pin_digests:
        return spec
    pinned = await resolve(ctx=ctx, image=spec.image, credentials=credentials)
    note = _pinned_note(pinned, image=spec.image)
    async with ctx.sessionmaker.begin() as session:
        row = await session.get(models.Revision, revision.id)
        if row is not None:
            # A new dict: the JSON column notices reassignment, not in-place changes.
            row.snapshot = {**(row.snapshot or {}), "digest": pinned.digest, "digest_note": note}
    if note:
        logctx.deploy_logger(log, deployment=deployment_id, app=spec.app, namespace=spec.namespace).warning(
            note
        )
    else:
        logctx.deploy_logger(log, deployment=deployment_id, app=spec.app, namespace=spec.namespace).info(
            "%s pinned to %s", spec.image, pinned.digest
        )
    return dataclasses.replace(spec, image=pinned.image)


# ---------------------------------------------------------------------------- listing tags (image policies)

MAX_TAG_PAGES = 50
_NEXT_LINK = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


class RegistryUnavailable(Exception):
    """The tag list could not be read; the text is shown to users (no credentials in it)."""


async def _authorized_get(
    client: httpx.AsyncClient,
    *,
    url: str,
    base: str,
    host: str,
    path: str,
    credentials: Credentials | None,
    headers: dict[str, str],
) -> httpx.Response:
    response = await client.get(url, headers=headers)
    if response.status_code == 401 and "Authorization" not in headers:
        scheme, params = _challenge(response.headers.get("WWW-Authenticate", ""))
        if scheme == "bearer":
            token = await _token(
                client, params=params, registry=base, repository=path, credentials=credentials
            )
            headers["Authorization"] = f"Bearer {token}"
        elif scheme == "basic" and credentials is not None:
            headers["Authorization"] = _basic(credentials)
        else:
            raise _Unresolved(f"{host} needs credentials: add them with `shipit registries add`")
        response = await client.get(url, headers=headers)
    return response


async def list_tags(*, ctx: Core, repository: str, credentials: Credentials | None) -> list[str]:
    """Every tag of `repository` (registry/path), following Link-header pages; RegistryUnavailable if not."""
    ref = images.parse(f"{repository}:latest", field="repository")
    base = _base_url(ref.domain, ctx=ctx)
    budget = ctx.config.registry_timeout_seconds
    tags: list[str] = []
    url = f"{base}/v2/{ref.path}/tags/list?n=1000"
    headers = {"Accept": "application/json"}
    try:
        async with _client(budget) as client:
            for _ in range(MAX_TAG_PAGES):
                response = await _authorized_get(
                    client, url=url, base=base, host=ref.domain, path=ref.path, credentials=credentials,
                    headers=headers,
                )  # fmt: skip
                _answered(response, ref=ref, missing=f"has no repository {ref.path}")
                try:
                    body = response.json()
                except ValueError:
                    raise _Unresolved(f"{ref.domain} answered a tag list that is not JSON") from None
                page = body.get("tags") if isinstance(body, dict) else None
                tags.extend(t for t in page or [] if isinstance(t, str))
                link = _NEXT_LINK.search(response.headers.get("Link", ""))
                if link is None:
                    return tags
                # The next page on the same registry only: a Link elsewhere would get our credentials.
                target = link.group(1)
                url = f"{base}{target}" if target.startswith("/") else target
                if urlsplit(url).netloc != urlsplit(base).netloc:
                    raise _Unresolved(f"{ref.domain} pointed the next tag page at another host")
    except _Unresolved as e:
        raise RegistryUnavailable(str(e)) from None
    except httpx.TimeoutException:
        raise RegistryUnavailable(f"{ref.domain} did not answer within {budget:g}s") from None
    except httpx.HTTPError as e:
        raise RegistryUnavailable(f"{ref.domain} unreachable: {type(e).__name__}") from None
    return tags
