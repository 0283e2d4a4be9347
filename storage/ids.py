"""Random identifiers, drawn from the operating system a block at a time.

Each ``os.urandom`` call is a system call that also lets go of the GIL, and an inbound mail
takes half a dozen identifiers on the event-loop thread: every release let a database thread
take the GIL, and the loop then waited to get it back (seen in profiles of the SMTP bench,
issue 4). A block of 4 KiB serves 409 identifiers. The bytes are the kernel's CSPRNG output,
each handed out once; a forked child starts with an empty block so that parent and child
never share any.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Final

_BLOCK_BYTES: Final = 4096
_ID_BYTES: Final = 16
_TIME_BYTES: Final = 6


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
    """An identifier (128 bits, lowercase hex): the creation time in milliseconds (48 bits,
    the prefix UUIDv7 uses, RFC 9562) then 80 random bits. Unguessable, and safe in URLs,
    audit events, TURN user names, room ids and mail local parts alike.

    Why the time first: rows are keyed by these ids, and a random key lands each insert on
    a different leaf of every index it is in. Keys that grow with time share the last leaf:
    an inbound mail's transaction wrote 25-28 WAL frames (100-115 KiB) per 20 KB message with
    random ids, growing with the tables, and 18-19 (73-76 KiB) with these (issue 4). The time
    it reveals is the row's creation time, which its holder already sees beside it.
    """
    millis = time.time_ns() // 1_000_000
    return millis.to_bytes(_TIME_BYTES, "big").hex() + _POOL.take(_ID_BYTES - _TIME_BYTES).hex()
