"""Login failure limits per account and per client address (pure core).

A sliding window of failure timestamps per key. The caller passes ``now``; the
HTTP adapter keeps one :class:`FailureLimiter` per process. Keys are opaque
strings (``account:<email>``, ``address:<ip>``) so unknown and known accounts are
limited alike and the answer reveals nothing about which accounts exist.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field


@dataclass
class FailureLimiter:
    """Refuses attempts once ``max_failures`` happened within ``window_seconds``."""

    window_seconds: float
    max_failures: int
    _failures: dict[str, deque[float]] = field(default_factory=dict)

    def _prune(self, key: str, now: float) -> deque[float]:
        times = self._failures.get(key)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window_seconds:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def retry_after(self, key: str, now: float) -> int:
        """Seconds before ``key`` may try again; 0 when an attempt is allowed now."""
        times = self._prune(key, now)
        if len(times) < self.max_failures:
            return 0
        oldest_blocking = times[len(times) - self.max_failures]
        return max(1, math.ceil(oldest_blocking + self.window_seconds - now))

    def record_failure(self, key: str, now: float) -> None:
        """Count one failed attempt for ``key``."""
        self._prune(key, now)
        self._failures.setdefault(key, deque()).append(now)

    def reset(self, key: str) -> None:
        """Forget ``key``'s failures (after a successful login)."""
        self._failures.pop(key, None)

    def sweep(self, now: float) -> None:
        """Drop expired entries so memory stays bounded under a spray of addresses."""
        for key in list(self._failures):
            self._prune(key, now)
