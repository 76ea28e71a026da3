"""One TLS client context per process for every outgoing HTTPS client.

httpx builds a fresh `ssl.SSLContext` for each client and loads the whole CA bundle into it: ~55 ms
of CPU a client here (measured), paid at every start for each notifier and again on every registry
look-up and sign-in.  A context is safe to share between clients and tasks, so it is built once.
`SSL_CERT_FILE` / `SSL_CERT_DIR` (trust_env) are read when it is first built, i.e. at start.
"""

from __future__ import annotations

import functools
import ssl

import httpx


@functools.cache
def client_context(*, trust_env: bool = True) -> ssl.SSLContext:
    """The verifying context httpx would build itself (the same CA bundle and settings), built once."""
    return httpx.create_ssl_context(trust_env=trust_env)
