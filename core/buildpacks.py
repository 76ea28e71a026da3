"""Zero-config builds: which pack a source tree is, and the Containerfile that builds it.

Pure functions over a directory (read, never written) and plain values, unit-tested on small trees
(tests/core/test_buildpacks.py); running buildah is core.builds' business.  Detection, in order:

1. a `Dockerfile` or `Containerfile` in the build context is used as it is (pack `dockerfile`);
2. Python (`requirements.txt` or `pyproject.toml`), Node (`package.json`), Go (`go.mod`),
   a static site (`index.html`), the first that matches;
3. anything else is refused, naming what was looked for.

A `Procfile`'s `web:` line is the command the image runs (as Heroku reads it); without one each
pack has its default (`npm start`, the Go binary, nginx), and Python needs `main.py` or `app.py`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from core.errors import PermanentError

DOCKERFILE = "dockerfile"
PYTHON = "python"
NODE = "node"
GO = "go"
STATIC = "static"
PACKS = (DOCKERFILE, PYTHON, NODE, GO, STATIC)

# The official images; each is a setting (SHIPIT_BUILD_<PACK>_IMAGE).
DEFAULT_BASES = {
    PYTHON: "docker.io/library/python:3.12-slim",
    NODE: "docker.io/library/node:22-slim",
    GO: "docker.io/library/golang:1.23",
    STATIC: "docker.io/library/nginx:1.27-alpine",
}

PROCFILE_MAX_BYTES = 64 * 1024


class NotDetected(PermanentError):
    """No pack fits the source tree: the build fails with this text (it names what was looked for)."""


@dataclass(frozen=True, kw_only=True)
class Plan:
    pack: str
    # A Dockerfile / Containerfile of the tree (its name in the context), used as it is.
    containerfile: str | None = None
    # The Procfile's `web:` command, when there is one.
    command: str | None = None
    # What shaped the choice, for the build's log.
    reason: str = ""


def detect(context: Path) -> Plan:
    """The pack of the tree at `context` (its top level only, as the packs' markers live there)."""
    if not context.is_dir():
        raise NotDetected(f"the build context {context.name or '.'} is not a directory of the commit")
    names = {p.name for p in context.iterdir() if p.is_file() and not p.is_symlink()}
    for name in ("Containerfile", "Dockerfile"):
        if name in names:
            return Plan(pack=DOCKERFILE, containerfile=name, reason=f"{name} found: used as it is")
    command = web_command(context / "Procfile") if "Procfile" in names else None
    for pack, markers in (
        (PYTHON, ("requirements.txt", "pyproject.toml")),
        (NODE, ("package.json",)),
        (GO, ("go.mod",)),
        (STATIC, ("index.html",)),
    ):
        found = [m for m in markers if m in names]
        if found:
            if pack == PYTHON and command is None and not ({"main.py", "app.py"} & names):
                raise NotDetected(
                    "a Python app needs a command: add a Procfile with a `web:` line "
                    "(web: gunicorn app:app) or a main.py / app.py"
                )
            return Plan(pack=pack, command=command, reason=f"{', '.join(found)} found")
    raise NotDetected(
        "cannot tell how to build this commit: no Dockerfile or Containerfile, and none of "
        "requirements.txt, pyproject.toml, package.json, go.mod or index.html in the build context"
    )


def web_command(procfile: Path) -> str | None:
    """The `web:` process of a Procfile, or None when it has none."""
    text = procfile.read_bytes()[:PROCFILE_MAX_BYTES].decode("utf-8", errors="replace")
    for line in text.splitlines():
        name, sep, command = line.partition(":")
        if sep and name.strip() == "web" and command.strip():
            return command.strip()
    return None


def containerfile(
    plan: Plan, *, bases: dict[str, str], files: set[str] | frozenset[str] = frozenset()
) -> str:
    """The Containerfile for a detected pack (not for `dockerfile`, whose own file is used).

    `files` are the top-level file names of the context (lock files and the like choose the steps).
    The command runs through `/bin/sh -c "exec ..."`, as Heroku runs a Procfile's.
    """
    if plan.pack not in bases:
        raise ValueError(f"no generated Containerfile for pack {plan.pack}")
    base = bases[plan.pack]
    lines = [f"FROM {base}"]
    command = plan.command
    if plan.pack == PYTHON:
        install = (
            "pip install --no-cache-dir -r requirements.txt"
            if "requirements.txt" in files
            else "pip install --no-cache-dir ."
        )
        lines += ["WORKDIR /app", "COPY . /app", f"RUN {install}", "ENV PYTHONUNBUFFERED=1 PORT=8080"]
        command = command or ("python main.py" if "main.py" in files else "python app.py")
    elif plan.pack == NODE:
        install = "npm ci --omit=dev" if "package-lock.json" in files else "npm install --omit=dev"
        lines += ["WORKDIR /app", "COPY . /app", f"RUN {install}", "ENV NODE_ENV=production PORT=8080"]
        command = command or "npm start"
    elif plan.pack == GO:
        lines += [
            "WORKDIR /src",
            "COPY . /src",
            "RUN CGO_ENABLED=0 go build -o /usr/local/bin/app .",
            "ENV PORT=8080",
        ]
        command = command or "/usr/local/bin/app"
    elif plan.pack == STATIC:
        # nginx's image serves this directory on port 80 by itself: no command unless the Procfile says.
        lines += ["COPY . /usr/share/nginx/html"]
    if command is not None:
        lines.append(f"CMD {json.dumps(['/bin/sh', '-c', f'exec {command}'])}")
    return "\n".join(lines) + "\n"


def top_level_files(context: Path) -> frozenset[str]:
    return frozenset(p.name for p in context.iterdir() if p.is_file() and not p.is_symlink())
