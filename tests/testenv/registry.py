"""A real container registry for the tests: Debian's `docker-registry` (CNCF distribution).

`start_registry` runs `docker-registry serve CONFIG` on a free loopback port with a temporary storage
directory, anonymous, with htpasswd (bcrypt) Basic auth, or with token auth against a token service
the test serves itself.  Images are pushed with the registry's own HTTP API (`push_image`): a config
blob and a layer blob, then an OCI image manifest under a tag; digests are computed here.

When the binary is missing the tests that need it are skipped with one line naming the reason, except
under CI=true where they fail (scripts/test-registry-install installs the package, .ci/run calls it).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

BINARY = os.environ.get("SHIPIT_TEST_REGISTRY_BINARY", "/usr/bin/docker-registry")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require_registry() -> str:
    """The registry binary, or skip (developer machine) / fail (CI=true) the calling test."""
    found = BINARY if os.access(BINARY, os.X_OK) else shutil.which("docker-registry")
    if not found:
        reason = f"{BINARY} missing: run scripts/test-registry-install (Debian package docker-registry)"
        if _in_ci():
            pytest.fail(f"container registry unavailable under CI=true: {reason}", pytrace=False)
        pytest.skip(f"no container registry: {reason}")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True, kw_only=True)
class TokenAuth:
    """Token auth settings: tokens signed by `key_pem`'s key, trusted through `cert_pem`."""

    realm: str
    service: str
    issuer: str
    cert_pem: bytes


@dataclass
class Registry:
    host: str  # 127.0.0.1:PORT
    url: str  # http://127.0.0.1:PORT
    users: dict[str, str] = field(default_factory=dict)
    # How the test itself authenticates its pushes: an Authorization header value, if any.
    push_auth: str | None = None

    def headers(self) -> dict[str, str]:
        return {"Authorization": self.push_auth} if self.push_auth else {}


def _htpasswd(users: dict[str, str]) -> str:
    import bcrypt

    # distribution accepts bcrypt entries only.
    return "".join(
        f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()}\n"
        for user, password in users.items()
    )


@contextlib.contextmanager
def start_registry(
    workdir: Path,
    *,
    users: dict[str, str] | None = None,
    token: TokenAuth | None = None,
    notifications: list[dict[str, object]] | None = None,
) -> Iterator[Registry]:
    """Run a registry until the block ends; Basic auth with `users`, or token auth with `token`.

    `notifications`: endpoints the registry POSTs its event envelopes to (its `notifications.endpoints`).
    """
    binary = require_registry()
    port = _free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    config: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(workdir / "data")}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": os.urandom(16).hex()},
    }
    if users:
        (workdir / "htpasswd").write_text(_htpasswd(users))
        config["auth"] = {"htpasswd": {"realm": "shipit-test", "path": str(workdir / "htpasswd")}}
    if token is not None:
        (workdir / "token-ca.pem").write_bytes(token.cert_pem)
        config["auth"] = {
            "token": {
                "realm": token.realm,
                "service": token.service,
                "issuer": token.issuer,
                "rootcertbundle": str(workdir / "token-ca.pem"),
            }
        }
    if notifications:
        config["notifications"] = {"endpoints": notifications}
    # JSON is YAML: no yaml writer needed for the config.
    (workdir / "config.yml").write_text(json.dumps(config))
    log_path = workdir / "registry.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [binary, "serve", str(workdir / "config.yml")],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={"PATH": os.environ.get("PATH", ""), "HOME": str(workdir)},
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"docker-registry exited ({process.returncode}): {log_path.read_text()[-2000:]}"
                )
            try:
                if httpx.get(f"{url}/v2/", timeout=1).status_code in (200, 401):
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"docker-registry did not answer on {url}: {log_path.read_text()[-2000:]}")
            time.sleep(0.05)
        yield Registry(host=f"127.0.0.1:{port}", url=url, users=dict(users or {}))
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _upload_blob(client: httpx.Client, registry: Registry, *, name: str, data: bytes) -> str:
    digest = sha256(data)
    started = client.post(f"{registry.url}/v2/{name}/blobs/uploads/", headers=registry.headers())
    assert started.status_code == 202, started.text
    location = started.headers["Location"]
    if location.startswith("/"):
        location = registry.url + location
    sep = "&" if "?" in location else "?"
    done = client.put(
        f"{location}{sep}digest={digest}",
        content=data,
        headers={**registry.headers(), "Content-Type": "application/octet-stream"},
    )
    assert done.status_code == 201, done.text
    return digest


def push_image(registry: Registry, *, name: str, tag: str, marker: str) -> str:
    """Push a tiny OCI image (its content depends on `marker`) as name:tag; returns the manifest digest."""
    layer = f"layer for {name}:{tag} {marker}\n".encode()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": {"marker": marker}},
            "rootfs": {"type": "layers", "diff_ids": [sha256(layer)]},
        },
        sort_keys=True,
    ).encode()
    with httpx.Client(timeout=10) as client:
        config_digest = _upload_blob(client, registry, name=name, data=config)
        layer_digest = _upload_blob(client, registry, name=name, data=layer)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
                "layers": [{"mediaType": OCI_LAYER, "digest": layer_digest, "size": len(layer)}],
            },
            sort_keys=True,
        ).encode()
        put = client.put(
            f"{registry.url}/v2/{name}/manifests/{tag}",
            content=manifest,
            headers={**registry.headers(), "Content-Type": OCI_MANIFEST},
        )
        assert put.status_code == 201, put.text
        digest = sha256(manifest)
        assert put.headers.get("Docker-Content-Digest") == digest
        return digest


# ---------------------------------------------------------------------------- token auth


@dataclass
class TokenService:
    """A Docker token service (the `realm`): Basic auth in, a JWT the registry trusts out."""

    auth: TokenAuth
    key_pem: bytes
    cert_der: bytes
    users: dict[str, str]
    requests: list[dict[str, str]] = field(default_factory=list)

    def mint(self, *, subject: str, repository: str, actions: list[str]) -> str:
        import jwt

        now = int(time.time())
        claims = {
            "iss": self.auth.issuer,
            "sub": subject,
            "aud": self.auth.service,
            "iat": now,
            "nbf": now - 10,
            "exp": now + 300,
            "jti": os.urandom(8).hex(),
            "access": [{"type": "repository", "name": repository, "actions": actions}],
        }
        headers = {"x5c": [base64.b64encode(self.cert_der).decode()]}
        return jwt.encode(claims, self.key_pem, algorithm="RS256", headers=headers)

    def app(self) -> Starlette:
        async def token(request: Request) -> JSONResponse:
            scope, service = request.query_params.get("scope", ""), request.query_params.get("service", "")
            header = request.headers.get("authorization", "")
            self.requests.append({"scope": scope, "service": service, "authorization": header[:6]})
            user = None
            if header.lower().startswith("basic "):
                name, _, password = base64.b64decode(header[6:]).decode().partition(":")
                if self.users.get(name) == password:
                    user = name
            if user is None or service != self.auth.service:
                return JSONResponse({"errors": [{"code": "UNAUTHORIZED"}]}, status_code=401)
            _, repository, actions = scope.split(":")
            return JSONResponse(
                {"token": self.mint(subject=user, repository=repository, actions=actions.split(","))}
            )

        return Starlette(routes=[Route("/token", token)])


def token_service(*, realm: str, users: dict[str, str]) -> TokenService:
    """Keys and a self-signed certificate for a token service answering at `realm`."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shipit test token issuer")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    auth = TokenAuth(
        realm=realm,
        service="shipit-test-registry",
        issuer="shipit-test-issuer",
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
    )
    return TokenService(
        auth=auth,
        key_pem=key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        cert_der=cert.public_bytes(serialization.Encoding.DER),
        users=users,
    )


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    """An anonymous registry (anyone may pull and push)."""
    with start_registry(tmp_path / "registry") as reg:
        yield reg


@pytest.fixture
def private_registry(tmp_path: Path) -> Iterator[Registry]:
    """A registry behind htpasswd Basic auth: user `deployer`, password in `.users`."""
    users = {"deployer": "pa55-" + os.urandom(6).hex()}
    with start_registry(tmp_path / "private-registry", users=users) as reg:
        raw = f"deployer:{users['deployer']}".encode()
        reg.push_auth = "Basic " + base64.b64encode(raw).decode()
        yield reg
