"""The dashboard's forms: deploy, roll back, lock, pause, scale, secrets, add-ons, approvals and tokens.

Each post is ONE transaction around the session and CSRF checks and one core call (`act`); core's
refusal comes back as a page that says why."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy.ext.asyncio import AsyncSession

from core import addons, apps, autoscaling, deploys, tokens
from core.errors import InvalidInput, UserError
from core.identity import Actor
from storage import models
from web import channel, pages


def add_routes(router: APIRouter, web: channel.Web) -> None:
    async def act(
        request: Request, fn: Callable[[AsyncSession, Actor, dict[str, str]], Any], back: str
    ) -> Response:
        """One form post: ONE transaction around the session and CSRF checks and the core call.

        `fn` answers None (back to `back`), a path to go to, or a whole response.  Core's refusal rolls
        the transaction back and shows a page that says why, with core's status code.
        """
        core = web.core_of(request)
        me: channel.Me | None = None
        try:
            async with core.sessionmaker.begin() as session:
                me, actor = await channel.signed_in(request, session)
                form = await channel.form_of(request, me)
                result = await fn(session, actor, form)
        except UserError as e:
            assert me is not None
            return await channel.refused(request, me, e, back=back)
        if isinstance(result, Response):
            return result
        return channel.go_to(result if isinstance(result, str) else back)

    @router.post("/apps/{name}/deploy")
    async def deploy(request: Request, name: str, env: str | None = None) -> Response:
        async def run(session: AsyncSession, actor: Actor, form: dict[str, str]) -> None:
            await deploys.request(
                session,
                ctx=web.core_of(request),
                actor=actor,
                app_name=name,
                image=form.get("image", "").strip(),
                trigger=actor.channel,
                env=env,
            )

        return await act(request, run, f"/apps/{name}{pages.env_query(env)}")

    @router.post("/apps/{name}/rollback")
    async def rollback(request: Request, name: str, env: str | None = None) -> Response:
        async def run(session: AsyncSession, actor: Actor, form: dict[str, str]) -> None:
            revision = form.get("revision", "")
            await deploys.rollback(
                session,
                ctx=web.core_of(request),
                actor=actor,
                app_name=name,
                env=env,
                revision=int(revision) if revision.isdigit() else None,
            )

        return await act(request, run, f"/apps/{name}{pages.env_query(env)}")

    @router.post("/apps/{name}/lock")
    @router.post("/apps/{name}/unlock")
    @router.post("/apps/{name}/pause")
    @router.post("/apps/{name}/resume")
    async def lock(request: Request, name: str, env: str | None = None) -> Response:
        verb = request.url.path.rsplit("/", 1)[-1]
        flag, on = {
            "lock": ("lock", True),
            "unlock": ("lock", False),
            "pause": ("pause", True),
            "resume": ("pause", False),
        }[verb]

        async def run(session: AsyncSession, actor: Actor, form: dict[str, str]) -> None:
            await apps.set_flag(
                session, actor=actor, name=name, flag=flag, on=on, env=env, reason=form.get("reason") or None
            )

        return await act(request, run, f"/apps/{name}{pages.env_query(env)}")

    @router.post("/apps/{name}/scale")
    async def scale(request: Request, name: str, env: str | None = None) -> Response:
        def number(form: dict[str, str], key: str) -> int | None:
            text = form.get(key, "").strip()
            if not text:
                return None
            if not text.isdigit():
                raise InvalidInput(f"{key} must be a whole number, got {text!r}", field=key)
            return int(text)

        async def run(session: AsyncSession, actor: Actor, form: dict[str, str]) -> None:
            replicas = number(form, "replicas")
            # The form shows the app's window: emptied, it means Kubernetes' default.  It is read only for
            # autoscaling (a fixed count takes no window: it goes with the HPA).
            autoscale = any(
                form.get(k, "").strip() for k in ("min_replicas", "max_replicas", "scale_down_window")
            )
            window_shown = "scale_down_window" in form and replicas is None and autoscale
            await autoscaling.scale(
                session,
                ctx=web.core_of(request),
                actor=actor,
                app_name=name,
                replicas=replicas,
                min_replicas=number(form, "min_replicas"),
                max_replicas=number(form, "max_replicas"),
                cpu_target=number(form, "cpu_target"),
                scale_down_window=number(form, "scale_down_window") if window_shown else apps.UNSET,
                autoscaling_off=form.get("autoscaling") == "off",
                env=env,
            )

        return await act(request, run, f"/apps/{name}{pages.env_query(env)}")

    @router.post("/apps/{name}/secrets")
    async def set_secret(request: Request, name: str, env: str | None = None) -> Response:
        """Write-only: the value goes to core encrypted and is never shown back (nor logged, nor audited)."""

        async def run(session: AsyncSession, actor: Actor, form: dict[str, str]) -> None:
            core = web.core_of(request)
            key = form.get("key", "").strip()
            await deploys.set_secrets(
                session, ctx=core, actor=actor, app_name=name, env=env, values={key: form.get("value", "")}
            )

        return await act(request, run, f"/apps/{name}{pages.env_query(env)}")

    @router.post("/apps/{name}/secrets/{key}/delete")
    async def delete_secret(request: Request, name: str, key: str, env: str | None = None) -> Response:
        async def run(session: AsyncSession, actor: Actor, form: dict[str, str]) -> None:
            core = web.core_of(request)
            await deploys.unset_secrets(session, ctx=core, actor=actor, app_name=name, keys=[key], env=env)

        return await act(request, run, f"/apps/{name}{pages.env_query(env)}")

    @router.post("/apps/{name}/addons")
    async def create_addon(request: Request, name: str, env: str | None = None) -> Response:
        """Queues provisioning; core checks the role (developers) and answers a second kind with a Conflict."""

        async def run(session: AsyncSession, actor: Actor, form: dict[str, str]) -> None:
            await addons.create(
                session,
                ctx=web.core_of(request),
                actor=actor,
                app_name=name,
                kind=form.get("kind", "").strip(),
                plan=form.get("plan", "").strip() or None,
                env=env,
            )

        return await act(request, run, f"/apps/{name}{pages.env_query(env)}")

    @router.post("/apps/{name}/addons/{kind}/destroy")
    async def destroy_addon(request: Request, name: str, kind: str, env: str | None = None) -> Response:
        """Marks it deleting and queues the removal; admins and owners (core checks); data kept unless ticked."""

        async def run(session: AsyncSession, actor: Actor, form: dict[str, str]) -> None:
            await addons.destroy(
                session,
                ctx=web.core_of(request),
                actor=actor,
                app_name=name,
                kind=kind,
                delete_data=form.get("delete_data") == "on",
                env=env,
            )

        return await act(request, run, f"/apps/{name}{pages.env_query(env)}")

    @router.post("/deploys/{deployment_id}/approve")
    @router.post("/deploys/{deployment_id}/reject")
    async def approve(request: Request, deployment_id: int) -> Response:
        yes = request.url.path.endswith("/approve")

        async def run(session: AsyncSession, actor: Actor, form: dict[str, str]) -> str:
            d = await deploys.approve(
                session, ctx=web.core_of(request), actor=actor, deployment_id=deployment_id, approve=yes
            )
            app = await session.get(models.App, d.app_id)
            if app is None:
                return "/"
            several = len(await pages.environments_of(session, name=app.name)) > 1
            return (
                f"/apps/{app.name}{pages.env_query(await apps.env_name(session, app=app)) if several else ''}"
            )

        return await act(request, run, "/")

    @router.post("/tokens")
    async def create_token(request: Request) -> Response:
        async def run(session: AsyncSession, actor: Actor, form: dict[str, str]) -> Response:
            _, plaintext = await tokens.create(session, actor=actor, name=form.get("name", ""))
            mine = await tokens.list_tokens(session, actor=actor)
            # Shown once, on this answer only (no-store), never again.
            me, _ = await channel.signed_in(request, session)
            return channel.render(
                request,
                "tokens.html",
                status_code=201,
                row=me,
                title="API tokens",
                tokens=mine,
                created=plaintext,
            )

        return await act(request, run, "/tokens")

    @router.post("/tokens/{token_id}/revoke")
    async def revoke_token(request: Request, token_id: int) -> Response:
        async def run(session: AsyncSession, actor: Actor, form: dict[str, str]) -> None:
            await tokens.revoke(session, actor=actor, token_id=token_id)

        return await act(request, run, "/tokens")
