"""The /shipit command language: every command, the mistakes people make, and no secret ever echoed."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from bot import commands as c
from bot import handlers
from core.errors import InvalidInput

SECRET = "hunter2-Sup3r-s3cret"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("deploy web ghcr.io/acme/web:1.4", c.Deploy(app="web", image="ghcr.io/acme/web:1.4")),
        ("deploy web 1.5", c.Deploy(app="web", image="1.5")),
        ("  DEPLOY   Web   1.5  ", c.Deploy(app="web", image="1.5")),
        # Slack turns anything that looks like a link into <http://…|what was typed>.
        (
            "deploy web <http://ghcr.io/acme/web:1.4|ghcr.io/acme/web:1.4>",
            c.Deploy(app="web", image="ghcr.io/acme/web:1.4"),
        ),
        ("rollback web", c.Rollback(app="web")),
        ("rollback web 3", c.Rollback(app="web", revision=3)),
        ("rollback web r3", c.Rollback(app="web", revision=3)),
        ("rollback web #12", c.Rollback(app="web", revision=12)),
        ("status", c.Status()),
        ("status web", c.Status(app="web")),
        ("apps", c.Apps()),
        ("revisions web", c.Revisions(app="web")),
        ("logs web", c.Logs(app="web", lines=c.DEFAULT_LOG_LINES)),
        ("logs web 200", c.Logs(app="web", lines=200)),
        ("secrets list web", c.SecretsList(app="web")),
        ("secrets ls web", c.SecretsList(app="web")),
        ("secrets unset web A B", c.SecretsUnset(app="web", keys=("A", "B"))),
        ("scale web replicas=3", c.Scale(app="web", replicas=3)),
        ("scale web replicas=0", c.Scale(app="web", replicas=0)),
        ("scale web min=2 max=10 cpu=70", c.Scale(app="web", min_replicas=2, max_replicas=10, cpu_target=70)),
        ("scale web min=2 max=10", c.Scale(app="web", min_replicas=2, max_replicas=10)),
        ("scale web cpu=70%", c.Scale(app="web", cpu_target=70)),
        ("scale web auto off", c.Scale(app="web", autoscaling_off=True)),
        (
            "scale web min=1 max=4 cpu=50 window=30",
            c.Scale(app="web", min_replicas=1, max_replicas=4, cpu_target=50, scale_down_window=30),
        ),
        ("scale web window=0", c.Scale(app="web", scale_down_window=0)),
        ("scale web scale_down_window=3600s", c.Scale(app="web", scale_down_window=3600)),
        ("scale web window=default", c.Scale(app="web", scale_down_window="default")),
        ("lock web release freeze until Monday", c.Lock(app="web", reason="release freeze until Monday")),
        ("lock web don't &amp; won't", c.Lock(app="web", reason="don't & won't")),
        ("unlock web", c.Unlock(app="web")),
        ("pause web", c.Pause(app="web")),
        ("resume web", c.Resume(app="web")),
        ("preview approve web 42", c.PreviewApprove(app="web", number=42)),
        ("Preview APPROVE Web #42", c.PreviewApprove(app="web", number=42)),
        (
            "access acme <@U0ALICE|alice> developer",
            c.Access(project="acme", subject="slack:U0ALICE", role="developer"),
        ),
        ("access acme <@U0ALICE> OWNER", c.Access(project="acme", subject="slack:U0ALICE", role="owner")),
        ("access acme U0ALICE viewer", c.Access(project="acme", subject="slack:U0ALICE", role="viewer")),
        (
            "access acme github:octocat admin",
            c.Access(project="acme", subject="github:octocat", role="admin"),
        ),
        ("access acme <@U0ALICE> none", c.Access(project="acme", subject="slack:U0ALICE", role=None)),
        ("", c.Help()),
        ("help", c.Help()),
        ("help scale", c.Help(topic="scale")),
    ],
)
def test_parses(text: str, expected: c.Command) -> None:
    assert c.parse(text) == expected


def test_every_registered_command_has_help_examples_that_parse_and_a_handler() -> None:
    # The registry is the list: nothing here names the commands, so adding one needs no edit here.
    assert tuple(c.BY_NAME.values()) == c.SPECS
    # DESIGN.md promises at least these.
    assert {"deploy", "rollback", "scale", "secrets", "help"} <= set(c.BY_NAME)
    for spec in c.SPECS:
        assert spec.usage.startswith(spec.name) and spec.summary and spec.examples, spec.name
        assert spec.kinds and all(issubclass(k, c.Command) for k in spec.kinds), spec.name
        for example in spec.examples:
            # The examples we show must work, as Slack sends them (mentions escaped), and make one of
            # the command types the spec declares.
            parsed = c.parse(example.replace("@alice", "<@U0ALICE|alice>").replace("@bob", "<@U0BOB|bob>"))
            assert type(parsed) in spec.kinds, example
        # Every type the parser can make has a handler (or is answered inline, like help).
        for kind in spec.kinds:
            assert kind in handlers.HANDLERS or kind in handlers.ANSWERED_INLINE, (spec.name, kind)
    assert handlers.missing_handlers() == []
    # Every handler serves a registered command: none is left behind when a command goes.
    made = {k for spec in c.SPECS for k in spec.kinds}
    assert set(handlers.HANDLERS) <= made


@dataclass(frozen=True, kw_only=True)
class Frobnicate(c.Command):
    """A command that is not part of the language: registered (and removed) by the test below."""

    app: str


def test_a_command_without_a_handler_is_named_and_a_name_registers_once() -> None:
    def parse_frobnicate(rest: str) -> Frobnicate:
        return Frobnicate(app=rest)

    try:
        c.command("frobnicate", usage="frobnicate <app>", summary="twist it", examples=("frobnicate web",))(
            parse_frobnicate
        )
        # One entry: the parser answers, help and suggestions know it, and the missing handler is named.
        assert c.parse("frobnicate web") == Frobnicate(app="web")
        assert "/shipit frobnicate <app>` — twist it" in c.help_text()
        with pytest.raises(c.UsageError, match="Did you mean `frobnicate`"):
            c.parse("frobnicat web")
        assert handlers.missing_handlers() == ["frobnicate: Frobnicate"]
        with pytest.raises(ValueError, match="registered twice"):
            c.command("frobnicate", usage="x", summary="x", examples=("x",))(parse_frobnicate)
    finally:
        c._REGISTRY.pop("frobnicate", None)
    assert handlers.missing_handlers() == []


def test_help_lists_every_command_with_an_example() -> None:
    text = c.help_text()
    for spec in c.SPECS:
        assert f"/shipit {spec.usage}" in text
        assert f"/shipit {spec.examples[0]}" in text
    assert "scale web min=2 max=10 cpu=70" in c.help_text("scale")


@pytest.mark.parametrize(
    ("text", "meant"),
    [
        ("deplyo web 1.4", "deploy"),
        ("depoly web", "deploy"),
        ("rolback web", "rollback"),
        ("stauts", "status"),
        ("secret list web", "secrets"),
        ("scael web replicas=2", "scale"),
        ("unlcok web", "unlock"),
        ("revision web", "revisions"),
        ("help deplyo", "deploy"),
    ],
)
def test_a_typo_gets_the_closest_command_and_its_usage(text: str, meant: str) -> None:
    with pytest.raises(c.UsageError) as info:
        c.parse(text)
    message = str(info.value)
    assert f"Did you mean `{meant}`?" in message
    assert f"Usage: `/shipit {c.BY_NAME[meant].usage}`" in message
    assert info.value.command == meant


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("preview", "`preview` takes approve."),
        ("preview deploy web 42", "`preview` takes approve."),
        ("preview approve web", "needs an app and a pull request number"),
        ("preview approve web pr42", "the pull request must be a whole number"),
        ("preview approve web 0", "the pull request must be between 1 and"),
        ("preview approve web 42 now", "does not take `now`"),
    ],
)
def test_preview_approve_mistakes_show_its_usage(text: str, says: str) -> None:
    with pytest.raises(c.UsageError) as info:
        c.parse(text)
    assert says in str(info.value)
    assert "Usage: `/shipit preview approve <app> <pull request>`" in str(info.value)


def test_nonsense_points_at_help() -> None:
    with pytest.raises(c.UsageError) as info:
        c.parse("xyzzy")
    assert "Unknown command `xyzzy`" in str(info.value)
    assert "/shipit help" in str(info.value)
    assert isinstance(info.value, InvalidInput)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("deploy", "needs an app name"),
        ("deploy web", "needs an image or a tag"),
        ("deploy web   ", "needs an image or a tag"),
        ("deploy web ''", "needs an image or a tag"),
        ('deploy web ""', "needs an image or a tag"),
        ("deploy web \u201c\u201d", "needs an image or a tag"),
        ("deploy web a b", "does not take `b`"),
        ("rollback web latest", "revision must be a number"),
        ("logs web 0", "lines must be between 1 and 500"),
        ("logs web many", "lines must be a whole number"),
        ("scale web", "needs replicas=N"),
        ("scale web replicas=3 min=1", "either replicas=N or min/max/cpu"),
        ("scale web min=0", "min must be between 1 and 1000"),
        ("scale web cpu=101", "cpu must be between 1 and 100"),
        ("scale web speed=3", "does not understand `speed=3`"),
        ("scale web replicas=3 replicas=4", "given twice"),
        ("scale web window=3601", "window must be between 0 and 3600"),
        ("scale web window=-1", "window must be a whole number"),
        ("scale web window=soon", "window must be a whole number"),
        ("scale web window=30 window=60", "given twice"),
        ("scale web replicas=3 window=30", "either replicas=N or min/max/cpu/window"),
        ("lock web", "needs a reason"),
        ("lock", "needs an app name"),
        ("access acme alice developer", "is not a person"),
        ("access acme <@U1ALICE> boss", "role must be one of"),
        ("access acme", "needs a project, a person and a role"),
        ("secrets", "needs set, list or unset"),
        ("secrets set", "needs an app name"),
        ("secrets set web", "at least one KEY=VALUE"),
        ("secrets unset web", "at least one KEY"),
        ("secrets unset web A=1", "keys only"),
        ("apps web", "does not take `web`"),
    ],
)
def test_mistakes_name_the_problem_and_show_the_usage(text: str, fragment: str) -> None:
    with pytest.raises(c.UsageError) as info:
        c.parse(text)
    assert fragment in str(info.value)
    assert "Usage: `/shipit " in str(info.value)


def test_secret_values_are_parsed_exactly() -> None:
    cmd = c.parse(
        "secrets set web DATABASE_URL=postgres://u:p@db/web?sslmode=require EMPTY= "
        "SPACES=\"two words\" SINGLE='it is' CURLY=\u201ccurly quotes\u201d EQ=a=b=c "
        "AMP=a&amp;b&lt;c&gt; LINK=<http://example.com|example.com>"
    )
    assert isinstance(cmd, c.SecretsSet)
    assert cmd.app == "web"
    assert cmd.values == {
        "DATABASE_URL": "postgres://u:p@db/web?sslmode=require",
        "EMPTY": "",
        "SPACES": "two words",
        "SINGLE": "it is",
        "CURLY": "curly quotes",
        "EQ": "a=b=c",
        "AMP": "a&b<c>",
        "LINK": "example.com",
    }


def test_a_curly_apostrophe_inside_a_value_is_kept() -> None:
    cmd = c.parse("secrets set web GREETING=it\u2019s")
    assert isinstance(cmd, c.SecretsSet)
    assert cmd.values == {"GREETING": "it\u2019s"}


def test_secret_values_never_show_in_repr_describe_or_errors() -> None:
    cmd = c.parse(f"secrets set web API_KEY={SECRET} OTHER={SECRET}x")
    assert SECRET not in repr(cmd)
    assert SECRET not in str(cmd)
    assert SECRET not in c.describe(cmd)
    assert "API_KEY" in c.describe(cmd)
    bad = [
        f"secrets set web API_KEY={SECRET} {SECRET}",  # a stray word after a pair
        f'secrets set web API_KEY="{SECRET}',  # unbalanced quote
        f"secrets set web API_KEY={SECRET} API_KEY={SECRET}",  # twice
        f"secrets lst web API_KEY={SECRET}",  # typo in the subcommand
        f"secret set web API_KEY={SECRET}",  # typo in the command
        f"secrets set web {SECRET}",
    ]
    for text in bad:
        with pytest.raises(c.UsageError) as info:
            c.parse(text)
        assert SECRET not in str(info.value), text
        assert SECRET not in repr(info.value), text


def test_unescape_keeps_mentions_and_undoes_links_and_entities() -> None:
    assert c.unescape("<@U123|bob> &lt;b&gt; &amp;amp; <https://x.io> <mailto:a@b.c|a@b.c>") == (
        "<@U123|bob> <b> &amp; https://x.io a@b.c"
    )


# ---------------------------------------------------------------- environments


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("deploy web 1.6 to staging", c.Deploy(app="web", image="1.6", env="staging")),
        ("deploy web 1.6 --env staging", c.Deploy(app="web", image="1.6", env="staging")),
        ("deploy web 1.6 --env=Staging", c.Deploy(app="web", image="1.6", env="staging")),
        ("deploy web 1.6", c.Deploy(app="web", image="1.6")),
        ("rollback web 3 in production", c.Rollback(app="web", revision=3, env="production")),
        ("status web in staging", c.Status(app="web", env="staging")),
        ("logs web 50 in staging", c.Logs(app="web", lines=50, env="staging")),
        ("scale web replicas=3 in production", c.Scale(app="web", replicas=3, env="production")),
        ("secrets list web in staging", c.SecretsList(app="web", env="staging")),
        # A lock reason is free text: only --env names an environment there.
        (
            "lock web migration running in production",
            c.Lock(app="web", reason="migration running in production"),
        ),
        ("lock web migration --env staging", c.Lock(app="web", reason="migration", env="staging")),
        ("promote web staging production", c.Promote(app="web", source="staging", target="production")),
        ("promote web staging to production", c.Promote(app="web", source="staging", target="production")),
        ("envs", c.Envs()),
        ("envs acme", c.Envs(project="acme")),
    ],
)
def test_environment_is_read_from_every_app_command(text: str, expected: c.Command) -> None:
    assert c.parse(text) == expected


def test_environment_mistakes_name_the_command() -> None:
    with pytest.raises(c.UsageError, match="promote"):
        c.parse("promote web staging")
    with pytest.raises(c.UsageError, match="does not take `--env staging`"):
        c.parse("apps --env staging")
