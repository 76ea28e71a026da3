"""Add-on bodies: what to create, and what an add-on looks like (never its password or URL)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from shipit.schemas.common import Strict


class AddonIn(Strict):
    kind: Literal["postgres", "redis"] = Field(description="What to run: PostgreSQL or Redis.")
    plan: Literal["small", "medium"] = Field(default="small", description="CPU, memory and storage size.")


class AddonOut(BaseModel):
    app: str
    kind: str
    plan: str
    state: str = Field(description="provisioning, ready, unavailable, failed or deleting.")
    detail: str = Field(
        description="Why it is not ready, as the cluster tells it; empty when nothing to say."
    )
    name: str = Field(description="Its StatefulSet, Service and Secret in the app's namespace.")
    namespace: str
    secret_key: str = Field(description="The app secret holding the connection string (its name only).")
    error: str | None = Field(description="Why provisioning or destroying failed.")
