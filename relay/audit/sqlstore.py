"""SQL access of the audit log: the Merkle :class:`~relay.audit.merkle.NodeStore` and the
entry, checkpoint and cursor tables of ``migrations/0001_audit_log.sql``.

Every function here is synchronous and takes the ``sqlite3.Connection``: they run on the
database thread (``storage.database.Database.run``), never on the event loop, and the caller
owns the transaction. The SQL stays portable (no SQLite-only syntax) so a PostgreSQL backend
can take it over; the few SQLite pragmas live in :func:`configure`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from relay.audit.merkle import Node
from relay.audit.verify import LogEntry

__all__ = [
    "EntryRow",
    "SearchFilter",
    "SqlNodeStore",
    "StoredEvent",
    "checkpoint_at",
    "configure",
    "entries_after",
    "erase_before",
    "format_time",
    "get_cursor",
    "get_meta",
    "insert_checkpoint",
    "insert_entries",
    "insert_nodes",
    "iter_checkpoints",
    "iter_contents",
    "iter_log_entries",
    "latest_checkpoint",
    "log_size",
    "parse_time",
    "search",
    "set_cursor",
    "set_meta",
]


def format_time(moment: datetime) -> str:
    """Stored form of an instant: UTC, fixed-width ISO 8601 with microseconds, so that text
    order is time order (``2024-05-01T08:30:00.000000+00:00``)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("audit times must be timezone-aware")
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def parse_time(text: str) -> datetime:
    """Inverse of :func:`format_time`."""
    return datetime.fromisoformat(text)


def configure(conn: sqlite3.Connection) -> None:
    """Per-connection settings of the audit database.

    ``secure_delete`` makes SQLite overwrite deleted content with zeros, so the content and
    salt that retention erases do not linger in free pages of the file (sqlite.org/pragma.html
    #pragma_secure_delete). ``temp_store=MEMORY`` keeps the statement journals of a batch's
    savepoints off the disk (temporary files in /var/tmp otherwise).
    """
    conn.execute("PRAGMA secure_delete=ON").fetchall()  # consume its row: statement done
    conn.execute("PRAGMA temp_store=MEMORY").fetchall()


def _blob(value: object) -> bytes | None:
    # Rows edited by hand may hold TEXT where BLOB is expected: compare their bytes, so an
    # edit shows as an altered entry rather than crashing the verifier.
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return str(value).encode()


class SqlNodeStore:
    """:class:`~relay.audit.merkle.NodeStore` over ``audit_nodes`` and ``audit_entries``.

    Level 0 (the leaf hashes) is read from ``audit_entries.leaf_hash``, written by
    :func:`insert_entries` in the same transaction as the entry, so :meth:`put_many` stores
    only interior nodes. Use it from the database thread only.
    """

    __slots__ = ("_conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def get(self, level: int, index: int) -> bytes:
        """Node ``(level, index)``; ``KeyError`` when absent."""
        if level == 0:
            row = self._conn.execute(
                "SELECT leaf_hash FROM audit_entries WHERE idx = ?", (index,)
            ).fetchone()
        else:
            row = self._conn.execute(
                "SELECT hash FROM audit_nodes WHERE level = ? AND idx = ?", (level, index)
            ).fetchone()
        value = None if row is None else _blob(row[0])
        if value is None:
            raise KeyError((level, index))
        return value

    def put_many(self, nodes: Sequence[Node]) -> None:
        """Store the interior nodes of ``nodes`` (leaves are stored with their entries)."""
        insert_nodes(self._conn, nodes)


@dataclass(frozen=True, slots=True)
class EntryRow:
    """One ``audit_entries`` row to insert, with the resources it is about."""

    index: int
    recorded_at: str
    action: str
    outcome: str
    actor: str
    patient: str | None
    retention: str
    salt: bytes
    content: bytes
    commitment: bytes
    leaf_hash: bytes
    resources: tuple[tuple[str, str], ...]  # (kind, id)


def insert_entries(conn: sqlite3.Connection, rows: Sequence[EntryRow]) -> None:
    """Insert entries and their resource rows (inside the caller's transaction)."""
    conn.executemany(
        "INSERT INTO audit_entries (idx, recorded_at, action, outcome, actor, patient,"
        " retention, salt, content, commitment, leaf_hash) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        [
            (
                r.index,
                r.recorded_at,
                r.action,
                r.outcome,
                r.actor,
                r.patient,
                r.retention,
                r.salt,
                r.content,
                r.commitment,
                r.leaf_hash,
            )
            for r in rows
        ],
    )
    resources = [(rid, kind, r.index) for r in rows for kind, rid in r.resources]
    if resources:
        conn.executemany(
            "INSERT OR IGNORE INTO audit_entry_resources (resource_id, kind, idx) VALUES (?,?,?)",
            resources,
        )


def insert_nodes(conn: sqlite3.Connection, nodes: Sequence[Node]) -> None:
    """Insert the interior (level >= 1) nodes of a planned append."""
    interior = [node for node in nodes if node[0] > 0]
    if interior:
        conn.executemany("INSERT INTO audit_nodes (level, idx, hash) VALUES (?,?,?)", interior)


def log_size(conn: sqlite3.Connection) -> int:
    """Number of leaves: highest stored index + 1 (0 for an empty log)."""
    row = conn.execute("SELECT MAX(idx) FROM audit_entries").fetchone()
    return 0 if row is None or row[0] is None else int(row[0]) + 1


def insert_checkpoint(conn: sqlite3.Connection, size: int, note: str, signed_at: str) -> None:
    """Store a signed checkpoint."""
    conn.execute(
        "INSERT INTO audit_checkpoints (size, note, signed_at) VALUES (?,?,?)",
        (size, note, signed_at),
    )


def latest_checkpoint(conn: sqlite3.Connection) -> tuple[int, str, str] | None:
    """``(size, note, signed_at)`` of the largest stored checkpoint, or None."""
    row = conn.execute(
        "SELECT size, note, signed_at FROM audit_checkpoints ORDER BY size DESC LIMIT 1"
    ).fetchone()
    return None if row is None else (int(row[0]), str(row[1]), str(row[2]))


def checkpoint_at(conn: sqlite3.Connection, size: int) -> str | None:
    """The stored checkpoint note for exactly ``size`` leaves, if any."""
    row = conn.execute("SELECT note FROM audit_checkpoints WHERE size = ?", (size,)).fetchone()
    return None if row is None else str(row[0])


def iter_checkpoints(conn: sqlite3.Connection) -> Iterator[str]:
    """Every stored checkpoint note, smallest size first."""
    for (note,) in conn.execute("SELECT note FROM audit_checkpoints ORDER BY size"):
        yield str(note)


def iter_log_entries(conn: sqlite3.Connection) -> Iterator[LogEntry]:
    """Every entry in index order as the verifier's :class:`LogEntry`, streamed row by row."""
    cursor = conn.execute("SELECT idx, commitment, salt, content FROM audit_entries ORDER BY idx")
    for index, commitment, salt, content in cursor:
        yield LogEntry(int(index), _blob(commitment), _blob(salt), _blob(content))


def iter_contents(
    conn: sqlite3.Connection, since: str | None = None, until: str | None = None
) -> Iterator[bytes]:
    """Canonical event bytes of the entries not erased, in index order, optionally limited
    to ``since <= recorded_at < until``."""
    cursor = conn.execute(
        "SELECT content FROM audit_entries WHERE content IS NOT NULL"
        " AND (? IS NULL OR recorded_at >= ?) AND (? IS NULL OR recorded_at < ?) ORDER BY idx",
        (since, since, until, until),
    )
    for (content,) in cursor:
        value = _blob(content)
        if value is not None:
            yield value


@dataclass(frozen=True)
class StoredEvent:
    """An entry as search returns it; ``event`` is None once retention erased it."""

    index: int
    recorded_at: datetime
    action: str
    outcome: str
    event: dict[str, Any] | None


@dataclass(frozen=True)
class SearchFilter:
    """Criteria of an audit search; every field is optional and they combine with AND."""

    actor: str | None = None
    patient: str | None = None
    resource: str | None = None
    action: str | None = None
    outcome: str | None = None
    since: str | None = None  # formatted with format_time; inclusive
    until: str | None = None  # exclusive
    after_index: int | None = None
    before_index: int | None = None
    newest_first: bool = False
    limit: int = 100


# (column condition, filter attribute): fixed SQL fragments, only the values are bound.
_CONDITIONS = (
    ("actor = ?", "actor"),
    ("patient = ?", "patient"),
    ("idx IN (SELECT idx FROM audit_entry_resources WHERE resource_id = ?)", "resource"),
    ("action = ?", "action"),
    ("outcome = ?", "outcome"),
    ("recorded_at >= ?", "since"),
    ("recorded_at < ?", "until"),
    ("idx > ?", "after_index"),
    ("idx < ?", "before_index"),
)


def search(conn: sqlite3.Connection, criteria: SearchFilter) -> list[StoredEvent]:
    """Entries matching ``criteria``, in index order (or reverse), at most ``limit``."""
    clauses: list[str] = []
    params: list[object] = []
    for clause, name in _CONDITIONS:
        value = getattr(criteria, name)
        if value is not None:
            clauses.append(clause)
            params.append(value)
    where = " AND ".join(clauses) if clauses else "1 = 1"
    order = "DESC" if criteria.newest_first else "ASC"
    params.append(max(0, criteria.limit))
    # Only constant fragments from _CONDITIONS are interpolated; values are bound.
    sql = (
        "SELECT idx, recorded_at, action, outcome, content FROM audit_entries"  # noqa: S608
        f" WHERE {where} ORDER BY idx {order} LIMIT ?"
    )
    found: list[StoredEvent] = []
    for index, recorded_at, action, outcome, content in conn.execute(sql, params):
        raw = _blob(content)
        event = json.loads(raw) if raw is not None else None
        found.append(StoredEvent(int(index), parse_time(recorded_at), action, outcome, event))
    return found


def entries_after(conn: sqlite3.Connection, index: int, limit: int) -> list[tuple[int, bytes]]:
    """Up to ``limit`` ``(index, content)`` pairs after ``index``, skipping erased entries."""
    rows = conn.execute(
        "SELECT idx, content FROM audit_entries WHERE idx > ? AND content IS NOT NULL"
        " ORDER BY idx LIMIT ?",
        (index, limit),
    ).fetchall()
    return [(int(i), c) for i, c in ((r[0], _blob(r[1])) for r in rows) if c is not None]


def erase_before(
    conn: sqlite3.Connection,
    *,
    access_before: str,
    security_before: str,
    erased_at: str,
    limit: int,
) -> int:
    """Erase up to ``limit`` expired entries (inside the caller's transaction).

    Salt, content and the identifying columns go; index, time, action, outcome, commitment and
    leaf hash stay, so the tree and every proof still verify (issue 3 item 5).
    """
    expired = [
        (row[0],)
        for row in conn.execute(
            "SELECT idx FROM audit_entries WHERE erased_at IS NULL AND ("
            "(retention = 'access' AND recorded_at < ?) OR "
            "(retention = 'security' AND recorded_at < ?)) ORDER BY idx LIMIT ?",
            (access_before, security_before, limit),
        )
    ]
    if expired:
        conn.executemany(
            "UPDATE audit_entries SET salt = NULL, content = NULL, actor = NULL,"
            " patient = NULL, erased_at = ? WHERE idx = ?",
            [(erased_at, idx) for (idx,) in expired],
        )
        conn.executemany("DELETE FROM audit_entry_resources WHERE idx = ?", expired)
    return len(expired)


def get_cursor(conn: sqlite3.Connection, name: str) -> int:
    """Position of consumer ``name`` (-1 when it has none yet)."""
    row = conn.execute("SELECT position FROM audit_cursors WHERE name = ?", (name,)).fetchone()
    return -1 if row is None else int(row[0])


def set_cursor(conn: sqlite3.Connection, name: str, position: int) -> None:
    """Store the position of consumer ``name``."""
    conn.execute(
        "INSERT INTO audit_cursors (name, position) VALUES (?, ?)"
        " ON CONFLICT (name) DO UPDATE SET position = excluded.position",
        (name, position),
    )


def get_meta(conn: sqlite3.Connection, name: str) -> str | None:
    """A fact about the log (``origin``), or None."""
    row = conn.execute("SELECT value FROM audit_meta WHERE name = ?", (name,)).fetchone()
    return None if row is None else str(row[0])


def set_meta(conn: sqlite3.Connection, name: str, value: str) -> None:
    """Record a fact about the log."""
    conn.execute("INSERT INTO audit_meta (name, value) VALUES (?, ?)", (name, value))
