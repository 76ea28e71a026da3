"""Container image references, read the way Docker, containerd and the kubelet read them.

Written from the grammar of the distribution reference (github.com/distribution/reference),
so that what we accept is exactly what a pod spec will pull, and nothing else:

    reference        := name [ ":" tag ] [ "@" digest ]
    name             := [ domain "/" ] path
    domain           := host [ ":" port ]
    host             := domain-name | "[" ipv6 "]"
    domain-name      := domain-component ( "." domain-component )*
    domain-component := [a-zA-Z0-9] | [a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]
    ipv6             := [a-fA-F0-9:]+            (no zone, no embedded IPv4)
    port             := [0-9]+
    path             := path-component ( "/" path-component )*     (at most 255 characters)
    path-component   := [a-z0-9]+ ( separator [a-z0-9]+ )*
    separator        := "." | "_" | "__" | "-"+
    tag              := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
    digest           := algorithm ":" encoded
    algorithm        := [A-Za-z][A-Za-z0-9]* ( [-_+.] [A-Za-z][A-Za-z0-9]* )*
    encoded          := [0-9a-fA-F]{32,}, then exactly what the algorithm's hash produces

Familiar names are expanded as Docker does: the first part of the name is a registry only
when it has a `.` or a `:`, is `localhost`, or has an upper-case letter; otherwise the image
is on Docker Hub (`acme/web` is `docker.io/acme/web`, `redis` is `docker.io/library/redis`).
A bare 64-hex string is refused as a name: Docker reads it as an image ID, not a repository.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from core.errors import InvalidInput

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_PREFIX = "library/"
PATH_MAX = 255
TAG_MAX = 128
# The digest algorithms registered for OCI content and the length of their hex encoding.
DIGEST_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}

_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(rf"(?:{_COMPONENT}(?:\.{_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?")
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")  # at most TAG_MAX
_ALGORITHM = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*")
_ENCODED = re.compile(r"[0-9a-fA-F]{32,}")
_LOWER_HEX = re.compile(r"[0-9a-f]+")
_IDENTIFIER = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, kw_only=True)
class Reference:
    domain: str  # always set: docker.io for Docker Hub
    path: str  # library/redis, acme/web
    tag: str | None = None
    digest: str | None = None  # algorithm:hex

    @property
    def name(self) -> str:
        """The fully qualified repository: docker.io/library/redis."""
        return f"{self.domain}/{self.path}"

    def normalized(self) -> str:
        """The fully qualified reference, as the container runtime pulls it."""
        return self.name + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    def familiar(self) -> str:
        """The short form people type: redis:7 rather than docker.io/library/redis:7."""
        name = self.name
        if self.domain == DEFAULT_DOMAIN:
            name = self.path.removeprefix(OFFICIAL_PREFIX) if self.path.count("/") == 1 else self.path
        return name + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    def with_tag(self, tag: str, *, field: str = "image") -> Reference:
        """The same repository at another tag (any digest is dropped: it named the old image)."""
        _check_tag(tag, bad=_complaint(tag, field=field))
        return Reference(domain=self.domain, path=self.path, tag=tag)


_Bad = Callable[[str], InvalidInput]


def _complaint(text: str, *, field: str) -> _Bad:
    def bad(why: str) -> InvalidInput:
        shown = text if len(text) <= 80 else text[:80] + "…"
        return InvalidInput(f"{field} is not a valid image reference ({why}), got {shown!r}", field=field)

    return bad


# The repositories of references parsed before, by the text before their tag's colon: a push's image
# differs from the one before by its tag alone (issue 13: CPU per push).  Only a reference with a tag
# and no digest is kept; one whose text is that repository, a colon and a valid tag parses alike.
_NAMES: dict[str, tuple[str, str]] = {}
_NAMES_KEPT = 1024


def parse(text: str, *, field: str = "image") -> Reference:
    """Parse and normalise one reference; raises InvalidInput (naming `field`) if it is not one."""
    name, colon, tag = text.rpartition(":")
    if colon:
        known = _NAMES.get(name)
        # (A tag never holds ':', '/' or '@': the colon found is the one before the tag.)
        if known is not None and _TAG.fullmatch(tag):
            return Reference(domain=known[0], path=known[1], tag=tag)
    ref = _parse(text, field=field)
    if ref.tag is not None and ref.digest is None:
        if len(_NAMES) >= _NAMES_KEPT:
            _NAMES.clear()
        _NAMES[text[: len(text) - len(ref.tag) - 1]] = (ref.domain, ref.path)
    return ref


def _parse(text: str, *, field: str) -> Reference:
    bad = _complaint(text, field=field)

    if not text:
        raise bad("it is empty")
    if _IDENTIFIER.fullmatch(text):
        raise bad("a 64-character hex string is an image ID, not a repository name")

    rest, at, digest = text.partition("@")
    if at and not digest:
        raise bad("nothing after '@'")

    # Docker's rule for familiar names: the first part is a registry only if it looks like a host.
    slash = rest.find("/")
    first = rest[:slash] if slash >= 0 else ""
    if slash >= 0 and (any(c in first for c in ".:") or first == "localhost" or first != first.lower()):
        domain, remainder = first, rest[slash + 1 :]
        if not _DOMAIN.fullmatch(domain):
            raise bad(f"{domain!r} is not a registry host[:port]")
    else:
        domain, remainder = DEFAULT_DOMAIN, rest

    path, colon, tag = remainder.partition(":")
    if not path:
        raise bad("no repository name")
    for component in path.split("/"):
        if not component:
            raise bad("the repository name has an empty part between '/'")
        if not _PATH_COMPONENT.fullmatch(component):
            if _PATH_COMPONENT.fullmatch(component.lower()):
                raise bad("the repository name must be lower-case")
            raise bad(
                f"{component!r} is not a repository path component "
                "(lower-case letters and digits, separated by '.', '_', '__' or '-')"
            )

    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = OFFICIAL_PREFIX + path
    if len(path) > PATH_MAX:
        raise bad(f"the repository path is longer than {PATH_MAX} characters")
    if colon:
        _check_tag(tag, bad=bad)

    if at:
        _check_digest(digest, bad=bad)
    return Reference(domain=domain, path=path, tag=tag if colon else None, digest=digest if at else None)


def normalize(text: str, *, field: str = "image") -> str:
    """`redis:7` → `docker.io/library/redis:7`."""
    return parse(text, field=field).normalized()


def _check_tag(tag: str, *, bad: _Bad) -> None:
    if len(tag) > TAG_MAX:
        raise bad(f"a tag is at most {TAG_MAX} characters")
    if not _TAG.fullmatch(tag):
        raise bad("a tag is letters, digits, '_', '.' and '-', not starting with '.' or '-'")


def _check_digest(digest: str, *, bad: _Bad) -> None:
    algorithm, colon, encoded = digest.partition(":")
    if not colon or not _ALGORITHM.fullmatch(algorithm) or not _ENCODED.fullmatch(encoded):
        raise bad("a digest looks like sha256:<64 hex digits>")
    length = DIGEST_HEX_LENGTHS.get(algorithm)
    if length is None:
        raise bad(
            f"unsupported digest algorithm {algorithm[:20]!r}; use one of {', '.join(DIGEST_HEX_LENGTHS)}"
        )
    if len(encoded) != length or not _LOWER_HEX.fullmatch(encoded):
        raise bad(f"a {algorithm} digest is {length} lower-case hex digits")
