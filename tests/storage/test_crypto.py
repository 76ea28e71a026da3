"""Encryption at rest: AES-256-GCM with a key id, so a wrong key fails loudly."""

from __future__ import annotations

import pytest

from storage.crypto import Cipher, MasterKeyError, generate_key, parse_key


def test_round_trip_and_purpose_binding() -> None:
    c = Cipher(key=generate_key())
    blob = c.encrypt(b"postgres://user:pw@db/app", purpose="app-secret")
    assert b"postgres" not in blob
    assert c.decrypt(blob, purpose="app-secret") == b"postgres://user:pw@db/app"
    with pytest.raises(MasterKeyError, match="failed authentication"):
        c.decrypt(blob, purpose="kubeconfig")  # a secret can't be replayed as a kubeconfig


def test_same_plaintext_encrypts_differently() -> None:
    c = Cipher(key=generate_key())
    assert c.encrypt(b"x", purpose="p") != c.encrypt(b"x", purpose="p")


def test_wrong_key_names_the_problem() -> None:
    blob = Cipher(key=generate_key()).encrypt(b"x", purpose="app-secret")
    with pytest.raises(MasterKeyError, match="another master key"):
        Cipher(key=generate_key()).decrypt(blob, purpose="app-secret")


def test_tampering_is_detected() -> None:
    c = Cipher(key=generate_key())
    blob = bytearray(c.encrypt(b"value", purpose="p"))
    blob[-1] ^= 1
    with pytest.raises(MasterKeyError, match="tampered"):
        c.decrypt(bytes(blob), purpose="p")


@pytest.mark.parametrize("bad", ["", "not base64!!", "c2hvcnQ="])
def test_malformed_keys_are_refused(bad: str) -> None:
    with pytest.raises(MasterKeyError):
        parse_key(bad)


def test_repr_never_shows_the_key() -> None:
    key = generate_key()
    assert key not in repr(Cipher(key=key))


def test_digest_is_keyed() -> None:
    a, b = Cipher(key=generate_key()), Cipher(key=generate_key())
    assert a.digest(b"v") == a.digest(b"v") != b.digest(b"v")
