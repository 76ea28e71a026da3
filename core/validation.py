"""Input checks shared by every channel; each error names the field it is about."""

from __future__ import annotations

import re

from core import images
from core.errors import InvalidInput

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_CPU = re.compile(r"^([0-9]+m|[0-9]+(\.[0-9]{1,3})?)$")
_MEMORY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|K|M|G|T)?$")
_PATH = re.compile(r"^/[\x21-\x7e]*$")


def dns_label(value: str, *, field: str) -> str:
    value = value.strip()
    if not value or len(value) > 63 or not _DNS_LABEL.match(value):
        raise InvalidInput(
            f"{field} must be a DNS-1123 label (lower-case letters, digits and '-', starting and ending "
            f"with a letter or digit, at most 63 characters), got {value!r}",
            field=field,
        )
    return value


def hostname(value: str, *, field: str) -> str:
    value = value.strip().lower().rstrip(".")
    if not value or len(value) > 253 or not _DNS_SUBDOMAIN.match(value):
        raise InvalidInput(f"{field} must be a DNS name such as app.example.com, got {value!r}", field=field)
    return value


def image(value: str, *, field: str = "image") -> str:
    """A reference a pod spec will pull (core/images.py has the grammar), returned as given."""
    value = value.strip()
    if not value:
        raise InvalidInput(f"{field} must not be empty: give an image like ghcr.io/acme/web:1.4", field=field)
    images.parse(value, field=field)
    return value


def requested_image(value: str, *, current: str | None, field: str = "image") -> str:
    """What `deploy web X` asks for: a bare tag keeps the app's repository, anything else is an image.

    Blank is refused rather than read as "redeploy as is": a redeploy is asked for by giving no image.
    """
    value = value.strip()
    if not value:
        raise InvalidInput(
            f"{field} must not be empty: give an image (ghcr.io/acme/web:1.4) or a tag (1.5), "
            "or leave it out to redeploy as is",
            field=field,
        )
    return (
        with_tag(current=current, tag=value, field=field) if is_bare_tag(value) else image(value, field=field)
    )


def is_bare_tag(value: str) -> bool:
    """`1.4`, `v2`, `latest`: no registry, path or digest, so the app's repository is kept."""
    return bool(_TAG.fullmatch(value))


def with_tag(*, current: str | None, tag: str, field: str = "image") -> str:
    """`deploy web 1.5` keeps the repository of the current image and swaps the tag."""
    if not current:
        raise InvalidInput(
            f"{field}: the app has no image yet, give a full reference, not just {tag!r}", field=field
        )
    base = current.split("@", 1)[0]
    slash = base.rfind("/")
    colon = base.rfind(":")
    if colon > slash:
        base = base[:colon]
    return image(f"{base}:{tag}", field=field)


def env_key(value: str, *, field: str) -> str:
    if not value or len(value) > 253 or not _ENV_KEY.match(value):
        raise InvalidInput(
            f"{field}: {value!r} is not a valid environment variable name (letters, digits, '_', '.', '-', "
            f"not starting with a digit)",
            field=field,
        )
    return value


def env(values: dict[str, str], *, field: str = "env") -> dict[str, str]:
    return {env_key(k, field=field): str(v) for k, v in values.items()}


def cpu(value: str, *, field: str) -> str:
    value = value.strip()
    if not _CPU.match(value) or value in ("0", "0m"):
        raise InvalidInput(f"{field} must be a CPU quantity such as 100m or 0.5, got {value!r}", field=field)
    return value


def memory(value: str, *, field: str) -> str:
    value = value.strip()
    if not _MEMORY.match(value):
        raise InvalidInput(
            f"{field} must be a memory quantity such as 128Mi or 1Gi, got {value!r}", field=field
        )
    return value


def port(value: int, *, field: str) -> int:
    if not 1 <= value <= 65535:
        raise InvalidInput(f"{field} must be between 1 and 65535, got {value}", field=field)
    return value


def int_range(value: int, *, field: str, low: int, high: int) -> int:
    if not low <= value <= high:
        raise InvalidInput(f"{field} must be between {low} and {high}, got {value}", field=field)
    return value


def http_path(value: str, *, field: str) -> str:
    value = value.strip()
    if not _PATH.match(value) or len(value) > 512:
        raise InvalidInput(
            f"{field} must be an absolute HTTP path such as /healthz, got {value!r}", field=field
        )
    return value


def autoscaling(*, min_replicas: int, max_replicas: int, cpu_target: int) -> None:
    int_range(min_replicas, field="min_replicas", low=1, high=1000)
    int_range(max_replicas, field="max_replicas", low=1, high=1000)
    if min_replicas > max_replicas:
        raise InvalidInput(
            f"min_replicas ({min_replicas}) must not be greater than max_replicas ({max_replicas})",
            field="min_replicas",
        )
    int_range(cpu_target, field="cpu_target", low=1, high=100)
