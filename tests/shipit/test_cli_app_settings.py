"""`apps create` and `apps update` take their settings from one list (shipit.cli_client.app_settings)."""

from __future__ import annotations

from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from shipit import cli
from shipit.cli_client import app_settings


def _options(command: str) -> dict[str, Any]:
    """The click options of `shipit apps COMMAND`, by parameter name."""
    group: Any = typer.main.get_command(cli.app)
    apps = group.get_command(None, "apps")
    return {p.name: p for p in apps.get_command(None, command).params}


@pytest.mark.parametrize("command", ["create", "update"])
def test_both_commands_take_every_setting_with_one_spelling(command: str) -> None:
    options = _options(command)
    for s in app_settings.SETTINGS:
        if s.only not in (None, command):
            assert s.name not in options
            continue
        option = options[s.name]
        assert option.help == s.help
        assert option.default is None
        if s.flags:
            assert set(option.opts) | set(option.secondary_opts) >= {
                f for flag in s.flags for f in flag.split("/")
            }
        else:
            assert option.opts == ["--" + s.name.replace("_", "-")]


def test_create_and_update_offer_the_same_settings() -> None:
    create, update = _options("create"), _options("update")
    shared = {s.name for s in app_settings.SETTINGS if s.only is None}
    assert shared <= set(create) and shared <= set(update)
    assert "unset_env" in update and "unset_env" not in create


def test_body_names_the_api_fields_and_leaves_out_what_was_not_given() -> None:
    given = {s.name: None for s in app_settings.SETTINGS} | {
        "image": "ghcr.io/acme/web:1.4",
        "progress_deadline": 120,
        "previews": False,
        "auto_rollback": "OFF",
        "domain": "",
        "env": ["A=1"],
        "unset_env": ["B"],
    }
    assert app_settings.body(given) == {
        "image": "ghcr.io/acme/web:1.4",
        "progress_deadline_seconds": 120,
        "previews_enabled": False,
        "auto_rollback": False,
        "domain": "",
    }


def test_a_wrong_on_off_word_fails_before_any_request() -> None:
    # SHIPIT_URL points nowhere: the flag is refused before the CLI would try to connect.
    result = CliRunner().invoke(
        cli.app,
        ["apps", "update", "web", "--auto-rollback", "maybe"],
        env={"SHIPIT_URL": "http://127.0.0.1:9", "SHIPIT_TOKEN": "t"},
    )
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: --auto-rollback takes on or off"
