"""/api/v1/me and /api/v1/tokens: who the bearer token is, and managing API tokens."""

from __future__ import annotations

from core import tokens
from shipit import schemas
from shipit.api.base import ActorDep, RtDep, new_router, tx

router = new_router()


@router.get("/me", response_model=schemas.MeOut)
async def me(actor: ActorDep) -> dict[str, object]:
    return {"subject": actor.subject, "admin": actor.is_admin, "channel": actor.channel}


@router.get("/tokens")
async def list_tokens(rt: RtDep, actor: ActorDep) -> list[schemas.TokenOut]:
    async with tx(rt) as session:
        return [schemas.TokenOut.of(t) for t in await tokens.list_tokens(session, actor=actor)]


@router.post("/tokens", status_code=201)
async def create_token(body: schemas.TokenIn, rt: RtDep, actor: ActorDep) -> schemas.TokenCreated:
    async with tx(rt) as session:
        row, plaintext = await tokens.create(
            session, actor=actor, name=body.name, subject=body.subject, is_admin=body.admin
        )
        return schemas.TokenCreated(**schemas.TokenOut.of(row).model_dump(), token=plaintext)


@router.delete("/tokens/{token_id}")
async def revoke_token(token_id: schemas.IdPath, rt: RtDep, actor: ActorDep) -> schemas.TokenOut:
    async with tx(rt) as session:
        return schemas.TokenOut.of(await tokens.revoke(session, actor=actor, token_id=token_id))
