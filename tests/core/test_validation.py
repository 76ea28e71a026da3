"""Input checks: every refusal names its field."""

from __future__ import annotations

import pytest

from core import validation
from core.errors import InvalidInput


@pytest.mark.parametrize(
    "ref",
    [
        "nginx",
        "nginx:1.27",
        "ghcr.io/acme/web:1.4",
        "localhost/web:dev",
        "registry.example.com:5000/team/web@sha256:" + "a" * 64,
        "docker.io/library/redis:7-alpine",
        "bitnami/redis:7",
        "grafana/grafana:10.4.0",
        "acme/web",
        "[::1]:5000/web:1",
        "UPPER/case:1",  # an upper-case first part is a registry host (as in Docker)
    ],
)
def test_valid_image_references(ref: str) -> None:
    assert validation.image(ref) == ref


@pytest.mark.parametrize(
    "ref",
    [
        "",
        "   ",
        "upper/Case:1",
        "ghcr.io/Acme/web:1",
        "repo@sha256:ffff",
        "repo@sha256:" + "f" * 34,
        "0123456789abcdef" * 4,
        "web:",
        "web:tag with space",
        "ghcr.io/acme/web:-bad",
        "a" * 600,
    ],
)
def test_invalid_image_references_name_the_field(ref: str) -> None:
    with pytest.raises(InvalidInput) as e:
        validation.image(ref, field="image")
    assert e.value.field == "image"


@pytest.mark.parametrize("name", ["web", "a", "web-2", "x" * 63])
def test_dns_labels(name: str) -> None:
    assert validation.dns_label(name, field="name") == name


@pytest.mark.parametrize("name", ["Web", "-web", "web-", "we_b", "x" * 64, ""])
def test_not_dns_labels(name: str) -> None:
    with pytest.raises(InvalidInput, match="DNS-1123"):
        validation.dns_label(name, field="name")


def test_autoscaling_bounds_name_the_field() -> None:
    with pytest.raises(InvalidInput) as e:
        validation.autoscaling(min_replicas=5, max_replicas=2, cpu_target=70)
    assert e.value.field == "min_replicas"
    for bad in (0, 101):
        with pytest.raises(InvalidInput) as e:
            validation.autoscaling(min_replicas=1, max_replicas=2, cpu_target=bad)
        assert e.value.field == "cpu_target"


@pytest.mark.parametrize("blank", ["", " ", "\t\n"])
def test_a_blank_requested_image_is_refused_not_a_redeploy(blank: str) -> None:
    with pytest.raises(InvalidInput, match="must not be empty") as e:
        validation.requested_image(blank, current="ghcr.io/acme/web:1.4")
    assert e.value.field == "image"


def test_requested_image_reads_a_bare_tag_as_a_new_tag_of_the_app() -> None:
    current = "ghcr.io/acme/web:1.4"
    assert validation.requested_image(" 1.5 ", current=current) == "ghcr.io/acme/web:1.5"
    assert validation.requested_image("bitnami/redis:7", current=current) == "bitnami/redis:7"
    assert validation.requested_image("web:2", current=current) == "web:2"
    assert not validation.is_bare_tag("1.5\n") and not validation.is_bare_tag("v\u00e9")


def test_bare_tags_keep_the_repository() -> None:
    assert validation.is_bare_tag("1.5") and validation.is_bare_tag("v2") and validation.is_bare_tag("latest")
    assert not validation.is_bare_tag("ghcr.io/acme/web:1.5") and not validation.is_bare_tag("web:1")
    assert validation.with_tag(current="ghcr.io/acme/web:1.4", tag="1.5") == "ghcr.io/acme/web:1.5"
    assert (
        validation.with_tag(current="localhost:5000/web@sha256:" + "b" * 64, tag="2")
        == "localhost:5000/web:2"
    )


@pytest.mark.parametrize(
    ("value", "ok"),
    [("100m", True), ("0.5", True), ("2", True), ("0", False), ("1.2345", False), ("lots", False)],
)
def test_cpu_quantities(value: str, ok: bool) -> None:
    if ok:
        assert validation.cpu(value, field="cpu_request") == value
    else:
        with pytest.raises(InvalidInput):
            validation.cpu(value, field="cpu_request")
