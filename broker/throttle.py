"""Login throttling per account and per client address (in memory, per broker)."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable


class LoginThrottle:
    """At most `limit` failures per key within `window_s`; a success clears the account."""

    def __init__(self, limit: int = 5, window_s: float = 300.0, address_limit: int = 30,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._limit = limit
        self._address_limit = address_limit
        self._window = window_s
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._failures.setdefault(key, deque())
        while q and now - q[0] > self._window:
            q.popleft()
        return q

    def blocked(self, username: str, address: str) -> bool:
        now = self._clock()
        with self._lock:
            return (len(self._recent("u:" + username.lower(), now)) >= self._limit
                    or len(self._recent("a:" + address, now)) >= self._address_limit)

    def failed(self, username: str, address: str) -> None:
        now = self._clock()
        with self._lock:
            self._recent("u:" + username.lower(), now).append(now)
            self._recent("a:" + address, now).append(now)

    def succeeded(self, username: str) -> None:
        with self._lock:
            self._failures.pop("u:" + username.lower(), None)
