"""Encrypted blob store: round trips, limits, tampering, rotation, recovery, crashes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import signal
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from storage import blobs
from storage.blobs import (
    HEADER_SIZE,
    TAG_BYTES,
    BlobHeader,
    BlobInfo,
    BlobStore,
    KeySlot,
    is_valid_blob_id,
)
from storage.errors import (
    BlobIntegrityError,
    BlobNotFound,
    BlobTooLarge,
    MasterKeyError,
    MasterKeyInUse,
)
from storage.keys import Keyring
from tests.storage import crash_writer
from tests.storage.conftest import CS, payload

REPO = Path(__file__).resolve().parents[2]


async def pieces(data: bytes, seed: int = 1) -> AsyncIterator[bytes]:
    """``data`` cut at random places, as a network upload arrives (empty pieces included)."""
    rng = random.Random(seed)
    start = 0
    while start < len(data):
        end = min(len(data), start + rng.choice([0, 1, 7, CS - 1, CS, CS + 1, 3 * CS + 5]))
        yield data[start:end]
        start = end


async def trickle(data: bytes) -> AsyncIterator[bytes]:
    """``data`` in 2-chunk pieces, slowly: the first chunks reach the disk before the end."""
    for start in range(0, len(data), 2 * CS):
        yield data[start : start + 2 * CS]
        await asyncio.sleep(0.02)


def blob_path(store: BlobStore, blob_id: str) -> Path:
    return store.root / blob_id[:2] / blob_id


def all_files(store: BlobStore) -> list[Path]:
    return sorted(p for p in store.root.rglob("*") if p.is_file())


async def read_streamed(store: BlobStore, blob_id: str) -> bytes:
    async with await store.open_read(blob_id) as reader:
        return b"".join([chunk async for chunk in reader])


async def stream_until_error(store: BlobStore, blob_id: str) -> bytes:
    """What a streaming reader yields before it raises BlobIntegrityError."""
    received = bytearray()
    with pytest.raises(BlobIntegrityError):
        async with await store.open_read(blob_id) as reader:
            async for chunk in reader:
                received += chunk
    return bytes(received)


# -- round trips ------------------------------------------------------------------------------


SIZES = [0, 1, CS - 1, CS, CS + 1, 2 * CS, 5 * CS + 17]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("streamed", [False, True])
async def test_round_trip(store: BlobStore, keyring: Keyring, size: int, streamed: bool) -> None:
    data = payload(size, seed=size)
    info = await store.put(pieces(data) if streamed else data)
    assert info == BlobInfo(
        info.blob_id, size, hashlib.sha256(data).hexdigest(), keyring.current_id
    )
    assert await store.read_all_verified(info.blob_id, max_bytes=size) == data
    assert await read_streamed(store, info.blob_id) == data
    await store.verify(info.blob_id)
    assert store.exists(info.blob_id)


@pytest.mark.parametrize(("size", "chunks"), [(0, 1), (1, 1), (CS, 1), (CS + 1, 2), (3 * CS, 3)])
async def test_file_layout(store: BlobStore, size: int, chunks: int) -> None:
    info = await store.put(payload(size))
    path = blob_path(store, info.blob_id)
    assert path.stat().st_size == HEADER_SIZE + size + chunks * TAG_BYTES
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert all_files(store) == [path]


async def test_default_chunk_size_round_trip(tmp_path: Path, keyring: Keyring) -> None:
    store = BlobStore(tmp_path / "big", keyring)  # 1 MiB chunks
    for size in (1 << 20, (1 << 20) + 1, 3 * (1 << 20) + 5):
        data = os.urandom(size)
        info = await store.put(data)
        assert info.size == size
        assert await read_streamed(store, info.blob_id) == data


async def test_plaintext_is_not_on_disk(store: BlobStore) -> None:
    data = b"Plaie talon gauche, patient NIR 1 84 12 75 123 456 78 " * 20
    info = await store.put(data)
    raw = blob_path(store, info.blob_id).read_bytes()
    assert b"Plaie" not in raw
    assert b"NIR" not in raw


async def test_blob_ids_are_random_and_url_safe(store: BlobStore) -> None:
    ids = {(await store.put(b"x")).blob_id for _ in range(50)}
    assert len(ids) == 50
    assert all(is_valid_blob_id(i) and len(i) == 26 for i in ids)
    assert set(store.iter_blob_ids()) == ids


async def test_concurrent_puts_and_reads(store: BlobStore) -> None:
    blobs = [payload(37 * i + 3, seed=i) for i in range(20)]
    infos = await asyncio.gather(*(store.put(pieces(b, seed=i)) for i, b in enumerate(blobs)))
    read = await asyncio.gather(*(read_streamed(store, info.blob_id) for info in infos))
    assert read == blobs


async def test_work_runs_in_the_given_executor(tmp_path: Path, keyring: Keyring) -> None:
    class CountingExecutor(ThreadPoolExecutor):
        submitted = 0

        def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
            CountingExecutor.submitted += 1
            return super().submit(fn, *args, **kwargs)

    with CountingExecutor(max_workers=2) as executor:
        store = BlobStore(tmp_path / "b", keyring, chunk_size=CS, executor=executor)
        info = await store.put(payload(300))
        assert await read_streamed(store, info.blob_id) == payload(300)
    assert CountingExecutor.submitted >= 3


# -- header format ----------------------------------------------------------------------------


def test_header_round_trip() -> None:
    slot = KeySlot(7, "0123456789abcdef", bytes(range(60)))
    header = BlobHeader(1 << 20, b"\x01" * 8, (None, slot))
    raw = bytes(header)
    assert len(raw) == HEADER_SIZE
    assert BlobHeader.parse(raw) == header
    assert KeySlot.parse(bytes(slot)) == slot


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"RSB\x01", "shorter than its header"),
        (b"XXXX" + bytes(HEADER_SIZE), "bad magic"),
        (bytes(BlobHeader(0, bytes(8), (None, None))), "invalid chunk size 0"),
        (bytes(BlobHeader((64 << 20) + 1, bytes(8), (None, None))), "invalid chunk size"),
    ],
)
def test_header_parse_errors(raw: bytes, message: str) -> None:
    with pytest.raises(BlobIntegrityError, match=message):
        BlobHeader.parse(raw)


def test_torn_or_empty_slots_parse_as_none() -> None:
    slot = bytearray(bytes(KeySlot(1, "abc", bytes(60))))
    assert KeySlot.parse(bytes(len(slot))) is None
    slot[4] = 200  # key id length out of range
    assert KeySlot.parse(bytes(slot)) is None
    slot[4] = 3
    slot[5] = 0xFF  # not ASCII
    assert KeySlot.parse(bytes(slot)) is None


# -- limits and missing blobs -----------------------------------------------------------------


@pytest.mark.parametrize("streamed", [False, True])
async def test_max_bytes(store: BlobStore, streamed: bool) -> None:
    data = payload(5 * CS)
    info = await store.put(pieces(data) if streamed else data, max_bytes=5 * CS)
    assert info.size == 5 * CS
    with pytest.raises(BlobTooLarge):
        await store.put(trickle(data) if streamed else data, max_bytes=5 * CS - 1)
    assert all_files(store) == [blob_path(store, info.blob_id)]  # nothing left by the refusal
    assert BlobTooLarge.http_status == 413


async def test_read_all_verified_limit(store: BlobStore) -> None:
    info = await store.put(payload(3 * CS))
    with pytest.raises(BlobTooLarge):
        await store.read_all_verified(info.blob_id, max_bytes=3 * CS - 1)


@pytest.mark.parametrize("blob_id", ["a" * 26, "../../keys/current", "", "A" * 26, "a" * 27])
async def test_unknown_blob(store: BlobStore, blob_id: str) -> None:
    with pytest.raises(BlobNotFound):
        await store.open_read(blob_id)
    with pytest.raises(BlobNotFound):
        await store.read_all_verified(blob_id, max_bytes=10)
    with pytest.raises(BlobNotFound):
        await store.verify(blob_id)
    assert not store.exists(blob_id)
    assert await store.delete(blob_id) is False


async def test_delete(store: BlobStore) -> None:
    info = await store.put(b"photo")
    assert await store.delete(info.blob_id) is True
    assert not store.exists(info.blob_id)
    assert await store.delete(info.blob_id) is False
    with pytest.raises(BlobNotFound):
        await store.open_read(info.blob_id)
    assert all_files(store) == []


async def test_failing_upload_leaves_nothing(store: BlobStore) -> None:
    async def broken() -> AsyncIterator[bytes]:
        async for piece in trickle(payload(3 * CS)):
            yield piece
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await store.put(broken())
    assert all_files(store) == []


async def test_cancelled_upload_leaves_nothing(store: BlobStore) -> None:
    started = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        for _ in range(1000):
            yield payload(3 * CS)
            started.set()
            await asyncio.sleep(0.01)

    task = asyncio.create_task(store.put(slow()))
    await started.wait()
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert all_files(store) == []


async def test_reader_closed_early_releases_its_file(store: BlobStore) -> None:
    info = await store.put(payload(10 * CS))
    before = open_fds()
    reader = await store.open_read(info.blob_id)
    assert reader.size == 10 * CS
    assert open_fds() == before + 1
    assert await reader.__anext__() == payload(10 * CS)[:CS]
    await reader.aclose()
    assert open_fds() == before
    assert [chunk async for chunk in reader] == []


# -- tampering: always BlobIntegrityError, never an altered byte ------------------------------


def open_fds() -> int:
    return len(list(Path("/proc/self/fd").iterdir()))


def chunk_span(index: int) -> tuple[int, int]:
    start = HEADER_SIZE + index * (CS + TAG_BYTES)
    return start, start + CS + TAG_BYTES


def tamper_flip_ciphertext(raw: bytearray, other: bytes) -> None:
    raw[chunk_span(2)[0] + 5] ^= 0x01


def tamper_flip_tag(raw: bytearray, other: bytes) -> None:
    raw[chunk_span(3)[1] - 1] ^= 0x80


def tamper_flip_last_chunk(raw: bytearray, other: bytes) -> None:
    raw[-1] ^= 0x01


def tamper_truncate_inside_last_chunk(raw: bytearray, other: bytes) -> None:
    del raw[-5:]


def tamper_drop_final_chunk(raw: bytearray, other: bytes) -> None:
    del raw[chunk_span(4)[0] :]


def tamper_drop_middle_chunk(raw: bytearray, other: bytes) -> None:
    del raw[slice(*chunk_span(1))]


def tamper_swap_chunks(raw: bytearray, other: bytes) -> None:
    one, two = slice(*chunk_span(1)), slice(*chunk_span(2))
    raw[one], raw[two] = raw[two], raw[one]


def tamper_copy_chunk_from_other_blob(raw: bytearray, other: bytes) -> None:
    span = slice(*chunk_span(2))
    raw[span] = other[span]


def tamper_duplicate_a_chunk(raw: bytearray, other: bytes) -> None:
    start, end = chunk_span(1)
    raw[end:end] = raw[start:end]


def tamper_append_bytes(raw: bytearray, other: bytes) -> None:
    raw += b"\x00" * (CS + TAG_BYTES)


def tamper_flip_nonce_prefix(raw: bytearray, other: bytes) -> None:
    raw[9] ^= 0x01


def tamper_change_chunk_size(raw: bytearray, other: bytes) -> None:
    raw[4:8] = (CS * 2).to_bytes(4, "big")


# Each alteration, with the number of intact chunks a streaming reader yields before it fails.
TAMPERS_AFTER_OPEN = [
    (tamper_flip_ciphertext, 2),
    (tamper_flip_tag, 3),
    (tamper_flip_last_chunk, 4),
    (tamper_truncate_inside_last_chunk, 4),
    (tamper_drop_final_chunk, 3),
    (tamper_drop_middle_chunk, 1),
    (tamper_swap_chunks, 1),
    (tamper_copy_chunk_from_other_blob, 2),
    (tamper_duplicate_a_chunk, 2),
    (tamper_append_bytes, 4),
    (tamper_flip_nonce_prefix, 0),
    (tamper_change_chunk_size, 0),
]


@pytest.mark.parametrize(
    ("tamper", "intact"),
    TAMPERS_AFTER_OPEN,
    ids=lambda v: getattr(v, "__name__", str(v)).removeprefix("tamper_"),
)
async def test_tampered_chunks_are_detected(
    store: BlobStore,
    tamper: Callable[[bytearray, bytes], None],
    intact: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Decrypt one chunk per batch, so the reader has yielded chunks when the bad one comes.
    monkeypatch.setattr(blobs, "READ_AHEAD_BYTES", CS)
    data = payload(4 * CS + 10)  # four full chunks and a short final one
    info = await store.put(data)
    other = await store.put(payload(4 * CS + 10, seed=9))
    path = blob_path(store, info.blob_id)
    raw = bytearray(path.read_bytes())
    tamper(raw, blob_path(store, other.blob_id).read_bytes())
    path.write_bytes(raw)

    with pytest.raises(BlobIntegrityError):
        await store.read_all_verified(info.blob_id, max_bytes=1 << 20)
    with pytest.raises(BlobIntegrityError):
        await store.verify(info.blob_id)
    # What was yielded before the failure is authentic: whole original chunks, in order.
    assert await stream_until_error(store, info.blob_id) == data[: intact * CS]


async def test_detected_at_open_when_the_wrapped_key_is_altered(store: BlobStore) -> None:
    info = await store.put(payload(2 * CS))
    path = blob_path(store, info.blob_id)
    raw = bytearray(path.read_bytes())
    raw[16 + 4 + 1 + 32 + 20] ^= 0x01  # inside slot 0's wrapped key
    path.write_bytes(raw)
    for read in (
        store.open_read(info.blob_id),
        store.read_all_verified(info.blob_id, max_bytes=1000),
        store.verify(info.blob_id),
    ):
        with pytest.raises(BlobIntegrityError, match="wrapped data key failed authentication"):
            await read


async def test_a_blob_renamed_to_another_id_is_refused(store: BlobStore) -> None:
    first = await store.put(payload(2 * CS))
    second = await store.put(payload(2 * CS, seed=4))
    blob_path(store, first.blob_id).replace(blob_path(store, second.blob_id))
    with pytest.raises(BlobIntegrityError):
        await store.verify(second.blob_id)


# -- rotation ---------------------------------------------------------------------------------


async def test_rotation_rewrap_and_destroy(store: BlobStore, keyring: Keyring) -> None:
    blobs = {(await store.put(payload(n, seed=n))).blob_id: payload(n, seed=n) for n in (0, 5, 300)}
    old_id = keyring.current_id
    ciphertext = {b: blob_path(store, b).read_bytes()[HEADER_SIZE:] for b in blobs}
    new_id = keyring.rotate()
    fresh = await store.put(b"after rotation")
    assert fresh.key_id == new_id
    assert store.key_ids_in_use() == {old_id, new_id}
    with pytest.raises(MasterKeyInUse):
        keyring.destroy(old_id, users=[store])

    assert await store.rewrap_all() == 3
    assert await store.rewrap_all() == 0  # idempotent
    assert store.key_ids_in_use() == {new_id}
    for blob_id in blobs:  # re-wrapping never touches the ciphertext
        assert blob_path(store, blob_id).read_bytes()[HEADER_SIZE:] == ciphertext[blob_id]
    keyring.destroy(old_id, users=[store])

    reloaded = BlobStore(store.root, Keyring.load(keyring.directory), chunk_size=CS)
    for blob_id, data in blobs.items():
        assert await reloaded.read_all_verified(blob_id, max_bytes=1000) == data
    assert await reloaded.read_all_verified(fresh.blob_id, max_bytes=100) == b"after rotation"


async def test_several_rotations_alternate_the_slots(store: BlobStore, keyring: Keyring) -> None:
    info = await store.put(payload(100))
    for generation in range(2, 6):
        keyring.rotate()
        assert await store.rewrap_all() == 1
        raw = blob_path(store, info.blob_id).read_bytes()
        header = BlobHeader.parse(raw[:HEADER_SIZE])
        newest = max((s for s in header.slots if s), key=lambda s: s.generation)
        assert (newest.generation, newest.key_id) == (generation, keyring.current_id)
        assert await store.read_all_verified(info.blob_id, max_bytes=100) == payload(100)


async def test_a_torn_rewrap_falls_back_to_the_intact_slot(
    store: BlobStore, keyring: Keyring
) -> None:
    info = await store.put(payload(100))
    old_id = keyring.current_id
    keyring.rotate()
    path = blob_path(store, info.blob_id)
    raw = bytearray(path.read_bytes())
    # A crash half-way through writing slot 1: a high generation, a key id, garbage key.
    torn = KeySlot(2, keyring.current_id, os.urandom(60))
    raw[16 + 128 : 16 + 256] = bytes(torn)[:70] + bytes(58)
    path.write_bytes(raw)

    assert await store.read_all_verified(info.blob_id, max_bytes=100) == payload(100)
    assert store.key_ids_in_use() == {old_id}  # the torn slot protects nothing
    with pytest.raises(MasterKeyInUse):
        keyring.destroy(old_id, users=[store])
    assert await store.rewrap_all() == 1  # running it again repairs the blob
    assert store.key_ids_in_use() == {keyring.current_id}
    keyring.destroy(old_id, users=[store])
    assert await store.read_all_verified(info.blob_id, max_bytes=100) == payload(100)


async def test_an_upload_in_flight_keeps_its_master_key(store: BlobStore, keyring: Keyring) -> None:
    release = asyncio.Event()

    async def slow_upload() -> AsyncIterator[bytes]:
        yield payload(3 * CS)
        await release.wait()
        yield payload(CS)

    old_id = keyring.current_id
    upload = asyncio.create_task(store.put(slow_upload()))
    while not list(store.root.rglob(".tmp-*")):  # its header, wrapped by old_id, is written
        await asyncio.sleep(0.01)
    keyring.rotate()
    assert await store.rewrap_all() == 0  # only committed blobs are re-wrapped
    assert old_id in store.key_ids_in_use()
    with pytest.raises(MasterKeyInUse):
        keyring.destroy(old_id, users=[store])

    release.set()
    info = await upload
    assert info.key_id == old_id
    assert await store.rewrap_all() == 1
    keyring.destroy(old_id, users=[store])
    expected = payload(3 * CS) + payload(CS)
    assert await store.read_all_verified(info.blob_id, max_bytes=4 * CS) == expected


async def test_destroyed_key_makes_old_blobs_unreadable(store: BlobStore, keyring: Keyring) -> None:
    # destroy() only asks the users it is given: forgetting the store loses its blobs.
    info = await store.put(b"secret")
    old_id = keyring.current_id
    keyring.rotate()
    keyring.destroy(old_id, users=[])
    with pytest.raises(MasterKeyError, match="is not in keyring"):
        await store.read_all_verified(info.blob_id, max_bytes=10)
    assert store.key_ids_in_use() == {old_id}


# -- recovery and crashes ---------------------------------------------------------------------


async def test_recover_removes_temp_files(store: BlobStore) -> None:
    store.recover()
    info = await store.put(b"kept")
    leftovers = [
        store.root / "ab" / ".tmp-abcdefghijklmnopqrstuvwxyz",
        store.root / "zz" / ".tmp-x",
    ]
    for path in leftovers:
        path.write_bytes(b"partial")
    assert set(store.iter_blob_ids()) == {info.blob_id}
    assert store.recover(older_than=3600) == 0  # fresh: maybe another node's write in flight
    old = time.time() - 7200
    os.utime(leftovers[0], (old, old))
    assert store.recover(older_than=3600) == 1
    assert store.recover() == 1
    assert all_files(store) == [blob_path(store, info.blob_id)]
    assert await store.read_all_verified(info.blob_id, max_bytes=10) == b"kept"


def test_recover_prepares_every_shard(tmp_path: Path, keyring: Keyring) -> None:
    store = BlobStore(tmp_path / "fresh" / "blobs", keyring)
    assert store.recover() == 0
    shards = [p for p in store.root.iterdir() if p.is_dir()]
    assert len(shards) == 32 * 32
    assert {stat.S_IMODE(p.stat().st_mode) for p in shards} == {0o700}


def run_writer_and_kill(store: BlobStore, keyring: Keyring, first: int, acked: int) -> list[str]:
    """Start crash_writer, SIGKILL it after ``acked`` acknowledgements; return its output."""
    process = subprocess.Popen(
        [
            sys.executable,
            *("-m", "tests.storage.crash_writer"),
            *(str(store.root), str(keyring.directory), str(first)),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    lines: list[str] = []
    try:
        while len(lines) < acked:
            line = process.stdout.readline()
            assert line, "crash_writer exited early"
            lines.append(line)
        time.sleep(random.uniform(0, 0.02))  # land anywhere in the next write
        process.send_signal(signal.SIGKILL)
        lines += process.stdout.readlines()  # acknowledged just before the kill
    finally:
        process.kill()
        process.wait(timeout=30)
        process.stdout.close()
    return lines


async def test_sigkill_mid_write_loses_nothing_acknowledged(
    tmp_path: Path, keyring: Keyring
) -> None:
    store = BlobStore(tmp_path / "blobs", keyring, chunk_size=crash_writer.CHUNK_SIZE)
    acknowledged: dict[str, int] = {}
    complete_but_unacknowledged: set[str] = set()
    killed_mid_write = 0
    # Rounds until the kill has caught a blob half-written at least twice (about one kill in
    # two does); each round restarts the writer on the same store, as a restarted server would.
    for round_ in range(16):
        if round_ >= 3 and killed_mid_write >= 2:
            break
        first = round_ * 1000
        lines = await asyncio.to_thread(run_writer_and_kill, store, keyring, first, 8)
        indexes = []
        for line in lines:
            number, blob_id = line.split()
            acknowledged[blob_id] = int(number)
            indexes.append(int(number))
        assert indexes == list(range(first, first + len(lines)))

        killed_mid_write += bool(list(store.root.rglob(".tmp-*")))
        store.recover()
        assert not list(store.root.rglob(".tmp-*"))
        for blob_id, index in acknowledged.items():
            got = await store.read_all_verified(blob_id, max_bytes=1 << 20)
            assert got == crash_writer.content(index)
        # The put in flight at the kill may have returned before its id was printed: its blob
        # may exist, and must then be complete. Nothing else may exist.
        new = set(store.iter_blob_ids()) - set(acknowledged) - complete_but_unacknowledged
        assert len(new) <= 1
        for blob_id in new:
            got = await store.read_all_verified(blob_id, max_bytes=1 << 20)
            assert got == crash_writer.content(first + len(lines))
        complete_but_unacknowledged |= new
    assert killed_mid_write >= 2


async def test_digest_hashed_upstream_is_used_and_content_kept(store: BlobStore) -> None:
    data = os.urandom(3 * store.chunk_size + 5)
    upstream = hashlib.sha256(data).hexdigest()
    calls: list[int] = []

    def digest() -> str:
        calls.append(1)
        return upstream

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 4096):
            yield data[start : start + 4096]

    info = await store.put(pieces(), digest=digest)
    assert info.sha256 == upstream and calls == [1]
    assert await store.read_all_verified(info.blob_id, max_bytes=len(data)) == data
