"""Encryption at rest for secrets and kubeconfigs: AES-256-GCM under the master key.

Every ciphertext carries a key id (the first bytes of a hash of the key), so a
wrong master key fails loudly with a clear message instead of producing garbage,
and rotation can tell which rows still need re-encrypting.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_VERSION = b"\x01"
_NONCE_LEN = 12
_KEY_ID_LEN = 4


class MasterKeyError(Exception):
    """The master key is missing, malformed, or not the one the data was written with."""


def generate_key() -> str:
    """32 random bytes, URL-safe base64: the format of SHIPIT_MASTER_KEY."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def parse_key(text: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(text.strip().encode() + b"=" * (-len(text.strip()) % 4))
    except (binascii.Error, ValueError) as e:
        raise MasterKeyError("SHIPIT_MASTER_KEY is not URL-safe base64") from e
    if len(raw) != 32:
        raise MasterKeyError(f"SHIPIT_MASTER_KEY must decode to 32 bytes, got {len(raw)}")
    return raw


class Cipher:
    """Encrypts and decrypts small values; `purpose` is bound in as associated data."""

    def __init__(self, *, key: str) -> None:
        raw = parse_key(key)
        self._aead = AESGCM(raw)
        self._digest_key = hmac.new(raw, b"shipit digest key", hashlib.sha256).digest()
        self.key_id = hashlib.sha256(raw).digest()[:_KEY_ID_LEN]

    def __repr__(self) -> str:
        return f"Cipher(key_id={self.key_id.hex()})"

    def encrypt(self, plaintext: bytes, *, purpose: str) -> bytes:
        nonce = os.urandom(_NONCE_LEN)
        return _VERSION + self.key_id + nonce + self._aead.encrypt(nonce, plaintext, purpose.encode())

    def decrypt(self, blob: bytes, *, purpose: str) -> bytes:
        if len(blob) < 1 + _KEY_ID_LEN + _NONCE_LEN or blob[:1] != _VERSION:
            raise MasterKeyError(f"stored {purpose} is not in shipit's encrypted format")
        key_id = blob[1 : 1 + _KEY_ID_LEN]
        if key_id != self.key_id:
            raise MasterKeyError(
                f"stored {purpose} was encrypted under another master key (key id {key_id.hex()}, "
                f"this key is {self.key_id.hex()}): set SHIPIT_MASTER_KEY to the key it was written with"
            )
        nonce = blob[1 + _KEY_ID_LEN : 1 + _KEY_ID_LEN + _NONCE_LEN]
        try:
            return self._aead.decrypt(nonce, blob[1 + _KEY_ID_LEN + _NONCE_LEN :], purpose.encode())
        except InvalidTag as e:
            raise MasterKeyError(f"stored {purpose} failed authentication: corrupted or tampered") from e

    def encrypt_text(self, text: str, *, purpose: str) -> bytes:
        return self.encrypt(text.encode(), purpose=purpose)

    def decrypt_text(self, blob: bytes, *, purpose: str) -> str:
        return self.decrypt(blob, purpose=purpose).decode()

    def is_current(self, blob: bytes) -> bool:
        return blob[1 : 1 + _KEY_ID_LEN] == self.key_id

    def digest(self, value: bytes) -> str:
        """A keyed digest: lets revisions notice a secret change without storing a plain hash of it."""
        return hmac.new(self._digest_key, value, hashlib.sha256).hexdigest()
