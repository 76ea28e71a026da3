"""Kubernetes resource quantities ("250m", "1.5", "128Mi", "1e3", "20000000n") as exact numbers.

The Metrics API writes CPU in nanocores and memory in Ki; apps state theirs in m/Mi/Gi. One parser
for all, exact (Decimal), with the suffixes of k8s.io/apimachinery's resource.Quantity.
"""

from __future__ import annotations

import re
from decimal import Decimal

from core.errors import InvalidInput

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}
# A signed decimal number, then one suffix or a decimal exponent ("1E3"; a lone "E" is exa).
_QUANTITY = re.compile(
    r"([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(?:(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])|[eE]([+-]?[0-9]+))?"
)


def parse(text: str | int | float, *, field: str = "quantity") -> Decimal:
    """The quantity's value in base units (cores, bytes); InvalidInput naming `field` if malformed."""
    if isinstance(text, bool):
        raise InvalidInput(f"{field} must be a quantity such as 250m or 128Mi, got {text!r}", field=field)
    if isinstance(text, int | float):
        return Decimal(str(text))
    match = _QUANTITY.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise InvalidInput(f"{field} must be a quantity such as 250m or 128Mi, got {text!r}", field=field)
    number, suffix, exponent = match.groups()
    value = Decimal(number)
    if exponent is not None:
        return value.scaleb(int(exponent))
    suffix = suffix or ""
    if suffix in _BINARY:
        return value * _BINARY[suffix]
    return value * _DECIMAL[suffix]


def millicores(text: str | int | float, *, field: str = "cpu") -> float:
    """A CPU quantity in millicores ("250m" -> 250.0, "20000000n" -> 20.0, "1.5" -> 1500.0)."""
    return float(parse(text, field=field) * 1000)


def bytes_of(text: str | int | float, *, field: str = "memory") -> int:
    """A memory quantity in bytes, rounded up as Kubernetes does ("128Mi" -> 134217728, "1k" -> 1000)."""
    value = parse(text, field=field)
    whole = int(value)
    return whole + 1 if value > whole else whole
