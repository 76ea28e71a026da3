"""The webhook signature, checked against the test vector in GitHub's documentation."""

from __future__ import annotations

from webhooks import signature

# https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries#testing-the-webhook-payload-validation
DOC_SECRET = "It's a Secret to Everybody"
DOC_PAYLOAD = b"Hello, World!"
DOC_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


def test_sign_matches_githubs_documented_vector() -> None:
    assert signature.sign(secret=DOC_SECRET, body=DOC_PAYLOAD) == DOC_SIGNATURE


def test_verify_accepts_githubs_documented_vector() -> None:
    assert signature.verify(secret=DOC_SECRET, body=DOC_PAYLOAD, header=DOC_SIGNATURE)


def test_verify_refuses_a_changed_body_secret_or_header() -> None:
    assert not signature.verify(secret=DOC_SECRET, body=b"Hello, World?", header=DOC_SIGNATURE)
    assert not signature.verify(secret="another secret", body=DOC_PAYLOAD, header=DOC_SIGNATURE)
    assert not signature.verify(secret=DOC_SECRET, body=DOC_PAYLOAD, header=DOC_SIGNATURE[7:])
    assert not signature.verify(secret=DOC_SECRET, body=DOC_PAYLOAD, header="sha1=" + DOC_SIGNATURE[7:])
    assert not signature.verify(secret=DOC_SECRET, body=DOC_PAYLOAD, header=DOC_SIGNATURE.upper())
    assert not signature.verify(secret=DOC_SECRET, body=DOC_PAYLOAD, header="sha256=ü")
    assert not signature.verify(secret=DOC_SECRET, body=DOC_PAYLOAD, header="")


def test_a_verifier_keyed_once_answers_as_verify_delivery_after_delivery() -> None:
    verifier = signature.Verifier(secret=DOC_SECRET)
    for _ in range(2):  # the keyed HMAC is copied, never fed: the second check is as the first
        assert verifier.verify(body=DOC_PAYLOAD, header=DOC_SIGNATURE)
        assert verifier.verify(body=DOC_PAYLOAD, header=f" {DOC_SIGNATURE}\n")
        assert not verifier.verify(body=b"Hello, World?", header=DOC_SIGNATURE)
        assert not verifier.verify(body=DOC_PAYLOAD, header=DOC_SIGNATURE[7:])
        assert not verifier.verify(body=DOC_PAYLOAD, header=DOC_SIGNATURE.upper())
        assert not verifier.verify(body=DOC_PAYLOAD, header="sha256=ü")
        assert not verifier.verify(body=DOC_PAYLOAD, header="")
    assert not signature.Verifier(secret="another secret").verify(body=DOC_PAYLOAD, header=DOC_SIGNATURE)
