"""A fake GitHub REST API on loopback, so tests drive the real PyGithub client over HTTP.

It implements the GitHub App installation-token flow (the app's JWT is verified with a test RSA key),
repositories, commits, commit statuses, deployments and deployment statuses, pull requests, issues and
issue comments, with the response shapes GitHub documents and URLs pointing back at the fake (PyGithub
follows the ``url`` fields it is given). It records every call and can be told to fail the way GitHub
fails: 401 Bad credentials, 403/429 rate limits, 422 Validation Failed, 5xx.

Point PyGithub at it with ``Github(base_url=gh.url, auth=Auth.Token(gh.token))`` or, as an App,
``GithubIntegration(base_url=gh.url, auth=Auth.AppAuth(gh.app_id, gh.app_private_key))``.
``gh.enterprise_url`` (``.../api/v3``) serves the same API under GitHub Enterprise's prefix.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import hashlib
import io
import json
import re
import secrets
import tarfile
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.fakes._server import Answer, Call, FakeServer, lower_headers

DOCS = "https://docs.github.com/rest"
ENTERPRISE_PREFIX = "/api/v3"
DEPLOYMENT_STATES = frozenset({"error", "failure", "inactive", "in_progress", "queued", "pending", "success"})
COMMIT_STATES = frozenset({"error", "failure", "pending", "success"})
REACTIONS = frozenset({"+1", "-1", "laugh", "confused", "heart", "hooray", "rocket", "eyes"})
# A repository role and the `permission` GitHub reports for it (maintain reads as write, triage as read).
ROLE_PERMISSION = {"admin": "admin", "maintain": "write", "write": "write", "triage": "read", "read": "read"}
DEFAULT_PERMISSIONS = {
    "contents": "read",
    "metadata": "read",
    "deployments": "write",
    "statuses": "write",
    "issues": "write",
    "pull_requests": "write",
    "checks": "read",
}
_IAT_NOT_INTEGER = (
    "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued"
)
_EXP_NOT_FUTURE = (
    "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the "
    "assertion expires"
)
APP_EVENTS = ["push", "pull_request", "check_suite", "workflow_run", "deployment", "installation"]


def generate_private_key_pem(*, key_size: int = 2048) -> str:
    """A fresh RSA private key, PEM (PKCS#8), as GitHub hands an App's key out."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def public_key_pem(private_key_pem: str) -> str:
    key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@functools.cache
def _shared_private_key_pem() -> str:
    # One key per test process: RSA generation is the slowest part of starting a fake.
    return generate_private_key_pem()


class GitHubError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "message": self.message,
            "documentation_url": DOCS,
            "status": str(self.status),
        }
        if self.errors is not None:
            body["errors"] = self.errors
        return body


def _not_found() -> GitHubError:
    return GitHubError(404, "Not Found")


def _invalid(resource: str, field: str, message: str, code: str = "custom") -> GitHubError:
    errors = [{"resource": resource, "code": code, "field": field, "message": message}]
    return GitHubError(422, "Validation Failed", errors=errors)


@dataclasses.dataclass
class _Repo:
    id: int
    owner: str
    name: str
    default_branch: str
    private: bool
    branches: dict[str, str]
    created_at: float

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"


@dataclasses.dataclass
class _Installation:
    id: int
    account: str
    account_id: int
    account_type: str
    created_at: float


@dataclasses.dataclass
class _InstallationToken:
    token: str
    installation_id: int
    expires_at: float
    permissions: dict[str, str]


@dataclasses.dataclass(frozen=True)
class _Identity:
    kind: str  # "pat" | "installation" | "app" | "anonymous"
    login: str
    user_id: int
    user_type: str
    installation_id: int | None = None


@dataclasses.dataclass
class _Issue:
    repo: str
    number: int
    id: int
    title: str
    body: str | None
    user: str
    state: str
    created_at: float
    updated_at: float
    is_pull: bool = False
    head_ref: str = ""
    head_sha: str = ""
    base_ref: str = ""
    base_sha: str = ""
    head_repo: str = ""
    draft: bool = False
    merged: bool = False
    closed_at: float | None = None


@dataclasses.dataclass
class _Comment:
    id: int
    repo: str
    issue_number: int
    body: str
    creator: _Identity
    created_at: float
    updated_at: float
    deleted: bool = False


@dataclasses.dataclass
class _Reaction:
    id: int
    content: str
    user: _Identity
    created_at: float


@dataclasses.dataclass
class _DeploymentStatus:
    id: int
    state: str
    description: str
    environment: str
    target_url: str
    log_url: str
    environment_url: str
    creator: _Identity
    created_at: float


@dataclasses.dataclass
class _Deployment:
    id: int
    repo: str
    sha: str
    ref: str
    task: str
    payload: Any
    original_environment: str
    environment: str
    description: str | None
    transient_environment: bool
    production_environment: bool
    creator: _Identity
    created_at: float
    updated_at: float
    statuses: list[_DeploymentStatus] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _CommitStatus:
    id: int
    repo: str
    sha: str
    state: str
    description: str | None
    target_url: str | None
    context: str
    creator: _Identity
    created_at: float


@dataclasses.dataclass
class _Ctx:
    base: str
    """API root as the client reached it (with the Enterprise prefix if it used one)."""
    params: dict[str, str]
    query: dict[str, str]
    body: Any
    identity: _Identity
    request_url: str

    def field(self, name: str, default: Any = None) -> Any:
        return self.body.get(name, default) if isinstance(self.body, dict) else default


_Handler = Callable[[_Ctx], Answer]


@dataclasses.dataclass(frozen=True)
class _Route:
    method: str
    pattern: re.Pattern[str]
    name: str
    auth: str  # "jwt" | "token" | "any"
    handler: _Handler


_REPO = r"/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)"


class FakeGitHub(FakeServer):
    """Fake GitHub REST API (github.com shape; also under ``/api/v3`` for GitHub Enterprise).

    Route names (for `calls`, `wait_for_call` and failure injection): get_app, list_installations,
    get_installation, create_installation_token, get_repo_installation, get_org_installation,
    get_user_installation, list_installation_repos, get_authenticated_user, get_rate_limit, get_repo,
    get_commit, list_commit_statuses, get_combined_status, create_commit_status, list_deployments,
    create_deployment, get_deployment, delete_deployment, list_deployment_statuses,
    create_deployment_status, get_deployment_status, get_pull, get_issue, list_issue_comments,
    create_issue_comment, get_issue_comment, edit_issue_comment, delete_issue_comment,
    get_collaborator_permission, create_comment_reaction, list_comment_reactions, get_tarball,
    codeload_tarball.
    """

    def __init__(
        self,
        *,
        token: str = "ghp_fake_personal_token",
        app_id: int = 123456,
        app_slug: str = "shipit-test",
        private_key_pem: str | None = None,
        repos: Iterable[str] = ("acme/web",),
        token_ttl: float = 3600.0,
        strict_refs: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        """`token`: the valid plain token (``Authorization: token X`` or ``Bearer X``).
        `private_key_pem`: the App's private key (default: a key generated once per process); the
        fake verifies App JWTs with its public half. `token_ttl`: lifetime of installation tokens.
        `strict_refs`: refs that are neither a known branch nor a 40-hex sha are refused (422/404)
        instead of being resolved to a made-up sha."""
        super().__init__(host=host, port=port)
        self.token = token
        self.app_id = app_id
        self.app_slug = app_slug
        self.token_ttl = token_ttl
        self.strict_refs = strict_refs
        self.app_private_key = private_key_pem or _shared_private_key_pem()
        self.app_public_key = public_key_pem(self.app_private_key)
        self._ids = {"repo": 700_000_000, "installation": 40_000_000, "deployment": 1_000_000_000,
                     "status": 2_000_000_000, "comment": 1_500_000_000, "issue": 2_100_000_000,
                     "user": 9_000_000}  # fmt: skip
        self._user_ids: dict[str, int] = {}
        self._repos: dict[str, _Repo] = {}
        self._installations: dict[int, _Installation] = {}
        self._inst_tokens: dict[str, _InstallationToken] = {}
        self._rate_used: dict[str, int] = {}
        self._issues: dict[tuple[str, int], _Issue] = {}
        self._comments: dict[int, _Comment] = {}
        self._deployments: dict[int, _Deployment] = {}
        self._commit_statuses: list[_CommitStatus] = []
        self._reactions: dict[int, list[_Reaction]] = {}
        # (repo, login) -> repository role; `_users` are the logins GitHub knows (others: 404).
        self._roles: dict[tuple[str, str], str] = {}
        self._sources: dict[tuple[str, str], bytes] = {}  # (repo, sha) -> tarball (add_source)
        self._codeload_tokens: dict[str, tuple[str, str, float]] = {}  # token -> (repo, sha, expires)
        self._users: set[str] = set()
        self.pat_identity = _Identity("pat", "shipit-tester", self._user_id("shipit-tester"), "User")
        self._routes = self._build_routes()
        for full_name in repos:
            self.add_repo(full_name)

    # ---- configuration ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """API root for ``Github(base_url=...)``, like ``https://api.github.com``."""
        return self.origin

    @property
    def _local_base(self) -> str:
        # Shapes handed to tests (accessors) point at the github.com-style root; usable before start.
        return self.origin if self._port is not None else f"http://{self._host}"

    @property
    def enterprise_url(self) -> str:
        """The same API under GitHub Enterprise's ``/api/v3`` prefix."""
        return f"{self.origin}{ENTERPRISE_PREFIX}"

    @property
    def bot_login(self) -> str:
        return f"{self.app_slug}[bot]"

    def set_app_key(self, private_key_pem: str) -> None:
        """Verify App JWTs against this key pair from now on."""
        with self._lock:
            self.app_private_key = private_key_pem
            self.app_public_key = public_key_pem(private_key_pem)

    def add_repo(
        self,
        full_name: str,
        *,
        default_branch: str = "main",
        branches: Mapping[str, str] | None = None,
        private: bool = True,
        installed: bool = True,
    ) -> dict[str, Any]:
        """A repository; `branches` maps branch names to head shas. `installed`: the App is installed
        on the owner's account (created if needed), so installation tokens reach the repository."""
        owner, _, name = full_name.partition("/")
        if not owner or not name:
            raise ValueError(f"repository must be owner/name, got {full_name!r}")
        with self._lock:
            heads = dict(branches or {})
            heads.setdefault(default_branch, _fake_sha(f"{full_name}@{default_branch}"))
            repo = _Repo(self._next("repo"), owner, name, default_branch, private, heads, time.time())
            self._repos[full_name.lower()] = repo
            if installed and self._installation_for(owner) is None:
                self.add_installation(owner)
            return self._repo_shape(self._local_base, repo)

    def add_source(self, full_name: str, sha: str, files: Mapping[str, bytes | str]) -> None:
        """The tree of commit `sha` (path -> content), served by the tarball API as GitHub builds it:
        gzip'd, one top-level directory `<owner>-<repo>-<short sha>/`, the sha in a pax global header."""
        repo = self._repos[full_name.lower()]
        top = f"{repo.owner}-{repo.name}-{sha[:7]}"
        buffer = io.BytesIO()
        with tarfile.open(
            fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT, pax_headers={"comment": sha}
        ) as tar:
            info = tarfile.TarInfo(top)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o775, int(time.time())
            tar.addfile(info)
            dirs: set[str] = set()
            for path in sorted(files):
                parts = path.split("/")
                for i in range(1, len(parts)):
                    d = "/".join(parts[:i])
                    if d not in dirs:
                        dirs.add(d)
                        info = tarfile.TarInfo(f"{top}/{d}")
                        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o775, int(time.time())
                        tar.addfile(info)
                content = files[path]
                data = content.encode() if isinstance(content, str) else content
                info = tarfile.TarInfo(f"{top}/{path}")
                info.size, info.mode, info.mtime = len(data), 0o664, int(time.time())
                tar.addfile(info, io.BytesIO(data))
        with self._lock:
            self._sources[(full_name.lower(), sha)] = buffer.getvalue()

    def set_branch(self, full_name: str, branch: str, sha: str) -> None:
        with self._lock:
            self._repos[full_name.lower()].branches[branch] = sha

    def add_installation(
        self, account: str, *, installation_id: int | None = None, account_type: str = "Organization"
    ) -> int:
        """Install the App on `account` (all its repositories); returns the installation id."""
        with self._lock:
            inst_id = installation_id or self._next("installation")
            self._installations[inst_id] = _Installation(
                inst_id, account, self._user_id(account), account_type, time.time()
            )
            return inst_id

    def remove_installation(self, account: str) -> None:
        """Uninstall the App from `account`, as GitHub does: the installation and its tokens are gone
        (later use of a token: 401; minting one for the old id: 404)."""
        with self._lock:
            gone = {i for i, inst in self._installations.items() if inst.account.lower() == account.lower()}
            for inst_id in gone:
                del self._installations[inst_id]
            for token in [t for t, tok in self._inst_tokens.items() if tok.installation_id in gone]:
                del self._inst_tokens[token]

    def installation_id(self, account: str) -> int:
        with self._lock:
            inst = self._installation_for(account)
            if inst is None:
                raise KeyError(f"the app is not installed on {account}")
            return inst.id

    def add_pull(
        self,
        full_name: str,
        number: int,
        *,
        head_ref: str,
        head_sha: str | None = None,
        base_ref: str | None = None,
        title: str | None = None,
        body: str | None = None,
        user: str = "octocat",
        state: str = "open",
        draft: bool = False,
        merged: bool = False,
        head_repo: str | None = None,
    ) -> dict[str, Any]:
        """A pull request (and its issue, same number)."""
        with self._lock:
            repo = self._repos[full_name.lower()]
            now = time.time()
            base = base_ref or repo.default_branch
            head_sha = head_sha or _fake_sha(f"{full_name}#{number}@{head_ref}")
            repo.branches.setdefault(head_ref, head_sha)
            self._issues[(repo.full_name.lower(), number)] = _Issue(
                repo=repo.full_name,
                number=number,
                id=self._next("issue"),
                title=title or f"Pull request {number}",
                body=body,
                user=user,
                state=state,
                created_at=now,
                updated_at=now,
                is_pull=True,
                head_ref=head_ref,
                head_sha=head_sha,
                base_ref=base,
                base_sha=repo.branches.get(base, _fake_sha(f"{full_name}@{base}")),
                head_repo=head_repo or repo.full_name,
                draft=draft,
                merged=merged,
                closed_at=now if state == "closed" else None,
            )
            return self._pull_shape(self._local_base, self._issues[(repo.full_name.lower(), number)])

    def add_pull_from_event(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Register the pull request (and its repository) of a ``pull_request`` webhook payload."""
        pr = payload["pull_request"]
        full_name = payload["repository"]["full_name"]
        with self._lock:
            if full_name.lower() not in self._repos:
                self.add_repo(full_name, default_branch=payload["repository"].get("default_branch", "main"))
        return self.add_pull(
            full_name,
            int(pr["number"]),
            head_ref=pr["head"]["ref"],
            head_sha=pr["head"]["sha"],
            base_ref=pr["base"]["ref"],
            title=pr.get("title"),
            body=pr.get("body"),
            user=(pr.get("user") or {}).get("login", "octocat"),
            state=pr.get("state", "open"),
            draft=bool(pr.get("draft")),
            merged=bool(pr.get("merged")),
            head_repo=((pr["head"].get("repo") or {}).get("full_name")) or full_name,
        )

    def add_issue(
        self,
        full_name: str,
        number: int,
        *,
        title: str = "An issue",
        user: str = "octocat",
        state: str = "open",
    ) -> dict[str, Any]:
        with self._lock:
            repo = self._repos[full_name.lower()]
            now = time.time()
            issue = _Issue(repo.full_name, number, self._next("issue"), title, None, user, state, now, now)
            self._issues[(repo.full_name.lower(), number)] = issue
            return self._issue_shape(self._local_base, issue)

    def add_user(self, login: str) -> None:
        """A GitHub account (one that is not: 404 where a user is looked up)."""
        with self._lock:
            self._users.add(login.lower())

    def set_role(self, full_name: str, login: str, role: str | None) -> None:
        """`login`'s role on the repository (admin, maintain, write, triage, read; None: none)."""
        if role is not None and role not in ROLE_PERMISSION:
            raise ValueError(f"role must be one of {', '.join(ROLE_PERMISSION)}, got {role!r}")
        with self._lock:
            self._users.add(login.lower())
            key = (full_name.lower(), login.lower())
            if role is None:
                self._roles.pop(key, None)
            else:
                self._roles[key] = role

    def add_comment(
        self, full_name: str, number: int, body: str, *, user: str = "octocat", user_type: str = "User"
    ) -> dict[str, Any]:
        """A comment someone made on an issue or pull request; returns the ``comment`` object of the
        ``issue_comment`` webhook (the same shape the REST API answers)."""
        with self._lock:
            repo = self._repos[full_name.lower()]
            issue = self._issues[(repo.full_name.lower(), number)]
            self._users.add(user.lower())
            now = time.time()
            who = _Identity("user", user, self._user_id(user), user_type)
            comment = _Comment(self._next("comment"), repo.full_name, issue.number, body, who, now, now)
            self._comments[comment.id] = comment
            return self._comment_shape(self._local_base, comment)

    def reactions(self, full_name: str, comment_id: int) -> list[str]:
        """The contents of the reactions on a comment, oldest first."""
        with self._lock:
            c = self._comments.get(comment_id)
            if c is None or c.repo.lower() != full_name.lower():
                raise AssertionError(f"no comment {comment_id} in {full_name}")
            return [r.content for r in self._reactions.get(comment_id, [])]

    def expire_installation_tokens(self) -> None:
        """Every installation token issued so far expires now (later use: 401 Bad credentials)."""
        with self._lock:
            for tok in self._inst_tokens.values():
                tok.expires_at = time.time() - 1

    def installation_tokens(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {
                    "token": t.token,
                    "installation_id": t.installation_id,
                    "expires_at": _iso(t.expires_at),
                    "permissions": dict(t.permissions),
                }
                for t in self._inst_tokens.values()
            ]

    # ---- failure injection -----------------------------------------------------------------------

    def fail(
        self,
        route: str = "*",
        *,
        times: int = 1,
        status: int = 500,
        message: str = "Server Error",
        headers: Mapping[str, str] | None = None,
        body: Any = None,
    ) -> None:
        """The next `times` calls of `route` ("*" = any) answer `status` with GitHub's error body."""
        if body is None:
            body = {"message": message, "documentation_url": DOCS, "status": str(status)}
        self._add_failure(route, times=times, status=status, body=body, headers=headers)

    def bad_credentials(self, route: str = "*", *, times: int = 1) -> None:
        """401 ``Bad credentials`` (PyGithub: BadCredentialsException)."""
        self.fail(route, times=times, status=401, message="Bad credentials")

    def rate_limit(
        self,
        route: str = "*",
        *,
        times: int = 1,
        retry_after: int | None = None,
        secondary: bool = False,
        status: int = 403,
    ) -> None:
        """A rate-limit answer (PyGithub: RateLimitExceededException for 403).

        Primary: ``API rate limit exceeded...`` with ``x-ratelimit-remaining: 0`` and
        ``x-ratelimit-reset`` `retry_after` (default 60) seconds from now. Secondary: ``You have
        exceeded a secondary rate limit...`` with ``Retry-After`` when `retry_after` is given.
        `status` 429 is also what GitHub sends for some secondary limits."""
        headers: dict[str, str] = {}
        if secondary:
            message = (
                "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."
            )
            if retry_after is not None:
                headers["Retry-After"] = str(retry_after)
        else:
            message = "API rate limit exceeded for installation."
            headers.update(
                {
                    "X-RateLimit-Limit": "5000",
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Used": "5000",
                    "X-RateLimit-Reset": str(int(time.time()) + (60 if retry_after is None else retry_after)),
                    "X-RateLimit-Resource": "core",
                }
            )
            if retry_after is not None:
                headers["Retry-After"] = str(retry_after)
        self.fail(route, times=times, status=status, message=message, headers=headers)

    def validation_failed(
        self,
        route: str,
        *,
        times: int = 1,
        message: str = "Validation Failed",
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        """422 ``Validation Failed`` with an ``errors`` list."""
        body = {
            "message": message,
            "errors": errors or [{"resource": "Resource", "code": "custom", "message": "injected"}],
            "documentation_url": DOCS,
            "status": "422",
        }
        self.fail(route, times=times, status=422, body=body)

    def server_error(self, route: str = "*", *, times: int = 1, status: int = 500) -> None:
        self.fail(route, times=times, status=status, message="Server Error")

    # ---- state accessors (shapes rendered against `url`) -----------------------------------------

    def deployments(
        self, full_name: str | None = None, *, environment: str | None = None
    ) -> list[dict[str, Any]]:
        """Deployments, oldest first."""
        with self._lock:
            return [
                self._deployment_shape(self._local_base, d)
                for d in self._deployments.values()
                if (full_name is None or d.repo.lower() == full_name.lower())
                and (environment is None or d.environment == environment)
            ]

    def deployment(self, full_name: str, deployment_id: int) -> dict[str, Any]:
        with self._lock:
            return self._deployment_shape(self._local_base, self._get_deployment(full_name, deployment_id))

    def deployment_statuses(self, full_name: str, deployment_id: int) -> list[dict[str, Any]]:
        """Statuses of a deployment, oldest first."""
        with self._lock:
            dep = self._get_deployment(full_name, deployment_id)
            return [self._deployment_status_shape(self._local_base, dep, s) for s in dep.statuses]

    def deployment_states(self, full_name: str, deployment_id: int) -> list[str]:
        with self._lock:
            return [s.state for s in self._get_deployment(full_name, deployment_id).statuses]

    def commit_statuses(self, full_name: str, sha: str | None = None) -> list[dict[str, Any]]:
        """Commit statuses, oldest first."""
        with self._lock:
            return [
                self._commit_status_shape(self._local_base, s)
                for s in self._commit_statuses
                if s.repo.lower() == full_name.lower() and (sha is None or s.sha == sha)
            ]

    def comments(self, full_name: str, number: int) -> list[dict[str, Any]]:
        """Live comments on an issue or pull request, oldest first."""
        with self._lock:
            return [
                self._comment_shape(self._local_base, c)
                for c in self._comments.values()
                if c.repo.lower() == full_name.lower() and c.issue_number == number and not c.deleted
            ]

    def comment(self, full_name: str, comment_id: int) -> dict[str, Any]:
        with self._lock:
            c = self._comments.get(comment_id)
            if c is None or c.deleted or c.repo.lower() != full_name.lower():
                raise AssertionError(f"no comment {comment_id} in {full_name}")
            return self._comment_shape(self._local_base, c)

    # ---- HTTP ------------------------------------------------------------------------------------

    def _build_routes(self) -> list[_Route]:
        table: list[tuple[str, str, str, str, _Handler]] = [
            ("GET", r"/app", "get_app", "jwt", self._get_app),
            ("GET", r"/app/installations", "list_installations", "jwt", self._list_installations),
            ("GET", r"/app/installations/(?P<installation_id>\d+)", "get_installation", "jwt",
             self._get_installation),
            ("POST", r"/app/installations/(?P<installation_id>\d+)/access_tokens",
             "create_installation_token", "jwt", self._create_installation_token),
            ("GET", _REPO + r"/installation", "get_repo_installation", "jwt", self._get_repo_installation),
            ("GET", r"/orgs/(?P<account>[^/]+)/installation", "get_org_installation", "jwt",
             self._get_account_installation),
            ("GET", r"/users/(?P<account>[^/]+)/installation", "get_user_installation", "jwt",
             self._get_account_installation),
            ("GET", r"/installation/repositories", "list_installation_repos", "token",
             self._list_installation_repos),
            ("GET", r"/user", "get_authenticated_user", "token", self._get_authenticated_user),
            ("GET", r"/rate_limit", "get_rate_limit", "any", self._get_rate_limit),
            ("GET", _REPO, "get_repo", "token", self._get_repo),
            ("GET", _REPO + r"/commits/(?P<ref>.+)/statuses", "list_commit_statuses", "token",
             self._list_commit_statuses),
            ("GET", _REPO + r"/commits/(?P<ref>.+)/status", "get_combined_status", "token",
             self._get_combined_status),
            ("GET", _REPO + r"/commits/(?P<ref>.+)", "get_commit", "token", self._get_commit),
            ("POST", _REPO + r"/statuses/(?P<sha>[^/]+)", "create_commit_status", "token",
             self._create_commit_status),
            ("GET", _REPO + r"/deployments", "list_deployments", "token", self._list_deployments),
            ("POST", _REPO + r"/deployments", "create_deployment", "token", self._create_deployment),
            ("GET", _REPO + r"/deployments/(?P<deployment_id>\d+)", "get_deployment", "token",
             self._get_deployment_route),
            ("DELETE", _REPO + r"/deployments/(?P<deployment_id>\d+)", "delete_deployment", "token",
             self._delete_deployment),
            ("GET", _REPO + r"/deployments/(?P<deployment_id>\d+)/statuses", "list_deployment_statuses",
             "token", self._list_deployment_statuses),
            ("POST", _REPO + r"/deployments/(?P<deployment_id>\d+)/statuses", "create_deployment_status",
             "token", self._create_deployment_status),
            ("GET", _REPO + r"/deployments/(?P<deployment_id>\d+)/statuses/(?P<status_id>\d+)",
             "get_deployment_status", "token", self._get_deployment_status),
            ("GET", _REPO + r"/pulls/(?P<number>\d+)", "get_pull", "token", self._get_pull),
            ("GET", _REPO + r"/issues/(?P<number>\d+)", "get_issue", "token", self._get_issue),
            ("GET", _REPO + r"/issues/(?P<number>\d+)/comments", "list_issue_comments", "token",
             self._list_issue_comments),
            ("POST", _REPO + r"/issues/(?P<number>\d+)/comments", "create_issue_comment", "token",
             self._create_issue_comment),
            ("GET", _REPO + r"/issues/comments/(?P<comment_id>\d+)", "get_issue_comment", "token",
             self._get_issue_comment),
            ("PATCH", _REPO + r"/issues/comments/(?P<comment_id>\d+)", "edit_issue_comment", "token",
             self._edit_issue_comment),
            ("DELETE", _REPO + r"/issues/comments/(?P<comment_id>\d+)", "delete_issue_comment", "token",
             self._delete_issue_comment),
            ("POST", _REPO + r"/issues/comments/(?P<comment_id>\d+)/reactions", "create_comment_reaction",
             "token", self._create_comment_reaction),
            ("GET", _REPO + r"/issues/comments/(?P<comment_id>\d+)/reactions", "list_comment_reactions",
             "token", self._list_comment_reactions),
            ("GET", _REPO + r"/collaborators/(?P<username>[^/]+)/permission", "get_collaborator_permission",
             "token", self._get_collaborator_permission),
            # GitHub answers a 302 to codeload.github.com, whose URL carries a short-lived token for
            # a private repository; codeload wants no Authorization header.
            ("GET", _REPO + r"/tarball/(?P<ref>.+)", "get_tarball", "any", self._get_tarball),
            ("GET", r"/_codeload/(?P<owner>[^/]+)/(?P<repo>[^/]+)/legacy\.tar\.gz/(?P<ref>.+)", "codeload_tarball",
             "any", self._codeload_tarball),
        ]  # fmt: skip
        return [_Route(m, re.compile(p + r"/?"), n, a, h) for m, p, n, a, h in table]

    def _serve(self, request: web.Request, raw: bytes) -> Answer:
        headers = lower_headers(request)
        query = dict(request.query)
        path, prefix = request.path, ""
        if path == ENTERPRISE_PREFIX or path.startswith(ENTERPRISE_PREFIX + "/"):
            path, prefix = path[len(ENTERPRISE_PREFIX) :] or "/", ENTERPRISE_PREFIX
        base = f"http://{request.host}{prefix}"
        route, params = self._match(request.method, path)
        name = route.name if route else "unknown"
        body: Any = None
        answer: Answer
        injected = self._take_failure(name) if route else None
        if injected is not None:
            answer = Answer(injected.status, injected.body, {**self._headers(None), **injected.headers})
        else:
            try:
                if raw:
                    try:
                        body = json.loads(raw)
                    except ValueError as e:
                        raise GitHubError(400, "Problems parsing JSON") from e
                if route is None:
                    raise _not_found()
                with self._lock:
                    identity = self._authenticate(route.auth, headers)
                    ctx = _Ctx(base, params, query, body, identity, _request_url(base, path, query))
                    answer = route.handler(ctx)
                    answer = dataclasses.replace(
                        answer, headers={**self._headers(identity), **answer.headers}
                    )
            except GitHubError as e:
                answer = Answer(e.status, e.body(), {**self._headers(None), **e.headers})
        self._record(
            Call(
                api=name,
                http_method=request.method,
                path=path,
                query=query,
                headers=headers,
                body=body,
                raw_body=raw,
                status=answer.status,
                response=answer.body,
                path_params=params,
                injected=injected is not None,
            )
        )
        return answer

    def _match(self, method: str, path: str) -> tuple[_Route | None, dict[str, str]]:
        for route in self._routes:
            if route.method != method:
                continue
            m = route.pattern.fullmatch(path)
            if m:
                return route, {k: urllib.parse.unquote(v) for k, v in m.groupdict().items()}
        return None, {}

    def _headers(self, identity: _Identity | None) -> dict[str, str]:
        key = identity.login if identity else "anonymous"
        with self._lock:
            used = self._rate_used.get(key, 0) + 1
            self._rate_used[key] = used
        return {
            "X-GitHub-Api-Version-Selected": "2022-11-28",
            "X-GitHub-Media-Type": "github.v3; format=json",
            "X-GitHub-Request-Id": secrets.token_hex(8).upper(),
            "X-RateLimit-Limit": "5000",
            "X-RateLimit-Remaining": str(max(0, 5000 - used)),
            "X-RateLimit-Reset": str(int(time.time()) + 3600),
            "X-RateLimit-Used": str(used),
            "X-RateLimit-Resource": "core",
        }

    # ---- authentication --------------------------------------------------------------------------

    def _authenticate(self, kind: str, headers: dict[str, str]) -> _Identity:
        scheme, _, credential = headers.get("authorization", "").partition(" ")
        scheme, credential = scheme.lower(), credential.strip()
        if kind == "jwt":
            if scheme != "bearer" or not credential:
                raise GitHubError(401, "A JSON web token could not be decoded")
            self._verify_jwt(credential)
            return _Identity("app", self.app_slug, self._user_id(self.app_slug), "Bot")
        if scheme not in ("token", "bearer") or not credential:
            if kind == "any":
                return _Identity("anonymous", "anonymous", 0, "User")
            raise GitHubError(401, "Requires authentication")
        if secrets.compare_digest(credential, self.token):
            return self.pat_identity
        inst = self._inst_tokens.get(credential)
        if inst is not None and inst.expires_at > time.time():
            return _Identity(
                "installation", self.bot_login, self._user_id(self.bot_login), "Bot", inst.installation_id
            )
        raise GitHubError(401, "Bad credentials")

    def _verify_jwt(self, token: str) -> dict[str, Any]:
        undecodable = GitHubError(401, "A JSON web token could not be decoded")
        try:
            if jwt.get_unverified_header(token).get("alg") != "RS256":
                raise undecodable
            claims: dict[str, Any] = jwt.decode(
                token,
                self.app_public_key,
                algorithms=["RS256"],
                options={"require": ["exp", "iat", "iss"], "verify_exp": False, "verify_iat": False},
            )
        except jwt.InvalidTokenError as e:
            raise undecodable from e
        now = time.time()
        iat, exp = claims["iat"], claims["exp"]
        if not isinstance(iat, int | float):
            raise GitHubError(401, _IAT_NOT_INTEGER)
        if not isinstance(exp, int | float) or exp <= now:
            raise GitHubError(401, _EXP_NOT_FUTURE)
        # GitHub allows 10 minutes of validity and some clock drift on iat.
        if iat > now + 60:
            raise GitHubError(
                401, "'Issued at' claim ('iat') must be an Integer representing a time in the past"
            )
        if exp - iat > 660 or exp > now + 660:
            raise GitHubError(401, "'Expiration time' claim ('exp') is too far in the future")
        if str(claims["iss"]) != str(self.app_id):
            raise GitHubError(401, "Integration not found")
        return claims

    # ---- App endpoints ---------------------------------------------------------------------------

    def _get_app(self, ctx: _Ctx) -> Answer:
        return Answer(200, self._app_shape(ctx.base))

    def _list_installations(self, ctx: _Ctx) -> Answer:
        return self._page(ctx, [self._installation_shape(ctx.base, i) for i in self._installations.values()])

    def _get_installation(self, ctx: _Ctx) -> Answer:
        inst = self._installations.get(int(ctx.params["installation_id"]))
        if inst is None:
            raise _not_found()
        return Answer(200, self._installation_shape(ctx.base, inst))

    def _get_repo_installation(self, ctx: _Ctx) -> Answer:
        repo = self._repos.get(f"{ctx.params['owner']}/{ctx.params['repo']}".lower())
        inst = self._installation_for(repo.owner) if repo else None
        if inst is None:
            raise _not_found()
        return Answer(200, self._installation_shape(ctx.base, inst))

    def _get_account_installation(self, ctx: _Ctx) -> Answer:
        inst = self._installation_for(ctx.params["account"])
        if inst is None:
            raise _not_found()
        return Answer(200, self._installation_shape(ctx.base, inst))

    def _create_installation_token(self, ctx: _Ctx) -> Answer:
        inst = self._installations.get(int(ctx.params["installation_id"]))
        if inst is None:
            raise _not_found()
        permissions = ctx.field("permissions") or {}
        if not isinstance(permissions, dict):
            raise _invalid("InstallationToken", "permissions", "permissions must be an object")
        for perm, level in permissions.items():
            granted = DEFAULT_PERMISSIONS.get(perm)
            if granted is None or (level == "write" and granted != "write"):
                raise GitHubError(422, "The permissions requested are not granted to this installation.")
        token = _InstallationToken(
            token="ghs_" + secrets.token_urlsafe(27).replace("-", "a").replace("_", "b")[:36],
            installation_id=inst.id,
            expires_at=time.time() + self.token_ttl,
            permissions=dict(permissions) or dict(DEFAULT_PERMISSIONS),
        )
        self._inst_tokens[token.token] = token
        return Answer(
            201,
            {
                "token": token.token,
                "expires_at": _iso(token.expires_at),
                "permissions": dict(token.permissions),
                "repository_selection": "all",
            },
        )

    def _list_installation_repos(self, ctx: _Ctx) -> Answer:
        if ctx.identity.kind != "installation":
            message = "You must authenticate with an installation access token in order to list repositories."
            raise GitHubError(403, message)
        inst = self._installations[ctx.identity.installation_id or 0]
        repos = [
            self._repo_shape(ctx.base, r)
            for r in self._repos.values()
            if r.owner.lower() == inst.account.lower()
        ]
        return Answer(200, {"total_count": len(repos), "repository_selection": "all", "repositories": repos})

    def _get_authenticated_user(self, ctx: _Ctx) -> Answer:
        if ctx.identity.kind != "pat":
            raise GitHubError(403, "Resource not accessible by integration")
        return Answer(200, self._user_shape(ctx.base, ctx.identity.login, ctx.identity.user_type))

    def _get_rate_limit(self, ctx: _Ctx) -> Answer:
        used = self._rate_used.get(ctx.identity.login, 0)
        core = {"limit": 5000, "used": used, "remaining": 5000 - used, "reset": int(time.time()) + 3600}
        return Answer(
            200,
            {
                "resources": {
                    "core": core,
                    "search": {"limit": 30, "used": 0, "remaining": 30, "reset": int(time.time()) + 60},
                    "graphql": {
                        "limit": 5000,
                        "used": 0,
                        "remaining": 5000,
                        "reset": int(time.time()) + 3600,
                    },
                },
                "rate": core,
            },
        )

    # ---- repositories and commits ----------------------------------------------------------------

    def _repo(self, ctx: _Ctx) -> _Repo:
        repo = self._repos.get(f"{ctx.params['owner']}/{ctx.params['repo']}".lower())
        if repo is None:
            raise _not_found()
        if ctx.identity.kind == "installation":
            inst = self._installations.get(ctx.identity.installation_id or 0)
            if inst is None or inst.account.lower() != repo.owner.lower():
                raise _not_found()
        return repo

    def _resolve_ref(self, repo: _Repo, ref: str) -> str | None:
        ref = ref.removeprefix("refs/heads/").removeprefix("refs/tags/")
        if ref in repo.branches:
            return repo.branches[ref]
        if re.fullmatch(r"[0-9a-f]{40}", ref):
            return ref
        if self.strict_refs:
            return None
        return _fake_sha(f"{repo.full_name}@{ref}")

    def _get_tarball(self, ctx: _Ctx) -> Answer:
        repo = self._repo(ctx)
        if repo.private and ctx.identity.kind == "anonymous":
            raise _not_found()
        sha = self._resolve_ref(repo, ctx.params["ref"])
        if sha is None or (repo.full_name.lower(), sha) not in self._sources:
            raise _not_found()
        token = secrets.token_urlsafe(24)
        self._codeload_tokens[token] = (repo.full_name.lower(), sha, time.time() + 300)
        location = f"{ctx.base}/_codeload/{repo.owner}/{repo.name}/legacy.tar.gz/{sha}?token={token}"
        return Answer(302, None, {"Location": location, "Content-Length": "0"})

    def _codeload_tarball(self, ctx: _Ctx) -> Answer:
        full_name = f"{ctx.params['owner']}/{ctx.params['repo']}".lower()
        held = self._codeload_tokens.get(ctx.query.get("token", ""))
        if held is None or held[0] != full_name or held[1] != ctx.params["ref"] or held[2] < time.time():
            return Answer(404, None, {"Content-Type": "text/plain"}, text="404: Not Found")
        repo = self._repos[full_name]
        return Answer(
            200,
            None,
            {
                "Content-Type": "application/x-gzip",
                "Content-Disposition": f"attachment; filename={repo.owner}-{repo.name}-{held[1][:7]}.tar.gz",
            },
            data=self._sources[(full_name, held[1])],
        )

    def _get_repo(self, ctx: _Ctx) -> Answer:
        return Answer(200, self._repo_shape(ctx.base, self._repo(ctx)))

    def _get_commit(self, ctx: _Ctx) -> Answer:
        repo = self._repo(ctx)
        sha = self._resolve_ref(repo, ctx.params["ref"])
        if sha is None:
            raise GitHubError(422, f"No commit found for SHA: {ctx.params['ref']}")
        return Answer(200, self._commit_shape(ctx.base, repo, sha))

    def _create_commit_status(self, ctx: _Ctx) -> Answer:
        repo = self._repo(ctx)
        sha = ctx.params["sha"]
        if self.strict_refs and self._resolve_ref(repo, sha) is None:
            raise GitHubError(422, f"No commit found for SHA: {sha}")
        state = ctx.field("state")
        if state not in COMMIT_STATES:
            raise _invalid("Status", "state", "state is not included in the list")
        status = _CommitStatus(
            id=self._next("status"),
            repo=repo.full_name,
            sha=sha,
            state=state,
            description=ctx.field("description"),
            target_url=ctx.field("target_url"),
            context=ctx.field("context") or "default",
            creator=ctx.identity,
            created_at=time.time(),
        )
        self._commit_statuses.append(status)
        shape = self._commit_status_shape(ctx.base, status)
        return Answer(201, shape, {"Location": shape["url"]})

    def _statuses_for(self, repo: _Repo, sha: str) -> list[_CommitStatus]:
        return [s for s in reversed(self._commit_statuses) if s.repo == repo.full_name and s.sha == sha]

    def _list_commit_statuses(self, ctx: _Ctx) -> Answer:
        repo = self._repo(ctx)
        sha = self._resolve_ref(repo, ctx.params["ref"]) or ctx.params["ref"]
        return self._page(
            ctx, [self._commit_status_shape(ctx.base, s) for s in self._statuses_for(repo, sha)]
        )

    def _get_combined_status(self, ctx: _Ctx) -> Answer:
        repo = self._repo(ctx)
        sha = self._resolve_ref(repo, ctx.params["ref"]) or ctx.params["ref"]
        latest: dict[str, _CommitStatus] = {}
        for s in self._statuses_for(repo, sha):
            latest.setdefault(s.context, s)
        states = {s.state for s in latest.values()}
        if states & {"error", "failure"}:
            state = "failure"
        elif not states or "pending" in states:
            state = "pending"
        else:
            state = "success"
        repo_url = f"{ctx.base}/repos/{repo.full_name}"
        return Answer(
            200,
            {
                "state": state,
                "statuses": [self._commit_status_shape(ctx.base, s) for s in latest.values()],
                "sha": sha,
                "total_count": len(latest),
                "repository": self._repo_shape(ctx.base, repo),
                "commit_url": f"{repo_url}/commits/{sha}",
                "url": f"{repo_url}/commits/{sha}/status",
            },
        )

    # ---- deployments -----------------------------------------------------------------------------

    def _get_deployment(self, full_name: str, deployment_id: int) -> _Deployment:
        dep = self._deployments.get(deployment_id)
        if dep is None or dep.repo.lower() != full_name.lower():
            raise _not_found()
        return dep

    def _deployment_from(self, ctx: _Ctx) -> tuple[_Repo, _Deployment]:
        repo = self._repo(ctx)
        return repo, self._get_deployment(repo.full_name, int(ctx.params["deployment_id"]))

    def _create_deployment(self, ctx: _Ctx) -> Answer:
        repo = self._repo(ctx)
        ref = ctx.field("ref")
        if not isinstance(ref, str) or not ref:
            raise _invalid("Deployment", "ref", "ref is missing", code="missing_field")
        sha = self._resolve_ref(repo, ref)
        if sha is None:
            raise GitHubError(422, f"No ref found for: {ref}")
        environment = ctx.field("environment") or "production"
        payload = ctx.field("payload", {})
        if isinstance(payload, str) and payload:
            with contextlib.suppress(ValueError):
                payload = json.loads(payload)
        for flag in ("transient_environment", "production_environment", "auto_merge"):
            if ctx.field(flag) is not None and not isinstance(ctx.field(flag), bool):
                raise _invalid("Deployment", flag, f"{flag} is not a boolean")
        required = ctx.field("required_contexts")
        if required is not None and not isinstance(required, list):
            raise _invalid("Deployment", "required_contexts", "required_contexts is not an array")
        now = time.time()
        dep = _Deployment(
            id=self._next("deployment"),
            repo=repo.full_name,
            sha=sha,
            ref=ref,
            task=ctx.field("task") or "deploy",
            payload=payload,
            original_environment=environment,
            environment=environment,
            description=ctx.field("description"),
            transient_environment=bool(ctx.field("transient_environment", False)),
            production_environment=bool(ctx.field("production_environment", environment == "production")),
            creator=ctx.identity,
            created_at=now,
            updated_at=now,
        )
        self._deployments[dep.id] = dep
        shape = self._deployment_shape(ctx.base, dep)
        return Answer(201, shape, {"Location": shape["url"]})

    def _list_deployments(self, ctx: _Ctx) -> Answer:
        repo = self._repo(ctx)
        deps = [
            d
            for d in reversed(self._deployments.values())
            if d.repo == repo.full_name
            and all(ctx.query.get(k) in (None, getattr(d, k)) for k in ("sha", "ref", "task", "environment"))
        ]
        return self._page(ctx, [self._deployment_shape(ctx.base, d) for d in deps])

    def _get_deployment_route(self, ctx: _Ctx) -> Answer:
        _, dep = self._deployment_from(ctx)
        return Answer(200, self._deployment_shape(ctx.base, dep))

    def _delete_deployment(self, ctx: _Ctx) -> Answer:
        _, dep = self._deployment_from(ctx)
        same_env = [
            d for d in self._deployments.values() if d.repo == dep.repo and d.environment == dep.environment
        ]
        active = dep.statuses and dep.statuses[-1].state != "inactive"
        if active and len(same_env) > 1:
            message = (
                "We cannot delete an active deployment unless it is the only deployment in a given "
                + "environment."
            )
            raise GitHubError(422, message)
        del self._deployments[dep.id]
        return Answer(204, None)

    def _create_deployment_status(self, ctx: _Ctx) -> Answer:
        _, dep = self._deployment_from(ctx)
        state = ctx.field("state")
        if state not in DEPLOYMENT_STATES:
            raise _invalid("DeploymentStatus", "state", "state is not included in the list")
        log_url = ctx.field("log_url") or ""
        environment = ctx.field("environment") or dep.environment
        now = time.time()
        status = _DeploymentStatus(
            id=self._next("status"),
            state=state,
            description=ctx.field("description") or "",
            environment=environment,
            target_url=ctx.field("target_url") or log_url,
            log_url=log_url or ctx.field("target_url") or "",
            environment_url=ctx.field("environment_url") or "",
            creator=ctx.identity,
            created_at=now,
        )
        dep.environment = environment
        dep.statuses.append(status)
        dep.updated_at = now
        if state == "success" and ctx.field("auto_inactive", True):
            self._auto_inactivate(dep, ctx.identity)
        shape = self._deployment_status_shape(ctx.base, dep, status)
        return Answer(201, shape, {"Location": shape["url"]})

    def _auto_inactivate(self, current: _Deployment, identity: _Identity) -> None:
        # GitHub: prior non-transient, non-production deployments of the same repository and
        # environment whose latest state is success get an inactive status.
        for dep in self._deployments.values():
            if (
                dep.id < current.id
                and dep.repo == current.repo
                and dep.environment == current.environment
                and not dep.transient_environment
                and not dep.production_environment
                and dep.statuses
                and dep.statuses[-1].state == "success"
            ):
                last = dep.statuses[-1]
                dep.statuses.append(
                    dataclasses.replace(
                        last,
                        id=self._next("status"),
                        state="inactive",
                        creator=identity,
                        created_at=time.time(),
                    )
                )

    def _list_deployment_statuses(self, ctx: _Ctx) -> Answer:
        _, dep = self._deployment_from(ctx)
        return self._page(
            ctx, [self._deployment_status_shape(ctx.base, dep, s) for s in reversed(dep.statuses)]
        )

    def _get_deployment_status(self, ctx: _Ctx) -> Answer:
        _, dep = self._deployment_from(ctx)
        for s in dep.statuses:
            if s.id == int(ctx.params["status_id"]):
                return Answer(200, self._deployment_status_shape(ctx.base, dep, s))
        raise _not_found()

    # ---- pulls, issues, comments -----------------------------------------------------------------

    def _issue(self, ctx: _Ctx) -> tuple[_Repo, _Issue]:
        repo = self._repo(ctx)
        issue = self._issues.get((repo.full_name.lower(), int(ctx.params["number"])))
        if issue is None:
            raise _not_found()
        return repo, issue

    def _get_pull(self, ctx: _Ctx) -> Answer:
        _, issue = self._issue(ctx)
        if not issue.is_pull:
            raise _not_found()
        return Answer(200, self._pull_shape(ctx.base, issue))

    def _get_issue(self, ctx: _Ctx) -> Answer:
        _, issue = self._issue(ctx)
        return Answer(200, self._issue_shape(ctx.base, issue))

    def _list_issue_comments(self, ctx: _Ctx) -> Answer:
        repo, issue = self._issue(ctx)
        found = [
            self._comment_shape(ctx.base, c)
            for c in self._comments.values()
            if c.repo == repo.full_name and c.issue_number == issue.number and not c.deleted
        ]
        return self._page(ctx, found)

    def _create_issue_comment(self, ctx: _Ctx) -> Answer:
        repo, issue = self._issue(ctx)
        body = ctx.field("body")
        if not isinstance(body, str) or not body:
            raise _invalid("IssueComment", "body", "body is missing", code="missing_field")
        now = time.time()
        comment = _Comment(self._next("comment"), repo.full_name, issue.number, body, ctx.identity, now, now)
        self._comments[comment.id] = comment
        issue.updated_at = now
        shape = self._comment_shape(ctx.base, comment)
        return Answer(201, shape, {"Location": shape["url"]})

    def _comment_from(self, ctx: _Ctx) -> _Comment:
        repo = self._repo(ctx)
        comment = self._comments.get(int(ctx.params["comment_id"]))
        if comment is None or comment.deleted or comment.repo != repo.full_name:
            raise _not_found()
        return comment

    def _get_issue_comment(self, ctx: _Ctx) -> Answer:
        return Answer(200, self._comment_shape(ctx.base, self._comment_from(ctx)))

    def _edit_issue_comment(self, ctx: _Ctx) -> Answer:
        comment = self._comment_from(ctx)
        body = ctx.field("body")
        if not isinstance(body, str) or not body:
            raise _invalid("IssueComment", "body", "body is missing", code="missing_field")
        comment.body = body
        comment.updated_at = time.time()
        return Answer(200, self._comment_shape(ctx.base, comment))

    def _delete_issue_comment(self, ctx: _Ctx) -> Answer:
        self._comment_from(ctx).deleted = True
        return Answer(204, None)

    def _reaction_shape(self, base: str, r: _Reaction) -> dict[str, Any]:
        return {
            "id": r.id,
            "node_id": f"REA_lADO{r.id}",
            "user": self._identity_shape(base, r.user),
            "content": r.content,
            "created_at": _iso(r.created_at),
        }

    def _create_comment_reaction(self, ctx: _Ctx) -> Answer:
        comment = self._comment_from(ctx)
        content = ctx.field("content")
        if content not in REACTIONS:
            raise _invalid("Reaction", "content", "content is not included in the list")
        mine = self._reactions.setdefault(comment.id, [])
        for r in mine:
            if r.content == content and r.user.login == ctx.identity.login:
                return Answer(200, self._reaction_shape(ctx.base, r))  # GitHub: already there
        reaction = _Reaction(self._next("status"), content, ctx.identity, time.time())
        mine.append(reaction)
        return Answer(201, self._reaction_shape(ctx.base, reaction))

    def _list_comment_reactions(self, ctx: _Ctx) -> Answer:
        comment = self._comment_from(ctx)
        found = [
            r for r in self._reactions.get(comment.id, []) if ctx.query.get("content") in (None, r.content)
        ]
        return self._page(ctx, [self._reaction_shape(ctx.base, r) for r in found])

    def _get_collaborator_permission(self, ctx: _Ctx) -> Answer:
        repo = self._repo(ctx)
        login = ctx.params["username"]
        known = {u.lower() for u in (repo.owner, *self._users)}
        if login.lower() not in known:
            raise _not_found()
        role = self._roles.get((repo.full_name.lower(), login.lower()))
        if role is None:
            role = "admin" if login.lower() == repo.owner.lower() else ("none" if repo.private else "read")
        permission = ROLE_PERMISSION.get(role, "none")
        user = self._user_shape(ctx.base, login)
        user["permissions"] = {
            "admin": permission == "admin",
            "maintain": role in ("admin", "maintain"),
            "push": permission in ("admin", "write"),
            "triage": role in ("admin", "maintain", "write", "triage"),
            "pull": permission != "none",
        }
        user["role_name"] = role
        return Answer(200, {"permission": permission, "role_name": role, "user": user})

    # ---- helpers ---------------------------------------------------------------------------------

    def _next(self, kind: str) -> int:
        with self._lock:
            self._ids[kind] += 1
            return self._ids[kind]

    def _user_id(self, login: str) -> int:
        with self._lock:
            if login not in self._user_ids:
                self._user_ids[login] = self._next("user")
            return self._user_ids[login]

    def _installation_for(self, account: str) -> _Installation | None:
        for inst in self._installations.values():
            if inst.account.lower() == account.lower():
                return inst
        return None

    def _page(self, ctx: _Ctx, items: list[Any]) -> Answer:
        try:
            per_page = max(1, min(100, int(ctx.query.get("per_page", "30"))))
            page = max(1, int(ctx.query.get("page", "1")))
        except ValueError as e:
            raise GitHubError(400, "Invalid pagination parameters") from e
        last = max(1, -(-len(items) // per_page))
        chunk = items[(page - 1) * per_page : page * per_page]
        links = []

        def link(p: int, rel: str) -> str:
            query = {**ctx.query, "per_page": str(per_page), "page": str(p)}
            return f'<{ctx.request_url.split("?")[0]}?{urllib.parse.urlencode(query)}>; rel="{rel}"'

        if page < last:
            links += [link(page + 1, "next"), link(last, "last")]
        if page > 1:
            links += [link(1, "first"), link(page - 1, "prev")]
        return Answer(200, chunk, {"Link": ", ".join(links)} if links else {})

    # ---- response shapes -------------------------------------------------------------------------

    def _user_shape(self, base: str, login: str, user_type: str = "User") -> dict[str, Any]:
        uid = self._user_id(login)
        url = f"{base}/users/{urllib.parse.quote(login)}"
        return {
            "login": login,
            "id": uid,
            "node_id": f"MDQ6VXNlcj{uid}",
            "avatar_url": f"https://avatars.githubusercontent.com/u/{uid}?v=4",
            "gravatar_id": "",
            "url": url,
            "html_url": f"https://github.com/{login}",
            "followers_url": f"{url}/followers",
            "following_url": f"{url}/following{{/other_user}}",
            "gists_url": f"{url}/gists{{/gist_id}}",
            "starred_url": f"{url}/starred{{/owner}}{{/repo}}",
            "subscriptions_url": f"{url}/subscriptions",
            "organizations_url": f"{url}/orgs",
            "repos_url": f"{url}/repos",
            "events_url": f"{url}/events{{/privacy}}",
            "received_events_url": f"{url}/received_events",
            "type": user_type,
            "user_view_type": "public",
            "site_admin": False,
        }

    def _identity_shape(self, base: str, identity: _Identity) -> dict[str, Any]:
        return self._user_shape(base, identity.login, identity.user_type)

    def _app_shape(self, base: str) -> dict[str, Any]:
        owner = next(iter(self._installations.values()), None)
        owner_login = owner.account if owner else "acme"
        return {
            "id": self.app_id,
            "slug": self.app_slug,
            "node_id": f"A_kwDO{self.app_id}",
            "client_id": f"Iv1.{hashlib.sha1(str(self.app_id).encode()).hexdigest()[:16]}",
            "owner": self._user_shape(base, owner_login, "Organization"),
            "name": self.app_slug,
            "description": "shipit test app",
            "external_url": "https://shipit.example.com",
            "html_url": f"https://github.com/apps/{self.app_slug}",
            "created_at": _iso(time.time() - 86400),
            "updated_at": _iso(time.time() - 86400),
            "permissions": dict(DEFAULT_PERMISSIONS),
            "events": list(APP_EVENTS),
            "installations_count": len(self._installations),
        }

    def _installation_shape(self, base: str, inst: _Installation) -> dict[str, Any]:
        return {
            "id": inst.id,
            "account": self._user_shape(base, inst.account, inst.account_type),
            "repository_selection": "all",
            "access_tokens_url": f"{base}/app/installations/{inst.id}/access_tokens",
            "repositories_url": f"{base}/installation/repositories",
            "html_url": f"https://github.com/organizations/{inst.account}/settings/installations/{inst.id}",
            "app_id": self.app_id,
            "app_slug": self.app_slug,
            "target_id": inst.account_id,
            "target_type": inst.account_type,
            "permissions": dict(DEFAULT_PERMISSIONS),
            "events": list(APP_EVENTS),
            "created_at": _iso(inst.created_at),
            "updated_at": _iso(inst.created_at),
            "single_file_name": None,
            "has_multiple_single_files": False,
            "single_file_paths": [],
            "suspended_by": None,
            "suspended_at": None,
        }

    def _performed_via(self, base: str, identity: _Identity) -> dict[str, Any] | None:
        return self._app_shape(base) if identity.kind == "installation" else None

    def _repo_shape(self, base: str, repo: _Repo) -> dict[str, Any]:
        url = f"{base}/repos/{repo.full_name}"
        html = f"https://github.com/{repo.full_name}"
        stamp = _iso(repo.created_at)
        shape: dict[str, Any] = {
            "id": repo.id,
            "node_id": f"R_kgDO{repo.id}",
            "name": repo.name,
            "full_name": repo.full_name,
            "private": repo.private,
            "owner": self._user_shape(base, repo.owner, "Organization"),
            "html_url": html,
            "description": None,
            "fork": False,
            "url": url,
            "created_at": stamp,
            "updated_at": stamp,
            "pushed_at": stamp,
            "git_url": f"git://github.com/{repo.full_name}.git",
            "ssh_url": f"git@github.com:{repo.full_name}.git",
            "clone_url": f"{html}.git",
            "svn_url": html,
            "homepage": None,
            "size": 0,
            "stargazers_count": 0,
            "watchers_count": 0,
            "language": "Python",
            "has_issues": True,
            "has_projects": False,
            "has_downloads": True,
            "has_wiki": False,
            "has_pages": False,
            "has_discussions": False,
            "forks_count": 0,
            "mirror_url": None,
            "archived": False,
            "disabled": False,
            "open_issues_count": sum(1 for (r, _), i in self._issues.items() if r == repo.full_name.lower()
                                     and i.state == "open"),
            "license": None,
            "allow_forking": True,
            "is_template": False,
            "web_commit_signoff_required": False,
            "topics": [],
            "visibility": "private" if repo.private else "public",
            "forks": 0,
            "open_issues": 0,
            "watchers": 0,
            "default_branch": repo.default_branch,
            "permissions": {"admin": False, "maintain": False, "push": True, "triage": True, "pull": True},
            "network_count": 0,
            "subscribers_count": 0,
        }  # fmt: skip
        for key, suffix in _REPO_URL_SUFFIXES.items():
            shape[key] = url + suffix
        return shape

    def _commit_shape(self, base: str, repo: _Repo, sha: str) -> dict[str, Any]:
        url = f"{base}/repos/{repo.full_name}"
        stamp = _iso(repo.created_at)
        person = {"name": "Octo Cat", "email": "octocat@example.com", "date": stamp}
        return {
            "url": f"{url}/commits/{sha}",
            "sha": sha,
            "node_id": f"C_kwDO{sha[:12]}",
            "html_url": f"https://github.com/{repo.full_name}/commit/{sha}",
            "comments_url": f"{url}/commits/{sha}/comments",
            "commit": {
                "url": f"{url}/git/commits/{sha}",
                "author": person,
                "committer": person,
                "message": f"Commit {sha[:7]}",
                "tree": {"url": f"{url}/git/trees/{_fake_sha('tree' + sha)}", "sha": _fake_sha("tree" + sha)},
                "comment_count": 0,
                "verification": {"verified": False, "reason": "unsigned", "signature": None, "payload": None},
            },
            "author": self._user_shape(base, "octocat"),
            "committer": self._user_shape(base, "octocat"),
            "parents": [],
            "stats": {"additions": 0, "deletions": 0, "total": 0},
            "files": [],
        }

    def _commit_status_shape(self, base: str, s: _CommitStatus) -> dict[str, Any]:
        stamp = _iso(s.created_at)
        creator = self._identity_shape(base, s.creator)
        return {
            "url": f"{base}/repos/{s.repo}/statuses/{s.sha}",
            "avatar_url": creator["avatar_url"],
            "id": s.id,
            "node_id": f"SC_kwDO{s.id}",
            "state": s.state,
            "description": s.description,
            "target_url": s.target_url,
            "context": s.context,
            "created_at": stamp,
            "updated_at": stamp,
            "creator": creator,
        }

    def _deployment_shape(self, base: str, d: _Deployment) -> dict[str, Any]:
        repo_url = f"{base}/repos/{d.repo}"
        url = f"{repo_url}/deployments/{d.id}"
        return {
            "url": url,
            "id": d.id,
            "node_id": f"DE_kwDO{d.id}",
            "sha": d.sha,
            "ref": d.ref,
            "task": d.task,
            "payload": copy.deepcopy(d.payload),
            "original_environment": d.original_environment,
            "environment": d.environment,
            "description": d.description,
            "creator": self._identity_shape(base, d.creator),
            "created_at": _iso(d.created_at),
            "updated_at": _iso(d.updated_at),
            "statuses_url": f"{url}/statuses",
            "repository_url": repo_url,
            "transient_environment": d.transient_environment,
            "production_environment": d.production_environment,
            "performed_via_github_app": self._performed_via(base, d.creator),
        }

    def _deployment_status_shape(self, base: str, d: _Deployment, s: _DeploymentStatus) -> dict[str, Any]:
        repo_url = f"{base}/repos/{d.repo}"
        dep_url = f"{repo_url}/deployments/{d.id}"
        stamp = _iso(s.created_at)
        return {
            "url": f"{dep_url}/statuses/{s.id}",
            "id": s.id,
            "node_id": f"DES_kwDO{s.id}",
            "state": s.state,
            "creator": self._identity_shape(base, s.creator),
            "description": s.description,
            "environment": s.environment,
            "target_url": s.target_url,
            "created_at": stamp,
            "updated_at": stamp,
            "deployment_url": dep_url,
            "repository_url": repo_url,
            "environment_url": s.environment_url,
            "log_url": s.log_url,
            "performed_via_github_app": self._performed_via(base, s.creator),
        }

    def _issue_shape(self, base: str, i: _Issue) -> dict[str, Any]:
        repo_url = f"{base}/repos/{i.repo}"
        url = f"{repo_url}/issues/{i.number}"
        kind = "pull" if i.is_pull else "issues"
        comments = sum(
            1
            for c in self._comments.values()
            if c.repo == i.repo and c.issue_number == i.number and not c.deleted
        )
        shape: dict[str, Any] = {
            "url": url,
            "repository_url": repo_url,
            "labels_url": f"{url}/labels{{/name}}",
            "comments_url": f"{url}/comments",
            "events_url": f"{url}/events",
            "html_url": f"https://github.com/{i.repo}/{kind}/{i.number}",
            "id": i.id,
            "node_id": f"I_kwDO{i.id}",
            "number": i.number,
            "title": i.title,
            "user": self._user_shape(base, i.user),
            "labels": [],
            "state": i.state,
            "locked": False,
            "assignee": None,
            "assignees": [],
            "milestone": None,
            "comments": comments,
            "created_at": _iso(i.created_at),
            "updated_at": _iso(i.updated_at),
            "closed_at": _iso(i.closed_at) if i.closed_at else None,
            "author_association": "MEMBER",
            "active_lock_reason": None,
            "body": i.body,
            "state_reason": None,
        }
        if i.is_pull:
            pull_url = f"{repo_url}/pulls/{i.number}"
            shape["pull_request"] = {
                "url": pull_url,
                "html_url": shape["html_url"],
                "diff_url": shape["html_url"] + ".diff",
                "patch_url": shape["html_url"] + ".patch",
                "merged_at": _iso(i.updated_at) if i.merged else None,
            }
        return shape

    def _pull_shape(self, base: str, i: _Issue) -> dict[str, Any]:
        repo_url = f"{base}/repos/{i.repo}"
        url = f"{repo_url}/pulls/{i.number}"
        html = f"https://github.com/{i.repo}/pull/{i.number}"
        repo = self._repos[i.repo.lower()]
        head_repo = self._repos.get(i.head_repo.lower(), repo)
        issue = self._issue_shape(base, i)

        def side(ref: str, sha: str, r: _Repo) -> dict[str, Any]:
            return {
                "label": f"{r.owner}:{ref}",
                "ref": ref,
                "sha": sha,
                "user": self._user_shape(base, r.owner, "Organization"),
                "repo": self._repo_shape(base, r),
            }

        return {
            "url": url,
            "id": i.id + 1,
            "node_id": f"PR_kwDO{i.id}",
            "html_url": html,
            "diff_url": f"{html}.diff",
            "patch_url": f"{html}.patch",
            "issue_url": f"{repo_url}/issues/{i.number}",
            "commits_url": f"{url}/commits",
            "review_comments_url": f"{url}/comments",
            "review_comment_url": f"{repo_url}/pulls/comments{{/number}}",
            "comments_url": f"{repo_url}/issues/{i.number}/comments",
            "statuses_url": f"{repo_url}/statuses/{i.head_sha}",
            "number": i.number,
            "state": i.state,
            "locked": False,
            "title": i.title,
            "user": self._user_shape(base, i.user),
            "body": i.body,
            "labels": [],
            "milestone": None,
            "active_lock_reason": None,
            "created_at": issue["created_at"],
            "updated_at": issue["updated_at"],
            "closed_at": issue["closed_at"],
            "merged_at": issue["updated_at"] if i.merged else None,
            "merge_commit_sha": _fake_sha(f"merge{i.repo}{i.number}{i.head_sha}"),
            "assignee": None,
            "assignees": [],
            "requested_reviewers": [],
            "requested_teams": [],
            "head": side(i.head_ref, i.head_sha, head_repo),
            "base": side(i.base_ref, i.base_sha, repo),
            "_links": {
                "self": {"href": url},
                "html": {"href": html},
                "issue": {"href": f"{repo_url}/issues/{i.number}"},
                "comments": {"href": f"{repo_url}/issues/{i.number}/comments"},
                "review_comments": {"href": f"{url}/comments"},
                "review_comment": {"href": f"{repo_url}/pulls/comments{{/number}}"},
                "commits": {"href": f"{url}/commits"},
                "statuses": {"href": f"{repo_url}/statuses/{i.head_sha}"},
            },
            "author_association": "MEMBER",
            "auto_merge": None,
            "draft": i.draft,
            "merged": i.merged,
            "mergeable": None if i.merged else True,
            "rebaseable": True,
            "mergeable_state": "clean",
            "merged_by": None,
            "comments": issue["comments"],
            "review_comments": 0,
            "maintainer_can_modify": False,
            "commits": 1,
            "additions": 1,
            "deletions": 0,
            "changed_files": 1,
        }

    def _comment_shape(self, base: str, c: _Comment) -> dict[str, Any]:
        repo_url = f"{base}/repos/{c.repo}"
        issue = self._issues.get((c.repo.lower(), c.issue_number))
        kind = "pull" if issue is not None and issue.is_pull else "issues"
        url = f"{repo_url}/issues/comments/{c.id}"
        return {
            "id": c.id,
            "node_id": f"IC_kwDO{c.id}",
            "url": url,
            "html_url": f"https://github.com/{c.repo}/{kind}/{c.issue_number}#issuecomment-{c.id}",
            "body": c.body,
            "user": self._identity_shape(base, c.creator),
            "created_at": _iso(c.created_at),
            "updated_at": _iso(c.updated_at),
            "issue_url": f"{repo_url}/issues/{c.issue_number}",
            "author_association": "NONE",
            "performed_via_github_app": self._performed_via(base, c.creator),
            "reactions": {
                "url": f"{url}/reactions",
                "total_count": len(self._reactions.get(c.id, [])),
                **{k: sum(r.content == k for r in self._reactions.get(c.id, [])) for k in sorted(REACTIONS)},
            },
        }


_REPO_URL_SUFFIXES = {
    "archive_url": "/{archive_format}{/ref}",
    "assignees_url": "/assignees{/user}",
    "blobs_url": "/git/blobs{/sha}",
    "branches_url": "/branches{/branch}",
    "collaborators_url": "/collaborators{/collaborator}",
    "comments_url": "/comments{/number}",
    "commits_url": "/commits{/sha}",
    "compare_url": "/compare/{base}...{head}",
    "contents_url": "/contents/{+path}",
    "contributors_url": "/contributors",
    "deployments_url": "/deployments",
    "downloads_url": "/downloads",
    "events_url": "/events",
    "forks_url": "/forks",
    "git_commits_url": "/git/commits{/sha}",
    "git_refs_url": "/git/refs{/sha}",
    "git_tags_url": "/git/tags{/sha}",
    "hooks_url": "/hooks",
    "issue_comment_url": "/issues/comments{/number}",
    "issue_events_url": "/issues/events{/number}",
    "issues_url": "/issues{/number}",
    "keys_url": "/keys{/key_id}",
    "labels_url": "/labels{/name}",
    "languages_url": "/languages",
    "merges_url": "/merges",
    "milestones_url": "/milestones{/number}",
    "notifications_url": "/notifications{?since,all,participating}",
    "pulls_url": "/pulls{/number}",
    "releases_url": "/releases{/id}",
    "stargazers_url": "/stargazers",
    "statuses_url": "/statuses/{sha}",
    "subscribers_url": "/subscribers",
    "subscription_url": "/subscription",
    "tags_url": "/tags",
    "teams_url": "/teams",
    "trees_url": "/git/trees{/sha}",
}


def _fake_sha(seed: str) -> str:
    return hashlib.sha1(seed.encode()).hexdigest()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _request_url(base: str, path: str, query: Mapping[str, str]) -> str:
    url = base + path
    return f"{url}?{urllib.parse.urlencode(query)}" if query else url
