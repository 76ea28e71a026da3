"""Skip whole included routers whose paths cannot match, before FastAPI tries each of their routes.

FastAPI (0.165 here) keeps an included router as one entry of the app's route table and, for every
request, tries each of its routes in turn, with per-route scope bookkeeping.  The REST API router
alone has over forty routes, all under /api/v1: a Slack or GitHub delivery, a health check or the
dashboard paid for all of them (issue 13: about half of the constant endpoint's throughput).  A path
that does not start with the literal prefix shared by all of a router's routes matches none of them,
FULL or PARTIAL, so answering NONE at once changes no routing decision.

Nothing here depends on FastAPI's private classes beyond duck typing (`effective_candidates`,
`path_format`); where those are missing the route is left as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from starlette.routing import Match
from starlette.types import Scope


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
    """Guard each included router of `app` (call once the routes are in; again is harmless)."""
    for route in app.router.routes:
        guarded = getattr(route.matches, "__name__", "") == "prefix_guarded"
        if callable(getattr(route, "effective_candidates", None)) and not guarded:
            _guard(route)
