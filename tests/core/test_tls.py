"""Every outgoing HTTPS client shares one verifying TLS context (loading the CA bundle is the cost)."""

from __future__ import annotations

import ssl

import httpx

from core import tls
from core.notices import delivery


def test_the_shared_context_verifies_like_httpx_s_own() -> None:
    shared = tls.client_context()
    assert shared is tls.client_context()
    assert tls.client_context(trust_env=False) is tls.client_context(trust_env=False)
    fresh = httpx.create_ssl_context()
    assert shared.verify_mode == fresh.verify_mode == ssl.CERT_REQUIRED
    assert shared.check_hostname and fresh.check_hostname
    assert shared.minimum_version == fresh.minimum_version
    assert len(shared.get_ca_certs()) == len(fresh.get_ca_certs()) > 0


async def test_notifier_clients_use_it() -> None:
    async with delivery.client() as one, delivery.client() as two:
        contexts = {
            id(c._transport._pool._ssl_context)  # type: ignore[attr-defined]
            for c in (one, two)
        }
    assert contexts == {id(tls.client_context())}
