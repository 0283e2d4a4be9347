"""Documents sealed in memory (blob format) and kept in SQL rows: round trip, the same bytes as
a blob file would hold, tampering, limits, rotation and key destruction."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from storage.blobs import HEADER_SIZE, BlobHeader, BlobStore, new_blob_id
from storage.database import Database
from storage.errors import BlobIntegrityError, BlobTooLarge, MasterKeyInUse
from storage.keys import KEY_ID_MAX_LEN, Keyring
from storage.sealed import SealedDocuments
from tests.storage.conftest import CS, payload


@pytest.fixture
async def documents(tmp_path: Path, store: BlobStore) -> AsyncIterator[SealedDocuments]:
    db = await Database.open(tmp_path / "relais.db")
    yield SealedDocuments(db, store)
    await db.close()


@pytest.mark.parametrize("size", [0, 1, CS - 1, CS, CS + 1, 5 * CS, 5 * CS + 7])
def test_sealed_round_trip_at_chunk_boundaries(store: BlobStore, size: int) -> None:
    doc_id, data = new_blob_id(), payload(size, seed=size)
    sealed = store.seal(doc_id, data)
    if size >= 16:  # a shorter payload can occur in random ciphertext by chance
        assert data not in sealed[HEADER_SIZE:]
    assert store.open_sealed(doc_id, sealed, max_bytes=size) == data
    with pytest.raises(BlobTooLarge) if size else pytest.raises(BlobIntegrityError):
        # One byte short of the size; an empty document is refused for another reason: its
        # id does not match (the chunk's associated data binds the id).
        if size:
            store.open_sealed(doc_id, sealed, max_bytes=size - 1)
        else:
            store.open_sealed(new_blob_id(), sealed, max_bytes=0)


async def test_sealed_bytes_are_a_blob_file(store: BlobStore) -> None:
    """The same format: a sealed document written out as a file reads as a blob."""
    doc_id, data = new_blob_id(), payload(300)
    path = store.root / doc_id[:2] / doc_id
    path.parent.mkdir(parents=True)
    path.write_bytes(store.seal(doc_id, data))
    assert await store.read_all_verified(doc_id, max_bytes=300) == data


@pytest.mark.parametrize("where", ["header", "first chunk", "last byte"])
def test_any_altered_byte_is_refused(store: BlobStore, where: str) -> None:
    doc_id = new_blob_id()
    sealed = bytearray(store.seal(doc_id, payload(3 * CS)))
    wrapped_key = 16 + 4 + 1 + KEY_ID_MAX_LEN + 10  # fixed part, then slot 0's wrapped key
    index = {"header": wrapped_key, "first chunk": HEADER_SIZE + 5, "last byte": len(sealed) - 1}
    sealed[index[where]] ^= 0x01
    with pytest.raises(BlobIntegrityError):
        store.open_sealed(doc_id, bytes(sealed), max_bytes=10_000)


def test_truncation_and_another_id_are_refused(store: BlobStore) -> None:
    doc_id = new_blob_id()
    sealed = store.seal(doc_id, payload(3 * CS))
    with pytest.raises(BlobIntegrityError):  # cut at a chunk boundary: no final chunk
        store.open_sealed(doc_id, sealed[: HEADER_SIZE + 2 * (CS + 16)], max_bytes=10_000)
    with pytest.raises(BlobIntegrityError):  # a row copied under another id
        store.open_sealed(new_blob_id(), sealed, max_bytes=10_000)


async def test_documents_in_sql_round_trip(documents: SealedDocuments) -> None:
    doc_id, data = new_blob_id(), "Plaie du talon, évolution favorable".encode()
    await documents.db.transaction(lambda conn: documents.insert(conn, doc_id, data))
    assert await documents.read(doc_id, max_bytes=1000) == data
    assert await documents.read(new_blob_id(), max_bytes=1000) is None  # not here: a blob file
    row = await documents.db.fetchone("SELECT sealed FROM sealed_documents WHERE id = ?", (doc_id,))
    assert row is not None and data not in bytes(row["sealed"])


async def test_rotation_rewraps_documents_and_guards_the_old_key(
    documents: SealedDocuments, keyring: Keyring
) -> None:
    docs = {new_blob_id(): payload(n, seed=n) for n in (0, 10, 3 * CS)}

    def write(conn: sqlite3.Connection) -> None:
        for doc_id, data in docs.items():
            documents.insert(conn, doc_id, data)

    await documents.db.transaction(write)
    old_id = keyring.current_id
    bodies = {
        row["id"]: bytes(row["sealed"])[HEADER_SIZE:]
        for row in await documents.db.fetchall("SELECT id, sealed FROM sealed_documents")
    }
    new_id = keyring.rotate()
    assert documents.key_ids_in_use() == {old_id}
    with pytest.raises(MasterKeyInUse):
        keyring.destroy(old_id, users=[documents])

    assert await documents.rewrap_all() == 3
    assert await documents.rewrap_all() == 0  # idempotent
    assert documents.key_ids_in_use() == {new_id}
    for row in await documents.db.fetchall("SELECT id, sealed FROM sealed_documents"):
        sealed = bytes(row["sealed"])
        assert sealed[HEADER_SIZE:] == bodies[row["id"]]  # the ciphertext is never rewritten
        header = BlobHeader.parse(sealed[:HEADER_SIZE])
        assert {s.key_id for s in header.slots if s} == {old_id, new_id}
    keyring.destroy(old_id, users=[documents])

    reloaded = SealedDocuments(
        documents.db, BlobStore(documents.blobs.root, Keyring.load(keyring.directory))
    )
    for doc_id, data in docs.items():
        assert await reloaded.read(doc_id, max_bytes=1000) == data


async def test_the_destroy_check_waits_for_a_document_being_written(
    documents: SealedDocuments, keyring: Keyring
) -> None:
    """A relay sealed a document under the old key just before a rotation and has not
    committed yet: the check for key destruction must wait for it and count it."""
    old_id = keyring.current_id
    sealed, release = threading.Event(), threading.Event()

    def slow_write(conn: sqlite3.Connection) -> None:
        documents.insert(conn, new_blob_id(), b"compte rendu")
        sealed.set()
        release.wait(10)

    writing = asyncio.ensure_future(documents.db.transaction(slow_write))
    await asyncio.to_thread(sealed.wait, 10)
    new_id = keyring.rotate()
    checking = asyncio.ensure_future(asyncio.to_thread(documents.key_ids_in_use))
    await asyncio.sleep(0.3)
    assert not checking.done()  # waiting for the writer's commit
    release.set()
    await writing
    assert await checking == {old_id}
    with pytest.raises(MasterKeyInUse):
        keyring.destroy(old_id, users=[documents])
    assert await documents.rewrap_all() == 1
    keyring.destroy(old_id, users=[documents])
    assert documents.key_ids_in_use() == {new_id}
