"""Unpacking a commit's source tarball (GitHub's tarball API) without trusting it.

The tarball comes from a repository anyone with push access writes, and it is unpacked on the
builder's disk: every member is checked before anything is written.  Refused, naming the member:
absolute paths, `..`, links (symbolic or hard) whose target leaves the tree, devices and FIFOs,
members outside the one top-level directory GitHub puts everything in, more than `max_bytes`
unpacked or `max_files` members.  What passes is extracted with tarfile's "data" filter as well.
"""

from __future__ import annotations

import posixpath
import tarfile
from dataclasses import dataclass
from pathlib import Path

from core.errors import PermanentError


class UnsafeArchive(PermanentError):
    """The tarball holds something that must not be unpacked; the text names the member."""


@dataclass(frozen=True, kw_only=True)
class Unpacked:
    root: Path
    files: int
    bytes: int


def _safe_relative(name: str, *, what: str) -> str:
    """`name` as a normalised relative path inside the tree, or refused."""
    if name.startswith("/") or "\\" in name or "\x00" in name:
        raise UnsafeArchive(f"{what} {name[:200]!r} is an absolute or unusual path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"{what} {name[:200]!r} climbs out of the tree (..)")
    return "/".join(parts)


def unpack(archive: Path, *, dest: Path, max_bytes: int, max_files: int = 100_000) -> Unpacked:
    """Check every member of `archive` (gzip'd or not), then extract them under `dest`, without
    GitHub's top-level directory (`owner-repo-<sha>/`)."""
    dest.mkdir(parents=True, exist_ok=True)
    total = 0
    files = 0
    top: str | None = None
    kept: list[tarfile.TarInfo] = []
    names: set[str] = set()
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                files += 1
                if files > max_files:
                    raise UnsafeArchive(f"the source has more than {max_files} files")
                rel = _safe_relative(member.name, what="member")
                if not rel:
                    continue
                first, _, inner = rel.partition("/")
                if top is None:
                    top = first
                if first != top:
                    raise UnsafeArchive(f"member {member.name[:200]!r} lies outside the top-level directory")
                if not inner:
                    if not member.isdir():
                        raise UnsafeArchive(f"member {member.name[:200]!r} is not a directory")
                    continue
                if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
                    raise UnsafeArchive(
                        f"member {member.name[:200]!r} is a device, FIFO or other special file"
                    )
                if member.issym():
                    target = member.linkname
                    if target.startswith("/"):
                        raise UnsafeArchive(f"link {member.name[:200]!r} points to an absolute path")
                    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(inner), target))
                    if resolved == ".." or resolved.startswith("../"):
                        raise UnsafeArchive(f"link {member.name[:200]!r} points out of the tree")
                elif member.islnk():
                    target = _safe_relative(member.linkname, what="hard link target of")
                    t_first, _, t_inner = target.partition("/")
                    if t_first != top or t_inner not in names:
                        raise UnsafeArchive(f"hard link {member.name[:200]!r} points out of the tree")
                    member = member.replace(linkname=t_inner, deep=False)
                total += member.size if member.isfile() else 0
                if total > max_bytes:
                    raise UnsafeArchive(f"the source is larger than {max_bytes} bytes unpacked")
                names.add(inner)
                kept.append(member.replace(name=inner, deep=False))
            if hasattr(tarfile, "data_filter"):  # Python 3.11.4+: tarfile's own checks too
                tar.extractall(dest, members=kept, filter="data")
            else:  # pragma: no cover - every member was checked above
                tar.extractall(dest, members=kept)  # noqa: S202
    except tarfile.TarError as e:
        # tarfile's own refusals (the data filter) and broken archives: no path of ours in the text.
        raise UnsafeArchive(
            f"the source tarball cannot be unpacked safely: {type(e).__name__}: {e}"
        ) from None
    except (EOFError, OSError) as e:
        raise UnsafeArchive(f"the source tarball is damaged: {type(e).__name__}") from None
    return Unpacked(root=dest, files=len(kept), bytes=total)


def subdirectory(root: Path, *, context: str | None) -> Path:
    """The build context `context` (a relative directory of the repository) under `root`."""
    rel = _safe_relative(context or ".", what="build context")
    path = (root / rel).resolve() if rel else root.resolve()
    if path != root.resolve() and root.resolve() not in path.parents:
        raise UnsafeArchive(f"build context {context!r} leaves the repository")
    return path
