"""GitHub's webhook signature: X-Hub-Signature-256 = "sha256=" + HMAC-SHA256(secret, raw body).

Checked on the raw bytes before anything is parsed, with a constant-time
comparison, so an unsigned body never reaches the JSON parser or the database.
"""

from __future__ import annotations

import hashlib
import hmac

PREFIX = "sha256="


def sign(*, secret: str, body: bytes) -> str:
    return PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(*, secret: str, body: bytes, header: str) -> bool:
    """True when `header` is the signature of `body` under `secret`."""
    expected = sign(secret=secret, body=body)
    # compare_digest on bytes: constant time whatever the header holds (even non-ASCII).
    return hmac.compare_digest(expected.encode(), header.strip().encode("utf-8", "replace"))
