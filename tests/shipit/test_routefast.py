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
from tests.shipit.conftest import make_token

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


async def test_paths_with_parameters_are_routed_once_then_replayed_with_their_own_values(rt: Runtime) -> None:
    fast, plain = create_app(rt=rt), _plain(create_app(rt=rt))
    token = await make_token(rt)
    auth = {"Authorization": f"Bearer {token}"}
    # Each answer names what the path said (a missing project, app or deploy), so a decision replayed
    # with another path's values would show.
    requests = [
        ("GET", "/api/v1/apps/web"), ("GET", "/api/v1/apps/api"), ("GET", "/api/v1/apps/web/deploys"),
        ("POST", "/api/v1/apps/web/deploys"), ("POST", "/api/v1/apps/api/deploys"),
        ("GET", "/api/v1/deploys/12"), ("GET", "/api/v1/deploys/13"), ("GET", "/api/v1/deploys/x"),
        ("POST", "/api/v1/apps/web/lock"), ("POST", "/api/v1/apps/web/status"),  # a flag; not a flag
        ("PUT", "/api/v1/deploys/12"), ("GET", "/api/v1/projects/acme/environments"),
    ]  # fmt: skip
    async with (
        serving(fast) as fast_url,
        serving(plain) as plain_url,
        httpx.AsyncClient(timeout=30, follow_redirects=False, headers=auth) as client,
    ):
        for _ in range(2):  # the second time from what the first one left in `seen`
            for method, path in requests:
                got = await client.request(method, fast_url + path, json={"image": "x/y:1"})
                want = await client.request(method, plain_url + path, json={"image": "x/y:1"})
                assert _comparable(got, path, fast_url) == _comparable(want, path, plain_url), (method, path)
    stack = fast.router.middleware_stack
    assert isinstance(stack, routefast.ExactPaths)
    seen = stack.seen
    assert seen[("/api/v1/apps/web", "GET")] is not None  # routed by the remembered decision
    assert seen[("/api/v1/apps/web/status", "POST")] is None  # not a route: the router answers
    got = await httpx.AsyncClient(transport=httpx.ASGITransport(app=fast), base_url="http://app").get(
        "/api/v1/apps/web", headers=auth
    )
    assert got.status_code == 404 and "web" in got.text


async def test_the_table_is_built_with_the_app_not_by_a_request(rt: Runtime) -> None:
    app = create_app(rt=rt)
    stack = app.router.middleware_stack
    assert isinstance(stack, routefast.ExactPaths)
    # Built by create_app: FastAPI works out every included route's models then, not the first request.
    assert stack.builds == 1
    assert ("/github/webhook", "POST") in stack.plans() and ("/api/v1/apps", "GET") in stack.plans()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        assert stack.builds == 1
        # Another app built in the same process adds routes of its own: this app's table stands.
        other = FastAPI()

        @other.get("/other")
        async def elsewhere() -> dict[str, str]:
            return {"other": "yes"}

        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/other")).status_code == 404
        assert stack.builds == 1
        # A route added to this app is one the table must know: rebuilt once, then served from it.
        app.add_api_route("/later", elsewhere, methods=["GET"])
        assert (await client.get("/later")).json() == {"other": "yes"}
        assert (await client.get("/later")).json() == {"other": "yes"}
        assert stack.builds == 2 and ("/later", "GET") in stack.plans()
