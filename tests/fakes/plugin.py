"""pytest fixtures for the fake Slack and GitHub servers (load with ``-p tests.fakes.plugin`` or
``pytest_plugins = ["tests.fakes.plugin"]``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from tests.fakes.github_api import FakeGitHub
from tests.fakes.oidc import FakeOidc
from tests.fakes.slack_api import FakeSlack


@pytest_asyncio.fixture
async def fake_slack() -> AsyncIterator[FakeSlack]:
    """A started FakeSlack: ``fake_slack.url`` (ends with /api/), ``fake_slack.bot_token``."""
    async with FakeSlack() as slack:
        yield slack
    assert not slack.errors, f"FakeSlack crashed while answering: {slack.errors!r}"


@pytest_asyncio.fixture
async def fake_github() -> AsyncIterator[FakeGitHub]:
    """A started FakeGitHub with repository ``acme/web`` and the App installed on ``acme``:
    ``fake_github.url``, ``.token``, ``.app_id``, ``.app_private_key``."""
    async with FakeGitHub() as github:
        yield github
    assert not github.errors, f"FakeGitHub crashed while answering: {github.errors!r}"


@pytest_asyncio.fixture
async def fake_oidc() -> AsyncIterator[FakeOidc]:
    """A started FakeOidc: ``.issuer``, ``.client_id``, ``.client_secret``; ``.sign_in_as(email)``."""
    async with FakeOidc() as oidc:
        yield oidc
    assert not oidc.errors, f"FakeOidc crashed while answering: {oidc.errors!r}"
