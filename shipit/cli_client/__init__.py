"""API-client commands of the `shipit` CLI: every one of them is a call to the REST API.

The CLI holds no logic of its own beyond parsing flags and printing answers, so it obeys exactly
the permissions and validation every other channel does.  It reaches the service at SHIPIT_URL with
the token in SHIPIT_TOKEN.  People get aligned tables; scripts pass `--json` and get the API's JSON.
Failures are one line on stderr: exit 1 when the API said no (or a deploy failed), exit 2 when the
service could not be reached or the CLI is not configured.

`client` talks HTTP, `output` prints, `options` holds the flags several groups share; every other
module is one group of commands (`app_settings` is the one list of an app's settings that
`apps create` and `apps update` both take).  shipit/cli.py wires them all into `shipit`.
"""

from __future__ import annotations

from shipit.cli_client.client import EXIT_API, EXIT_SETUP, Api, api, fail, q
from shipit.cli_client.options import (
    AppArg,
    EnvNameOpt,
    JsonOpt,
    WaitOpt,
    parse_pairs,
    read_file,
    stdin_if_dash,
)
from shipit.cli_client.output import deploy_line, deployed, fields_out, follow, show_json, table, when

__all__ = [
    "EXIT_API",
    "EXIT_SETUP",
    "Api",
    "AppArg",
    "EnvNameOpt",
    "JsonOpt",
    "WaitOpt",
    "api",
    "deploy_line",
    "deployed",
    "fail",
    "fields_out",
    "follow",
    "parse_pairs",
    "q",
    "read_file",
    "show_json",
    "stdin_if_dash",
    "table",
    "when",
]
