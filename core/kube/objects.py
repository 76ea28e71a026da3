"""Small readers for API objects as plain dicts: the Any stays in here.

Pure helpers every part of the adapter shares; nothing here does I/O.
"""

from __future__ import annotations

from typing import Any

MAX_MESSAGE = 800


def truncate(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def dig(obj: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def as_int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) else default


def as_str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def str_dict(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
