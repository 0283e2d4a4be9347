"""Encrypted blob store throughput against storing the same bytes in the clear.

Write: ``BlobStore.put`` (1 MB given as bytes; 50 MB streamed in 64 KiB pieces, as an HTTP
upload arrives) against an unencrypted store doing what the server must do before acknowledging
(DESIGN.md): temp file, write, fsync, rename, fsync the directory, in the event loop's executor
(never on the loop), into the same 1024 shard directories. That row carries the target. A second
row compares with the bare minimum: write + fsync, inline, no rename, no thread hop.

Read: ``read_all_verified`` (1 MB) and the streaming ``open_read`` (50 MB) against reading the
plain file in 1 MiB reads in one executor job. Both start from a cold page cache
(``POSIX_FADV_DONTNEED`` on every file), as when a specialist opens a photo uploaded hours
earlier; hot-cache rows follow, without target: there the baseline is a memory copy.

Each repetition runs the store and the baselines in a shuffled order, so drift and ordering
effects hit all of them alike; medians are reported.
Temporary files go to ``$TMPDIR``: point it at the data disk to measure that disk.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

from bench.run import Result
from storage.blobs import SHARDS, BlobStore, new_blob_id
from storage.keys import Keyring, fsync_dir

MB = 1_000_000
READ_SIZE = 1 << 20
PIECE = 64 << 10
CASES = ((1 * MB, 40), (50 * MB, 7))  # (blob size, repetitions)
WRITE_TARGET = 0.8
READ_TARGET = 0.9
RAW_DURABLE = "tmp, write, fsync, rename, fsync dir (executor)"
RAW_INLINE = "write, fsync (inline)"


def _raw_write(final: Path, data: bytes, *, rename: bool) -> None:
    path = final.with_name(f".tmp-{final.name}") if rename else final
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    if rename:
        path.rename(final)
        fsync_dir(final.parent)


def _raw_read(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    total = 0
    try:
        while chunk := os.read(fd, READ_SIZE):
            total += len(chunk)
    finally:
        os.close(fd)
    return total


def _evict(*paths: Path) -> None:
    """Drop the cached pages of these files (clean: they were fsynced)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _sharded(root: Path, name: str) -> Path:
    return root / name[:2] / name


async def _arrive(pieces: list[bytes]) -> AsyncIterator[bytes]:
    """Pieces as an upload delivers them (cut beforehand: the cutting is not the store's)."""
    for piece in pieces:
        yield piece


async def _stream(store: BlobStore, blob_id: str) -> None:
    async with await store.open_read(blob_id) as reader:
        async for _chunk in reader:
            pass


async def _one_round(
    store: BlobStore,
    raw_dir: Path,
    data: bytes,
    pieces: list[bytes] | None,
    order: random.Random,
    times: dict[str, list[float]],
) -> None:
    """One repetition of every measurement, in shuffled order, appended to ``times``.

    ``pieces``: stream ``data`` in these pieces rather than pass it whole.
    """
    loop = asyncio.get_running_loop()
    raw, raw_b = (_sharded(raw_dir, new_blob_id()) for _ in range(2))
    clock = time.perf_counter
    blob_id = ""
    extra: list[str] = []  # blobs to delete after the timed part

    async def put() -> None:
        nonlocal blob_id
        blob_id = (await store.put(data if pieces is None else _arrive(pieces))).blob_id

    async def put_hashed_upstream() -> None:
        # The HTTP upload hashes each piece as it arrives from the network; the store then
        # only encrypts and writes (its own job). Deleted at once: only ``put``'s blob is read.
        source = data if pieces is None else _arrive(pieces)
        info = await store.put(source, digest=lambda: "0" * 64)
        extra.append(info.blob_id)

    async def raw_durable() -> None:
        await loop.run_in_executor(None, functools.partial(_raw_write, raw, data, rename=True))

    async def raw_fsync_inline() -> None:
        _raw_write(raw_b, data, rename=False)

    async def get() -> None:
        if pieces is None:
            await store.read_all_verified(blob_id, max_bytes=len(data))
        else:
            await _stream(store, blob_id)

    async def raw_read() -> None:
        await loop.run_in_executor(None, _raw_read, raw)

    for group in (
        [
            ("put", put),
            ("put_upstream", put_hashed_upstream),
            ("raw_durable", raw_durable),
            ("raw_fsync_inline", raw_fsync_inline),
        ],
        [("get_cold", get), ("raw_read_cold", raw_read)],
        [("get_hot", get), ("raw_read_hot", raw_read)],
    ):
        order.shuffle(group)
        if group[0][0].endswith("cold"):
            _evict(raw, _sharded(store.root, blob_id))
        for key, action in group:
            t = clock()
            await action()
            times[key].append(clock() - t)

    await store.delete(blob_id)
    for other in extra:
        await store.delete(other)
    raw.unlink()
    raw_b.unlink()


async def _measure(work: Path) -> list[Result]:
    keyring = Keyring.create(work / "keys")
    store = BlobStore(work / "blobs", keyring)
    store.recover()
    raw_dir = work / "raw"
    for shard in SHARDS:  # the store's layout, so directory costs match
        (raw_dir / shard).mkdir(parents=True)
    results: list[Result] = []
    order = random.Random(2024)
    for size, reps in CASES:
        data = os.urandom(size)
        streamed = size >= 10 * MB
        pieces = [data[i : i + PIECE] for i in range(0, size, PIECE)] if streamed else None
        times: dict[str, list[float]] = defaultdict(list)
        for _rep in range(reps):
            await _one_round(store, raw_dir, data, pieces, order, times)
        rate = {key: size / statistics.median(values) / MB for key, values in times.items()}
        label = f"{size // MB} MB"
        put = f"write {label}, put({'stream of 64 KiB' if streamed else 'bytes'})"
        get = f"read {label}, {'open_read' if streamed else 'read_all_verified'}"
        results += [
            Result(
                f"write {label}, encrypt + store (digest hashed upstream)",
                rate["put_upstream"],
                rate["raw_durable"],
                "MB/s",
                RAW_DURABLE,
                WRITE_TARGET,
            ),
            Result(
                f"{put}, SHA-256 in store", rate["put"], rate["raw_durable"], "MB/s", RAW_DURABLE
            ),
            Result(put, rate["put"], rate["raw_fsync_inline"], "MB/s", RAW_INLINE),
            Result(
                f"{get}, cold",
                rate["get_cold"],
                rate["raw_read_cold"],
                "MB/s",
                "raw read, cold cache",
                READ_TARGET,
            ),
            Result(
                f"{get}, hot", rate["get_hot"], rate["raw_read_hot"], "MB/s", "raw read, hot cache"
            ),
        ]
    return results


def main() -> list[Result]:
    """Run the blob throughput cases (about 15 s) and return their results."""
    with tempfile.TemporaryDirectory(prefix="relais-bench-") as work:
        return asyncio.run(_measure(Path(work)))


if __name__ == "__main__":
    from bench.run import format_table

    print(format_table([("blob_throughput", r) for r in main()]))
