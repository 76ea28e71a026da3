"""Detection of the pack on small source trees, and the Containerfiles the packs generate."""

from __future__ import annotations

from pathlib import Path

import pytest

from core import buildpacks
from core.buildpacks import DOCKERFILE, GO, NODE, PYTHON, STATIC, NotDetected

TREES: dict[str, dict[str, str]] = {
    "dockerfile": {"Dockerfile": "FROM scratch\n", "package.json": "{}", "index.html": "<h1>x</h1>"},
    "containerfile": {"Containerfile": "FROM scratch\n", "go.mod": "module x\n"},
    "python-requirements": {"requirements.txt": "flask\n", "app.py": "print(1)\n"},
    "python-pyproject": {"pyproject.toml": "[project]\nname='x'\n", "Procfile": "web: gunicorn x:app\n"},
    "node": {"package.json": '{"scripts": {"start": "node server.js"}}', "package-lock.json": "{}"},
    "go": {"go.mod": "module example.com/x\n", "main.go": "package main\n"},
    "static": {"index.html": "<h1>hello</h1>", "style.css": ""},
}


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize(
    ("name", "pack"),
    [
        ("dockerfile", DOCKERFILE),
        ("containerfile", DOCKERFILE),
        ("python-requirements", PYTHON),
        ("python-pyproject", PYTHON),
        ("node", NODE),
        ("go", GO),
        ("static", STATIC),
    ],
)
def test_each_pack_is_detected(tmp_path: Path, name: str, pack: str) -> None:
    assert buildpacks.detect(tree(tmp_path, TREES[name])).pack == pack


def test_a_dockerfile_wins_over_every_pack_and_is_used_as_is(tmp_path: Path) -> None:
    plan = buildpacks.detect(tree(tmp_path, {**TREES["python-requirements"], **TREES["dockerfile"]}))
    assert (plan.pack, plan.containerfile) == (DOCKERFILE, "Dockerfile")
    # Containerfile is preferred to Dockerfile when both are there (as buildah reads them).
    both = tree(tmp_path / "both", {"Dockerfile": "FROM a\n", "Containerfile": "FROM b\n"})
    assert buildpacks.detect(both).containerfile == "Containerfile"


def test_packs_are_tried_in_order(tmp_path: Path) -> None:
    # Python before Node before Go before a static site: a Django app with a package.json for its assets.
    everything = {"requirements.txt": "", "main.py": "", "package.json": "{}", "go.mod": "", "index.html": ""}
    assert buildpacks.detect(tree(tmp_path / "a", everything)).pack == PYTHON
    assert (
        buildpacks.detect(tree(tmp_path / "b", {"package.json": "{}", "go.mod": "", "index.html": ""})).pack
        == NODE
    )
    assert buildpacks.detect(tree(tmp_path / "c", {"go.mod": "", "index.html": ""})).pack == GO


def test_markers_count_only_at_the_top_of_the_context(tmp_path: Path) -> None:
    with pytest.raises(NotDetected, match="cannot tell how to build"):
        buildpacks.detect(tree(tmp_path, {"docs/index.html": "", "sub/Dockerfile": "FROM x\n"}))


def test_an_empty_tree_is_refused_naming_what_was_looked_for(tmp_path: Path) -> None:
    with pytest.raises(NotDetected) as e:
        buildpacks.detect(tmp_path)
    for marker in ("Dockerfile", "requirements.txt", "package.json", "go.mod", "index.html"):
        assert marker in str(e.value)


def test_a_missing_context_is_refused(tmp_path: Path) -> None:
    with pytest.raises(NotDetected, match="not a directory"):
        buildpacks.detect(tmp_path / "services" / "web")


def test_python_without_a_command_is_refused(tmp_path: Path) -> None:
    with pytest.raises(NotDetected, match="Procfile"):
        buildpacks.detect(tree(tmp_path, {"requirements.txt": "flask\n"}))


def test_the_procfile_web_line_is_the_command(tmp_path: Path) -> None:
    files = {"package.json": "{}", "Procfile": "release: ./migrate\nweb:   node server.js --port $PORT  \n"}
    plan = buildpacks.detect(tree(tmp_path, files))
    assert plan.command == "node server.js --port $PORT"
    text = buildpacks.containerfile(plan, bases=buildpacks.DEFAULT_BASES, files=frozenset(files))
    assert text.splitlines()[-1] == 'CMD ["/bin/sh", "-c", "exec node server.js --port $PORT"]'
    # A Procfile without a web line leaves the pack's default.
    other = tree(tmp_path / "w", {"package.json": "{}", "Procfile": "worker: node jobs.js\n"})
    assert buildpacks.detect(other).command is None


def test_generated_containerfiles_use_the_configured_bases(tmp_path: Path) -> None:
    bases = {PYTHON: "r.local/py:1", NODE: "r.local/node:1", GO: "r.local/go:1", STATIC: "r.local/www:1"}
    python = buildpacks.containerfile(
        buildpacks.Plan(pack=PYTHON), bases=bases, files=frozenset({"requirements.txt", "app.py"})
    )
    assert python.splitlines() == [
        "FROM r.local/py:1",
        "WORKDIR /app",
        "COPY . /app",
        "RUN pip install --no-cache-dir -r requirements.txt",
        "ENV PYTHONUNBUFFERED=1 PORT=8080",
        'CMD ["/bin/sh", "-c", "exec python app.py"]',
    ]
    node = buildpacks.containerfile(
        buildpacks.Plan(pack=NODE), bases=bases, files=frozenset({"package.json"})
    )
    assert "RUN npm install --omit=dev" in node and node.startswith("FROM r.local/node:1\n")
    go = buildpacks.containerfile(buildpacks.Plan(pack=GO), bases=bases)
    assert "RUN CGO_ENABLED=0 go build -o /usr/local/bin/app ." in go
    static = buildpacks.containerfile(buildpacks.Plan(pack=STATIC), bases=bases)
    assert static == "FROM r.local/www:1\nCOPY . /usr/share/nginx/html\n"
    with pytest.raises(ValueError):
        buildpacks.containerfile(buildpacks.Plan(pack=DOCKERFILE), bases=bases)


def test_a_command_cannot_break_out_of_its_cmd_line(tmp_path: Path) -> None:
    plan = buildpacks.Plan(pack=STATIC, command='httpd "-f"\nRUN rm -rf /')
    text = buildpacks.containerfile(plan, bases=buildpacks.DEFAULT_BASES)
    assert len(text.splitlines()) == 3 and text.splitlines()[-1].startswith("CMD [")
