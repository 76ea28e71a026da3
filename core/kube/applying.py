"""Applying: server-side apply of rendered manifests, deletes, namespaces, and the dry run.

Before applying over or deleting anything the applier reads what exists and refuses (core
Conflict) unless the ownership rules say it is this app's; only objects proven ours are applied
with force, and a namespace shipit did not create is never relabelled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Mapping
from typing import Any, Literal

from core import errors
from core.kube import diff as diff_mod
from core.kube import render
from core.kube import spec as spec_mod
from core.kube.api_errors import AlreadyExists, bad_quantities
from core.kube.connection import Connection, api_path
from core.kube.objects import as_int, as_list, as_str, dig
from core.kube.ownership import Target, namespace_problem, target_of, where

logger = logging.getLogger(__name__)

FIELD_MANAGER = render.FIELD_MANAGER
# Holds Deployment.spec.replicas for a moment while shipit lets go of it, so
# the field is not reset to 1 before the HPA takes it (see _hand_over_replicas).
HANDOVER_FIELD_MANAGER = "shipit-handover-to-hpa"
# Who a namespace came from, as the namespace claim records it: "granted" by an admin (deploy into it
# as it is, never relabel it) or "created" by shipit (exists only with shipit's labels for the project).
NamespaceOrigin = Literal["granted", "created"]
# Ask for metadata only when checking ownership: smaller answers, and a Secret's values never travel.
_METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
_NOT_TAKEN_OVER = (
    "shipit does not take over objects it did not create: remove or rename them, "
    "or deploy the app under another name or into another namespace"
)


async def _all(awaitables: list[Awaitable[Any]]) -> None:
    """Run concurrently, wait for all, then raise the first error (a core.errors one, not a group)."""
    results = await asyncio.gather(*awaitables, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


def _absent_targets(spec: spec_mod.WorkloadSpec) -> list[Target]:
    """The optional objects the spec turns off (render.render_absent), as the app's targets."""
    return [
        Target(
            kind=kind,
            name=name,
            namespace=spec.namespace,
            project=spec.project,
            app=spec.app,
            instance=spec.instance or spec.app,
        )
        for kind, name in render.render_absent(spec)
    ]


class Applier:
    """Applies and deletes through one cluster's connection, never over what is not shipit's."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        # (namespace, project, origin) ensured by this client; saves a round trip per deploy
        self._namespaces: set[tuple[str, str, str]] = set()

    # -- apply / delete ----------------------------------------------------------

    async def _current(self, target: Target, *, full: bool = False) -> dict[str, Any] | None:
        """What exists under the target's kind and name (its metadata only unless `full`), or None."""
        try:
            return await self._conn.request(
                "GET",
                api_path(target.kind, namespace=target.namespace, name=target.name),
                what=f"read {where(target.kind, target.namespace, target.name)}",
                accept="application/json" if full else _METADATA_ONLY,
            )
        except errors.NotFound:
            return None

    async def _current_all(self, targets: list[Target]) -> list[dict[str, Any] | None]:
        """One concurrent read per target: the single round trip ownership costs an apply.

        The Deployment is read whole: handing its replicas over to an HPA needs its current value.
        """
        results = await asyncio.gather(
            *(self._current(t, full=t.kind == "Deployment") for t in targets), return_exceptions=True
        )
        found: list[dict[str, Any] | None] = []
        for result in results:
            if isinstance(result, BaseException):
                raise result
            found.append(result)
        return found

    @staticmethod
    def _refuse_foreign(targets: list[Target], found: list[dict[str, Any] | None]) -> None:
        problems = [
            problem
            for target, obj in zip(targets, found, strict=True)
            if obj is not None and (problem := target.problem(obj)) is not None
        ]
        if problems:
            raise errors.Conflict(f"{'; '.join(problems)}. {_NOT_TAKEN_OVER}")

    async def apply(self, *, manifests: list[dict[str, Any]]) -> None:
        """Server-side apply each manifest in order, as field manager `shipit`.

        Every manifest must carry shipit's ownership labels.  What already exists under the same
        kind and name must carry the same project and app, or nothing is applied (Conflict).
        """
        targets = [target_of(m) for m in manifests]
        found = await self._current_all(targets)
        self._refuse_foreign(targets, found)
        await self._apply_checked(list(zip(targets, manifests, found, strict=True)))

    async def _apply_checked(self, items: list[tuple[Target, dict[str, Any], dict[str, Any] | None]]) -> None:
        """Apply manifests whose existing objects were proven ours (or did not exist), in order."""
        for target, manifest, current in items:
            if target.kind == "Deployment" and dig(manifest, "spec", "replicas") is None:
                await self._hand_over_replicas(target=target, current=current)
            await self._apply_one(
                manifest,
                kind=target.kind,
                name=target.name,
                namespace=target.namespace,
                field_manager=FIELD_MANAGER,
                # Force takes fields back from other managers (the HPA's replicas after autoscaling is
                # turned off): only on objects proven ours.  A new object is applied without it, so
                # one created meanwhile by someone else conflicts (409) instead of being taken.
                force=current is not None,
            )
            logger.debug("applied %s", where(target.kind, target.namespace, target.name))

    async def _apply_one(
        self,
        manifest: dict[str, Any],
        *,
        kind: str,
        name: str,
        namespace: str | None,
        field_manager: str,
        force: bool,
    ) -> dict[str, Any]:
        path = api_path(kind, namespace=namespace, name=name)
        query = [("fieldManager", field_manager), ("fieldValidation", "Strict")]
        if force:
            query.append(("force", "true"))
        try:
            return await self._conn.request(
                "PATCH",
                path,
                what=f"apply {where(kind, namespace, name)}",
                query=query,
                body=manifest,
                content_type="application/apply-patch+yaml",
            )
        except errors.PermanentError as e:
            bad = bad_quantities(manifest) if "quantities must match" in str(e) else []
            if not bad:
                raise
            raise errors.PermanentError(f"{e} (invalid quantity at {', '.join(bad)})") from e

    async def _hand_over_replicas(self, *, target: Target, current: dict[str, Any] | None) -> None:
        """Let go of spec.replicas without the API server resetting it to 1.

        When an applier stops sending a field it alone owns, server-side apply
        removes it and defaulting puts back replicas=1: a 10-pod app would drop
        to one pod until the HPA reacts.  As the Kubernetes docs advise, first
        make a second manager co-own the current value, then apply without it.
        `current` is the whole Deployment as read before the apply.
        """
        if current is None:
            return
        owns_replicas = any(
            dig(entry, "manager") == FIELD_MANAGER
            and dig(entry, "operation") == "Apply"
            and dig(entry, "fieldsV1", "f:spec", "f:replicas") is not None
            for entry in as_list(dig(current, "metadata", "managedFields"))
        )
        if not owns_replicas:
            return
        namespace, name = target.namespace or "", target.name
        replicas = as_int(dig(current, "spec", "replicas"), 1)
        partial = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": replicas},
        }
        await self._apply_one(
            partial,
            kind="Deployment",
            name=name,
            namespace=namespace,
            field_manager=HANDOVER_FIELD_MANAGER,
            force=True,  # the Deployment was proven ours before we got here
        )
        logger.info("handed Deployment %s/%s replicas=%d over to the HPA", namespace, name, replicas)

    async def apply_workload(
        self, *, spec: spec_mod.WorkloadSpec, namespace_origin: NamespaceOrigin = "granted"
    ) -> None:
        """Make the cluster match `spec`: what it turned off is deleted, the rest applied.

        Three round trips on the hot path: one concurrent read of every object the spec names (so
        nothing shipit did not create is applied over or deleted: Conflict before any change), then
        the Secret together with the deletes (an HPA left running would rescale the Deployment that
        just got its replicas back), then the Deployment (its pods read the Secret) together with
        everything that does not depend on it.  The namespace is ensured once per client (see
        ensure_namespace for `namespace_origin`); if it was deleted behind our back, the apply
        fails with NotFound and is retried once after ensuring it again.
        """
        await self.ensure_namespace_once(
            name=spec.namespace, project=spec.project, namespace_origin=namespace_origin
        )
        try:
            await self._apply_workload(spec)
        except errors.NotFound:
            self._namespaces.discard((spec.namespace, spec.project, namespace_origin))
            await self.ensure_namespace(
                name=spec.namespace, project=spec.project, namespace_origin=namespace_origin
            )
            await self._apply_workload(spec)

    async def _apply_workload(self, spec: spec_mod.WorkloadSpec) -> None:
        manifests = render.render(spec)
        targets = [target_of(m) for m in manifests]
        absent = _absent_targets(spec)
        found = await self._current_all(targets + absent)
        present, gone = found[: len(targets)], found[len(targets) :]
        self._refuse_foreign(targets, present)
        deletes: list[Awaitable[Any]] = []
        for target, obj in zip(absent, gone, strict=True):
            if obj is None:
                continue
            problem = target.problem(obj)
            if problem is not None:
                # Not ours to delete, and nothing we apply depends on it: leave it be.
                logger.warning("%s: left alone although app %s has none", problem, spec.app)
                continue
            deletes.append(self.delete_exact(target, uid=as_str(dig(obj, "metadata", "uid"))))
        items = list(zip(targets, manifests, present, strict=True))
        await _all([*deletes, self._apply_checked([i for i in items if i[0].kind == "Secret"])])
        await _all([self._apply_checked([i]) for i in items if i[0].kind != "Secret"])

    async def delete_exact(self, target: Target, *, uid: str) -> bool:
        """Delete the object read and checked before; False when it is gone already.

        The uid precondition makes sure it is that object, not one created again under its name since.
        """
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "propagationPolicy": "Background",
        }
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            await self._conn.request(
                "DELETE",
                api_path(target.kind, namespace=target.namespace, name=target.name),
                what=f"delete {where(target.kind, target.namespace, target.name)}",
                body=body,
            )
        except errors.NotFound:
            return False
        return True

    async def delete(self, *, kind: str, name: str, namespace: str | None, project: str, app: str) -> bool:
        """Delete one object of `project`'s `app`; False when it did not exist.

        An object that exists but is not that app's is left alone: Conflict naming it and its manager.
        """
        target = Target(kind=kind, name=name, namespace=namespace, project=project, app=app, instance=app)
        current = await self._current(target)
        if current is None:
            return False
        problem = target.problem(current)
        if problem is not None:
            raise errors.Conflict(f"{problem}; shipit deletes only what it created, so it is left as it is")
        return await self.delete_exact(target, uid=as_str(dig(current, "metadata", "uid")))

    # -- namespaces ----------------------------------------------------------

    async def ensure_namespace(
        self,
        *,
        name: str,
        project: str,
        namespace_origin: NamespaceOrigin = "granted",
        labels: Mapping[str, str] | None = None,
    ) -> None:
        """Make sure namespace `name` exists for `project`, never adopting one shipit did not create.

        "granted" (an admin handed the namespace to the project): an existing namespace is used as
        it is, its labels untouched; a missing one is created with shipit's labels.
        "created" (shipit's own, e.g. a preview's): created with shipit's labels; one that exists
        is accepted only if it carries them for this project, else Conflict.
        """
        target = Target(kind="Namespace", name=name, namespace=None, project=project, app="", instance="")
        current = await self._current(target)
        if current is None:
            current = await self._create_namespace(name=name, project=project, labels=labels)
        if current is not None and namespace_origin == "created":
            problem = namespace_problem(current, name=name, project=project)
            if problem is not None:
                raise errors.Conflict(
                    f"{problem}; shipit creates this namespace itself and does not take over an "
                    "existing one: delete or rename it, or pick another name"
                )
        if namespace_origin == "granted":
            self._namespaces.add((name, project, namespace_origin))

    async def ensure_namespace_once(
        self, *, name: str, project: str, namespace_origin: NamespaceOrigin = "granted"
    ) -> None:
        """ensure_namespace, once per client for a granted namespace.

        A created namespace is checked every time: a cached "ours" could outlive a teardown done
        elsewhere and a foreign namespace made since under the same name.
        """
        if (name, project, namespace_origin) not in self._namespaces or namespace_origin == "created":
            await self.ensure_namespace(name=name, project=project, namespace_origin=namespace_origin)

    async def _create_namespace(
        self, *, name: str, project: str, labels: Mapping[str, str] | None
    ) -> dict[str, Any] | None:
        """Create the namespace with shipit's labels; if someone else was faster, return theirs to check.

        A create (not an apply) so that a namespace made meanwhile is never merged into.
        """
        manifest = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": name,
                "labels": {**(labels or {}), **render.ownership_labels(project=project)},
            },
        }
        try:
            await self._conn.request(
                "POST",
                api_path("Namespace"),
                what=f"create namespace {name}",
                query=[("fieldManager", FIELD_MANAGER)],
                body=manifest,
            )
        except AlreadyExists:
            return await self._conn.get(kind="Namespace", name=name)
        return None

    async def namespace_exists(self, *, name: str) -> bool:
        return await self._conn.get(kind="Namespace", name=name) is not None

    async def delete_namespace(self, *, name: str, project: str) -> bool:
        """Start deleting a namespace shipit created for `project`; False when it did not exist.

        Any other namespace is left alone: Conflict naming it and its manager.
        """
        self._namespaces = {key for key in self._namespaces if key[0] != name}
        target = Target(kind="Namespace", name=name, namespace=None, project=project, app="", instance="")
        current = await self._current(target)
        if current is None:
            return False
        problem = namespace_problem(current, name=name, project=project)
        if problem is not None:
            raise errors.Conflict(
                f"{problem}; shipit deletes only namespaces it created, so it is left as it is"
            )
        if dig(current, "metadata", "deletionTimestamp"):
            return True  # already going; deleting again would only answer 409
        return await self.delete_exact(target, uid=as_str(dig(current, "metadata", "uid")))

    # -- dry run -----------------------------------------------------------------------

    async def dry_run_workload(self, *, spec: spec_mod.WorkloadSpec) -> diff_mod.WorkloadDiff:
        """What apply_workload would change, field by field, changing nothing.

        Every object is read whole and put through a server-side apply with dryRun=All, so the
        answer carries the server's defaults and admission like the real apply would; objects that
        are not shipit's are refused (Conflict) just as an apply refuses them.  A missing namespace
        means everything would be created.  The answers hold Secret values: they go to diff_mod,
        which reports Secret keys only, and nowhere else.
        """
        manifests = render.render(spec)
        if await self._conn.get(kind="Namespace", name=spec.namespace) is None:
            return diff_mod.WorkloadDiff(
                create=[f"Namespace/{spec.namespace}"]
                + [f"{m['kind']}/{m['metadata']['name']}" for m in manifests]
            )
        targets = [target_of(m) for m in manifests]
        absent = _absent_targets(spec)
        found = await asyncio.gather(*(self._current(t, full=True) for t in targets + absent))
        present, gone = list(found[: len(targets)]), found[len(targets) :]
        self._refuse_foreign(targets, present)
        result = diff_mod.WorkloadDiff()
        for target, manifest, live in zip(targets, manifests, present, strict=True):
            where = f"{target.kind}/{target.name}"
            if target.kind == "Deployment" and live is not None and dig(manifest, "spec", "replicas") is None:
                # The real apply first hands the live replicas over to the HPA (_hand_over_replicas);
                # a dry run cannot, so it keeps the live value instead of showing a reset to 1.
                manifest = {
                    **manifest,
                    "spec": {**manifest["spec"], "replicas": dig(live, "spec", "replicas")},
                }
            candidate = await self._dry_apply_one(manifest, target=target, force=live is not None)
            if live is None:
                result.create.append(where)
            else:
                result.changes.extend(
                    diff_mod.diff_object(kind=target.kind, name=target.name, live=live, candidate=candidate)
                )
        for target, obj in zip(absent, gone, strict=True):
            if obj is not None and target.problem(obj) is None:
                result.delete.append(f"{target.kind}/{target.name}")
        return result

    async def _dry_apply_one(
        self, manifest: dict[str, Any], *, target: Target, force: bool
    ) -> dict[str, Any]:
        query = [("fieldManager", FIELD_MANAGER), ("fieldValidation", "Strict"), ("dryRun", "All")]
        if force:
            query.append(("force", "true"))
        return await self._conn.request(
            "PATCH",
            api_path(target.kind, namespace=target.namespace, name=target.name),
            what=f"dry-run apply {where(target.kind, target.namespace, target.name)}",
            query=query,
            body=manifest,
            content_type="application/apply-patch+yaml",
        )
