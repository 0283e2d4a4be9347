"""Encrypted blob store throughput against storing the same bytes in the clear.

Write: ``BlobStore.put`` (1 MB given as bytes; 50 MB streamed in 64 KiB pieces, as an HTTP
upload arrives) against an unencrypted durable write of the same bytes done the way the server
must do it: temp file, write, fsync, rename, fsync the directory (DESIGN.md: nothing acknowledged
before it is durable), in the event loop's executor (never on the loop). That row carries the
target. A second row compares with the bare minimum: write + fsync, inline, no thread hop.

Read: ``read_all_verified`` (1 MB) and the streaming ``open_read`` (50 MB) against reading the
plain file in 1 MiB reads in one executor job. Both start from a cold page cache
(``POSIX_FADV_DONTNEED`` on every file), as when a specialist opens a photo uploaded hours
earlier; hot-cache rows follow, without target: there the baseline is a memory copy.

Repetitions alternate baseline and store runs so drift affects both; medians are reported.
Temporary files go to ``$TMPDIR``: point it at the data disk to measure that disk.
"""

from __future__ import annotations

import asyncio
import functools
import os
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

from bench.run import Result
from storage.blobs import BlobStore
from storage.keys import Keyring, fsync_dir

MB = 1_000_000
READ_SIZE = 1 << 20
PIECE = 64 << 10
CASES = ((1 * MB, 25), (50 * MB, 5))  # (blob size, repetitions)
WRITE_TARGET = 0.8
READ_TARGET = 0.9
RAW_DURABLE = "tmp, write, fsync, rename, fsync dir; in executor"
RAW_INLINE = "write, fsync; inline"


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


def _evict(root: Path) -> None:
    """Drop the clean cached pages of every file under ``root`` (they were fsynced)."""
    for directory, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(Path(directory) / name, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


async def _arrive(pieces: list[bytes]) -> AsyncIterator[bytes]:
    """Pieces as an upload delivers them (cut beforehand: the cutting is not the store's)."""
    for piece in pieces:
        yield piece


async def _stream(store: BlobStore, blob_id: str) -> None:
    async with await store.open_read(blob_id) as reader:
        async for _chunk in reader:
            pass


async def _one_round(
    store: BlobStore, raw_dir: Path, data: bytes, rep: int, times: dict[str, list[float]]
) -> None:
    """One repetition of every measurement for ``data``, appended to ``times``."""
    loop = asyncio.get_running_loop()
    streamed = len(data) >= 10 * MB
    raw = raw_dir / f"{len(data)}-{rep}"
    clock = time.perf_counter

    t = clock()
    await loop.run_in_executor(None, functools.partial(_raw_write, raw, data, rename=True))
    times["raw_durable"].append(clock() - t)
    t = clock()
    _raw_write(raw.with_suffix(".b"), data, rename=False)
    times["raw_fsync_inline"].append(clock() - t)
    pieces = [data[start : start + PIECE] for start in range(0, len(data), PIECE)]
    t = clock()
    info = await store.put(_arrive(pieces) if streamed else data)
    times["put"].append(clock() - t)

    for cache in ("cold", "hot"):
        if cache == "cold":
            _evict(raw_dir.parent)
        t = clock()
        await loop.run_in_executor(None, _raw_read, raw)
        times[f"raw_read_{cache}"].append(clock() - t)
        t = clock()
        if streamed:
            await _stream(store, info.blob_id)
        else:
            await store.read_all_verified(info.blob_id, max_bytes=len(data))
        times[f"get_{cache}"].append(clock() - t)

    await store.delete(info.blob_id)
    raw.unlink()
    raw.with_suffix(".b").unlink()


async def _measure(work: Path) -> list[Result]:
    keyring = Keyring.create(work / "keys")
    store = BlobStore(work / "blobs", keyring)
    store.recover()
    raw_dir = work / "raw"
    raw_dir.mkdir()
    results: list[Result] = []
    for size, reps in CASES:
        data = os.urandom(size)
        times: dict[str, list[float]] = defaultdict(list)
        for rep in range(reps):
            await _one_round(store, raw_dir, data, rep, times)
        rate = {key: size / statistics.median(values) / MB for key, values in times.items()}
        label = f"{size // MB} MB"
        streamed = size >= 10 * MB
        put = f"write {label}, put({'stream of 64 KiB' if streamed else 'bytes'})"
        get = f"read {label}, {'open_read' if streamed else 'read_all_verified'}"
        results += [
            Result(put, rate["put"], rate["raw_durable"], "MB/s", RAW_DURABLE, WRITE_TARGET),
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
