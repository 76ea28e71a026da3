"""The exact-path table (shipit.routefast) answers every request exactly as FastAPI's router does.

Two instances of the real app over HTTP, one with the table in front of its router and one with the
router alone, get the same requests: every path without parameters the app serves, with every
method, with and without a trailing slash, plus 404s and paths with parameters.  Status, headers
(but the request id and date) and body must be equal.
"""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from shipit import routefast
from shipit.main import create_app
from shipit.runtime import Runtime
from tests.conftest import serving

SKIP_BODY = {"/metrics"}  # its counters move between the two calls


def _plain(app: FastAPI) -> FastAPI:
    """The same app with FastAPI's router alone (the table's fallback is that router)."""
    stack = app.router.middleware_stack
    assert isinstance(stack, routefast.ExactPaths)
    app.router.middleware_stack = stack.fallback
    return app


def _comparable(r: httpx.Response, path: str, base: str) -> tuple[object, ...]:
    skip = ("x-request-id", "date", "content-length")
    headers = {k: v.replace(base, "BASE") for k, v in r.headers.items() if k not in skip}
    body = b"" if path in SKIP_BODY else r.content.replace(base.encode(), b"BASE")
    return r.status_code, sorted(headers.items()), body


async def test_the_table_answers_every_request_as_the_router_does(rt: Runtime) -> None:
    fast, plain = create_app(rt=rt), _plain(create_app(rt=rt))
    plans = routefast.table(fast.router)
    # What the table serves itself: the app's own literal routes and those of included routers.
    assert ("/healthz", "GET") in plans and ("/github/webhook", "POST") in plans
    assert ("/slack/events", "POST") in plans and ("/api/v1/apps", "GET") in plans
    assert ("/healthz", "HEAD") not in plans  # a GET APIRoute does not serve HEAD: the router's 405
    paths = sorted({path for path, _ in plans})
    requests = [(m, p) for p in paths for m in routefast.METHODS]
    requests += [(m, p.rstrip("/") + "/") for p in paths if p != "/" for m in ("GET", "POST")]
    requests += [("GET", "/nothing/here"), ("POST", "/api/v1/nothing"), ("GET", "/api/v1/apps/web")]
    requests += [("GET", "/api/v1/projects/acme/environments"), ("DELETE", "/api/v1/apps/web/secrets/X")]
    async with (
        serving(fast) as fast_url,
        serving(plain) as plain_url,
        httpx.AsyncClient(timeout=30, follow_redirects=False) as client,
    ):
        for method, path in requests:
            got = await client.request(method, fast_url + path, content=b"{}")
            want = await client.request(method, plain_url + path, content=b"{}")
            assert _comparable(got, path, fast_url) == _comparable(want, path, plain_url), (method, path)
            assert got.headers["x-request-id"]


async def test_routes_added_after_the_first_request_are_served(rt: Runtime) -> None:
    app = create_app(rt=rt)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        assert (await client.get("/late")).status_code == 404
        assert (await client.get("/healthz")).json() == {"status": "ok"}

        @app.get("/late")
        async def late() -> dict[str, str]:
            return {"late": "yes"}

        r = await client.get("/late")
        assert r.status_code == 200 and r.json() == {"late": "yes"}
        assert r.headers["x-content-type-options"] == "nosniff"  # still behind the edge
        assert ("/late", "GET") in routefast.table(app.router)
