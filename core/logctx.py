"""Loggers that carry what a log line is about (kopf's object logger), so calls do not spell it out.

`deploy_logger(log, deployment=12, app="web", namespace="web-prod")` returns an adapter whose lines
read ``deploy 12 app=web namespace=web-prod: <message>`` in text logs, and whose records carry the
same fields (deploy_id, project, app, environment, namespace, event, delivery) for shipit.logs'
JSON lines.  core.observe binds
context per task (request, job); this binds it per object, for code that speaks of several.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping
from typing import Any

# The LogRecord attribute that holds the fields (see shipit.logs.JsonFormatter).
RECORD_ATTR = "shipit_context"


class ContextLogger(logging.LoggerAdapter[logging.Logger]):
    """Prefixes each message with its fields and puts them on the record.

    The prefix is built at the first line actually logged (issue 13: a deploy request builds two of
    these per push, and most of their lines are below the level logged)."""

    def __init__(self, logger: logging.Logger, fields: Mapping[str, Any]) -> None:
        self.logger = logger
        self.extra = dict(fields)
        self._prefix: str | None = None

    @property
    def prefix(self) -> str:
        if self._prefix is None:
            fields = self.extra or {}
            deploy = fields.get("deploy_id")
            words = [f"deploy {deploy}"] if deploy is not None else []
            words += [f"{k}={v}" for k, v in fields.items() if k != "deploy_id"]
            self._prefix = " ".join(words)
        return self._prefix

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(kwargs.get("extra") or {})
        extra[RECORD_ATTR] = {**(self.extra or {}), **extra.get(RECORD_ATTR, {})}
        kwargs["extra"] = extra
        return msg, kwargs

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        msg, given = self.process(msg, kwargs)
        given.setdefault("stacklevel", 2)  # the caller's line, not this one
        prefix = self.prefix
        if prefix:
            # With args the prefix joins a %-format string: a % in a value must not read as a placeholder.
            msg = f"{prefix.replace('%', '%%') if args else prefix}: {msg}"
        self.logger.log(level, msg, *args, **given)


def deploy_logger(
    logger: logging.Logger,
    *,
    deployment: int | None = None,
    project: str | None = None,
    app: str | None = None,
    environment: str | None = None,
    namespace: str | None = None,
    event: int | None = None,
    delivery: str | None = None,
) -> ContextLogger:
    """`logger` with a deploy's context; fields given as None are left out.

    `event` is the outbox event a notifier delivers; `delivery` the id of an incoming delivery
    (Slack's event or trigger, GitHub's X-GitHub-Delivery), so a line can be matched to what came in.
    """
    fields: dict[str, Any] = {}
    for name, value in (  # in the prefix's order
        ("deploy_id", deployment), ("project", project), ("app", app), ("environment", environment),
        ("namespace", namespace), ("event", event), ("delivery", delivery),
    ):  # fmt: skip
        if value is not None:
            fields[name] = value
    return ContextLogger(logger, fields)


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The context a ContextLogger put on `record` (empty for other records)."""
    found = getattr(record, RECORD_ATTR, None)
    return dict(found) if isinstance(found, Mapping) else {}
