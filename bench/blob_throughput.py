"""Encrypted blob store throughput against storing the same bytes in the clear.

Write: ``BlobStore.put`` (1 MB given as bytes; 50 MB streamed in 64 KiB pieces, as an HTTP
upload arrives) against the plain durable write of the same bytes: temp file, write, fsync,
rename, fsync the directory. That is the least any store must do before acknowledging (DESIGN.md:
nothing acknowledged before it is durable); a second row compares with write + fsync alone.

Read: ``read_all_verified`` (1 MB) and the streaming ``open_read`` (50 MB) against reading the
plain file in 1 MiB reads. Both start from a cold page cache (``POSIX_FADV_DONTNEED`` on the
files), as when a specialist opens a photo uploaded hours earlier; hot-cache rows follow, with no
target, where the baseline is a memory copy.

Repetitions alternate baseline and store runs so drift affects both; medians are reported.
Temporary files go to ``$TMPDIR``: point it at the data disk to measure that disk.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
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


def _raw_write(directory: Path, name: str, data: bytes, *, durable_rename: bool) -> Path:
    final = directory / name
    path = directory / f".tmp-{name}" if durable_rename else final
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    if durable_rename:
        path.rename(final)
        fsync_dir(directory)
    return final


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


async def _pieces(data: bytes) -> AsyncIterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(data), PIECE):
        yield bytes(view[start : start + PIECE])


async def _timed(action: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter()
    await action()
    return time.perf_counter() - start


def _timed_sync(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


async def _measure(work: Path) -> list[Result]:
    keyring = Keyring.create(work / "keys")
    store = BlobStore(work / "blobs", keyring)
    store.recover()
    raw_dir = work / "raw"
    raw_dir.mkdir()
    results: list[Result] = []
    for size, reps in CASES:
        label = f"{size // MB} MB"
        data = os.urandom(size)
        streamed = size >= 10 * MB
        times: dict[str, list[float]] = {}

        def record(key: str, seconds: float, times: dict[str, list[float]] = times) -> None:
            times.setdefault(key, []).append(seconds)

        for rep in range(reps):
            name = f"{size}-{rep}"
            record(
                "raw_durable",
                _timed_sync(lambda: _raw_write(raw_dir, name, data, durable_rename=True)),
            )
            record(
                "raw_fsync",
                _timed_sync(lambda: _raw_write(raw_dir, name + "b", data, durable_rename=False)),
            )
            start = time.perf_counter()
            info = await store.put(_pieces(data) if streamed else data)
            record("put", time.perf_counter() - start)

            for cache in ("cold", "hot"):
                if cache == "cold":
                    _evict(work)
                record(f"raw_read_{cache}", _timed_sync(lambda: _raw_read(raw_dir / name)))
                if cache == "cold":
                    _evict(work)
                if streamed:

                    async def stream(blob_id: str = info.blob_id) -> None:
                        async with await store.open_read(blob_id) as reader:
                            async for _chunk in reader:
                                pass

                    record(f"get_{cache}", await _timed(stream))
                else:
                    record(
                        f"get_{cache}",
                        await _timed(
                            lambda: store.read_all_verified(info.blob_id, max_bytes=size)
                        ),
                    )
            await store.delete(info.blob_id)
            (raw_dir / name).unlink()
            (raw_dir / (name + "b")).unlink()

        def rate(key: str, times: dict[str, list[float]] = times, size: int = size) -> float:
            return size / statistics.median(times[key]) / MB

        put_case = f"write {label} (put {'streamed' if streamed else 'bytes'})"
        get_case = f"read {label} ({'open_read' if streamed else 'read_all_verified'}"
        results += [
            Result(
                put_case,
                rate("put"),
                rate("raw_durable"),
                "MB/s",
                "tmp+write+fsync+rename+fsync dir",
                WRITE_TARGET,
            ),
            Result(put_case, rate("put"), rate("raw_fsync"), "MB/s", "write+fsync"),
            Result(
                get_case + ", cold)",
                rate("get_cold"),
                rate("raw_read_cold"),
                "MB/s",
                "raw read, cold cache",
                READ_TARGET,
            ),
            Result(
                get_case + ", hot)",
                rate("get_hot"),
                rate("raw_read_hot"),
                "MB/s",
                "raw read, hot cache",
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
