"""Every outgoing HTTPS client shares one verifying TLS context (loading the CA bundle is the cost)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import tempfile
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from core import tls
from core.notices import delivery
from tests.conftest import free_port
from tests.testenv.controlplane import make_ca


def test_the_shared_context_verifies_like_httpx_s_own() -> None:
    shared = tls.client_context()
    assert shared is tls.client_context()
    assert tls.client_context(trust_env=False) is tls.client_context(trust_env=False)
    fresh = httpx.create_ssl_context()
    assert shared.verify_mode == fresh.verify_mode == ssl.CERT_REQUIRED
    assert shared.check_hostname and fresh.check_hostname
    assert shared.minimum_version == fresh.minimum_version
    assert len(shared.get_ca_certs()) == len(fresh.get_ca_certs()) > 0


async def test_notifier_clients_verify_with_the_shared_context() -> None:
    """A server whose CA only the shared context is told to trust: refused before, answered after, by
    two clients built apart (so each uses the one context, not a CA bundle of its own)."""
    ca_pem, server_context = _certificate_authority_and_server()
    app = web.Application()
    app.router.add_get("/", _ok)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=server_context).start()
    url = f"https://127.0.0.1:{port}/"
    tls.client_context.cache_clear()
    try:
        async with delivery.client() as refused:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await refused.get(url)
        tls.client_context().load_verify_locations(cadata=ca_pem)
        async with delivery.client() as one, delivery.client() as two:
            assert [(await c.get(url)).text for c in (one, two)] == ["verified", "verified"]
    finally:
        tls.client_context.cache_clear()  # the test's CA stays out of every later test's clients
        await runner.cleanup()


async def _ok(_: web.Request) -> web.Response:
    return web.Response(text="verified")


def _certificate_authority_and_server() -> tuple[str, ssl.SSLContext]:
    """A throwaway CA and a certificate it issued for 127.0.0.1; the CA's PEM and the server's context."""
    now = dt.datetime.now(dt.UTC)
    ca, ca_key = make_ca(
        common_name="shipit test CA",
        not_before=now - dt.timedelta(minutes=5),
        not_after=now + dt.timedelta(hours=1),
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as d:
        cert_file, key_file = Path(d) / "cert.pem", Path(d) / "key.pem"
        cert_file.write_bytes(leaf.public_bytes(pem))
        key_file.write_bytes(
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        server.load_cert_chain(cert_file, key_file)
    return ca.public_bytes(pem).decode(), server
