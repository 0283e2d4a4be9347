"""Per-key mutual exclusion within one process (one upload's completion, one Message-ID's
storing): tasks holding the same key run one after the other, other keys are not held up."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class KeyedLocks:
    """An ``asyncio.Lock`` per key, created on first use and forgotten once nobody holds or
    waits for it (a count, not ``Lock.locked()``: between a release and the next waiter's
    wake-up the lock looks free while that waiter still relies on it)."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str | None) -> AsyncIterator[None]:
        """Hold ``key`` for the block; ``None`` holds nothing."""
        if key is None:
            yield
            return
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        """Keys held or waited for now."""
        return len(self._locks)
