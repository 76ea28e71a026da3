"""Routing without FastAPI's per-request search: an exact-path table, and prefix guards for the rest.

FastAPI (0.165 here) keeps an included router as one entry of the app's route table and, for every
request, tries each of its routes in turn, with per-route scope bookkeeping, twice (once to match,
once more to handle), re-reading every included router's route version each time.  Issue 13's
profile of the constant endpoint: routing was the larger part of what shipit's app costs over bare
FastAPI.  Two things here, both exact (they change no routing decision):

- `ExactPaths`: for every (path, method) that a route WITHOUT path parameters answers, the routing
  decision depends on nothing but the path and the method, so it is worked out once, by running the
  real routes' `matches` in the router's order on a probe, and replayed per request with a dict
  look-up: the same scope keys FastAPI's router sets, then the same route app.  A path WITH
  parameters is decided by nothing else either: the first request for a (path, method) works it out
  the same way, the parameters' converted values included, and later ones replay it (a bounded dict:
  the API's `POST /api/v1/apps/web/deploys` comes again and again).  Everything else (404, 405, a
  trailing-slash redirect, a HEAD the route does not serve, a request under a root path) goes to the
  normal router unchanged.  Both are rebuilt when a route is added anywhere (FastAPI's own
  `_mark_routes_changed`, watched) or the app's route list changes length.
- Prefix guards: an included router whose routes share a literal prefix the path does not start with
  matches none of them, FULL or PARTIAL, so it answers NONE at once (paths with parameters, 404s).

FastAPI's private names are feature-detected: where they are missing (an older or newer FastAPI),
included routers are left to the normal router and only the app's own routes are in the table.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import fastapi.routing as fr
from fastapi import FastAPI
from starlette.routing import Host, Match, Mount, Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

# Typed Any: private names, present or not depending on the FastAPI version.
_SCOPE_KEY: Any = getattr(fr, "_FASTAPI_SCOPE_KEY", None)
_INCLUDED_KEY: Any = getattr(fr, "_FASTAPI_INCLUDED_ROUTER_KEY", None)
_CONTEXT_KEY: Any = getattr(fr, "_FASTAPI_EFFECTIVE_ROUTE_CONTEXT_KEY", None)
_Included: Any = getattr(fr, "_IncludedRouter", None)
_route_selected: Callable[..., None] | None = getattr(fr, "_route_selected", None)


# ---------------------------------------------------------------- knowing when routes change

_generation = [0]


def _watch_route_changes() -> bool:
    """Count every `_mark_routes_changed` (FastAPI calls it on each route or router added)."""
    original = getattr(fr.APIRouter, "_mark_routes_changed", None)
    if original is None:
        return False
    if getattr(original, "shipit_watched", False):
        return True

    def marked(self: Any) -> None:
        _generation[0] += 1
        original(self)

    marked.shipit_watched = True  # type: ignore[attr-defined]
    fr.APIRouter._mark_routes_changed = marked  # type: ignore[method-assign]
    return True


_WATCHED = _watch_route_changes()
# Included routers are replayed only where FastAPI's included-router machinery is the one known here.
_FLATTEN = bool(_WATCHED and _SCOPE_KEY and _INCLUDED_KEY and _CONTEXT_KEY and _Included)


# ---------------------------------------------------------------- the exact-path table


class _Plan:
    """What the router would do for one (path, method): the scope keys it sets, the app it calls."""

    __slots__ = ("app", "child", "fastapi", "params", "path_format", "router")

    def __init__(
        self, *, router: Any, child: dict[str, Any], fastapi: dict[str, Any], app: ASGIApp, path_format: str
    ) -> None:
        self.router, self.app, self.path_format = router, app, path_format
        self.child = {k: v for k, v in child.items() if k != "path_params"}
        # The values the route's convertors made of this very path (none for a literal path).
        self.params: dict[str, Any] = dict(child.get("path_params") or {})
        self.fastapi = fastapi

    def enter(self, scope: Scope) -> ASGIApp:
        """Set the scope as the router would, and return the app to call (in the caller's frame: a
        coroutine less per request, and a frame less on every resumption of the request's task)."""
        if "router" not in scope:
            scope["router"] = self.router
        # As the route's own `matches` builds it: a copy of what the scope held, then this path's values.
        held = scope.get("path_params")
        scope["path_params"] = {**held, **self.params} if held else {**self.params}
        scope.update(self.child)
        if self.fastapi:
            scope.setdefault(_SCOPE_KEY, {}).update(self.fastapi)
        if _route_selected is not None and "fastapi.telemetry" in scope:
            _route_selected(scope=scope, path=self.path_format)
        return self.app


def _literal_paths(route: Any) -> list[str]:
    if _FLATTEN and isinstance(route, _Included):
        paths = []
        for context in route.effective_route_contexts():
            path = getattr(context.starlette_route, "path_format", None) or context.path_format
            if isinstance(path, str) and path.startswith("/") and "{" not in path:
                paths.append(path)
        return paths
    path = getattr(route, "path_format", None)
    if isinstance(route, Route) and isinstance(path, str) and "{" not in path:
        return [path]
    return []


def _decided_by_path(route: Any, memo: dict[int, tuple[Any, bool]] | None = None) -> bool:
    """True when `route.matches` looks at nothing but the scope's type, path and method.

    `memo` (for one `table` build, while the routes cannot change; by id, the route held alongside so
    that no id is reused): the answer for an included router walks all its routes, and the table asks
    it for every (path, method) probe."""
    if memo is not None and (known := memo.get(id(route))) is not None:
        return bool(known[1])
    if isinstance(route, Host):
        decided = False
    elif isinstance(route, Route | WebSocketRoute | Mount | fr.APIWebSocketRoute):
        decided = True
    elif _FLATTEN and isinstance(route, _Included):
        decided = not route.include_context.form_limits and all(
            _decided_by_path(c.starlette_route or c.original_route, memo)
            for c in route.effective_route_contexts()
        )
    else:
        decided = False
    if memo is not None:
        memo[id(route)] = (route, decided)
    return decided


def _plan(
    router: Any, path: str, method: str, decided: dict[int, tuple[Any, bool]] | None = None
) -> _Plan | None:
    """Route (path, method) as `router` would, on a probe; None where the normal router must decide
    (`decided`: `_decided_by_path`'s memo, when routing many probes over routes that stay as they are)."""
    probe: dict[str, Any] = {
        "type": "http", "path": path, "root_path": "", "method": method, "headers": [], "query_string": b"",
    }  # fmt: skip
    for route in router.routes:
        if not _decided_by_path(route, decided):
            return None
        match, child = route.matches(probe)
        if match is Match.FULL:
            break
    else:
        return None
    if isinstance(route, Route):  # APIRoute too: Route.handle calls route.app once the method is allowed
        if route.methods and method not in route.methods:
            return None
        return _Plan(router=router, child=child, fastapi={}, app=route.app, path_format=route.path_format)
    if not (_FLATTEN and isinstance(route, _Included)):
        return None
    node = route
    while True:  # as _IncludedRouter._handle_selected does, one nesting level at a time
        probe.setdefault(_SCOPE_KEY, {})[_INCLUDED_KEY] = node
        match, child, inner, context = node._match(probe)
        if match is not Match.FULL:
            return None
        if isinstance(inner, _Included):
            if inner.include_context.form_limits:
                return None
            node = inner
            continue
        if context is None:
            return None
        fastapi = {_INCLUDED_KEY: node, _CONTEXT_KEY: context}
        if isinstance(context.original_route, fr.APIRoute) and context.app is not None:
            if context.methods and method not in context.methods:
                return None
            return _Plan(
                router=router,
                child={**child, "route": context.original_route},
                fastapi=fastapi,
                app=context.app,
                path_format=context.path_format,
            )
        plain = context.starlette_route
        # A plain Starlette route (an ASGI app or a function endpoint): route.handle checks the
        # method and calls route.app; an inclusion's body limit would wrap it, so none is allowed here.
        if type(plain) is not Route or node.include_context.max_body_size is not None:
            return None
        if plain.methods and method not in plain.methods:
            return None
        return _Plan(
            router=router, child=child, fastapi=fastapi, app=plain.app, path_format=plain.path_format
        )


def _table_ok(router: Any) -> bool:
    # A router that applies form or body limits itself is left every request.
    return not (getattr(router, "form_limits", None) or getattr(router, "max_body_size", None) is not None)


def table(router: Any) -> dict[tuple[str, str], _Plan]:
    """Every (path, method) the exact-path dispatch answers itself, with what it does."""
    if not _table_ok(router):
        return {}  # the router applies these itself: leave every request to it
    paths: list[str] = []
    for route in router.routes:
        for path in _literal_paths(route):
            if path not in paths:
                paths.append(path)
    plans: dict[tuple[str, str], _Plan] = {}
    decided: dict[int, tuple[Any, bool]] = {}  # the routes are held (router.routes) until the table is built
    for path in paths:
        for method in METHODS:
            plan = _plan(router, path, method, decided)
            if plan is not None:
                plans[path, method] = plan
    return plans


# Paths with parameters whose routing is remembered (`ExactPaths.seen`); more and it starts afresh: a
# bound on memory (anyone can send any path), not a tuning knob.
MAX_SEEN = 4096


class ExactPaths:
    """The app router's entry point: routes without path parameters by one dict look-up; any other
    (path, method) is routed by the normal router's rules once, on a probe, and the decision replayed
    the next time the same path comes (`POST /api/v1/apps/web/deploys` again and again).

    The table is built when the app is (`install`), not by the first request: building it makes
    FastAPI work out every included route's request models (hundreds of milliseconds for the API),
    which the first request would otherwise wait for."""

    def __init__(self, router: Any, fallback: ASGIApp) -> None:
        self.router, self.fallback = router, fallback
        self._plans: dict[tuple[str, str], _Plan] = {}
        # (path, method) -> the plan, or None: the normal router answers that one (404, 405, ...).
        self.seen: dict[tuple[str, str], _Plan | None] = {}
        self._generation = -1  # the `_generation` last checked
        self._built: tuple[int, int] | None = None  # (this router's route version, its route count)
        self._count = -1  # the router's route count when the table was built
        self._table_ok = True
        self.builds = 0  # how many times the table was built (tests: never by a request that need not)

    def _routes_version(self) -> tuple[int, int]:
        version = getattr(self.router, "_get_routes_version", None)
        # Without FastAPI's own versions, any route added anywhere counts as a change here.
        return (version() if callable(version) else _generation[0]), len(self.router.routes)

    def plans(self) -> dict[tuple[str, str], _Plan]:
        if _generation[0] != self._generation or len(self.router.routes) != self._count:
            # A route was added somewhere in the process (this app, or another app built alongside
            # it), or the route list edited in place: rebuild only if this router's routes changed.
            self._generation = _generation[0]
            state = self._routes_version()
            if state != self._built:
                self._plans, self._built, self.seen = table(self.router), state, {}
                self.builds += 1
                self._count, self._table_ok = state[1], _table_ok(self.router)
        return self._plans

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            key = (scope["path"], scope["method"])
            fresh = _generation[0] == self._generation and len(self.router.routes) == self._count
            plan = (self._plans if fresh else self.plans()).get(key)
            if plan is None and self._table_ok:
                seen = self.seen
                if key in seen:
                    plan = seen[key]
                else:
                    if len(seen) >= MAX_SEEN:
                        seen = self.seen = {}
                    plan = seen[key] = _plan(self.router, *key)
            if plan is not None:
                await plan.enter(scope)(scope, receive, send)
                return
        await self.fallback(scope, receive, send)


# ---------------------------------------------------------------- prefix guards


def _literal(path: str) -> str:
    return path.split("{", 1)[0]


def _prefix_of(entry: Any) -> str | None:
    """The literal prefix every path under `entry` starts with; None when unknown."""
    candidates = getattr(entry, "effective_candidates", None)
    if callable(candidates):
        prefixes = [_prefix_of(c) for c in candidates()]
        if not prefixes or any(p is None for p in prefixes):
            return None
        common = prefixes[0] or ""
        for p in prefixes[1:]:  # character by character: a literal prefix, not path components
            while p is not None and not p.startswith(common):
                common = common[:-1]
        return common
    path = getattr(entry, "path_format", None) or getattr(entry, "path", None)
    return _literal(path) if isinstance(path, str) and path.startswith("/") else None


def _guard(route: Any) -> None:
    inner: Callable[[Scope], tuple[Match, Scope]] = route.matches
    cached: dict[str, Any] = {"candidates": None, "prefix": ""}

    def prefix_guarded(scope: Scope) -> tuple[Match, Scope]:
        candidates = route.effective_candidates()
        if candidates is not cached["candidates"]:  # routes were added: work the prefix out again
            cached["candidates"], cached["prefix"] = candidates, _prefix_of(route) or ""
        prefix: str = cached["prefix"]
        if len(prefix) > 1:
            path: str = scope["path"]
            root: str = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root) :]
            if not path.startswith(prefix):
                return Match.NONE, {}
        return inner(scope)

    route.matches = prefix_guarded


def install(app: FastAPI) -> None:
    """Guard each included router of `app` and put the exact-path table in front of its router
    (call once the routes are in; again is harmless; routes added later are picked up)."""
    for route in app.router.routes:
        guarded = getattr(route.matches, "__name__", "") == "prefix_guarded"
        if callable(getattr(route, "effective_candidates", None)) and not guarded:
            _guard(route)
    router = app.router
    if not isinstance(router.middleware_stack, ExactPaths):
        router.middleware_stack = ExactPaths(router, router.middleware_stack)
    router.middleware_stack.plans()  # now, so that no request waits for it
