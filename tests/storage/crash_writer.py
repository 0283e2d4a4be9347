"""Crash-test helper: stores blobs in a loop until killed.

``python -m tests.storage.crash_writer BLOB_ROOT KEY_DIR FIRST_INDEX`` prints
``<index> <blob id>`` for each blob only after ``BlobStore.put`` returned (the blob is
acknowledged). The test kills it with SIGKILL mid-write and checks what survived.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from storage.blobs import BlobStore
from storage.keys import Keyring

CHUNK_SIZE = 16 * 1024


def content(index: int) -> bytes:
    """Deterministic content of blob ``index``: 0..~300 KB, i.e. up to ~19 chunks."""
    size = (index * 104_729) % 300_000
    return hashlib.shake_256(f"crash test blob {index}".encode()).digest(size)


async def _pieces(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 10_000):
        yield data[start : start + 10_000]
        await asyncio.sleep(0)


async def main(root: Path, key_dir: Path, first: int) -> None:
    store = BlobStore(root, Keyring.load(key_dir), chunk_size=CHUNK_SIZE)
    store.recover()
    index = first
    while True:
        info = await store.put(_pieces(content(index)))
        print(index, info.blob_id, flush=True)
        index += 1


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])))
