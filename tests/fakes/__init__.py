"""Fake Slack Web API and GitHub REST API servers on loopback, for tests of the real clients.

These are the only things shipit's tests replace (DESIGN.md section 9): Slack and GitHub cannot run
here, so tests point slack_sdk / slack_bolt and PyGithub at these servers over real HTTP.
"""

from tests.fakes._server import Call
from tests.fakes.github_api import FakeGitHub, generate_private_key_pem, public_key_pem
from tests.fakes.slack_api import FakeSlack, Workspace

__all__ = ["Call", "FakeGitHub", "FakeSlack", "Workspace", "generate_private_key_pem", "public_key_pem"]
