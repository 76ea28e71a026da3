"""Ownership: whose an existing object is, from its labels; who made it, from its managedFields.

shipit never takes over what it did not create: before applying over or deleting an object the
applier reads it, and these rules say whether it is ours: it must carry
`app.kubernetes.io/managed-by: shipit` with this project's `shipit.dev/project` and this app's
`shipit.dev/app`.  Pure functions of plain dicts, no I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from core import errors
from core.kube import render
from core.kube.objects import as_list, as_str, dig, str_dict


def _count_fields(fields: Any) -> int:
    if not isinstance(fields, dict):
        return 0
    return sum(1 + _count_fields(value) for value in fields.values())


def field_manager_of(obj: Mapping[str, Any]) -> str:
    """The field manager owning most of the object's own fields: in practice, who made it.

    Entries for subresources (status, scale) are controllers at work, not the author.
    """
    best, most = "", -1
    for entry in as_list(dig(obj, "metadata", "managedFields")):
        if dig(entry, "subresource"):
            continue
        manager, count = as_str(dig(entry, "manager")), _count_fields(dig(entry, "fieldsV1"))
        if manager and count > most:
            best, most = manager, count
    return best or "unknown"


def where(kind: str, namespace: str | None, name: str) -> str:
    return f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"


def ownership_problem(
    obj: Mapping[str, Any],
    *,
    kind: str,
    namespace: str | None,
    name: str,
    project: str,
    app: str,
    instance: str | None = None,
) -> str | None:
    """Why shipit must not apply over or delete this existing object for `project`'s `app`; None if ours.

    Ours: managed-by shipit with this project and app.  Objects from shipit versions before the
    project label (managed-by shipit, no shipit.dev/project, app.kubernetes.io/instance the app) are
    ours too: the namespace's claim by the project was checked in core before anything reaches here.
    """
    labels = str_dict(dig(obj, "metadata", "labels"))
    if labels.get(render.LABEL_MANAGED_BY) == render.FIELD_MANAGER:
        owner_project, owner_app = labels.get(render.LABEL_PROJECT), labels.get(render.LABEL_APP)
        if owner_project == project and owner_app == app:
            return None
        if (
            owner_project is None
            and owner_app in (None, app)
            and labels.get(render.LABEL_INSTANCE) == (instance or app)
        ):
            return None
        if owner_project == project:
            whose = f"belongs to app {owner_app or '(none)'} of this project"
        elif owner_project is None:
            whose = f"is labelled managed-by shipit but not for app {app}"
        else:
            whose = "belongs to another shipit project"
    else:
        whose = "was not created by shipit"
    return (
        f"{where(kind, namespace, name)} already exists and {whose} (field manager {field_manager_of(obj)!r})"
    )


def namespace_problem(obj: Mapping[str, Any], *, name: str, project: str) -> str | None:
    """Why namespace `name` is not one shipit created for `project`; None if it is."""
    labels = str_dict(dig(obj, "metadata", "labels"))
    owned = render.ownership_labels(project=project)
    if owned.items() <= labels.items():
        return None
    if labels.get(render.LABEL_MANAGED_BY) == render.FIELD_MANAGER and render.LABEL_PROJECT in labels:
        whose = "belongs to another shipit project"
    else:
        whose = f"was not created by shipit for project {project}"
    return f"namespace {name} already exists and {whose} (field manager {field_manager_of(obj)!r})"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Target:
    """One object shipit means to apply or delete, and whose it must be."""

    kind: str
    name: str
    namespace: str | None
    project: str
    app: str
    instance: str

    def problem(self, obj: Mapping[str, Any]) -> str | None:
        return ownership_problem(
            obj,
            kind=self.kind,
            namespace=self.namespace,
            name=self.name,
            project=self.project,
            app=self.app,
            instance=self.instance,
        )


def target_of(manifest: Mapping[str, Any]) -> Target:
    """Where a rendered manifest goes and, from its own ownership labels, whose it is."""
    kind = as_str(manifest.get("kind"))
    name = as_str(dig(manifest, "metadata", "name"))
    if not name:
        raise errors.PermanentError(f"{kind} manifest has no metadata.name")
    labels = str_dict(dig(manifest, "metadata", "labels"))
    project, app = labels.get(render.LABEL_PROJECT), labels.get(render.LABEL_APP)
    if labels.get(render.LABEL_MANAGED_BY) != render.FIELD_MANAGER or not project or not app:
        raise errors.PermanentError(f"{kind} {name}: the manifest carries no shipit ownership labels")
    return Target(
        kind=kind,
        name=name,
        namespace=as_str(dig(manifest, "metadata", "namespace")) or None,
        project=project,
        app=app,
        instance=labels.get(render.LABEL_INSTANCE) or app,
    )
