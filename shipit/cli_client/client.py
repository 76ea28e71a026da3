"""The HTTP side of the CLI: one thin client for /api/v1, and failing with one line and an exit code."""

from __future__ import annotations

import contextlib
import os
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer

if TYPE_CHECKING:
    import ssl

    import httpx

USER_AGENT = "shipit-cli/0.5"
EXIT_API = 1
EXIT_SETUP = 2
# Settings.url's default: tests/shipit/test_cli_startup.py holds the two equal.
DEFAULT_URL = "http://127.0.0.1:8000"


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
        # httpx (and httpcore under it) is imported here, not at the top: `--help` and the setup
        # errors never talk HTTP, and every run of the CLI pays for what its modules import.
        import httpx

        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url,
            headers={
                "Authorization": f"Bearer {token}",
                "User-Agent": USER_AGENT,
                "Accept": "application/json",
            },
            timeout=httpx.Timeout(timeout, connect=10.0),
            verify=_tls_context(self.url),
        )

    def close(self) -> None:
        self._http.close()

    @contextlib.contextmanager
    def _transport_errors(self) -> Iterator[None]:
        import httpx

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
        import httpx

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


def _tls_context(url: str) -> ssl.SSLContext | bool:
    """httpx's default (True: certifi's CA bundle, or SSL_CERT_FILE/DIR) unless the client cannot do TLS.

    Loading the CA bundle takes 0.1-0.3 s, every run.  An http:// SHIPIT_URL without a proxy never
    opens TLS (every request goes to that base URL, redirects are not followed), so it gets a context
    that still verifies everything but trusts no CA: were it ever used, it would refuse, not accept.
    """
    import ssl
    import urllib.request  # httpx reads proxies from the environment with the same function

    if not url.startswith("http://") or any(
        urllib.request.getproxies().get(scheme) for scheme in ("http", "https", "all")
    ):
        return True
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def _reason(e: Exception) -> str:
    text = str(e) or type(e).__name__
    if "refused" in text.lower():
        return "connection refused"
    return text.split("\n")[0]


def client_settings() -> tuple[str, str]:
    """SHIPIT_URL and SHIPIT_TOKEN (stripped; "" when unset), read as shipit.settings.Settings reads them.

    Not through Settings itself: pydantic-settings and the class of every server option took a third of
    the CLI's start, and the client needs two strings.  The same sources in the same order: the
    environment (names in any case, an empty value counts) over a .env file in the working directory
    (parsed by python-dotenv, as pydantic-settings does), over the default.
    """
    values: dict[str, str | None] = {}
    env_file = Path(".env")
    if env_file.is_file() or env_file.is_fifo():
        from dotenv import dotenv_values  # only when there is a file to read: it is not free either

        values.update((k.lower(), v) for k, v in dotenv_values(env_file, encoding="utf-8").items())
    values.update((k.lower(), v) for k, v in os.environ.items())
    url = values.get("shipit_url")
    token = values.get("shipit_token")
    return (DEFAULT_URL if url is None else url), (token or "").strip()


@contextlib.contextmanager
def api() -> Iterator[Api]:
    url, token = client_settings()
    if not token:
        fail(
            "no API token: set SHIPIT_TOKEN (the first `shipit serve` prints an admin token; "
            "`shipit tokens create NAME` makes more)",
            code=EXIT_SETUP,
        )
    if not url.startswith(("http://", "https://")):
        fail(f"SHIPIT_URL must start with http:// or https://, got {url!r}", code=EXIT_SETUP)
    client = Api(url=url, token=token)
    try:
        yield client
    finally:
        client.close()


def q(segment: str) -> str:
    """A path segment: names are DNS labels, but a typo must not turn into another route."""
    return urllib.parse.quote(segment, safe="")
