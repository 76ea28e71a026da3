"""The event table, its ignored list, the payload parsers and the GitHub App manifest agree."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.webhooks.conftest import FIXTURES, load
from webhooks import table

MANIFEST = Path(__file__).resolve().parents[2] / "manifests" / "github-app.yaml"


def test_the_app_manifest_subscribes_to_every_handled_event_and_grants_what_they_need() -> None:
    manifest = yaml.safe_load(MANIFEST.read_text())
    handled = {event for event, _ in table.HANDLERS}
    assert handled - table.REPOSITORY_HOOK_ONLY == set(manifest["default_events"])
    permissions = manifest["default_permissions"]
    assert permissions["deployments"] == "write"
    assert permissions["statuses"] == "write"  # a build's commit status (shipit/build (<app>))
    assert permissions["pull_requests"] == "write" and permissions["issues"] == "write"
    assert {"contents", "checks", "actions", "metadata"} <= set(permissions)
    assert manifest["hook_attributes"]["url"].endswith("/github/webhook")


def test_ignored_events_and_actions_do_not_overlap_the_handled_ones() -> None:
    handled = {event for event, _ in table.HANDLERS}
    assert not handled & set(table.IGNORED_EVENTS)
    for event, actions in table.IGNORED_ACTIONS.items():
        assert event in handled
        assert not {a for e, a in table.HANDLERS if e == event} & actions


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.json")), ids=lambda p: p.stem)
def test_every_fixture_has_a_handler_or_a_reason(path: Path) -> None:
    event, _, _ = path.stem.partition("__")
    payload = load(path.stem)
    found = table.lookup(event, payload.get("action"))
    if isinstance(found, str):
        assert "ignored" in found or event == "ping"
    else:
        found.parse(payload)  # real-shaped payloads parse


def test_parsers_name_the_missing_field() -> None:
    payload = load("pull_request__opened")
    del payload["pull_request"]["head"]["sha"]
    with pytest.raises(table.BadPayload, match=r"pull_request\.head\.sha"):
        table.parse_pull_request(payload)
    payload = load("check_suite__completed")
    payload["check_suite"] = "nope"
    with pytest.raises(table.BadPayload, match="check_suite"):
        table.HANDLERS[("check_suite", "completed")].parse(payload)
