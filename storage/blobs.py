"""Encrypted blob store: photos, attachments and mail, encrypted at rest and streamed in chunks.

Envelope encryption (DESIGN.md "Data at rest"): every blob gets a fresh random 256-bit data key,
wrapped by the current master key of the :class:`~storage.keys.Keyring`.

File layout, one file per blob at ``ROOT/<id[:2]>/<id>`` (mode 0600)::

    header   magic "RSB\\x01" | chunk size (u32) | nonce prefix (8 random bytes)
             key slot 0 | key slot 1        each: generation (u32) | key id | wrapped data key
    chunks   AES-256-GCM(chunk) || tag, every chunk but the last exactly ``chunk size`` bytes

Chunks follow the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizar, "Online
Authenticated-Encryption and its Nonce-Reuse Misuse-Resistance", CRYPTO 2015): the nonce is
``prefix || chunk index`` and the associated data binds the blob id, the chunk index, a final-chunk
flag and the chunk size. A reordered, dropped, duplicated or foreign chunk fails its tag, and a
file cut at a chunk boundary ends on a chunk that was not sealed as final, so truncation fails too.

Why two key slots in a fixed header rather than a sidecar ``<id>.key`` file: a blob is a single
file, so a write costs one file fsync and one directory fsync (the same as storing the bytes
unencrypted) and a crash leaves no half-pair to reconcile. Re-wrapping under a new master key
writes the slot that is *not* in use (then fsync), never the one readers rely on; readers take the
highest-generation slot that authenticates, so a torn slot write (crash, or a reader racing the
writer) falls back to the older, intact slot. The ciphertext is never rewritten.

Reading: :meth:`BlobStore.open_read` yields only chunks whose tag verified, but a later chunk can
still fail after earlier ones were yielded; the iterator then raises :class:`BlobIntegrityError`.
HTTP handlers therefore use :meth:`BlobStore.read_all_verified` for small blobs (verify everything,
then send), and for large ones send ``Content-Length: reader.size`` and abort the connection
without completing the body on error, so the client sees a truncated transfer and never bytes
that did not authenticate.

Durability (DESIGN.md: nothing acknowledged before it is durable): a blob is written to
``.tmp-<id>`` in its shard directory, fsynced, renamed to its final name and the directory fsynced
before :meth:`BlobStore.put` returns. A crash leaves either no blob or a complete one, plus
perhaps a temp file that :meth:`BlobStore.recover` removes at start-up.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import fcntl
import functools
import hashlib
import os
import re
import struct
import threading
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from storage.errors import BlobIntegrityError, BlobNotFound, BlobTooLarge, MasterKeyError
from storage.ids import random_bytes
from storage.keys import KEY_ID_MAX_LEN, Keyring, fsync_dir, is_valid_key_id

MAGIC = b"RSB\x01"
TAG_BYTES = 16
DEFAULT_CHUNK_SIZE = 1 << 20
MAX_CHUNK_SIZE = 64 << 20
_MAX_CHUNKS = 1 << 32  # the chunk index is 32 bits of the 96-bit nonce
_NONCE_PREFIX_BYTES = 8
_WRAPPED_KEY_BYTES = 12 + 32 + TAG_BYTES  # nonce || AES-256 key || tag, see Keyring.wrap
_FIXED = struct.Struct(">4sI8s")  # magic, chunk size, nonce prefix
_SLOT = struct.Struct(f">IB{KEY_ID_MAX_LEN}s{_WRAPPED_KEY_BYTES}s31x")  # 128 bytes
_CHUNK_AAD = struct.Struct(">QBI")  # index, final flag, chunk size
HEADER_SIZE = _FIXED.size + 2 * _SLOT.size
_BLOB_ID_RE = re.compile(r"[a-z2-7]{26}")
_TMP_PREFIX = ".tmp-"
_B32_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
# Blob files are in 32 * 32 shard directories named by the id's first two characters.
SHARDS = tuple(a + b for a in _B32_ALPHABET for b in _B32_ALPHABET)

# Start write-back every this many bytes (as PostgreSQL's backend_flush_after and RocksDB's
# bytes_per_sync do) so the disk works while we encrypt and the final fsync has little left.
WRITEBACK_BYTES = 1 << 20
_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>
READ_AHEAD_BYTES = 8 << 20  # at most this much plaintext decrypted ahead per open_read reader
_STREAM_BUFFER_CHUNKS = 4  # plaintext a streaming put holds while the previous block is written

_T = TypeVar("_T")
BytesLike = bytes | bytearray | memoryview
_Runner = Callable[..., "asyncio.Future[Any]"]


@dataclass(frozen=True)
class BlobInfo:
    """What :meth:`BlobStore.put` stored: id, plaintext size and SHA-256, wrapping master key."""

    blob_id: str
    size: int
    sha256: str
    key_id: str


@dataclass(frozen=True)
class KeySlot:
    """One header slot: a data key wrapped by master key ``key_id``, newest ``generation`` wins."""

    generation: int
    key_id: str
    wrapped: bytes

    def __bytes__(self) -> bytes:
        return _SLOT.pack(
            self.generation, len(self.key_id), self.key_id.encode("ascii"), self.wrapped
        )

    @classmethod
    def parse(cls, raw: bytes) -> KeySlot | None:
        """Decode a slot; ``None`` for an empty (all-zero) or torn slot."""
        generation, id_len, key_id_raw, wrapped = _SLOT.unpack(raw)
        if generation == 0 or not 0 < id_len <= KEY_ID_MAX_LEN:
            return None
        try:
            key_id = key_id_raw[:id_len].decode("ascii")
        except UnicodeDecodeError:
            return None
        return cls(generation, key_id, wrapped) if is_valid_key_id(key_id) else None


_EMPTY_SLOT = bytes(_SLOT.size)


@dataclass(frozen=True)
class BlobHeader:
    """The fixed-size header at the start of every blob file."""

    chunk_size: int
    nonce_prefix: bytes
    slots: tuple[KeySlot | None, KeySlot | None]

    def __bytes__(self) -> bytes:
        fixed = _FIXED.pack(MAGIC, self.chunk_size, self.nonce_prefix)
        return fixed + b"".join(_EMPTY_SLOT if s is None else bytes(s) for s in self.slots)

    @classmethod
    def parse(cls, raw: bytes) -> BlobHeader:
        """Decode a header; :class:`BlobIntegrityError` if it is not one we wrote."""
        if len(raw) < HEADER_SIZE:
            raise BlobIntegrityError("blob file is shorter than its header")
        magic, chunk_size, prefix = _FIXED.unpack_from(raw)
        if magic != MAGIC:
            raise BlobIntegrityError("blob file has an unknown format (bad magic)")
        if not 0 < chunk_size <= MAX_CHUNK_SIZE:
            raise BlobIntegrityError(f"blob file declares an invalid chunk size {chunk_size}")
        slot0 = KeySlot.parse(raw[_FIXED.size : _FIXED.size + _SLOT.size])
        slot1 = KeySlot.parse(raw[_FIXED.size + _SLOT.size : HEADER_SIZE])
        return cls(chunk_size, prefix, (slot0, slot1))


def new_blob_id() -> str:
    """128 random bits in lower-case base32 (RFC 4648): URL-safe and case-insensitive-FS safe.
    Wholly random, unlike :func:`storage.ids.new_id`: the first two characters pick the shard
    directory, and a time prefix would send years of blobs to one of them."""
    return base64.b32encode(random_bytes(16)).decode("ascii").rstrip("=").lower()


def is_valid_blob_id(blob_id: str) -> bool:
    """Whether ``blob_id`` has the shape of an id from :func:`new_blob_id` (no path tricks)."""
    return _BLOB_ID_RE.fullmatch(blob_id) is not None


def _nonce(prefix: bytes, index: int) -> bytes:
    return prefix + index.to_bytes(4, "big")


def _chunk_aad(blob_id: str, index: int, final: bool, chunk_size: int) -> bytes:
    return MAGIC + blob_id.encode("ascii") + _CHUNK_AAD.pack(index, final, chunk_size)


def _seal_chunk(
    aead: AESGCM, prefix: bytes, blob_id: str, index: int, piece: BytesLike, *, final: bool, cs: int
) -> bytes:
    return aead.encrypt(_nonce(prefix, index), piece, _chunk_aad(blob_id, index, final, cs))


def _open_chunk(
    aead: AESGCM,
    prefix: bytes,
    blob_id: str,
    index: int,
    sealed: BytesLike,
    *,
    final: bool,
    cs: int,
) -> bytes:
    try:
        return aead.decrypt(_nonce(prefix, index), sealed, _chunk_aad(blob_id, index, final, cs))
    except InvalidTag:
        raise BlobIntegrityError(f"blob {blob_id} chunk {index} failed authentication") from None


def _wrap_context(blob_id: str) -> bytes:
    return b"blob:" + blob_id.encode("ascii")


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        fn = ctypes.CDLL(None).sync_file_range
    except (AttributeError, OSError):
        return None  # not Linux/glibc: the final fsync does all the work
    fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load_sync_file_range()


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to begin writing a range out without waiting (sync_file_range(2)).

    Only a hint: durability still comes from the fsync before the rename.
    """
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def _read_header(fd: int) -> BlobHeader:
    return BlobHeader.parse(os.pread(fd, HEADER_SIZE, 0))


def _unwrap(keyring: Keyring, blob_id: str, header: BlobHeader) -> tuple[KeySlot, bytes]:
    """The data key from the newest slot that authenticates (an older one after a torn write)."""
    slots = sorted((s for s in header.slots if s), key=lambda s: s.generation, reverse=True)
    errors: list[MasterKeyError | BlobIntegrityError] = []
    for slot in slots:
        try:
            return slot, keyring.unwrap(slot.key_id, slot.wrapped, context=_wrap_context(blob_id))
        except (MasterKeyError, BlobIntegrityError) as exc:
            errors.append(exc)
    if errors:
        raise errors[0]
    raise BlobIntegrityError(f"blob {blob_id} has no wrapped data key")


class _OpenBlob:
    """A blob file opened for reading, its data key unwrapped.

    Used from worker threads, one call at a time (the reads share one buffer).
    """

    def __init__(self, path: Path, blob_id: str, keyring: Keyring) -> None:
        self._fd = -1
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise BlobNotFound(f"blob {blob_id} does not exist") from None
        try:
            file_size = os.fstat(self._fd).st_size
            header = _read_header(self._fd)
            self.slot, data_key = _unwrap(keyring, blob_id, header)
            self.chunk_count, self._last_len = _geometry(file_size - HEADER_SIZE, header.chunk_size)
        except BaseException:
            self.close()
            raise
        self.blob_id = blob_id
        self.header = header
        self.size = file_size - HEADER_SIZE - self.chunk_count * TAG_BYTES
        self._aead = AESGCM(data_key)
        # Ciphertext is read into this reused buffer: one fresh allocation per chunk (the
        # plaintext), as for reading a plain file, not two.
        self._sealed = bytearray(min(header.chunk_size + TAG_BYTES, file_size - HEADER_SIZE))

    def read_chunk(self, index: int) -> bytes:
        """Plaintext of chunk ``index``, only once its tag has verified."""
        cs = self.header.chunk_size
        final = index == self.chunk_count - 1
        length = self._last_len if final else cs + TAG_BYTES
        sealed = memoryview(self._sealed)[:length]
        if os.preadv(self._fd, [sealed], HEADER_SIZE + index * (cs + TAG_BYTES)) != length:
            raise BlobIntegrityError("blob file is shorter than its layout requires")
        prefix = self.header.nonce_prefix
        return _open_chunk(self._aead, prefix, self.blob_id, index, sealed, final=final, cs=cs)

    def read_chunks(self, start: int, count: int) -> list[bytes]:
        """Plaintexts of chunks ``start`` .. ``start + count - 1`` (fewer at the end)."""
        return [self.read_chunk(i) for i in range(start, min(start + count, self.chunk_count))]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        # Only reached when no worker thread holds this object (a running job references it).
        self.close()


def _geometry(body_len: int, chunk_size: int) -> tuple[int, int]:
    """(chunk count, sealed length of the last chunk) for ``body_len`` bytes after the header."""
    sealed = chunk_size + TAG_BYTES
    if body_len < TAG_BYTES:
        raise BlobIntegrityError("blob file has no final chunk (truncated)")
    full, rest = divmod(body_len, sealed)
    if rest == 0:
        return full, sealed
    if rest < TAG_BYTES:
        raise BlobIntegrityError("blob file ends inside a chunk tag (truncated)")
    return full + 1, rest


class _BlobWriter:
    """Encrypts and writes one blob; every method may run in a different worker thread.

    The lock serialises the methods: an abort issued after a cancelled ``put`` waits for the
    chunk write still running in its thread, then removes whatever was written.
    """

    def __init__(self, store: BlobStore) -> None:
        self.blob_id = new_blob_id()
        self.size = 0
        self.key_id = ""
        self._store = store
        self._chunk_size = store.chunk_size
        self._prefix = os.urandom(_NONCE_PREFIX_BYTES)
        self._data_key = AESGCM.generate_key(bit_length=256)
        self._aead = AESGCM(self._data_key)
        self._index = 0
        self._written = 0  # bytes in the file, header included
        self._flushed = 0  # bytes handed to _start_writeback
        self._fd = -1
        self._state = "new"  # -> open -> committed, or -> aborted
        self._lock = threading.Lock()
        self._shard = store.root / self.blob_id[:2]
        self._tmp = self._shard / f"{_TMP_PREFIX}{self.blob_id}"
        self._final = self._shard / self.blob_id

    def write(
        self, parts: Sequence[BytesLike], *, final: bool, hasher: hashlib._Hash | None = None
    ) -> None:
        """Append ``parts`` as whole chunks; with ``final``, seal the last chunk and commit.

        Without ``final`` the length must be a multiple of the chunk size (the caller keeps the
        remainder back: only the end of the stream tells which chunk is the last). ``hasher``,
        if given, is fed ``parts`` while the disk writes them, before the commit.
        """
        with self._lock:
            if self._state == "new":
                self._open()
            if self._state != "open":
                raise RuntimeError(f"blob writer is {self._state}")
            view = memoryview(parts[0] if len(parts) == 1 else b"".join(parts)).cast("B")
            cs = self._chunk_size
            if not final and len(view) % cs:
                raise ValueError("non-final writes must be whole chunks")
            # A final write keeps its last 1..cs bytes (0 only for an empty blob) for the
            # final chunk; a non-final one writes everything.
            keep = cs if final else cs - 1
            offset = 0
            while len(view) - offset > keep:
                self._write_chunk(view[offset : offset + cs], final=False)
                offset += cs
            if final:
                self._write_chunk(view[offset:], final=True)
            if hasher is not None:
                # Write-back first: the disk works while this thread hashes.
                self._start_writeback()
                _hash_parts(hasher, parts)
            if final:
                self._commit()

    def abort(self) -> None:
        """Remove every trace of this blob, committed or not (the put did not succeed)."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            if self._state == "open":
                self._tmp.unlink(missing_ok=True)
            elif self._state == "committed":
                self._final.unlink(missing_ok=True)
                fsync_dir(self._shard)
            self._state = "aborted"

    def _open(self) -> None:
        self._store._ensure_shard(self.blob_id[:2])
        wrapped = self._store.keyring.wrap(self._data_key, context=_wrap_context(self.blob_id))
        self.key_id = wrapped.key_id
        slot = KeySlot(1, wrapped.key_id, wrapped.wrapped)
        header = BlobHeader(self._chunk_size, self._prefix, (slot, None))
        self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._state = "open"
        self._append(bytes(header))

    def _write_chunk(self, piece: memoryview, *, final: bool) -> None:
        if self._index >= _MAX_CHUNKS:
            raise BlobTooLarge("blob exceeds the 2**32 chunks a nonce can count")
        cs = self._chunk_size
        self._append(
            _seal_chunk(
                self._aead, self._prefix, self.blob_id, self._index, piece, final=final, cs=cs
            )
        )
        self._index += 1
        self.size += len(piece)

    def _append(self, data: BytesLike) -> None:
        view = memoryview(data)
        self._written += view.nbytes
        while view:
            view = view[os.write(self._fd, view) :]
        if self._written - self._flushed >= WRITEBACK_BYTES:
            self._start_writeback()

    def _start_writeback(self) -> None:
        if self._written > self._flushed:
            _start_writeback(self._fd, self._flushed, self._written - self._flushed)
            self._flushed = self._written

    def _commit(self) -> None:
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        self._tmp.rename(self._final)
        self._state = "committed"
        fsync_dir(self._shard)


def _split(parts: list[memoryview], size: int) -> tuple[list[memoryview], list[memoryview]]:
    """The first ``size`` bytes of ``parts`` and the rest, without copying."""
    head: list[memoryview] = []
    for index, part in enumerate(parts):
        if size >= part.nbytes:
            head.append(part)
            size -= part.nbytes
            continue
        if size:
            head.append(part[:size])
            part = part[size:]
        return head, [part, *parts[index + 1 :]]
    return head, []


async def _blocks(view: memoryview, chunk_size: int) -> AsyncIterator[memoryview]:
    step = _STREAM_BUFFER_CHUNKS * chunk_size
    for start in range(0, view.nbytes, step):
        yield view[start : start + step]


def _hash_parts(hasher: hashlib._Hash, parts: Sequence[BytesLike]) -> None:
    for part in parts:
        hasher.update(part)


def _settle(fut: asyncio.Future[Any]) -> None:
    """Mark a finished future's exception as retrieved (its failure was already handled)."""
    if fut.done() and not fut.cancelled():
        fut.exception()


class BlobReader:
    """Async iterator over the authenticated plaintext chunks of one blob.

    Use it as ``async with await store.open_read(blob_id) as reader: async for chunk in
    reader``. A worker thread reads and decrypts the next batch of chunks while the caller
    sends the previous one; a chunk is yielded only once its tag verified. ``size`` (plaintext
    bytes) is known before the first chunk, for ``Content-Length``.
    """

    def __init__(self, blob: _OpenBlob, run: _Runner) -> None:
        self._blob = blob
        self._run = run
        self._batch = 1  # chunks per worker job, grown while the caller outpaces us
        self._max_batch = max(1, READ_AHEAD_BYTES // blob.header.chunk_size)
        self._next = 0  # index of the first chunk of the next batch to decrypt
        self._pending: asyncio.Future[list[bytes]] | None = None
        self._ready: deque[bytes] = deque()
        self.blob_id = blob.blob_id
        self.size = blob.size

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        if not self._ready:
            if self._pending is None:
                self._decrypt_next_batch()
            if self._pending is None:
                await self.aclose()
                raise StopAsyncIteration
            if not self._pending.done():
                # The caller waits for us: bigger batches, fewer thread hops. A slow client
                # never waits, so its reader holds only a chunk or two in memory.
                self._batch = min(2 * self._batch, self._max_batch)
            try:
                # shield: a cancelled caller must not orphan a job reading our fd; aclose()
                # waits for it.
                batch = await asyncio.shield(self._pending)
            except BaseException:
                await self.aclose()
                raise
            self._pending = None
            self._ready.extend(batch)
            self._decrypt_next_batch()  # while the caller sends this one
        return self._ready.popleft()

    def _decrypt_next_batch(self) -> None:
        # One batch per thread hop and one job at a time: the kernel sees sequential reads and
        # keeps its read-ahead going, and few hops cost little.
        if self._next < self._blob.chunk_count:
            self._pending = self._run(self._blob.read_chunks, self._next, self._batch)
            self._next += self._batch

    async def aclose(self) -> None:
        """Release the file; waits for a read-ahead still running in its thread."""
        pending, self._pending = self._pending, None
        self._next = self._blob.chunk_count
        self._ready.clear()
        if pending is not None:
            await asyncio.wait([pending])
            _settle(pending)
        self._blob.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class BlobStore:
    """Encrypted, chunked, durable blob storage under ``root``.

    Every encryption, hash and fsync runs in ``executor`` (the loop's default thread pool when
    ``None``) so the event loop never blocks on them. Call :meth:`recover` once at start-up.
    """

    def __init__(
        self,
        root: Path,
        keyring: Keyring,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        executor: Executor | None = None,
    ) -> None:
        """Configure the store; no I/O happens here."""
        if not 0 < chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size must be in 1..{MAX_CHUNK_SIZE}")
        self.root = Path(root)
        self.keyring = keyring
        self.chunk_size = chunk_size
        self._executor = executor
        self._durable_shards: set[str] = set()

    # -- writing ------------------------------------------------------------------------------

    async def put(
        self,
        data: BytesLike | AsyncIterable[BytesLike],
        *,
        max_bytes: int | None = None,
        digest: Callable[[], str] | None = None,
    ) -> BlobInfo:
        """Encrypt and durably store ``data`` (bytes, or an async iterable of byte pieces).

        Returns only once the blob is on disk (file and directory fsynced). Raises
        :class:`BlobTooLarge` past ``max_bytes``; on that or any other failure or cancellation
        nothing of the blob remains.

        ``BlobInfo.sha256`` is the plaintext's SHA-256. A caller that already hashes the bytes
        as they arrive (an upload hashed while it is received, when the loop is idle anyway)
        passes ``digest``, called once the stream is complete, and the store skips its own
        hashing — at ~1 GB/s, SHA-256 costs about as much as the write and fsync themselves.
        """
        writer = _BlobWriter(self)
        hasher = hashlib.sha256() if digest is None else None
        try:
            if isinstance(data, bytes | bytearray | memoryview):
                view = memoryview(data).cast("B")
                if max_bytes is not None and view.nbytes > max_bytes:
                    raise BlobTooLarge(f"blob exceeds the {max_bytes}-byte limit")
                if view.nbytes <= _STREAM_BUFFER_CHUNKS * self.chunk_size:
                    await self._write_block(writer, hasher, [view], final=True)
                else:  # large: pipeline it like an upload
                    await self._put_stream(writer, hasher, _blocks(view, self.chunk_size), None)
            else:
                await self._put_stream(writer, hasher, data, max_bytes)
        except BaseException:
            await asyncio.shield(self._run(writer.abort))
            raise
        if hasher is not None:
            sha256 = hasher.hexdigest()
        else:
            assert digest is not None  # hasher is None only when the caller hashes
            sha256 = digest()
        return BlobInfo(writer.blob_id, writer.size, sha256, writer.key_id)

    async def _put_stream(
        self,
        writer: _BlobWriter,
        hasher: hashlib._Hash | None,
        pieces: AsyncIterable[BytesLike],
        max_bytes: int | None,
    ) -> None:
        cs = self.chunk_size
        parts: list[memoryview] = []  # received, not yet handed to a worker
        buffered = 0
        total = 0
        in_flight: asyncio.Future[None] | None = None
        try:
            async for piece in pieces:
                # The loop only moves references; workers join, hash and encrypt. Writable
                # buffers are copied: the sender may reuse them once we yield.
                view = memoryview(piece)
                if not view.readonly:
                    view = memoryview(bytes(view))
                view = view.cast("B")
                total += view.nbytes
                if max_bytes is not None and total > max_bytes:
                    raise BlobTooLarge(f"blob exceeds the {max_bytes}-byte limit")
                parts.append(view)
                buffered += view.nbytes
                # Hand whole chunks to the workers as soon as the previous block is done,
                # keeping at least one byte back (only the end of the stream says which chunk
                # is final). While a block is being written, keep receiving: the next block
                # then carries several chunks in one thread hop. Past _STREAM_BUFFER_CHUNKS,
                # wait (back-pressure on the sender).
                if buffered <= cs or not (
                    in_flight is None or in_flight.done() or buffered > _STREAM_BUFFER_CHUNKS * cs
                ):
                    continue
                if in_flight is not None:
                    await in_flight
                block, parts = _split(parts, (buffered - 1) // cs * cs)
                buffered = sum(part.nbytes for part in parts)
                in_flight = asyncio.ensure_future(
                    self._write_block(writer, hasher, block, final=False)
                )
            if in_flight is not None:
                await in_flight
            await self._write_block(writer, hasher, parts, final=True)
        except BaseException:
            if in_flight is not None:
                # The abort that follows waits on the writer's lock, not on this task.
                in_flight.cancel()
                await asyncio.wait([in_flight])
                _settle(in_flight)
            raise

    async def _write_block(
        self,
        writer: _BlobWriter,
        hasher: hashlib._Hash | None,
        parts: Sequence[BytesLike],
        *,
        final: bool,
    ) -> None:
        if final:
            # One thread hop: encrypt, write, start write-back, hash while the disk writes,
            # fsync, rename. Measured faster than a parallel hashing job for a final block,
            # which is small (at most _STREAM_BUFFER_CHUNKS chunks).
            await self._run(functools.partial(writer.write, parts, final=True, hasher=hasher))
            return
        # Whole chunks of a longer stream: SHA-256 (~1.4 GB/s with SHA-NI, AES-GCM does ~6 GB/s)
        # runs in a second thread, in parallel with encryption and writing; both release the GIL.
        if hasher is None:
            await self._run(functools.partial(writer.write, parts, final=final))
            return
        hashing = self._run(_hash_parts, hasher, parts)
        try:
            await self._run(functools.partial(writer.write, parts, final=final))
        finally:
            await asyncio.wait([hashing])
        hashing.result()

    # -- reading ------------------------------------------------------------------------------

    async def open_read(self, blob_id: str) -> BlobReader:
        """Open a blob for streaming; raises :class:`BlobNotFound` before any byte is read.

        The reader yields only authenticated chunks, but may raise :class:`BlobIntegrityError`
        after earlier chunks were yielded (see the module docstring for HTTP handlers).
        """
        blob = await self._run(self._open_blob, blob_id)
        return BlobReader(blob, self._run)

    async def read_all_verified(self, blob_id: str, *, max_bytes: int) -> bytes:
        """The whole plaintext, returned only after every chunk authenticated.

        Raises :class:`BlobTooLarge` (before decrypting anything) when the blob is larger than
        ``max_bytes``.
        """
        return await self._run(self._read_all, blob_id, max_bytes)

    async def verify(self, blob_id: str) -> None:
        """Authenticate every chunk without returning plaintext; raises on the first failure."""
        await self._run(self._verify, blob_id)

    def exists(self, blob_id: str) -> bool:
        """Whether a completely written blob ``blob_id`` is stored (one stat, no decryption)."""
        return is_valid_blob_id(blob_id) and self._path(blob_id).is_file()

    def iter_blob_ids(self) -> Iterator[str]:
        """Ids of every stored blob (temp files excluded), shard by shard; blocking I/O."""
        for shard in SHARDS:
            try:
                names = [entry.name for entry in (self.root / shard).iterdir()]
            except FileNotFoundError:
                continue
            for name in names:
                if is_valid_blob_id(name) and name.startswith(shard):
                    yield name

    # -- sealed in memory ---------------------------------------------------------------------
    # The same format and keys as a blob file, for a small document whose caller stores the
    # bytes itself: a message's content goes into an SQL row written in the message's own
    # transaction, which saves a file, two fsyncs and a thread hop per message (issue 4).
    # These run wherever the caller runs them: :meth:`seal` may read the keyring's current-key
    # pointer (a small file), so not on the event loop.

    def seal(self, blob_id: str, data: BytesLike) -> bytes:
        """``data`` encrypted under a fresh data key, as the bytes of a blob file named
        ``blob_id`` (header and chunks); blocking (key pointer read), CPU-light."""
        if not is_valid_blob_id(blob_id):
            raise ValueError(f"blob id {blob_id!r} is malformed")
        data_key = AESGCM.generate_key(bit_length=256)
        aead = AESGCM(data_key)
        prefix = os.urandom(_NONCE_PREFIX_BYTES)
        wrapped = self.keyring.wrap(data_key, context=_wrap_context(blob_id))
        header = BlobHeader(
            self.chunk_size, prefix, (KeySlot(1, wrapped.key_id, wrapped.wrapped), None)
        )
        view = memoryview(data).cast("B")
        cs = self.chunk_size
        last = max(0, (view.nbytes - 1) // cs)  # an empty document is one empty final chunk
        pieces = [bytes(header)]
        for index in range(last + 1):
            piece = view[index * cs : (index + 1) * cs]
            pieces.append(
                _seal_chunk(aead, prefix, blob_id, index, piece, final=index == last, cs=cs)
            )
        return b"".join(pieces)

    def open_sealed(self, blob_id: str, sealed: BytesLike, *, max_bytes: int) -> bytes:
        """The plaintext of :meth:`seal`'s output, every chunk authenticated first; raises
        :class:`BlobIntegrityError` when it was altered, :class:`BlobTooLarge` past
        ``max_bytes`` (before decrypting)."""
        view = memoryview(sealed).cast("B")
        header = BlobHeader.parse(bytes(view[:HEADER_SIZE]))
        _, data_key = _unwrap(self.keyring, blob_id, header)
        cs = header.chunk_size
        count, _ = _geometry(view.nbytes - HEADER_SIZE, cs)
        if view.nbytes - HEADER_SIZE - count * TAG_BYTES > max_bytes:
            raise BlobTooLarge(f"document {blob_id} exceeds the {max_bytes}-byte limit")
        aead = AESGCM(data_key)
        step = cs + TAG_BYTES
        body = view[HEADER_SIZE:]
        return b"".join(
            _open_chunk(
                aead,
                header.nonce_prefix,
                blob_id,
                index,
                body[index * step : (index + 1) * step],
                final=index == count - 1,
                cs=cs,
            )
            for index in range(count)
        )

    def rewrap_sealed(self, blob_id: str, sealed: BytesLike) -> bytes | None:
        """:meth:`seal`'s output with its data key re-wrapped under the current master key
        (in the slot readers do not use, as for files), or None when it already is."""
        view = memoryview(sealed).cast("B")
        header = BlobHeader.parse(bytes(view[:HEADER_SIZE]))
        slot, data_key = _unwrap(self.keyring, blob_id, header)
        wrapped = self.keyring.wrap(data_key, context=_wrap_context(blob_id))
        if wrapped.key_id == slot.key_id:
            return None
        fresh = KeySlot(slot.generation + 1, wrapped.key_id, wrapped.wrapped)
        slots = (slot, fresh) if header.slots[0] is slot else (fresh, slot)
        return bytes(BlobHeader(header.chunk_size, header.nonce_prefix, slots)) + bytes(
            view[HEADER_SIZE:]
        )

    def sealed_key_ids(self, blob_id: str, sealed: BytesLike) -> set[str]:
        """Master key ids :meth:`seal`'s output needs (as :meth:`key_ids_in_use` counts)."""
        header = BlobHeader.parse(bytes(memoryview(sealed).cast("B")[:HEADER_SIZE]))
        try:
            return {_unwrap(self.keyring, blob_id, header)[0].key_id}
        except (MasterKeyError, BlobIntegrityError):
            return {s.key_id for s in header.slots if s}

    # -- deleting -----------------------------------------------------------------------------

    async def delete(self, blob_id: str) -> bool:
        """Remove a blob durably; ``False`` if there was none (so retries are harmless)."""
        return await self._run(self._delete, blob_id)

    # -- keys ---------------------------------------------------------------------------------

    async def rewrap_all(self) -> int:
        """Re-wrap every data key under the keyring's current master key; returns how many.

        Idempotent and crash-safe: blobs already under the current key are skipped, and an
        interrupted run leaves every blob readable (see the module docstring); run it again.
        """
        ids = await self._run(lambda: list(self.iter_blob_ids()))
        count = 0
        for start in range(0, len(ids), 256):
            count += await self._run(self._rewrap_batch, ids[start : start + 256])
        return count

    def key_ids_in_use(self) -> set[str]:
        """Master key ids that some stored or in-flight blob needs; blocking I/O.

        Implements :class:`storage.keys.KeyUser` for :meth:`Keyring.destroy`, so it errs on
        the side of "in use": a blob counts for the slot it reads with, or for every key id it
        names when no slot unwraps; a write in flight (temp file) counts for the key that
        wrapped it, or for every key of the keyring while its header is not written yet.
        """
        in_use: set[str] = set()
        for shard in SHARDS:
            try:
                paths = list((self.root / shard).iterdir())
            except FileNotFoundError:
                continue
            for path in paths:
                in_flight = path.name.startswith(_TMP_PREFIX)
                blob_id = path.name.removeprefix(_TMP_PREFIX)
                if not is_valid_blob_id(blob_id):
                    continue
                fd = -1
                # A temp file may have been renamed into place since the listing.
                for candidate in (path, path.with_name(blob_id)):
                    with contextlib.suppress(FileNotFoundError):
                        fd = os.open(candidate, os.O_RDONLY | os.O_CLOEXEC)
                        break
                if fd < 0:
                    continue  # deleted
                try:
                    header = _read_header(fd)
                except BlobIntegrityError:
                    if in_flight:
                        in_use |= self.keyring.key_ids()
                    continue
                finally:
                    os.close(fd)
                try:
                    in_use.add(_unwrap(self.keyring, blob_id, header)[0].key_id)
                except (MasterKeyError, BlobIntegrityError):
                    in_use.update(s.key_id for s in header.slots if s)
        return in_use

    # -- start-up -----------------------------------------------------------------------------

    def recover(self, *, older_than: float = 0.0) -> int:
        """Prepare the layout and delete temp files left by a crash; returns how many.

        Call it at start-up, before serving. ``older_than`` (seconds) spares recent temp files:
        nodes sharing a volume should pass a grace period (e.g. 3600) so they do not delete a
        write another node has in flight. Also creates every shard directory, so the write
        path never has to.
        """
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        for shard in SHARDS:
            with contextlib.suppress(FileExistsError):
                (self.root / shard).mkdir(mode=0o700)
        # Unconditionally: a shard made by a process that died before its fsync may exist
        # only in the page cache.
        fsync_dir(self.root)
        self._durable_shards.update(SHARDS)
        deadline = time.time() - older_than
        removed = 0
        for shard in SHARDS:
            shard_dir = self.root / shard
            removed_here = 0
            for path in shard_dir.iterdir():
                if not path.name.startswith(_TMP_PREFIX):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    if path.stat().st_mtime <= deadline:
                        path.unlink()
                        removed_here += 1
            if removed_here:
                fsync_dir(shard_dir)
                removed += removed_here
        return removed

    # -- internals (run in worker threads) ----------------------------------------------------

    def _run(self, fn: Callable[..., _T], *args: Any) -> asyncio.Future[_T]:
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _path(self, blob_id: str) -> Path:
        return self.root / blob_id[:2] / blob_id

    def _ensure_shard(self, shard: str) -> None:
        # A new directory entry is durable only once its parent is fsynced; do it once per
        # shard and process (recover() does all of them at start-up).
        if shard in self._durable_shards:
            return
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            (self.root / shard).mkdir(mode=0o700)
        fsync_dir(self.root)
        self._durable_shards.add(shard)

    def _open_blob(self, blob_id: str) -> _OpenBlob:
        if not is_valid_blob_id(blob_id):
            raise BlobNotFound(f"blob id {blob_id!r} is malformed")
        return _OpenBlob(self._path(blob_id), blob_id, self.keyring)

    def _read_all(self, blob_id: str, max_bytes: int) -> bytes:
        blob = self._open_blob(blob_id)
        try:
            if blob.size > max_bytes:
                raise BlobTooLarge(f"blob {blob_id} exceeds the {max_bytes}-byte limit")
            return b"".join(blob.read_chunks(0, blob.chunk_count))
        finally:
            blob.close()

    def _verify(self, blob_id: str) -> None:
        blob = self._open_blob(blob_id)
        try:
            for index in range(blob.chunk_count):
                blob.read_chunk(index)
        finally:
            blob.close()

    def _delete(self, blob_id: str) -> bool:
        if not is_valid_blob_id(blob_id):
            return False
        path = self._path(blob_id)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        fsync_dir(path.parent)
        return True

    def _rewrap_batch(self, blob_ids: list[str]) -> int:
        return sum(self._rewrap_one(blob_id) for blob_id in blob_ids)

    def _rewrap_one(self, blob_id: str) -> bool:
        try:
            fd = os.open(self._path(blob_id), os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return False  # deleted meanwhile
        try:
            # Serialise re-wraps of one blob across threads and nodes; readers need no lock.
            fcntl.flock(fd, fcntl.LOCK_EX)
            header = _read_header(fd)
            slot, data_key = _unwrap(self.keyring, blob_id, header)
            wrapped = self.keyring.wrap(data_key, context=_wrap_context(blob_id))
            if wrapped.key_id == slot.key_id:
                return False
            # Overwrite the slot readers do not use; the one they use stays intact until the
            # next rotation, so a crash mid-write costs nothing.
            target = 1 if header.slots[0] is slot else 0
            fresh = KeySlot(slot.generation + 1, wrapped.key_id, wrapped.wrapped)
            os.pwrite(fd, bytes(fresh), _FIXED.size + target * _SLOT.size)
            os.fsync(fd)
            return True
        finally:
            os.close(fd)
