"""Input checks shared by every channel; each error names the field it is about.

The patterns, ranges and lengths are written once, here: core checks with them (Slack and GitHub input
never meets pydantic), and the REST API's request schemas publish the same ones in /openapi.json.
Lengths come from the table columns, so a value that passes always fits the database.
"""

from __future__ import annotations

import functools
import hashlib
import re

from core import images
from core.errors import InvalidInput
from storage import models


@functools.cache  # columns never change; read at every deploy request (issue 13)
def limit(table: type[models.Base], column: str) -> int:
    """The length of a String(N) column: the longest value the database stores (PostgreSQL refuses more)."""
    length = table.__table__.c[column].type.length  # type: ignore[attr-defined]
    assert isinstance(length, int), f"{table.__name__}.{column} has no length"
    return length


# Patterns in the dialect JSON Schema, Rust's regex crate (pydantic) and Python's re all read alike.
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
ENV_KEY = r"^[A-Za-z_][A-Za-z0-9_.-]*$"
CPU = r"^([0-9]+m|[0-9]+(\.[0-9]{1,3})?)$"
MEMORY = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|K|M|G|T)?$"
HTTP_PATH = r"^/[\x21-\x7e]*$"
# slack:U123, github:octocat, user:alice
SUBJECT = r"^[a-z][a-z0-9_-]*:[^\s\x00-\x1f\x7f]+$"
GIT_REPO = r"^([^/\s\x00-\x1f\x7f]+/[^/\s\x00-\x1f\x7f]+)?$"
# Free text on one line (reasons, names, branches): no NUL, which PostgreSQL cannot store, nor other
# control characters, which only garble the Slack card and the logs.
LINE = r"^[^\x00-\x1f\x7f]*$"
# Free text that may span lines (environment values): tabs and newlines are fine, NUL never (execve
# cannot pass it to a process).
TEXT = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"

# What each pattern means, for error messages.
PATTERN_HELP = {
    DNS_LABEL: "must be a DNS-1123 label (lower-case letters, digits and '-', starting and ending with a "
    "letter or digit, at most 63 characters)",
    ENV_KEY: "is not a valid environment variable name (letters, digits, '_', '.', '-', not starting with a "
    "digit)",
    CPU: "must be a CPU quantity such as 100m or 0.5",
    MEMORY: "must be a memory quantity such as 128Mi or 1Gi",
    HTTP_PATH: "must be an absolute HTTP path such as /healthz",
    SUBJECT: "must look like slack:U123, github:login or user:name",
    GIT_REPO: "must look like owner/name",
    LINE: "must be one line without control characters",
    TEXT: "must not contain NUL or control characters other than tab and newline",
}

# Integer settings of an app: (lowest, highest).  Integer columns are 32-bit on PostgreSQL.
INT32_MAX = 2**31 - 1
ID_MAX = 2**63 - 1  # ids are BIGINT on PostgreSQL, 64-bit on SQLite: a larger one cannot exist
RANGES: dict[str, tuple[int, int]] = {
    "replicas": (0, 1000),
    "port": (1, 65535),
    "health_port": (1, 65535),
    "health_initial_delay": (0, 3600),
    "health_period": (1, 3600),
    "min_replicas": (1, 1000),
    "max_replicas": (1, 1000),
    "cpu_target": (1, 100),
    "scale_down_window": (0, 3600),  # seconds; Kubernetes allows up to an hour
    "progress_deadline_seconds": (5, 3600),
    "preview_ttl_hours": (1, 24 * 90),
    "preview_max_open": (1, 500),
}

# The longest image reference a revision or app row stores (their image columns).
IMAGE_MAX = 512

# The longest environment value we keep (values live in JSON columns, which have no length of their own).
ENV_VALUE_MAX = 32 * 1024

_DNS_LABEL = re.compile(DNS_LABEL)
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_ENV_KEY = re.compile(ENV_KEY)
_CPU = re.compile(CPU)
_MEMORY = re.compile(MEMORY)
_PATH = re.compile(HTTP_PATH)
_SUBJECT = re.compile(SUBJECT)
_GIT_REPO = re.compile(GIT_REPO)
_LINE = re.compile(LINE)
_TEXT = re.compile(TEXT)


def dns_label(value: str, *, field: str) -> str:
    value = value.strip()
    if not value or len(value) > 63 or not _DNS_LABEL.fullmatch(value):
        raise InvalidInput(
            f"{field} must be a DNS-1123 label (lower-case letters, digits and '-', starting and ending "
            f"with a letter or digit, at most 63 characters), got {shown(value)}",
            field=field,
        )
    return value


def hostname(value: str, *, field: str) -> str:
    value = value.strip().lower().rstrip(".")
    if not value or len(value) > 253 or not _DNS_SUBDOMAIN.fullmatch(value):
        raise InvalidInput(
            f"{field} must be a DNS name such as app.example.com, got {shown(value)}", field=field
        )
    return value


def image(value: str, *, field: str = "image") -> str:
    """A reference a pod spec will pull (core/images.py has the grammar), returned as given."""
    value = value.strip()
    if not value:
        raise InvalidInput(f"{field} must not be empty: give an image like ghcr.io/acme/web:1.4", field=field)
    if len(value) > IMAGE_MAX:
        raise InvalidInput(f"{field} must be at most {IMAGE_MAX} characters, got {len(value)}", field=field)
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
    if not value or len(value) > 253 or not _ENV_KEY.fullmatch(value):
        raise InvalidInput(
            f"{field}: {shown(value)} is not a valid environment variable name (letters, digits, '_', '.', '-', "
            f"not starting with a digit)",
            field=field,
        )
    return value


def secret_key(value: str, *, field: str = "key") -> str:
    """A secret's name.  A refused one is never echoed: it is most often the value itself, typed or
    pasted without its name (`secrets set web hunter2==`), and secret values never leave shipit."""
    longest = limit(models.Secret, "key")
    if not value or len(value) > longest or not _ENV_KEY.fullmatch(value):
        raise InvalidInput(
            f"{field}: a secret's key {PATTERN_HELP[ENV_KEY]}, at most {longest} characters; it is not "
            "shown, in case it is a value given without its key (KEY=VALUE)",
            field=field,
        )
    return value


def env(values: dict[str, str], *, field: str = "env") -> dict[str, str]:
    return {
        env_key(k, field=field): text(str(v), field=f"{field}.{k}", max_length=ENV_VALUE_MAX, multiline=True)
        for k, v in values.items()
    }


def text(value: str, *, field: str, max_length: int, multiline: bool = False) -> str:
    """Free text bound for a column: at most `max_length` characters, no NUL or control characters."""
    if len(value) > max_length:
        raise InvalidInput(f"{field} must be at most {max_length} characters, got {len(value)}", field=field)
    if not (_TEXT if multiline else _LINE).fullmatch(value):
        raise InvalidInput(f"{field} {PATTERN_HELP[TEXT if multiline else LINE]}", field=field)
    return value


def subject(value: str, *, field: str = "subject") -> str:
    """Who a role or token is for: slack:U123, github:octocat, user:alice."""
    longest = limit(models.Member, "subject")
    if len(value) > longest or not _SUBJECT.fullmatch(value):
        raise InvalidInput(
            f"{field} {PATTERN_HELP[SUBJECT]} (at most {longest} characters), got {shown(value)}",
            field=field,
        )
    return value


def git_repo(value: str, *, field: str = "git_repo") -> str:
    longest = limit(models.App, "git_repo")
    if len(value) > longest or not _GIT_REPO.fullmatch(value):
        raise InvalidInput(
            f"{field} {PATTERN_HELP[GIT_REPO]} (at most {longest} characters), got {shown(value)}",
            field=field,
        )
    return value


def dedupe_key(value: str) -> str:
    """Dedupe keys are compared, never shown: one that does not fit its column is kept as its SHA-256."""
    if len(value) <= limit(models.Deployment, "dedupe_key") and _LINE.fullmatch(value):
        return value
    return "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def shown(value: str, *, at_most: int = 80) -> str:
    """A value quoted for an error message, cut short: messages echo input, they should not repeat a novel."""
    return repr(value) if len(value) <= at_most else f"{value[:at_most]!r}… ({len(value)} characters)"


def cpu(value: str, *, field: str) -> str:
    value = value.strip()
    if len(value) > limit(models.App, "cpu_request") or not _CPU.fullmatch(value) or value in ("0", "0m"):
        raise InvalidInput(
            f"{field} must be a CPU quantity such as 100m or 0.5, got {shown(value)}", field=field
        )
    return value


def memory(value: str, *, field: str) -> str:
    value = value.strip()
    if len(value) > limit(models.App, "memory_request") or not _MEMORY.fullmatch(value):
        raise InvalidInput(
            f"{field} must be a memory quantity such as 128Mi or 1Gi, got {shown(value)}", field=field
        )
    return value


def port(value: int, *, field: str) -> int:
    if not 1 <= value <= 65535:
        raise InvalidInput(f"{field} must be between 1 and 65535, got {value}", field=field)
    return value


def is_id(value: int) -> bool:
    """Whether `value` can be a row id at all; the drivers fail (not miss) on one that cannot."""
    return 1 <= value <= ID_MAX


def int_range(value: int, *, field: str, low: int, high: int) -> int:
    if not low <= value <= high:
        raise InvalidInput(f"{field} must be between {low} and {high}, got {value}", field=field)
    return value


def http_path(value: str, *, field: str) -> str:
    value = value.strip()
    if not _PATH.fullmatch(value) or len(value) > 512:
        raise InvalidInput(
            f"{field} must be an absolute HTTP path such as /healthz, got {shown(value)}", field=field
        )
    return value


def autoscaling(
    *, min_replicas: int, max_replicas: int, cpu_target: int, scale_down_window: int | None = None
) -> None:
    int_range(min_replicas, field="min_replicas", low=1, high=1000)
    int_range(max_replicas, field="max_replicas", low=1, high=1000)
    if min_replicas > max_replicas:
        raise InvalidInput(
            f"min_replicas ({min_replicas}) must not be greater than max_replicas ({max_replicas})",
            field="min_replicas",
        )
    int_range(cpu_target, field="cpu_target", low=1, high=100)
    if scale_down_window is not None:
        low, high = RANGES["scale_down_window"]
        int_range(scale_down_window, field="scale_down_window", low=low, high=high)


def no_scale_down_window_without_autoscaling(scale_down_window: int | None) -> None:
    """A downscale window belongs to the HPA: with a fixed count there is nothing it would apply to."""
    if scale_down_window is not None:
        raise InvalidInput(
            "scale_down_window needs autoscaling (min_replicas and max_replicas): "
            "with a fixed replica count there is no autoscaler to wait before scaling down",
            field="scale_down_window",
        )
