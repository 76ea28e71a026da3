"""What every router of the REST API shares: the bearer scheme, the error bodies, the runtime and the
caller, and the one transaction per request."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Annotated, Any, ClassVar

from fastapi import APIRouter, Depends, Header, Request
from fastapi.encoders import jsonable_encoder
from fastapi.openapi.constants import REF_TEMPLATE
from fastapi.openapi.models import Components
from fastapi.security import HTTPBearer
from pydantic.json_schema import GenerateJsonSchema
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.convertors import Convertor, register_url_convertor

from core import tokens
from core.errors import Unauthenticated
from core.identity import Actor
from shipit import schemas
from shipit.runtime import Runtime

# The error body, by reference: given as `model`, FastAPI built a pydantic field for every route times
# every status below (659 of the app's ~990 fields, two thirds of building the app, which the test
# suite does ~1,300 times) only to render this same reference.  `error_schemas` adds what it refers to.
_ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": _ERROR_CONTENT}


def error_schemas() -> dict[str, Any]:
    """ErrorOut and the models it holds, as FastAPI renders a response model in components.schemas:
    the same generator, mode and reference template, then through its OpenAPI models (which drop
    null values and set the key order), so the document's text is the same as with `model`."""
    model = schemas.ErrorOut
    _, found = GenerateJsonSchema(ref_template=REF_TEMPLATE).generate_definitions(
        inputs=[(model, "serialization", model.__pydantic_core_schema__)]
    )
    for definition in found.values():  # FastAPI keeps a docstring's text up to a form feed
        if "description" in definition:
            definition["description"] = definition["description"].split("\f")[0]
    rendered: dict[str, Any] = jsonable_encoder(Components(schemas=found), by_alias=True, exclude_none=True)
    return rendered["schemas"]  # type: ignore[no-any-return]


# What any route may answer besides its success, all with the one error body (shipit.app's handlers).
ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("The request body could not be read."),
    401: _error("No valid bearer token."),
    403: _error("The token's subject lacks the role this needs."),
    404: _error("No such project, app, deploy or token (or none the caller may see)."),
    409: _error("Conflicts with the current state: exists already, locked, running."),
    413: _error("The request body is larger than the configured cap."),
    422: _error("Invalid input; `field` names it."),
    429: _error("Too many failed authentications from this address, or over the token's request budget."),
}
# Routes that talk to a cluster also answer 502 when it fails or cannot be reached.
CLUSTER_ERRORS: dict[int | str, dict[str, Any]] = {502: _error("The cluster failed or could not be reached.")}
# /apps/{name}/usage: the cluster answered, but serves no Metrics API.
METRICS_ERRORS: dict[int | str, dict[str, Any]] = {
    **CLUSTER_ERRORS,
    501: _error("The app's cluster has no Metrics API (metrics-server), so usage is unknown."),
}

# Declares the scheme in /openapi.json; current_actor still does the checking (auto_error off).
bearer = HTTPBearer(auto_error=False, description="An API token: `Authorization: Bearer shp_...`")


def new_router() -> APIRouter:
    """A router for one resource: /api/v1, the bearer scheme and the error bodies, like all the others."""
    return APIRouter(prefix="/api/v1", responses=ERRORS, dependencies=[Depends(bearer)])


class _AppFlag(Convertor[str]):
    # The route's own words only, so /apps/{name}/status is not taken for a flag (wrong 404/405 and Allow).
    regex: ClassVar[str] = "lock|unlock|pause|resume"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


class _DeployAction(_AppFlag):
    regex: ClassVar[str] = "approve|reject|cancel"


register_url_convertor("app_flag", _AppFlag())
register_url_convertor("deploy_action", _DeployAction())


def runtime_of(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


async def runtime(request: Request) -> Runtime:
    # async on purpose: FastAPI runs a plain `def` dependency in its thread pool, a hand-off to a
    # worker thread and back on every request for one attribute read.
    return runtime_of(request)


@contextlib.asynccontextmanager
async def tx(rt: Runtime) -> AsyncIterator[AsyncSession]:
    async with rt.sessionmaker.begin() as session:
        yield session


async def current_actor(
    request: Request, authorization: Annotated[str | None, Header(include_in_schema=False)] = None
) -> Actor:
    if not authorization or not authorization.lower().startswith("bearer "):
        raise Unauthenticated("missing bearer token: send Authorization: Bearer <token>")
    channel = "cli" if request.headers.get("user-agent", "").startswith("shipit-cli") else "api"
    # No transaction of its own while nothing changed: one read of the read cache's stamp, which the
    # Actor carries on to the route's transaction (core.readcache).
    return await tokens.authenticate_cached(
        ctx=runtime_of(request).core, token=authorization[7:].strip(), channel=channel
    )


ActorDep = Annotated[Actor, Depends(current_actor)]
RtDep = Annotated[Runtime, Depends(runtime)]
