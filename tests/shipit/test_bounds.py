"""Bounds and the API contract, over real HTTP on SQLite and PostgreSQL.

PostgreSQL refuses a value longer than its VARCHAR column, a NUL character, an integer beyond its
column's range; SQLite stores all of them.  Either way the API must answer 422 naming the field (or 404
for an id that cannot exist), never 500, and /openapi.json must say what the rules are.
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from core import apps, deploys, projects, tokens
from core.errors import InvalidInput, NotFound
from core.identity import SYSTEM
from shipit import schemas
from tests.conftest import ADMIN, LiveServer
from tests.shipit.conftest import table_rows

pytestmark = pytest.mark.both_databases

APP = {"project": "acme", "cluster": "offline", "image": "ghcr.io/acme/web:1.0", "deploy": False}


def error_of(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["message"] and body["error"]["type"], body
    return dict(body["error"])


@pytest.fixture
async def web(api: httpx.AsyncClient, offline: str) -> str:
    r = await api.post("/api/v1/apps", json={**APP, "name": "web"})
    assert r.status_code == 201, r.text
    return "web"


# (method, path, body, the field the 422 names)
TOO_LONG = [
    ("POST", "/api/v1/apps/web/lock", {"reason": "r" * 501}, "reason"),
    ("POST", "/api/v1/apps/web/pause", {"reason": "r" * 501}, "reason"),
    ("POST", "/api/v1/projects", {"name": "beta", "slack_channel": "#" + "c" * 64}, "slack_channel"),
    ("PATCH", "/api/v1/projects/acme", {"slack_channel": "#" + "c" * 64}, "slack_channel"),
    ("PATCH", "/api/v1/projects/acme", {"webhook_url": "https://h.example/" + "p" * 2048}, "webhook_url"),
    ("PATCH", "/api/v1/projects/acme", {"webhook_secret": "s" * 1025}, "webhook_secret"),
    ("PATCH", "/api/v1/apps/web", {"git_branch": "b" * 256}, "git_branch"),
    ("PATCH", "/api/v1/apps/web", {"github_environment": "e" * 101}, "github_environment"),
    ("PATCH", "/api/v1/apps/web", {"tls_issuer": "i" * 254}, "tls_issuer"),
    ("PATCH", "/api/v1/apps/web", {"image": "ghcr.io/acme/" + "w" * 500}, "image"),
    ("PATCH", "/api/v1/apps/web", {"cpu_request": "1" * 33}, "cpu_request"),
    ("PATCH", "/api/v1/apps/web", {"git_repo": "acme/" + "r" * 200}, "git_repo"),
    ("PATCH", "/api/v1/apps/web", {"image_template": "ghcr.io/acme/web:{sha}" + "x" * 500}, "image_template"),
    ("PATCH", "/api/v1/apps/web", {"env": {"K" * 254: "v"}}, "env"),
    ("PATCH", "/api/v1/apps/web", {"env": {"K": "v" * 32769}}, "env.K"),
    ("PATCH", "/api/v1/apps/web", {"preview_env": {"K" * 254: "v"}}, "preview_env"),
    ("PUT", "/api/v1/apps/web/secrets", {"values": {"K" * 254: "v"}}, "values"),
    ("POST", "/api/v1/apps/web/deploys", {"dedupe_key": "d" * 201}, "dedupe_key"),
    ("POST", "/api/v1/tokens", {"name": "n" * 101}, "name"),
    ("POST", "/api/v1/tokens", {"name": "ci", "subject": "user:" + "u" * 196}, "subject"),
    ("PUT", "/api/v1/projects/acme/members/user:" + "u" * 196, {"role": "viewer"}, "subject"),
    ("DELETE", "/api/v1/projects/acme/members/user:" + "u" * 196, None, "subject"),
    ("GET", "/api/v1/apps/" + "w" * 64, None, "name"),
    ("GET", "/api/v1/apps?project=" + "p" * 64, None, "project"),
    ("GET", "/api/v1/audit?target=" + "t" * 301, None, "target"),
    ("GET", "/api/v1/audit?action=" + "a" * 65, None, "action"),
]

# Characters PostgreSQL cannot store (NUL) or that have no place in a one-line value.
BAD_CHARACTERS = [
    ("POST", "/api/v1/apps/web/lock", {"reason": "a\x00b"}, "reason"),
    ("POST", "/api/v1/projects", {"name": "beta", "slack_channel": "#de\x00ploys"}, "slack_channel"),
    ("PATCH", "/api/v1/apps/web", {"git_branch": "main\x00"}, "git_branch"),
    ("PATCH", "/api/v1/apps/web", {"git_repo": "acme/we\x00b"}, "git_repo"),
    ("PATCH", "/api/v1/apps/web", {"env": {"K": "a\x00b"}}, "env.K"),
    ("PATCH", "/api/v1/apps/web", {"env": {"K\n": "v"}}, "env"),
    ("POST", "/api/v1/tokens", {"name": "c\x00i"}, "name"),
    ("POST", "/api/v1/apps/web/deploys", {"dedupe_key": "k\x00"}, "dedupe_key"),
    ("GET", "/api/v1/audit?target=app/w%00eb", None, "target"),
    ("GET", "/api/v1/apps?project=ac%00me", None, "project"),
]

OUT_OF_RANGE = [
    ("POST", "/api/v1/apps/web/rollback", {"revision": 2**31}, "revision"),
    ("POST", "/api/v1/apps/web/rollback", {"revision": 2**64}, "revision"),
    ("POST", "/api/v1/apps/web/rollback", {"revision": 0}, "revision"),
    ("PATCH", "/api/v1/apps/web", {"replicas": 2**63}, "replicas"),
    ("PATCH", "/api/v1/apps/web", {"preview_max_open": 501}, "preview_max_open"),
    ("PATCH", "/api/v1/apps/web", {"health_port": -1}, "health_port"),
    ("POST", "/api/v1/apps/web/scale", {"replicas": 10**20}, "replicas"),
    (
        "POST",
        "/api/v1/apps/web/scale",
        {"cpu_target": 101, "min_replicas": 1, "max_replicas": 2},
        "cpu_target",
    ),
    ("GET", "/api/v1/apps/web/deploys?limit=201", None, "limit"),
    ("GET", "/api/v1/audit?limit=0", None, "limit"),
    ("GET", "/api/v1/apps/web/logs?tail=5001", None, "tail"),
]


@pytest.mark.parametrize(("method", "path", "body", "field"), TOO_LONG + BAD_CHARACTERS + OUT_OF_RANGE)
async def test_out_of_bounds_input_is_a_422_naming_the_field(
    live_server: LiveServer,
    api: httpx.AsyncClient,
    web: str,
    method: str,
    path: str,
    body: Any,
    field: str,
) -> None:
    audit_before = await table_rows(live_server.rt, "audit_events")
    r = await api.request(method, path, json=body)
    assert r.status_code == 422, r.text
    error = error_of(r)
    assert error["type"] == "InvalidInput" and error["field"] == field, error
    assert field.split(".")[0] in error["message"], error
    # Refused before anything was written, and the value is not echoed back whole.
    assert await table_rows(live_server.rt, "audit_events") == audit_before
    assert len(r.content) < 2000


async def test_values_at_the_limit_are_stored(
    live_server: LiveServer, api: httpx.AsyncClient, web: str
) -> None:
    """The bound is the column, not less: exactly N characters (not bytes: 'é' is two) round-trip."""
    reason = "é" * 500
    r = await api.post("/api/v1/apps/web/lock", json={"reason": reason})
    assert r.status_code == 200, r.text
    assert (await api.get("/api/v1/apps/web")).json()["locked"] == reason
    branch = "b" * 255
    r = await api.patch("/api/v1/apps/web", json={"git_branch": branch})
    assert r.status_code == 200, r.text
    channel = "#" + "c" * 63
    r = await api.patch("/api/v1/projects/acme", json={"slack_channel": channel})
    assert r.status_code == 200 and r.json()["slack_channel"] == channel, r.text
    subject = "user:" + "u" * 195
    r = await api.put(f"/api/v1/projects/acme/members/{subject}", json={"role": "viewer"})
    assert r.status_code == 200, r.text
    r = await api.post("/api/v1/tokens", json={"name": "n" * 100, "subject": subject})
    assert r.status_code == 201, r.text
    rows = await table_rows(live_server.rt, "apps")
    assert rows[0]["locked_reason"] == reason and rows[0]["git_branch"] == branch


async def test_a_long_idempotency_key_still_deduplicates(api: httpx.AsyncClient, web: str) -> None:
    """api:<subject>:<key> may outgrow the column; it is kept as a hash, and still matches itself."""
    headers = {"Idempotency-Key": "k" * 200}
    first = await api.post("/api/v1/apps/web/deploys", json={}, headers=headers)
    again = await api.post("/api/v1/apps/web/deploys", json={}, headers=headers)
    assert first.status_code == 202 and again.status_code == 202, (first.text, again.text)
    assert first.json()["id"] == again.json()["id"]


async def test_null_for_a_setting_that_cannot_be_empty_is_a_422(api: httpx.AsyncClient, web: str) -> None:
    for field in ("replicas", "preview_max_open", "env", "deploy_on"):
        r = await api.patch("/api/v1/apps/web", json={field: None})
        assert r.status_code == 422 and error_of(r)["field"] == field, r.text
    # Optional settings are cleared by null.
    r = await api.patch("/api/v1/apps/web", json={"health_path": "/healthz"})
    assert r.status_code == 200 and r.json()["health"]["path"] == "/healthz", r.text
    r = await api.patch("/api/v1/apps/web", json={"health_path": None})
    assert r.status_code == 200 and r.json()["health"] is None, r.text


@pytest.mark.parametrize("big", [2**63 - 1, 2**63, 2**64, 10**30])
async def test_ids_beyond_int64_are_a_404_or_422_never_a_500(
    api: httpx.AsyncClient, web: str, big: int
) -> None:
    for method, path in (
        ("GET", f"/api/v1/deploys/{big}"),
        ("POST", f"/api/v1/deploys/{big}/cancel"),
        ("POST", f"/api/v1/deploys/{big}/approve"),
        ("DELETE", f"/api/v1/tokens/{big}"),
    ):
        r = await api.request(method, path)
        assert r.status_code in (404, 422), (path, r.status_code, r.text)
        error = error_of(r)
        if r.status_code == 422:
            field = "deployment_id" if "deploys" in path else "token_id"
            assert error["field"] == field, error
    for bad in ("0", "-1", "abc"):
        r = await api.get(f"/api/v1/deploys/{bad}")
        assert r.status_code == 422 and error_of(r)["field"] == "deployment_id", r.text


async def test_malformed_json_names_the_body_and_where(api: httpx.AsyncClient) -> None:
    text = '{"name": "acme", "slack": }'
    r = await api.post("/api/v1/projects", content=text, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    error = error_of(r)
    assert error["field"] == "body"
    assert error["message"] == (
        f"request body is not valid JSON: Expecting value at line 1 column {text.index('}') + 1}"
    )
    r = await api.post(
        "/api/v1/projects",
        content='{\n  "name": "acme",\n  oops\n}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 422 and "at line 3 column 3" in error_of(r)["message"], r.text
    for content in (b"", b"[]", b'"acme"'):
        r = await api.post("/api/v1/projects", content=content, headers={"content-type": "application/json"})
        assert r.status_code == 422 and error_of(r)["field"] == "body", (content, r.text)


async def test_405_names_every_method_the_path_serves(api: httpx.AsyncClient, web: str) -> None:
    spec = (await api.get("/openapi.json")).json()
    samples = {
        "name": "web",
        "subject": "user:alice",
        "key": "API_KEY",
        "deployment_id": "1",
        "build_id": "1",
        "token_id": "1",
        "target_id": "1",
        "project": "acme",
        "env": "production",
        "pr": "1",
        "host": "ghcr.io",
        "number": "1",
        "kind": "postgres",
        "run": "web-run-abc",
    }
    for template, operations in spec["paths"].items():
        declared = {m.upper() for m in operations}
        for path in _concrete(template, samples):
            r = await api.options(path)
            assert r.status_code == 405, (path, r.text)
            assert set(r.headers["allow"].split(", ")) == declared, (path, r.headers["allow"], declared)
            assert error_of(r)["type"] == "MethodNotAllowed"
    # The cases Starlette used to get wrong: a route with a parameter where a word route also lives.
    for method, path, allow in (
        ("OPTIONS", "/api/v1/apps/web/status", "GET"),
        ("POST", "/api/v1/apps/web/status", "GET"),
        ("GET", "/api/v1/apps/web/lock", "POST"),
        ("PUT", "/api/v1/apps/web", "GET, PATCH, DELETE"),
        ("GET", "/api/v1/deploys/1/cancel", "POST"),
    ):
        r = await api.request(method, path)
        assert r.status_code == 405 and r.headers["allow"] == allow, (method, path, r.headers.get("allow"))
    r = await api.post("/api/v1/apps/web/bogus")
    assert r.status_code == 404 and error_of(r)["type"] == "NotFound"


def _concrete(template: str, samples: dict[str, str]) -> list[str]:
    """One path per value of an enum path parameter ({flag}: lock, unlock...), the samples for the rest."""
    if "{flag}" in template:
        return [
            template.replace("{flag}", f).replace("{name}", "web")
            for f in ("lock", "unlock", "pause", "resume")
        ]
    if "{action}" in template:
        return [
            template.replace("{action}", a).replace("{deployment_id}", "1") for a in ("approve", "cancel")
        ]
    return [re.sub(r"\{(\w+)\}", lambda m: samples[m.group(1)], template)]


async def test_openapi_tells_the_real_rules(api: httpx.AsyncClient) -> None:
    spec = (await api.get("/openapi.json")).json()
    text = str(spec)
    assert "HTTPValidationError" not in text and "'ValidationError'" not in text
    assert spec["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": spec["components"]["securitySchemes"]["HTTPBearer"]["description"],
    }
    error_ref = {"$ref": "#/components/schemas/ErrorOut"}
    for path, operations in spec["paths"].items():
        assert path.startswith("/api/v1/"), path
        for method, op in operations.items():
            where = f"{method.upper()} {path}"
            assert op["security"] == [{"HTTPBearer": []}], where
            codes = {c for c in op["responses"] if c.startswith(("4", "5"))}
            assert {"401", "403", "404", "409", "413", "422"} <= codes, where
            for code in codes:
                assert op["responses"][code]["content"]["application/json"]["schema"] == error_ref, (
                    where,
                    code,
                )
            for param in op.get("parameters", []):
                assert param["name"].lower() != "authorization", where
                _assert_bounded(param["schema"], f"{where} {param['name']}")
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if body:
                _assert_bounded(_resolve(spec, body), f"{where} body", spec=spec)
    detail = spec["components"]["schemas"]["ErrorDetail"]
    assert set(detail["required"]) == {"type", "message"}
    # The error body is referred to, not built per route (shipit.api.base._error): its schemas must
    # read exactly as FastAPI renders a response `model`, key order included (the served text).
    plain = FastAPI()

    @plain.get("/x", responses={400: {"model": schemas.ErrorOut}})
    async def x() -> None: ...

    rendered = plain.openapi()["components"]["schemas"]
    for name in ("ErrorOut", "ErrorDetail"):
        assert json.dumps(spec["components"]["schemas"][name]) == json.dumps(rendered[name]), name


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _assert_bounded(schema: dict[str, Any], where: str, spec: dict[str, Any] | None = None) -> None:
    """Every string has a maxLength (or is an enum), every integer a minimum and a maximum."""
    if spec is not None:
        schema = _resolve(spec, schema)
    for option in schema.get("anyOf", []):
        _assert_bounded(option, where, spec)
    kind = schema.get("type")
    if kind == "string" and "enum" not in schema and schema.get("format") != "date-time":
        assert "maxLength" in schema, (where, schema)  # a date-time is parsed, and so bounded, as one
    if kind == "integer":
        assert "minimum" in schema and "maximum" in schema, (where, schema)
    for name, prop in schema.get("properties", {}).items():
        _assert_bounded(prop, f"{where}.{name}", spec)
    for prop in schema.get("patternProperties", {}).values():
        _assert_bounded(prop, f"{where}.*", spec)
    if isinstance(schema.get("additionalProperties"), dict):
        _assert_bounded(schema["additionalProperties"], f"{where}.*", spec)
    if kind == "object" and (
        "patternProperties" in schema or isinstance(schema.get("additionalProperties"), dict)
    ):
        assert "maxLength" in schema.get("propertyNames", {}), (where, schema)


async def test_core_refuses_the_same_for_every_channel(live_server: LiveServer, web: str) -> None:
    """Slack and GitHub input never meets pydantic: core bounds it the same way."""
    rt = live_server.rt
    attempts = {
        "reason": lambda s: apps.set_flag(s, actor=ADMIN, name="web", flag="lock", on=True, reason="r" * 501),
        "slack_channel": lambda s: projects.update(
            s, ctx=rt.core, actor=ADMIN, name="acme", slack_channel="c" * 65
        ),
        "webhook_url": lambda s: projects.update(
            s, ctx=rt.core, actor=ADMIN, name="acme", webhook_url="https://x/" + "p" * 2048
        ),
        "subject": lambda s: projects.set_access(
            s, actor=ADMIN, project_name="acme", subject="slack:" + "U" * 200, role="viewer"
        ),
        "name": lambda s: tokens.create(s, actor=SYSTEM, name="n\x00"),
        "git_branch": lambda s: apps.update(
            s, ctx=rt.core, actor=ADMIN, name="web", changes=apps.AppChanges(git_branch="b" * 256)
        ),
        "env": lambda s: apps.update(
            s, ctx=rt.core, actor=ADMIN, name="web", changes=apps.AppChanges(env={"K\n": "v"})
        ),
        "replicas": lambda s: apps.update(
            s, ctx=rt.core, actor=ADMIN, name="web", changes=apps.AppChanges(replicas=None)
        ),
    }
    for field, attempt in attempts.items():
        async with rt.sessionmaker.begin() as session:
            with pytest.raises(InvalidInput) as refused:
                await attempt(session)
        assert refused.value.field == field, (field, refused.value)


async def test_core_treats_impossible_ids_and_revisions_as_missing(live_server: LiveServer, web: str) -> None:
    """A Slack `/shipit rollback web 99999999999999999999` or a forged button must not crash the driver."""
    rt = live_server.rt
    async with rt.sessionmaker.begin() as session:
        with pytest.raises(InvalidInput) as refused:
            await deploys.rollback(session, ctx=rt.core, actor=ADMIN, app_name="web", revision=10**20)
        assert refused.value.field == "revision"
        for deployment_id in (0, 2**63, 10**30):
            with pytest.raises(NotFound):
                await deploys.get(session, actor=ADMIN, deployment_id=deployment_id)
            with pytest.raises(NotFound):
                await deploys.cancel(session, ctx=rt.core, actor=ADMIN, deployment_id=deployment_id)
        with pytest.raises(NotFound):
            await tokens.revoke(session, actor=ADMIN, token_id=2**64)
