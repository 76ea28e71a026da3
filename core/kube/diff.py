"""Field-level difference between what is live and what a dry run says an apply would make of it.

Pure, so the rules of what counts as a change can be read and tested in one place.  Both sides are
API objects as the server returns them (the candidate from a server-side apply with dryRun=All),
so defaults the server fills in appear on both and cancel out.  Bookkeeping the server or shipit
changes on every apply (resourceVersion, generation, managedFields, the revision label...) is not a
change anyone needs to review and is left out.

Secret values never leave this module: a Secret's `data` is reported per key as added, changed or
removed, never with a value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from core.kube import render

# metadata fields the server sets or bumps on every write
_IGNORED_METADATA = frozenset(
    {"managedFields", "resourceVersion", "generation", "uid", "creationTimestamp", "selfLink"}
)
# labels and annotations that change on every deploy or are kept by controllers, not by us
_IGNORED_KEYS = frozenset(
    {
        render.LABEL_REVISION,
        "deployment.kubernetes.io/revision",
        "kubectl.kubernetes.io/last-applied-configuration",
    }
)
# lists whose items are told apart by name, so an inserted item is not read as every later one changing
_NAMED_LISTS = frozenset({"env", "ports", "volumes", "volumeMounts", "containers", "initContainers"})
_SECRET_FIELDS = ("data", "stringData")
_MAX_VALUE = 200


@dataclass(frozen=True, kw_only=True)
class FieldChange:
    kind: str
    name: str
    path: str
    old: str | None  # None: not set before
    new: str | None  # None: removed
    hidden: bool = False  # a secret value: say that it changed, never what it is

    def __str__(self) -> str:
        where = f"{self.kind}/{self.name} {self.path}"
        if self.hidden:
            state = "added" if self.old is None else "removed" if self.new is None else "changed"
            return f"{where}: {state}"
        return f"{where}: {_shown(self.old)} → {_shown(self.new)}"


@dataclass(frozen=True, kw_only=True)
class WorkloadDiff:
    changes: list[FieldChange] = field(default_factory=list)
    create: list[str] = field(default_factory=list)  # "Kind/name" of objects that do not exist yet
    delete: list[str] = field(default_factory=list)  # "Kind/name" of objects the spec turns off

    @property
    def empty(self) -> bool:
        return not (self.changes or self.create or self.delete)

    def lines(self) -> list[str]:
        return (
            [str(c) for c in self.changes]
            + [f"create {what}" for what in self.create]
            + [f"delete {what}" for what in self.delete]
        )


def _shown(value: str | None) -> str:
    return "(none)" if value is None else value


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))
    return text if len(text) <= _MAX_VALUE else text[: _MAX_VALUE - 1] + "…"


def _key(path: str, key: str) -> str:
    segment = f"[{key}]" if any(c in key for c in "./ ") else key
    if not path:
        return segment
    return f"{path}{segment}" if segment.startswith("[") else f"{path}.{segment}"


def _named(items: list[Any]) -> dict[str, Any] | None:
    if not all(isinstance(i, dict) and isinstance(i.get("name"), str) for i in items):
        return None
    names = [i["name"] for i in items]
    return dict(zip(names, items, strict=True)) if len(set(names)) == len(names) else None


def _unnamed(item: Any) -> Any:
    return {k: v for k, v in item.items() if k != "name"} if isinstance(item, dict) else item


def _walk(old: Any, new: Any, path: str, key: str, out: list[tuple[str, Any, Any]]) -> None:
    if old == new:
        return
    # Something appearing or going as a whole is read field by field against nothing.
    if old is None and isinstance(new, dict | list):
        old = type(new)()
    elif new is None and isinstance(old, dict | list):
        new = type(old)()
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            if k in _IGNORED_KEYS:
                continue
            _walk(old.get(k), new.get(k), _key(path, k), k, out)
        return
    if isinstance(old, list) and isinstance(new, list):
        named_old, named_new = _named(old), _named(new)
        # env by name always (`env[LOG_LEVEL].value`); containers and the like only when their
        # names moved, so the usual case reads `containers[0].image`.
        if (
            named_old is not None
            and named_new is not None
            and (key == "env" or (key in _NAMED_LISTS and list(named_old) != list(named_new)))
        ):
            for name in sorted(set(named_old) | set(named_new)):
                # The name is in the path already.
                before, after = named_old.get(name), named_new.get(name)
                _walk(_unnamed(before), _unnamed(after), f"{path}[{name}]", "", out)
            return
        for index in range(max(len(old), len(new))):
            _walk(
                old[index] if index < len(old) else None,
                new[index] if index < len(new) else None,
                f"{path}[{index}]",
                "",
                out,
            )
        return
    out.append((path, old, new))


def _strip(obj: dict[str, Any]) -> dict[str, Any]:
    stripped = {k: v for k, v in obj.items() if k not in ("status", *_SECRET_FIELDS)}
    metadata = stripped.get("metadata")
    if isinstance(metadata, dict):
        stripped["metadata"] = {k: v for k, v in metadata.items() if k not in _IGNORED_METADATA}
    return stripped


def diff_object(
    *, kind: str, name: str, live: dict[str, Any], candidate: dict[str, Any]
) -> list[FieldChange]:
    """What applying would change on one existing object (`candidate`: the dry-run answer)."""
    found: list[tuple[str, Any, Any]] = []
    _walk(_strip(live), _strip(candidate), "", "", found)
    changes = [
        FieldChange(
            kind=kind,
            name=name,
            path=path,
            old=None if old is None else _text(old),
            new=None if new is None else _text(new),
        )
        for path, old, new in found
    ]
    for secret_field in _SECRET_FIELDS:
        before, after = live.get(secret_field) or {}, candidate.get(secret_field) or {}
        if not isinstance(before, dict) or not isinstance(after, dict):
            continue
        for key in sorted(set(before) | set(after)):
            if before.get(key) != after.get(key):
                changes.append(
                    FieldChange(
                        kind=kind,
                        name=name,
                        path=_key(secret_field, key),
                        old=None if key not in before else "",
                        new=None if key not in after else "",
                        hidden=True,
                    )
                )
    return changes
