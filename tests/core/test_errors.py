"""The shared helpers of core.errors: the one Retry-After parser and the one error-reference policy."""

from __future__ import annotations

import email.utils
import logging
import time

import pytest

from core import errors


@pytest.mark.parametrize(
    ("headers", "default", "minimum", "expected"),
    [
        ({"Retry-After": "7"}, None, 0.0, 7.0),
        ({"retry-after": "2.5"}, None, 0.0, 2.5),  # any case
        ({"RETRY-AFTER": ["3", "9"]}, None, 0.0, 3.0),  # repeated: the first counts
        ({"Retry-After": "0"}, 30.0, 1.0, 1.0),  # clamped up to the caller's minimum
        ({"Retry-After": "-5"}, None, 0.0, 0.0),
        ({"Retry-After": "999999"}, None, 0.0, errors.RETRY_AFTER_CAP),  # clamped down
        ({"Retry-After": "soon"}, 30.0, 1.0, 30.0),  # unreadable: the caller's default
        ({"Retry-After": "nan"}, None, 0.0, None),
        ({"Retry-After": []}, None, 0.0, None),
        ({"Other": "1"}, 30.0, 0.0, 30.0),  # missing
        ({}, None, 0.0, None),
        (None, 30.0, 0.0, 30.0),
    ],
)
def test_retry_after_seconds(
    headers: dict[str, object] | None, default: float | None, minimum: float, expected: float | None
) -> None:
    assert errors.retry_after_seconds(headers, default=default, minimum=minimum) == expected


def test_retry_after_as_an_http_date() -> None:
    later = email.utils.formatdate(time.time() + 120, usegmt=True)
    seconds = errors.retry_after_seconds({"Retry-After": later}, default=None)
    assert seconds is not None and 100 < seconds <= 121
    past = email.utils.formatdate(time.time() - 120, usegmt=True)
    assert errors.retry_after_seconds({"Retry-After": past}, default=None, minimum=1.0) == 1.0


def test_report_of_our_own_error_keeps_its_message(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("tests.errors")
    with caplog.at_level(logging.INFO, logger="tests.errors"):
        ref, text = errors.report(
            errors.TransientError("cluster c1 does not answer"), log=log, what="deploy web"
        )
    assert text == f"cluster c1 does not answer (reference {ref})"
    [record] = caplog.records
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert record.getMessage() == f"deploy web failed [ref {ref}]: cluster c1 does not answer"


def test_report_of_a_crash_shows_only_the_reference(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("tests.errors")
    crash = KeyError("token=very-secret")
    with caplog.at_level(logging.INFO, logger="tests.errors"):
        ref, text = errors.report(crash, log=log, what="job 7 (deploy)")
    assert text == f"internal error, reference {ref}" and "secret" not in text
    [record] = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is not None  # the traceback, under the ref
    assert record.getMessage() == f"job 7 (deploy) crashed [ref {ref}]"
    other, _ = errors.report(crash, log=log, what="job 7 (deploy)")
    assert other != ref
