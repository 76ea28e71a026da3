"""Which tags a policy accepts and which is newest: semver ranges, globs, regexes ordered by a named
group.  Pure (no database, no registry): the rest of the package asks it, and tests call it directly.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core import semver
from core.errors import InvalidInput

KINDS = ("semver", "glob", "regex")
SORTS = ("numeric", "alpha")


@dataclass(frozen=True)
class Matcher:
    """Which tags a policy accepts, and their order: `key(tag)` is None for a tag that does not match."""

    kind: str
    pattern: str
    key: Callable[[str], Any]

    @property
    def ordered(self) -> bool:
        return self.kind != "glob"

    def newest(self, tags: list[str]) -> str | None:
        keyed = [(k, t) for t in tags if (k := self.key(t)) is not None]
        return max(keyed)[1] if keyed else None

    def newer(self, tag: str, *, than: list[str]) -> bool:
        """Is `tag` strictly newer than every one of `than` (those the policy matches)?"""
        mine = self.key(tag)
        if mine is None:
            return False
        others = [k for t in than if (k := self.key(t)) is not None]
        if not self.ordered:
            return tag not in than
        return all(mine > k for k in others)


def matcher(*, kind: str, pattern: str, sort: str = "") -> Matcher:
    """Build (and so validate) a policy's matcher; InvalidInput names the field that is wrong."""
    if kind == "semver":
        spec = semver.parse_range(pattern, field="semver")

        def semver_key(tag: str) -> Any:
            version = semver.parse(tag)
            return version.key() if version is not None and version in spec else None

        return Matcher(kind=kind, pattern=pattern, key=semver_key)
    if kind == "glob":
        if not pattern:
            raise InvalidInput("glob is empty: give a pattern such as main-*", field="glob")

        def glob_key(tag: str) -> Any:
            return tag if fnmatch.fnmatchcase(tag, pattern) else None

        return Matcher(kind=kind, pattern=pattern, key=glob_key)
    if kind == "regex":
        try:
            compiled = re.compile(pattern)
        except (re.error, OverflowError, RecursionError, ValueError) as e:
            raise InvalidInput(f"regex does not compile: {e}", field="regex") from None
        if "key" not in compiled.groupindex:
            raise InvalidInput(
                "regex needs a named group `key` to order tags by, like main-(?P<key>\\d+)", field="regex"
            )
        if sort not in SORTS:
            raise InvalidInput(f"sort must be one of {', '.join(SORTS)}", field="sort")

        def regex_key(tag: str) -> Any:
            m = compiled.fullmatch(tag)
            if m is None or m.group("key") is None:
                return None
            value = m.group("key")
            if sort == "numeric":
                return int(value) if value.isdigit() else None
            return value

        return Matcher(kind=kind, pattern=pattern, key=regex_key)
    raise InvalidInput(f"kind must be one of {', '.join(KINDS)}", field="kind")
