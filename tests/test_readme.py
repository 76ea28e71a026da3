"""The README is the front door: every command, flag, route, variable and path it names must be real.

Read mechanically from README.md, so a renamed flag, a moved file or a route that stops reading the
query parameter the README (and an error message) tells people to give fails here, not in a new
user's terminal.  Each check reads what the code itself exposes: the CLI's click tree (arguments are
parsed, nothing is run), the Slack command parser, the app's route table, the Settings class.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from starlette.routing import Match
from typer.testing import CliRunner

from bot.commands import parse as parse_slack
from bot.commands.registry import BY_NAME
from shipit.cli import app as cli_app
from shipit.main import create_app
from shipit.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def prose_and_blocks(text: str) -> tuple[str, list[str]]:
    """The README outside fenced code blocks (one string), and each block's text."""
    prose: list[str] = []
    blocks: list[str] = []
    block: list[str] | None = None
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            if block is None:
                block = []
            else:
                blocks.append("\n".join(block))
                block = None
            continue
        (prose if block is None else block).append(line)
    return "\n".join(prose), blocks


PROSE, BLOCKS = prose_and_blocks(README)
# Inline code spans of the prose, a span broken over two lines joined with a space.
SPANS = re.findall(r"`([^`]+)`", PROSE.replace("\n", " "))


# --------------------------------------------------------------------------- the CLI


def block_commands(blocks: list[str] = BLOCKS) -> list[str]:
    """`shipit ...` lines of the code blocks: continuations joined, comments, `$ ` and redirects cut."""
    out = []
    for block in blocks:
        for raw in block.replace("\\\n", " ").splitlines():
            line = raw.strip().removeprefix("$ ")
            if "| shipit " in line:
                line = line.split("| ", 1)[1]  # echo "$TOKEN" | shipit registries add ...
            if line.startswith("shipit "):
                out.append(re.sub(r"\s+#.*$", "", line).split(" > ")[0].strip())
    return out


def cli_args(line: str) -> list[str]:
    # `[--plan small|medium]`: the optional part given, the first of the alternatives.
    words = shlex.split(line.replace("[", "").replace("]", ""))[1:]
    return [w.split("|")[0] if "|" in w and "://" not in w else w for w in words]


def resolve(args: list[str]) -> tuple[Any, list[str], list[str]]:
    """The click command the words name, its path, and the words left for it."""
    cmd: Any = typer.main.get_command(cli_app)
    path, rest = ["shipit"], list(args)
    while hasattr(cmd, "commands") and rest and not rest[0].startswith("-"):
        sub = cmd.commands.get(rest[0])
        if sub is None:
            raise AssertionError(f"`{' '.join(path)}` has no command {rest[0]!r}")
        path.append(rest.pop(0))
        cmd = sub
    return cmd, path, rest


@pytest.mark.parametrize("line", sorted(set(block_commands())))
def test_every_cli_example_in_a_code_block_parses(line: str) -> None:
    """Each `shipit ...` line of the README's code blocks, parsed by the real CLI as typed (not run)."""
    cmd, path, rest = resolve(cli_args(line))
    assert not hasattr(cmd, "commands"), f"`{' '.join(path)}` is a group, not a command"
    try:
        cmd.make_context(" ".join(path), rest)
    except typer.Exit:
        pass  # an eager option such as --version
    except Exception as e:  # click's UsageError and friends, from typer's vendored click
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        raise AssertionError(f"README: `{line}`: {message}") from None


def test_every_tour_command_takes_json_as_the_readme_says() -> None:
    """ "Every command above takes `--json` for scripts": the tour's and the environments' commands."""
    claim = "Every command above takes `--json` for scripts."
    lines = block_commands(prose_and_blocks(README[: README.index(claim)])[1])
    assert len(lines) > 20, lines
    for line in lines:
        cmd, path, _ = resolve(cli_args(line))
        options = {o for p in cmd.params for o in getattr(p, "opts", ())}
        assert "--json" in options, f"README: `{line}`: `{' '.join(path)}` has no --json"


INLINE_CLI = sorted({s for s in SPANS if s.startswith("shipit ")})


@pytest.mark.parametrize("span", INLINE_CLI)
def test_every_cli_command_named_in_the_prose_exists_with_its_flags(span: str) -> None:
    """Prose names commands with placeholders (`shipit builds logs APP ID`): the command must exist and
    every --flag it shows must be one of its options."""
    words = span.replace("[", " ").replace("]", " ").replace("|", " ").split()[1:]
    cmd, path, rest = resolve(words)
    options = {o for p in cmd.params for o in (*getattr(p, "opts", ()), *getattr(p, "secondary_opts", ()))}
    flags = {w.split("=")[0] for w in rest if w.startswith("--")}
    assert flags <= options, f"README: `{span}`: `{' '.join(path)}` has no {sorted(flags - options)}"


# Flags of other programs the README quotes (buildah, npm, etcd, the controller manager, a Dockerfile).
OTHER_PROGRAMS_FLAGS = {
    "--layers", "--cache-from", "--cache-to", "--root", "--runroot", "--omit", "--chown", "--controllers",
    "--unsafe-no-fsync",
}  # fmt: skip


def test_every_flag_named_alone_in_the_prose_is_a_cli_option() -> None:
    """`--previews-from-forks never`, `--auto-rollback off`, `--env NAME`: some command takes each."""
    options: set[str] = set()

    def collect(cmd: Any) -> None:
        for p in getattr(cmd, "params", []):
            options.update(getattr(p, "opts", ()), getattr(p, "secondary_opts", ()))
        for sub in getattr(cmd, "commands", {}).values():
            collect(sub)

    collect(typer.main.get_command(cli_app))
    named = {f for span in SPANS for f in re.findall(r"(?:^|\s)(--[a-z][a-z-]*)", span)}
    assert len(named) > 30
    assert named - options - OTHER_PROGRAMS_FLAGS == set()


def test_the_readme_names_cli_commands_at_all() -> None:
    # The extraction above finds nothing if the README's shape changes: then these tests prove nothing.
    assert len(set(block_commands())) > 50 and len(INLINE_CLI) > 20


def test_every_cli_command_answers_help() -> None:
    """What a new user does after reading a command in the README: `shipit ... --help`, for every one."""

    def paths(cmd: Any, path: list[str]) -> Iterator[list[str]]:
        yield path
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from paths(sub, [*path, name])

    runner = CliRunner()
    every = list(paths(typer.main.get_command(cli_app), []))
    assert len(every) > 90
    failed = {
        " ".join(p): r.output[-200:] for p in every if (r := runner.invoke(cli_app, [*p, "--help"])).exit_code
    }
    assert not failed, failed


# --------------------------------------------------------------------------- Slack


SLACK = sorted({s for s in SPANS if s.startswith("/shipit")})


@pytest.mark.parametrize("span", SLACK)
def test_every_slack_command_in_the_readme_parses(span: str) -> None:
    text = span.removeprefix("/shipit").replace("…", "x").replace("[", "").replace("]", "").strip()
    text = re.sub(r"(\S+?)\|\S+", r"\1", text)  # `notify list|add|remove|test`: the first
    # Slack escapes a typed mention (the manifest's should_escape) before shipit sees it.
    text = re.sub(r"(?<!\S)@([a-z]+)", r"<@U0123|\1>", text)
    if text in BY_NAME:
        return  # the prose names a command alone ("from `/shipit deploy`")
    parse_slack(text)  # raises a UsageError naming what is wrong


# --------------------------------------------------------------------------- settings


def settings_variables() -> set[str]:
    return {f"SHIPIT_{name.upper()}" for name in Settings.model_fields}


def test_every_shipit_variable_the_readme_names_is_read() -> None:
    """A SHIPIT_* variable is a setting, or one the scripts and the test harness read (named there)."""
    named = set(re.findall(r"\bSHIPIT_[A-Z0-9_]*[A-Z0-9]\b", README))
    tooling = "\n".join(
        p.read_text()
        for p in [
            ROOT / "Makefile",
            ROOT / "Containerfile",
            *(ROOT / "scripts").iterdir(),
            *ROOT.glob("tests/**/*.py"),
        ]
        if p.is_file() and p.name != "test_readme.py"
    )
    unknown = {v for v in named - settings_variables() if not re.search(rf"\b{v}\b", tooling)}
    assert not unknown, f"the README names variables nothing reads: {sorted(unknown)}"


def test_env_example_lists_every_setting_as_the_readme_says() -> None:
    """The README's Configuration: "[.env.example] lists every one"; its table has the ones people script."""
    assert "[.env.example](.env.example) lists every one" in README
    listed = set(re.findall(r"\bSHIPIT_[A-Z0-9_]*[A-Z0-9]\b", (ROOT / ".env.example").read_text()))
    assert settings_variables() - listed == set(), "settings missing from .env.example"
    assert listed - settings_variables() == set(), ".env.example names variables Settings does not read"


# --------------------------------------------------------------------------- routes


@pytest.fixture(scope="module")
def app() -> Any:
    # Every channel on, so every route the README names is in the table (nothing is started).
    settings = Settings(
        master_key="A" * 43 + "=",
        slack_signing_secret="s",
        slack_client_id="c",
        slack_client_secret="c",
        github_webhook_secret="g",
        registry_webhook_token="r",
        oidc_issuer="https://sso.example.com",
        oidc_client_id="shipit",
    )
    return create_app(settings)


@pytest.fixture(scope="module")
def routes(app: Any) -> list[Any]:
    return list(app.router.routes)


@pytest.fixture(scope="module")
def api_queries(app: Any) -> dict[tuple[str, str], set[str]]:
    """(METHOD, path template) -> the query parameters the API declares, from its OpenAPI document."""
    out = {}
    for path, operations in app.openapi()["paths"].items():
        for method, op in operations.items():
            out[(method.upper(), path)] = {p["name"] for p in op.get("parameters", []) if p["in"] == "query"}
    return out


def template_matches(template: str, path: str) -> bool:
    return re.fullmatch(re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)), path) is not None


def readme_routes() -> Iterator[tuple[str | None, str]]:
    """(method or None, path) for each route-like code span: `POST /apps/{name}/promote`,
    `/api/v1/projects/{project}/notify`, `SHIPIT_URL/slack/events`, `/apps/web?env=staging`."""
    tops = (
        "/api/",
        "/apps/",
        "/projects/",
        "/deploys/",
        "/builds/",
        "/slack/",
        "/github/",
        "/registry/",
        "/auth/",
    )
    exact = ("/healthz", "/readyz", "/metrics", "/docs", "/openapi.json")
    for span in SPANS:
        for m in re.finditer(r"(?:(GET|POST|PUT|PATCH|DELETE) )?(?:<?SHIPIT_URL>?)?(/[^\s`]*)", span):
            method, path = m.group(1), m.group(2)
            if "..." in path or "…" in path.split("?")[0] or m.start() != span.find(m.group(0)):
                continue
            if path.split("?")[0] in ("/api/v1", "/api/v1/"):
                continue  # the API's prefix, named as such
            if path.split("?")[0] in exact or path.startswith(tops):
                head, _, last = path.split("?")[0].rpartition("/")
                for alternative in last.split("|"):  # .../{env}/protection|windows|freezes
                    yield method, f"{head}/{alternative}" + (f"?{path.split('?')[1]}" if "?" in path else "")


def matching(routes: list[Any], method: str | None, path: str) -> list[Any]:
    concrete = re.sub(r"\{[^}]+\}", "1", path)
    found = []
    for route in routes:
        for m in [method] if method else ["GET", "POST", "PUT", "PATCH", "DELETE"]:
            scope = {
                "type": "http",
                "path": concrete,
                "method": m,
                "root_path": "",
                "query_string": b"",
                "headers": [],
            }
            if route.matches(scope)[0] is Match.FULL:
                found.append(route)
    return found


def test_every_route_the_readme_names_exists_and_reads_its_query(
    routes: list[Any], api_queries: dict[tuple[str, str], set[str]]
) -> None:
    named = sorted(set(readme_routes()), key=str)
    assert len(named) > 25, named  # the extraction still finds the README's routes
    missing, unread = [], []
    for method, full in named:
        path, _, query = full.partition("?")
        # `/apps/{name}/promote` and `/builds/{id}` are written under /api/v1 (and /api/v1/apps/{name}).
        candidates = [path, f"/api/v1{path}", f"/api/v1/apps/{{name}}{path}"]
        found = next((c for c in candidates if matching(routes, method, c)), None)
        if found is None:
            missing.append(f"{method or ''} {full}".strip())
            continue
        params = {p.split("=")[0] for p in query.split("&") if p}
        if params and found.startswith("/api/v1/"):
            concrete = re.sub(r"\{[^}]+\}", "1", found)
            takes = {
                name
                for (m, template), names in api_queries.items()
                if (method is None or m == method) and template_matches(template, concrete)
                for name in names
            }
            if params - takes:
                unread.append(f"{full}: {sorted(params - takes)} not among {sorted(takes)}")
    assert not missing, f"the README names routes the app does not have: {missing}"
    assert not unread, f"the README names query parameters the route does not read: {unread}"


def test_every_app_route_takes_env_as_the_readme_says(api_queries: dict[tuple[str, str], set[str]]) -> None:
    """ "The API (under /api/v1) takes `?env=staging` on `/apps/{name}/...`" (and the several-environments
    error asks for it): every such route reads it, but promote, which names both environments."""
    assert (
        "takes `?env=staging` on\n`/apps/{name}/...`" in README
        or "takes `?env=staging` on `/apps/{name}/...`" in README
    )
    app_routes = {k: v for k, v in api_queries.items() if k[1].startswith("/api/v1/apps/{name}")}
    without = [f"{m} {p}" for (m, p), names in app_routes.items() if "env" not in names]
    assert len(app_routes) > 20 and without == ["POST /api/v1/apps/{name}/promote"], without


# --------------------------------------------------------------------------- files and make targets


def test_every_repository_path_the_readme_names_exists() -> None:
    tops = (
        "shipit/",
        "core/",
        "bot/",
        "web/",
        "webhooks/",
        "storage/",
        "tests/",
        "manifests/",
        "scripts/",
        "bench/",
        "docs/",
        ".ci/",
    )
    named = {s for s in SPANS if s.startswith(tops) and not re.search(r"[\s<>]|NN", s)}
    named |= {m for m in re.findall(r"\]\(([^)#:]+)\)", README)}  # [text](local/link)
    named |= set(re.findall(r"!\[[^]]*\]\(([^)]+)\)", README))  # pictures
    assert len(named) > 30, named
    # A git-ignored file the README has people create is there as its `.example`.
    missing = sorted(p for p in named if not (ROOT / p).exists() and not (ROOT / f"{p}.example").exists())
    assert not missing, f"the README names files that are not in the repository: {missing}"


def test_every_make_target_the_readme_names_exists() -> None:
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M))
    named = set(re.findall(r"`(?:[A-Z_]+=\S+ )*make ([a-z][a-z-]*)", README))
    named |= {m for block in BLOCKS for m in re.findall(r"(?:^|\s)make ([a-z][a-z-]*)", block)}
    assert {"run", "test", "lint", "testenv-up"} <= named
    assert named <= targets, f"the README names make targets the Makefile lacks: {sorted(named - targets)}"
