"""Logging setup: one line per record, with the logger name, so context in messages is greppable."""

from __future__ import annotations

import logging


def configure(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    # httpx logs every request URL at INFO; Slack and GitHub URLs can carry tokens in query strings.
    logging.getLogger("httpx").setLevel(logging.WARNING)
