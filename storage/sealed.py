"""Small encrypted documents stored in SQL rows, in the blob file format.

A message's content document (a few KB: text, attachment names, small attachments) used to be a
blob file of its own: a file, an fsync, a rename, a directory fsync and a thread hop before the
message's commit. Sealed into the row of ``sealed_documents`` inside that same transaction it
costs nothing but the bytes (issue 4: +50 % inbound SMTP rate, server CPU per mail 3.1 ->
1.9 ms in the experiment that motivated it). The encryption is the blob store's
(:meth:`storage.blobs.BlobStore.seal`): same format, same envelope keys, same rotation.

Sealing runs on the database's writer thread, inside the transaction (it reads the keyring's
current-key pointer, a small file: never on the event loop); opening runs on its reader thread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from storage.blobs import HEADER_SIZE, BlobStore, BytesLike
from storage.database import Database

_BATCH = 256
LOCK_TIMEOUT_SECONDS = 30.0


class SealedDocuments:
    """The ``sealed_documents`` table of ``db``, encrypted with ``blobs``' keys."""

    def __init__(self, db: Database, blobs: BlobStore) -> None:
        self.db = db
        self.blobs = blobs

    def insert(self, conn: sqlite3.Connection, doc_id: str, data: BytesLike) -> None:
        """Seal ``data`` and add it as ``doc_id``; call inside a write transaction."""
        conn.execute(
            "INSERT INTO sealed_documents (id, sealed) VALUES (?, ?)",
            (doc_id, self.blobs.seal(doc_id, data)),
        )

    async def read(self, doc_id: str, *, max_bytes: int) -> bytes | None:
        """The plaintext of ``doc_id``, authenticated; None when no such row exists (an older
        document kept as a blob file)."""

        def query(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute("SELECT sealed FROM sealed_documents WHERE id = ?", (doc_id,))
            found = row.fetchone()
            if found is None:
                return None
            return self.blobs.open_sealed(doc_id, found[0], max_bytes=max_bytes)

        return await self.db.read(query)

    async def rewrap_all(self) -> int:
        """Re-wrap every document's data key under the current master key; how many changed.
        Batches of rows, each batch one transaction: an interrupted run loses nothing."""
        done = 0
        after = ""
        while True:

            def page(conn: sqlite3.Connection, after: str = after) -> list[tuple[str, bytes]]:
                rows = conn.execute(
                    "SELECT id, sealed FROM sealed_documents WHERE id > ? ORDER BY id LIMIT ?",
                    (after, _BATCH),
                )
                return [(row[0], row[1]) for row in rows]

            batch = await self.db.read(page)
            if not batch:
                return done
            after = batch[-1][0]
            done += await self.db.transaction(_rewrap(self.blobs, [doc_id for doc_id, _ in batch]))

    def key_ids_in_use(self) -> set[str]:
        """Master key ids some document needs (:class:`storage.keys.KeyUser`); blocking, on a
        connection of its own; reads only each row's header.

        The rows already committed are scanned without a lock (a running relay keeps
        writing meanwhile); then, holding the write lock for a moment, the rows added since:
        a transaction of a running relay that sealed a document before the rotation commits
        first and is counted there (a document sealed after it names the new key). Rows are
        never deleted and the relay only adds them, so "added since" is "rowid above".
        """
        conn = sqlite3.connect(self.db.path, timeout=LOCK_TIMEOUT_SECONDS, isolation_level=None)
        try:
            in_use: set[str] = set()
            seen = self._scan(conn, 0, in_use)
            conn.execute("BEGIN IMMEDIATE")
            self._scan(conn, seen, in_use)
            conn.execute("ROLLBACK")
            return in_use
        finally:
            conn.close()

    def _scan(self, conn: sqlite3.Connection, after: int, in_use: set[str]) -> int:
        """Add the key ids of the rows with a rowid above ``after``; the highest rowid seen."""
        highest = after
        for rowid, doc_id, header in conn.execute(
            "SELECT rowid, id, substr(sealed, 1, ?) FROM sealed_documents WHERE rowid > ?",
            (HEADER_SIZE, after),
        ):
            in_use |= self.blobs.sealed_key_ids(doc_id, header)
            highest = max(highest, rowid)
        return highest


def _rewrap(blobs: BlobStore, doc_ids: list[str]) -> Callable[[sqlite3.Connection], int]:
    # Read again inside the write transaction: the row is re-wrapped as it is now.
    def work(conn: sqlite3.Connection) -> int:
        changed = 0
        for doc_id in doc_ids:
            row = conn.execute(
                "SELECT sealed FROM sealed_documents WHERE id = ?", (doc_id,)
            ).fetchone()
            fresh = None if row is None else blobs.rewrap_sealed(doc_id, row[0])
            if fresh is not None:
                conn.execute("UPDATE sealed_documents SET sealed = ? WHERE id = ?", (fresh, doc_id))
                changed += 1
        return changed

    return work
