"""Unpacking a source tarball refuses hostile archives before writing anything."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from core import sources
from core.sources import UnsafeArchive

TOP = "acme-web-6dcb09b"


def archive(tmp_path: Path, members: list[tuple[str, str, bytes | str]], *, gz: bool = True) -> Path:
    """members: (name, kind, data-or-link-target); kind is file, dir, sym, lnk, fifo or chr."""
    path = tmp_path / "source.tar.gz"
    with tarfile.open(path, "w:gz" if gz else "w") as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            payload = b""
            if kind == "file":
                payload = data if isinstance(data, bytes) else data.encode()
                info.size = len(payload)
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind in ("sym", "lnk"):
                info.type = tarfile.SYMTYPE if kind == "sym" else tarfile.LNKTYPE
                info.linkname = str(data)
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            elif kind == "chr":
                info.type = tarfile.CHRTYPE
            tar.addfile(info, io.BytesIO(payload) if kind == "file" else None)
    return path


def test_a_github_tarball_unpacks_without_its_top_directory(tmp_path: Path) -> None:
    path = archive(
        tmp_path,
        [
            (TOP, "dir", ""),
            (f"{TOP}/index.html", "file", "<h1>hi</h1>"),
            (f"{TOP}/static", "dir", ""),
            (f"{TOP}/static/app.js", "file", "x()"),
            (f"{TOP}/static/latest.js", "sym", "app.js"),
            (f"{TOP}/current", "sym", "static"),
            (f"{TOP}/copy.html", "lnk", f"{TOP}/index.html"),
        ],
    )
    out = sources.unpack(path, dest=tmp_path / "src", max_bytes=1024)
    root = tmp_path / "src"
    assert (root / "index.html").read_text() == "<h1>hi</h1>"
    assert (root / "static" / "latest.js").read_text() == "x()"
    assert (root / "copy.html").read_text() == "<h1>hi</h1>"
    assert out.bytes == len("<h1>hi</h1>") + 3
    assert not (root / TOP).exists()


@pytest.mark.parametrize(
    ("members", "refusal"),
    [
        ([("/etc/cron.d/x", "file", "evil")], "absolute"),
        ([(TOP, "dir", ""), (f"{TOP}/../../x", "file", "evil")], r"\.\."),
        ([(TOP, "dir", ""), (f"{TOP}/link", "sym", "/etc/passwd")], "absolute path"),
        ([(TOP, "dir", ""), (f"{TOP}/link", "sym", "../../etc")], "out of the tree"),
        ([(TOP, "dir", ""), (f"{TOP}/a/link", "sym", "../../x")], "out of the tree"),
        ([(TOP, "dir", ""), (f"{TOP}/hard", "lnk", "/etc/passwd")], "absolute"),
        ([(TOP, "dir", ""), (f"{TOP}/hard", "lnk", f"{TOP}/not-before")], "out of the tree"),
        ([(TOP, "dir", ""), (f"{TOP}/pipe", "fifo", "")], "special file"),
        ([(TOP, "dir", ""), (f"{TOP}/tty", "chr", "")], "special file"),
        ([(TOP, "dir", ""), ("other-top/x", "file", "x")], "outside the top-level"),
        ([(TOP, "file", "x")], "not a directory"),
    ],
)
def test_hostile_members_are_refused_and_nothing_is_written(
    tmp_path: Path, members: list[tuple[str, str, str]], refusal: str
) -> None:
    with pytest.raises(UnsafeArchive, match=refusal):
        sources.unpack(archive(tmp_path, members), dest=tmp_path / "src", max_bytes=1024)
    assert list((tmp_path / "src").iterdir()) == []
    assert not Path("/etc/cron.d/x").exists()


def test_the_size_cap_counts_unpacked_bytes(tmp_path: Path) -> None:
    # A gzip bomb: a few KB compressed, a MB unpacked.
    path = archive(tmp_path, [(TOP, "dir", ""), (f"{TOP}/zeros", "file", b"\0" * 1_000_000)])
    assert path.stat().st_size < 10_000
    with pytest.raises(UnsafeArchive, match="larger than 100000 bytes"):
        sources.unpack(path, dest=tmp_path / "src", max_bytes=100_000)


def test_the_file_count_cap(tmp_path: Path) -> None:
    members = [(TOP, "dir", "")] + [(f"{TOP}/f{i}", "file", "") for i in range(20)]
    with pytest.raises(UnsafeArchive, match="more than 10 files"):
        sources.unpack(archive(tmp_path, members), dest=tmp_path / "src", max_bytes=1024, max_files=10)


def test_garbage_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "source.tar.gz"
    path.write_bytes(b"<html>rate limited</html>")
    with pytest.raises(UnsafeArchive, match="cannot be unpacked"):
        sources.unpack(path, dest=tmp_path / "src", max_bytes=1024)


def test_the_build_context_stays_in_the_tree(tmp_path: Path) -> None:
    (tmp_path / "services" / "web").mkdir(parents=True)
    assert sources.subdirectory(tmp_path, context="services/web") == (tmp_path / "services" / "web").resolve()
    assert sources.subdirectory(tmp_path, context=None) == tmp_path.resolve()
    (tmp_path / "escape").symlink_to("/etc")
    with pytest.raises(UnsafeArchive, match="leaves the repository"):
        sources.subdirectory(tmp_path, context="escape")
    with pytest.raises(UnsafeArchive):
        sources.subdirectory(tmp_path, context="../x")
