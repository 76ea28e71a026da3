"""What every request and response body is built from: bounded fields, path and query parameters,
the error body."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import BaseModel, ConfigDict, Field

from core import validation as v
from storage import models


def _no_null_default(schema: dict[str, Any]) -> None:
    # A field that is not nullable has no default to publish: absent means "leave as it is".
    if "default" in schema and schema["default"] is None and "anyOf" not in schema:
        del schema["default"]


def unset(**constraints: Any) -> Any:
    """Not required, and absent is not null: unset fields are left as they are (exclude_unset)."""
    return Field(default=None, json_schema_extra=_no_null_default, **constraints)


def bounded_text(length: int, pattern: str = v.LINE) -> Any:
    """A string field of at most `length` characters matching `pattern`."""
    return unset(max_length=length, pattern=pattern)


def bounded_int(low: int, high: int) -> Any:
    return unset(ge=low, le=high)


def app_int(name: str) -> Any:
    return bounded_int(*v.RANGES[name])


def app_text(column: str, pattern: str = v.LINE) -> Any:
    return bounded_text(v.limit(models.App, column), pattern)


# Kept short of what a database could hold: a kubeconfig or a secret value is read whole into memory.
KUBECONFIG_MAX = 1024 * 1024


WEBHOOK_SECRET_MAX = 1024


REGISTRY_PASSWORD_MAX = 4096


DnsLabel = Annotated[str, Field(max_length=63, pattern=v.DNS_LABEL)]


EnvKey = Annotated[str, Field(max_length=v.limit(models.Secret, "key"), pattern=v.ENV_KEY)]


Env = dict[EnvKey, Annotated[str, Field(max_length=v.ENV_VALUE_MAX, pattern=v.TEXT)]]


# Path and query parameters.
NamePath = Annotated[str, Path(max_length=63, pattern=v.DNS_LABEL, examples=["web"])]


SubjectPath = Annotated[
    str, Path(max_length=v.limit(models.Member, "subject"), pattern=v.SUBJECT, examples=["user:alice"])
]


# A secret's name is checked in core (validation.secret_key), whose refusal does not echo it: a
# refused name is most often a value given without its name.  Here it would be echoed.
SecretKeyPath = Annotated[str, Path(max_length=v.limit(models.Secret, "key"))]


# The same for a secrets body's keys: the rules are published, core enforces them.
SecretKey = Annotated[
    str, Field(json_schema_extra={"maxLength": v.limit(models.Secret, "key"), "pattern": v.ENV_KEY})
]


IdPath = Annotated[int, Path(ge=1, le=v.ID_MAX)]


AfterIdQuery = Annotated[int | None, Query(ge=0, le=v.ID_MAX)]


ProjectQuery = Annotated[str | None, Query(max_length=63, pattern=v.DNS_LABEL)]


NamespaceQuery = Annotated[str | None, Query(max_length=63, pattern=v.DNS_LABEL)]


# The environment an app route addresses; needed only when the app runs in several.
EnvQuery = Annotated[str | None, Query(max_length=63, pattern=v.DNS_LABEL, examples=["staging"])]


PrNumberPath = Annotated[int, Path(ge=1, le=v.INT32_MAX)]


RegistryHostPath = Annotated[
    str, Path(max_length=v.limit(models.Registry, "host"), pattern=v.LINE, examples=["ghcr.io"])
]


AuditTargetQuery = Annotated[
    str | None, Query(max_length=v.limit(models.AuditEvent, "target"), pattern=v.LINE)
]


AuditActionQuery = Annotated[
    str | None, Query(max_length=v.limit(models.AuditEvent, "action"), pattern=v.LINE)
]


class ErrorDetail(BaseModel):
    type: str = Field(description="InvalidInput, NotFound, PermissionDenied, Unauthenticated, Conflict, ...")
    message: str = Field(description="Safe to show as written.")
    field: str | None = Field(default=None, description="The input that is wrong (422) or collides (409).")
    retry_after: int | None = Field(default=None, description="Seconds to wait before trying again (429).")
    reference: str | None = Field(default=None, description="Quote it when reporting a server-side failure.")
    environments: list[str] | None = Field(
        default=None, description="An app in several environments, given none: the ones to choose from (env)."
    )


class ErrorOut(BaseModel):
    """Every error the API answers with, whatever its status."""

    error: ErrorDetail


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")
