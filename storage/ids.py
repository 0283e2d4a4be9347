"""Random identifiers, drawn from the operating system a block at a time.

Each ``os.urandom`` call is a system call that also lets go of the GIL, and an inbound mail
takes half a dozen identifiers on the event-loop thread: every release let a database thread
take the GIL, and the loop then waited to get it back (seen in profiles of the SMTP bench,
issue 4). A block of 4 KiB serves 256 identifiers. The bytes are the kernel's CSPRNG output,
each handed out once; a forked child starts with an empty block so that parent and child
never share any.
"""

from __future__ import annotations

import os
import threading
from typing import Final

_BLOCK_BYTES: Final = 4096
_ID_BYTES: Final = 16


class _Pool:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._block = b""
        self._used = 0

    def take(self, size: int) -> bytes:
        if size > _BLOCK_BYTES:
            return os.urandom(size)
        with self._lock:
            if self._used + size > len(self._block):
                self._block, self._used = os.urandom(_BLOCK_BYTES), 0
            start = self._used
            self._used += size
            return self._block[start : start + size]

    def forget(self) -> None:
        self._lock = threading.Lock()  # a lock held by another thread at fork stays held
        self._block, self._used = b"", 0


_POOL: Final = _Pool()
os.register_at_fork(after_in_child=_POOL.forget)


def random_bytes(size: int) -> bytes:
    """``size`` bytes from the kernel's random source, for identifiers."""
    return _POOL.take(size)


def new_id() -> str:
    """A random identifier (128 bits, lowercase hex): unguessable, and safe in URLs, audit
    events, TURN user names, room ids and mail local parts alike."""
    return _POOL.take(_ID_BYTES).hex()
