"""Logging setup: one line per record, with the logger name, so context in messages is greppable.

SHIPIT_LOG_FORMAT=json writes one JSON object per line: time, level, logger, message, and the
context bound where known (request id, project, app, environment, deploy id; see core.observe)
and the fields of a core.logctx logger (deploy id, app, environment, namespace),
plus the trace id when tracing is on.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re

from core import logctx, observe


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update(observe.fields())
        out.update(logctx.fields_of(record))  # a deploy_logger's fields: what this line is about
        trace_id = observe.trace_id()
        if trace_id:
            out["trace_id"] = trace_id
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


_QUERY_TOKEN = re.compile(r"([?&]token=)[^&\s]*")


def redact_query_tokens(record: logging.LogRecord) -> bool:
    """A logging filter: `?token=…` in a record's arguments (uvicorn's access log) becomes `?token=REDACTED`."""
    if isinstance(record.args, tuple):
        record.args = tuple(
            _QUERY_TOKEN.sub(r"\1REDACTED", a) if isinstance(a, str) and "token=" in a else a
            for a in record.args
        )
    return True


def configure(level: str = "INFO", *, fmt: str = "text") -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # httpx logs every request URL at INFO; Slack and GitHub URLs can carry tokens in query strings.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # Docker Hub sends the registry webhook token as ?token=: never in an access log line.
    logging.getLogger("uvicorn.access").addFilter(redact_query_tokens)
