"""Which tags an image policy picks: npm-style semver ranges, globs, regexes with a sort key."""

from __future__ import annotations

import pytest

from core import image_policies, semver
from core.errors import InvalidInput


def ok(range_: str, tag: str) -> bool:
    version = semver.parse(tag)
    assert version is not None, tag
    return version in semver.parse_range(range_)


@pytest.mark.parametrize(
    ("range_", "tag", "expected"),
    [
        ("^1.4", "1.4.0", True),
        ("^1.4", "1.9.12", True),
        ("^1.4", "1.3.9", False),
        ("^1.4", "2.0.0", False),
        ("^1.4", "v1.5.2", True),  # a v prefix is tolerated
        ("^0.2.3", "0.2.9", True),
        ("^0.2.3", "0.3.0", False),
        ("^0.0.3", "0.0.3", True),
        ("^0.0.3", "0.0.4", False),
        ("^0.0", "0.0.9", True),
        ("^0.0", "0.1.0", False),
        ("^0.x", "0.9.0", True),
        ("^0.x", "1.0.0", False),
        ("~1.4.2", "1.4.9", True),
        ("~1.4.2", "1.4.1", False),
        ("~1.4.2", "1.5.0", False),
        ("~1", "1.9.9", True),
        ("~1", "2.0.0", False),
        (">=2.0.0 <3", "2.7.1", True),
        (">=2.0.0 <3", "3.0.0", False),
        (">=2.0.0 <3", "1.9.9", False),
        (">= 2.0.0 < 3", "2.0.0", True),  # spaces after operators
        ("1.x", "1.0.0", True),
        ("1.x", "2.0.0", False),
        ("1.2.*", "1.2.7", True),
        ("1.2.*", "1.3.0", False),
        ("*", "0.0.1", True),
        ("1.2.3", "1.2.3", True),
        ("1.2.3", "1.2.4", False),
        ("=1.2.3", "1.2.3", True),
        (">1.2", "1.2.9", False),
        (">1.2", "1.3.0", True),
        ("<=1.2", "1.2.9", True),
        ("<=1.2", "1.3.0", False),
        ("<1.2", "1.1.9", True),
        ("<1.2", "1.2.0", False),
        ("1.2 - 2.3.4", "2.3.4", True),
        ("1.2 - 2.3.4", "2.3.5", False),
        ("1.2 - 2.3", "2.3.9", True),
        ("1.2 - 2.3", "2.4.0", False),
        ("1.2 - 2.3", "1.1.9", False),
        ("^1.4 || ^3", "3.1.0", True),
        ("^1.4 || ^3", "2.1.0", False),
        # Pre-releases only when the range names one of the very same release.
        ("^1.4", "1.5.0-beta.1", False),
        ("^1.4", "2.0.0-rc.1", False),
        (">=2.0.0 <3", "2.1.0-rc.1", False),
        (">=2.0.0-rc.1 <3", "2.0.0-rc.2", True),
        (">=2.0.0-rc.1 <3", "2.0.0-rc.0", False),
        (">=2.0.0-rc.1 <3", "2.1.0-rc.1", False),
        ("~1.4.2-beta.2", "1.4.2-beta.10", True),  # numeric identifiers compare as numbers
        ("~1.4.2-beta.2", "1.4.2", True),
        ("*", "1.0.0-alpha", False),
    ],
)
def test_semver_ranges_as_npm_reads_them(range_: str, tag: str, expected: bool) -> None:
    assert ok(range_, tag) is expected


def test_semver_precedence() -> None:
    order = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2",
             "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.0.1", "1.10.0", "10.0.0"]  # fmt: skip
    versions = [semver.parse(t) for t in order]
    assert all(v is not None for v in versions)
    keys = [v.key() for v in versions if v is not None]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)


@pytest.mark.parametrize("tag", ["1.4", "latest", "1.4.2.1", "01.2.3", "1.2.3-", "main-12", ""])
def test_tags_that_are_not_versions(tag: str) -> None:
    assert semver.parse(tag) is None


@pytest.mark.parametrize("bad", ["^1.4.x.y", "abc", ">=", "1.2.3 ||| 2", "~>x.y.z.w", "^" * 301])
def test_bad_ranges_name_the_field(bad: str) -> None:
    with pytest.raises(InvalidInput) as e:
        image_policies.matcher(kind="semver", pattern=bad)
    assert e.value.field == "semver"


def test_semver_policy_picks_the_highest_match_and_refuses_downgrades() -> None:
    m = image_policies.matcher(kind="semver", pattern="^1.4")
    tags = ["1.3.0", "1.4.0", "v1.10.1", "1.9.0", "2.0.0", "1.11.0-rc.1", "latest", "main-7"]
    assert m.newest(tags) == "v1.10.1"  # 1.10 > 1.9 numerically, and no pre-release
    assert m.newer("1.5.0", than=["1.4.0"])
    assert not m.newer("1.4.0", than=["1.5.0"])  # a downgrade
    assert not m.newer("1.5.0", than=["1.5.0"])  # the same tag
    assert not m.newer("2.0.0", than=["1.4.0"])  # out of range
    assert m.newer("1.5.0", than=["latest"])  # what runs is not a version: anything matching is newer


def test_glob_matches_the_whole_tag() -> None:
    m = image_policies.matcher(kind="glob", pattern="main-*")
    assert m.key("main-abc") is not None
    assert m.key("xmain-abc") is None and m.key("Main-abc") is None
    assert m.newest(["main-a", "main-c", "feature-z"]) == "main-c"
    assert m.newer("main-b", than=["main-c"])  # globs have no order: a new tag is newer by arriving
    assert not m.newer("main-c", than=["main-c"])


def test_regex_must_match_whole_and_sorts_by_key() -> None:
    numeric = image_policies.matcher(kind="regex", pattern=r"main-(?P<key>\d+)", sort="numeric")
    assert numeric.newest(["main-9", "main-10", "main-2", "main-11-dirty", "xmain-99"]) == "main-10"
    assert not numeric.newer("main-9", than=["main-10"])
    alpha = image_policies.matcher(kind="regex", pattern=r"main-(?P<key>\d+)", sort="alpha")
    assert alpha.newest(["main-9", "main-10"]) == "main-9"
    stamped = image_policies.matcher(kind="regex", pattern=r"(?P<key>\d{8})-[0-9a-f]{7}", sort="alpha")
    assert stamped.newest(["20261201-abcdef0", "20261203-1234567", "20261202-fffffff"]) == "20261203-1234567"


@pytest.mark.parametrize(
    ("kind", "pattern", "sort", "field"),
    [
        ("regex", "main-(\\d+)", "numeric", "regex"),  # no group `key`
        ("regex", "main-(?P<key>", "numeric", "regex"),
        ("regex", "main-(?P<key>\\d+)", "random", "sort"),
        ("glob", "", "", "glob"),
        ("calver", "x", "", "kind"),
    ],
)
def test_invalid_policies_name_the_field(kind: str, pattern: str, sort: str, field: str) -> None:
    with pytest.raises(InvalidInput) as e:
        image_policies.matcher(kind=kind, pattern=pattern, sort=sort)
    assert e.value.field == field


def test_backoff_grows_and_is_capped() -> None:
    delays = [image_policies.backoff_seconds(interval=60, failures=n) for n in range(1, 12)]
    assert delays[:3] == [120, 240, 480]
    assert delays == sorted(delays)
    assert delays[-1] == image_policies.BACKOFF_CAP_SECONDS
