"""Throttling of the REST API: failed sign-ins per client address, and a request budget per token.

Token buckets kept in this process's memory: with N replicas a client gets N times the budget, which
is fine for what they are for (slowing down token guessing and runaway scripts).  Only /api/ is
throttled here; Slack and GitHub traffic is signed and never passes through these buckets.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable

from starlette.types import Message

log = logging.getLogger(__name__)
API_PREFIX = "/api/"


class Buckets:
    """One token bucket per key: `per_minute` tokens, refilled evenly over a minute."""

    def __init__(
        self, *, per_minute: int, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000
    ) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.clock = clock
        self.max_keys = max_keys
        self._levels: dict[str, tuple[float, float]] = {}  # key -> (tokens, when)

    def _level(self, key: str, now: float) -> float:
        tokens, at = self._levels.get(key, (self.capacity, now))
        return min(self.capacity, tokens + (now - at) * self.rate)

    def wait(self, key: str) -> float:
        """Seconds until `key` has a token again; 0 when it has one now."""
        level = self._level(key, self.clock())
        return 0.0 if level >= 1 else (1 - level) / self.rate

    def take(self, key: str) -> float:
        """Take a token; returns 0 when taken, else the seconds to wait (nothing taken)."""
        now = self.clock()
        level = self._level(key, now)
        if level < 1:
            return (1 - level) / self.rate
        self._set(key, level - 1, now)
        return 0.0

    def charge(self, key: str) -> None:
        """Take a token after the fact (a failure that already happened); never below empty."""
        now = self.clock()
        self._set(key, max(0.0, self._level(key, now) - 1), now)

    def forget(self, key: str) -> None:
        self._levels.pop(key, None)

    def _set(self, key: str, level: float, now: float) -> None:
        self._levels[key] = (level, now)
        if len(self._levels) > self.max_keys:
            # Full buckets carry no information: drop them; if that is not enough, start over.
            self._levels = {k: v for k, v in self._levels.items() if self._level(k, now) < self.capacity}
            if len(self._levels) > self.max_keys:
                self._levels.clear()


def _too_many(message: str, retry_after: float) -> tuple[Message, Message]:
    seconds = str(max(1, math.ceil(retry_after)))
    text = f"{message}; retry in {seconds} s"
    body = json.dumps({"error": {"type": "rate_limited", "message": text, "retry_after": int(seconds)}})
    start: Message = {
        "type": "http.response.start",
        "status": 429,
        "headers": [(b"content-type", b"application/json"), (b"retry-after", seconds.encode())],
    }
    return start, {"type": "http.response.body", "body": body.encode()}


class Throttle:
    """The /api/ budgets, asked by the edge middleware (shipit.app.Edge) before and after a request.

    A client address that failed authentication (401) `auth_failures_per_minute` times is refused
    whatever token it sends, until its bucket refills; each valid token has
    `requests_per_minute`.  0 switches either off.
    """

    def __init__(self, *, auth_failures_per_minute: int, requests_per_minute: int) -> None:
        self.failures = Buckets(per_minute=auth_failures_per_minute) if auth_failures_per_minute else None
        self.budgets = Buckets(per_minute=requests_per_minute) if requests_per_minute else None

    def admit(
        self, *, address: str, authorization: bytes | None
    ) -> tuple[tuple[Message, Message] | None, str | None]:
        """(the 429 to send, or None to go on; the token's bucket key, for `settle`)."""
        if self.failures is not None:
            wait = self.failures.wait(address)
            if wait:
                return _too_many("too many failed authentications from your address", wait), None
        token_key = None
        if self.budgets is not None:
            token = authorization.split(None, 1)[-1].strip() if authorization else b""
            if token:
                # The token alone ("bearer"/"Bearer" must not make two budgets), hashed so the buckets
                # do not keep tokens in memory in plain text.
                token_key = hashlib.sha256(token).hexdigest()
                wait = self.budgets.take(token_key)
                if wait:
                    return _too_many("this token's request budget is used up", wait), None
        return None, token_key

    def settle(self, *, status: int, address: str, token_key: str | None) -> None:
        """After the answer: a 401 charges the address and forgets the token's bucket."""
        if status != 401:
            return
        if self.failures is not None:
            self.failures.charge(address)
            if self.failures.wait(address):  # this failure emptied the bucket: say so once
                log.warning(
                    "api: %s failed authentication too often; refused for %.0f s", address,
                    self.failures.wait(address),
                )  # fmt: skip
        if token_key is not None and self.budgets is not None:
            self.budgets.forget(token_key)  # buckets only for real tokens: guessing grows nothing
