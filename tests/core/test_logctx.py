"""core.logctx: a deploy's log lines carry what they are about, in text and in JSON logs."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from core import logctx
from shipit import logs


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO, io.StringIO]]:
    """A logger writing both shipit.logs formats (text and JSON) into buffers."""
    logger = logging.getLogger("tests.logctx")
    text, as_json = io.StringIO(), io.StringIO()
    handlers = [logging.StreamHandler(text), logging.StreamHandler(as_json)]
    handlers[0].setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handlers[1].setFormatter(logs.JsonFormatter())
    for h in handlers:
        logger.addHandler(h)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, text, as_json
    for h in handlers:
        logger.removeHandler(h)


def test_a_deploys_lines_carry_its_fields(captured: tuple[logging.Logger, io.StringIO, io.StringIO]) -> None:
    logger, text, as_json = captured
    log = logctx.deploy_logger(
        logger, deployment=12, app="web", environment="production", namespace="web-prod"
    )
    log.info("applied revision %s (%s)", 3, "ghcr.io/acme/web:1.4")
    log.warning("done, 100% of it")  # no args: a % in the message is not a placeholder
    assert text.getvalue().splitlines() == [
        "INFO tests.logctx: deploy 12 app=web environment=production namespace=web-prod: "
        "applied revision 3 (ghcr.io/acme/web:1.4)",
        "WARNING tests.logctx: deploy 12 app=web environment=production namespace=web-prod: done, 100% of it",
    ]
    first, second = (json.loads(line) for line in as_json.getvalue().splitlines())
    assert first["message"].endswith(": applied revision 3 (ghcr.io/acme/web:1.4)")
    for record in (first, second):
        assert {k: record[k] for k in ("deploy_id", "app", "environment", "namespace")} == {
            "deploy_id": 12,
            "app": "web",
            "environment": "production",
            "namespace": "web-prod",
        }


def test_fields_not_given_are_left_out(captured: tuple[logging.Logger, io.StringIO, io.StringIO]) -> None:
    logger, text, as_json = captured
    log = logctx.deploy_logger(logger, app="web", namespace="web-pr-3%s")
    log.info("preview: teardown queued (%s)", "closed")
    log.debug("below the level? no: DEBUG is on")
    lines = text.getvalue().splitlines()
    assert lines[0] == "INFO tests.logctx: app=web namespace=web-pr-3%s: preview: teardown queued (closed)"
    record = json.loads(as_json.getvalue().splitlines()[0])
    assert "deploy_id" not in record and "environment" not in record and record["namespace"] == "web-pr-3%s"


def test_other_records_and_a_quiet_level(captured: tuple[logging.Logger, io.StringIO, io.StringIO]) -> None:
    logger, text, as_json = captured
    logger.info("plain")
    logger.setLevel(logging.WARNING)
    logctx.deploy_logger(logger, deployment=1).info("not written")
    assert text.getvalue().splitlines() == ["INFO tests.logctx: plain"]
    assert "deploy_id" not in json.loads(as_json.getvalue())


def test_a_record_points_at_the_callers_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="tests.logctx.where"):
        logctx.deploy_logger(logging.getLogger("tests.logctx.where"), deployment=3).info("here")
    [record] = caplog.records
    assert (
        record.funcName == "test_a_record_points_at_the_callers_line" and record.filename == "test_logctx.py"
    )
