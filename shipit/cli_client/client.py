"""The HTTP side of the CLI: one thin client for /api/v1, and failing with one line and an exit code."""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import Iterator
from typing import Any, NoReturn

import httpx
import pydantic
import typer

from shipit.settings import Settings

USER_AGENT = "shipit-cli/0.5"
EXIT_API = 1
EXIT_SETUP = 2


def fail(message: str, *, code: int = EXIT_API) -> NoReturn:
    """One line on stderr, then exit: scripts read the code, people read the line."""
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    raise typer.Exit(code)


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        message = str(error["message"])
        field = error.get("field")
        envs = error.get("environments")
        if error.get("type") == "SeveralEnvironments" and isinstance(envs, list) and envs:
            # The API words it for its query parameter; here it is a flag.
            message = f"{message.partition(': say which')[0]}: say which, with --env (e.g. --env {envs[0]})"
        # The API names the field in its messages; make sure it is there even when it is not.
        if field and str(field) not in message:
            message = f"{field}: {message}"
        if response.status_code == 401:
            message += " (check SHIPIT_TOKEN)"
        return message
    if isinstance(body, dict) and body.get("detail"):
        return f"{body['detail']} (HTTP {response.status_code})"
    return f"HTTP {response.status_code} from {response.request.method} {response.request.url.path}"


class Api:
    """A thin synchronous client for /api/v1; every failure ends the command with one line."""

    def __init__(self, *, url: str, token: str, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url,
            headers={
                "Authorization": f"Bearer {token}",
                "User-Agent": USER_AGENT,
                "Accept": "application/json",
            },
            timeout=httpx.Timeout(timeout, connect=10.0),
        )

    def close(self) -> None:
        self._http.close()

    @contextlib.contextmanager
    def _transport_errors(self) -> Iterator[None]:
        try:
            yield
        except httpx.ConnectError as e:
            fail(
                f"cannot connect to shipit at {self.url} ({_reason(e)}): is it running? "
                "Set SHIPIT_URL to where `shipit serve` listens.",
                code=EXIT_SETUP,
            )
        except httpx.TimeoutException:
            fail(f"shipit at {self.url} did not answer in time (SHIPIT_URL)", code=EXIT_SETUP)
        except httpx.TransportError as e:
            fail(f"talking to shipit at {self.url} failed: {_reason(e)} (SHIPIT_URL)", code=EXIT_SETUP)

    def call(self, method: str, path: str, *, body: Any = None, params: dict[str, Any] | None = None) -> Any:
        with self._transport_errors():
            response = self._http.request(
                method,
                f"/api/v1{path}",
                json=body,
                params={k: v for k, v in (params or {}).items() if v is not None},
            )
        if response.status_code >= 400:
            fail(_error_message(response))
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            fail(f"{self.url} did not answer like shipit does (not JSON): check SHIPIT_URL", code=EXIT_SETUP)

    def get(self, path: str, **params: Any) -> Any:
        return self.call("GET", path, params=params)

    def lines(self, path: str, *, params: dict[str, Any]) -> Iterator[str]:
        """Stream a text response line by line (pod logs), without a read timeout."""
        with (
            self._transport_errors(),
            self._http.stream(
                "GET", f"/api/v1{path}", params=params, timeout=httpx.Timeout(None, connect=10.0)
            ) as response,
        ):
            if response.status_code >= 400:
                response.read()
                fail(_error_message(response))
            yield from response.iter_lines()


def _reason(e: Exception) -> str:
    text = str(e) or type(e).__name__
    if "refused" in text.lower():
        return "connection refused"
    return text.split("\n")[0]


@contextlib.contextmanager
def api() -> Iterator[Api]:
    try:
        settings = Settings()
    except pydantic.ValidationError as e:
        first = e.errors()[0]
        name = "SHIPIT_" + "_".join(str(p) for p in first["loc"]).upper()
        fail(f"{name}: {first['msg']}", code=EXIT_SETUP)
    token = settings.token.get_secret_value().strip() if settings.token else ""
    if not token:
        fail(
            "no API token: set SHIPIT_TOKEN (the first `shipit serve` prints an admin token; "
            "`shipit tokens create NAME` makes more)",
            code=EXIT_SETUP,
        )
    if not settings.url.startswith(("http://", "https://")):
        fail(f"SHIPIT_URL must start with http:// or https://, got {settings.url!r}", code=EXIT_SETUP)
    client = Api(url=settings.url, token=token)
    try:
        yield client
    finally:
        client.close()


def q(segment: str) -> str:
    """A path segment: names are DNS labels, but a typo must not turn into another route."""
    return urllib.parse.quote(segment, safe="")
