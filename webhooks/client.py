"""PyGithub, set up once, called off the event loop, with GitHub's failures turned into ours.

PyGithub is synchronous, so every call runs in a thread (`asyncio.to_thread`).
Two ways to authenticate: a plain token, or a GitHub App (app id + private
key).  As an App, the installation for each repository is looked up once and
PyGithub's AppInstallationAuth mints installation tokens and refreshes them
before they expire; if GitHub still says 401 (a token revoked early), the
installation's client is rebuilt and the call tried once more.

PyGithub's own retry loop is off (it sleeps inside the thread on rate limits);
rate limits and 5xx become core.errors.TransientError with the wait GitHub
asked for, and the job queue retries the notification later.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import requests
from github import Auth, Github, GithubException, GithubIntegration
from github.Repository import Repository

from core.errors import PermanentError, TransientError, retry_after_seconds

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class Credentials:
    api_url: str = "https://api.github.com"
    token: str | None = field(default=None, repr=False)
    app_id: str | None = None
    private_key: str | None = field(default=None, repr=False)
    timeout: int = 15
    # PyGithub's defaults follow GitHub's advice for mutating calls; tests set them to 0.
    seconds_between_requests: float | None = 0.25
    seconds_between_writes: float | None = 1.0

    @property
    def mode(self) -> str | None:
        if self.app_id and self.private_key:
            return "app"
        if self.token:
            return "token"
        return None


def _retry_after(headers: dict[str, Any] | None) -> float | None:
    if not headers:
        return None
    given = retry_after_seconds(headers, default=None)
    if given is not None:
        return given
    # GitHub's primary limit says when the window resets instead.
    lowered = {str(k).lower(): v for k, v in headers.items()}
    if str(lowered.get("x-ratelimit-remaining", "")) == "0" and lowered.get("x-ratelimit-reset"):
        try:
            return max(1.0, float(lowered["x-ratelimit-reset"]) - time.time())
        except ValueError:
            return None
    return None


def translate(e: GithubException, *, what: str) -> Exception:
    """A PyGithub error as one of ours (the text names the call, never a credential)."""
    message = e.message or (e.data.get("message") if isinstance(e.data, dict) else None) or ""
    retry_after = _retry_after(e.headers)
    status = e.status
    rate_limited = status == 429 or (status == 403 and ("rate limit" in message.lower() or retry_after))
    if rate_limited:
        return TransientError(f"{what}: GitHub rate limit ({message})", retry_after=retry_after)
    if status >= 500:
        return TransientError(f"{what}: GitHub answered {status}", retry_after=retry_after)
    if status == 401:
        return PermanentError(
            f"{what}: GitHub rejected shipit's credentials (401 {message}); check "
            "SHIPIT_GITHUB_TOKEN or SHIPIT_GITHUB_APP_ID / SHIPIT_GITHUB_PRIVATE_KEY"
        )
    if status == 404:
        return PermanentError(f"{what}: not found, or not visible to shipit's GitHub credentials")
    return PermanentError(f"{what}: GitHub answered {status} {message}".rstrip())


def _download(url: str, *, dest: Path, max_bytes: int, what: str, timeout: int) -> None:
    try:
        with requests.get(url, stream=True, timeout=timeout, allow_redirects=True) as response:
            if response.status_code >= 500 or response.status_code == 429:
                raise TransientError(f"{what}: codeload answered {response.status_code}")
            if response.status_code != 200:
                raise PermanentError(f"{what}: codeload answered {response.status_code}")
            written = 0
            with dest.open("wb") as f:
                for chunk in response.iter_content(chunk_size=65536):
                    written += len(chunk)
                    if written > max_bytes:
                        raise PermanentError(f"{what}: the tarball is larger than {max_bytes} bytes")
                    f.write(chunk)
    except requests.RequestException as e:
        # The URL carries a token: name the error's type only.
        raise TransientError(f"{what}: cannot download it ({type(e).__name__})") from None


class GitHubClient:
    def __init__(self, *, credentials: Credentials) -> None:
        if credentials.mode is None:
            raise ValueError("GitHub credentials need a token, or an app id and a private key")
        self.credentials = credentials
        self._lock = threading.Lock()
        self._by_installation: dict[int, Github] = {}
        self._installation_of: dict[str, int] = {}
        self._token_client: Github | None = None
        self._integration: GithubIntegration | None = None
        common: dict[str, Any] = {
            "base_url": credentials.api_url.rstrip("/"),
            "timeout": credentials.timeout,
            "retry": None,
            "seconds_between_requests": credentials.seconds_between_requests,
            "seconds_between_writes": credentials.seconds_between_writes,
            "lazy": True,
        }
        if credentials.mode == "app":
            assert credentials.app_id and credentials.private_key
            self._integration = GithubIntegration(
                auth=Auth.AppAuth(int(credentials.app_id), credentials.private_key), **common
            )
        else:
            assert credentials.token
            self._token_client = Github(auth=Auth.Token(credentials.token), **common)

    @property
    def mode(self) -> str:
        return self.credentials.mode or ""

    async def call(self, *, repo: str, what: str, fn: Callable[[Repository], T]) -> T:
        """Run `fn(repository)` in a thread; errors come back as TransientError / PermanentError."""
        return await asyncio.to_thread(self._call, repo, what, fn)

    def _call(self, repo: str, what: str, fn: Callable[[Repository], T]) -> T:
        for attempt in (1, 2):
            try:
                return fn(self._github_for(repo).get_repo(repo))
            except GithubException as e:
                if e.status == 401 and self._integration is not None and attempt == 1:
                    log.warning("github: %s got 401; renewing the installation token and retrying", what)
                    self._forget(repo)
                    continue
                if e.status == 404 and self._integration is not None and attempt == 1 and self._moved(repo):
                    log.warning(
                        "github: %s got 404; the App was installed again on %s (a new installation); retrying",
                        what, repo,
                    )  # fmt: skip
                    continue
                raise translate(e, what=what) from None
            except requests.RequestException as e:
                raise TransientError(f"{what}: cannot reach GitHub ({type(e).__name__})") from None
        raise AssertionError("unreachable")

    def _github_for(self, repo: str) -> Github:
        if self._token_client is not None:
            return self._token_client
        assert self._integration is not None
        key = repo.lower()
        with self._lock:
            installation_id = self._installation_of.get(key)
        if installation_id is None:
            owner, _, name = repo.partition("/")
            installation_id = int(self._integration.get_repo_installation(owner, name).id)
            with self._lock:
                self._installation_of[key] = installation_id
        with self._lock:
            client = self._by_installation.get(installation_id)
            if client is None:
                # AppInstallationAuth fetches a token on first use and renews it before it expires.
                client = self._integration.get_github_for_installation(installation_id)
                self._by_installation[installation_id] = client
            return client

    def _moved(self, repo: str) -> bool:
        """After a 404: is the installation cached for `repo` no longer the App's installation there?

        An uninstalled App's installation is gone (installation.deleted), so minting a token for it
        answers 404; installed again, it has a new id.  The cached one is forgotten then (also when the
        App is not installed at all, so a later install is found), and True says a retry may work.
        A 404 for anything else (a missing issue) costs this one look-up and changes nothing.
        """
        assert self._integration is not None
        with self._lock:
            cached = self._installation_of.get(repo.lower())
        if cached is None:
            return False
        owner, _, name = repo.partition("/")
        try:
            current: int | None = int(self._integration.get_repo_installation(owner, name).id)
        except GithubException:
            current = None
        if current == cached:
            return False
        self._forget(repo)
        return current is not None

    def _forget(self, repo: str) -> None:
        with self._lock:
            installation_id = self._installation_of.pop(repo.lower(), None)
            if installation_id is not None:
                old = self._by_installation.pop(installation_id, None)
                if old is not None:
                    old.close()

    async def tarball(self, *, repo: str, sha: str, dest: Path, max_bytes: int) -> None:
        """Download the tarball of `repo` at `sha` to `dest` (core.builds.SourceFetcher).

        GitHub answers the API call with a redirect to codeload, whose URL carries a short-lived
        token for a private repository: it is followed without our credentials, never logged, and
        the download stops at `max_bytes`."""
        what = f"tarball of {repo}@{sha[:7]}"
        url = await self.call(repo=repo, what=what, fn=lambda r: r.get_archive_link("tarball", sha))
        await asyncio.to_thread(
            _download, url, dest=dest, max_bytes=max_bytes, what=what, timeout=self.credentials.timeout
        )

    async def close(self) -> None:
        def close_all() -> None:
            with self._lock:
                clients = list(self._by_installation.values())
                self._by_installation.clear()
            for c in clients:
                c.close()
            if self._token_client is not None:
                self._token_client.close()
            if self._integration is not None:
                self._integration.close()

        await asyncio.to_thread(close_all)
