"""The durable audit log: group-committed appends, signed checkpoints, proofs, retention.

Layout of the audit directory (``DATA_DIR/audit/``, mode 0700, apart from the relay's own
database as the CNIL recommends for traces)::

    audit.db        SQLite (WAL, synchronous=FULL): entries, tree nodes, checkpoints, cursors
    signing.key     Ed25519 checkpoint signer (0600)       } see relay.audit.keys
    verifier.key    public verifier key (0644)             }
    patient.key     HMAC key of patient references (0600)  }
    audit.lock      held (flock) by the one process that appends

How an append works (issue 3 item 2, "written before the result is released"):
:meth:`AuditLog.record` queues the record and waits. One writer task takes everything queued
so far (group commit) and, on the database thread, seals each record at its index (salt,
RFC 8785 content, commitment, RFC 6962 leaf), plans the new tree nodes, and writes entries,
nodes and, when due, a signed checkpoint in ONE transaction. Only after ``COMMIT`` returned
(WAL + ``synchronous=FULL``: durable) are the callers released, in index order. If the write
fails (disk full, read-only database) every caller of the batch gets :class:`AuditUnavailable`
(HTTP 503) and must refuse its action; the in-memory tree is rebuilt from what is stored.

Checkpoints (C2SP tlog-checkpoint, Ed25519) are signed every ``checkpoint_every_events``
events, every ``checkpoint_every_seconds`` (a timer, and the clock checked at each batch), at
start and stop, and at the end of any batch holding a record that asked for a receipt, so a
receipt always carries a checkpoint that already includes its entry. Each checkpoint is also
written to the witness directory, if configured, before callers are released.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import fcntl
import json
import logging
import os
import sqlite3
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final, TypeVar

from relay.audit import inbox, sqlstore
from relay.audit.canonical import canonicalize
from relay.audit.checkpoint import Checkpoint, parse_and_verify, sign
from relay.audit.errors import (
    AuditError,
    AuditUnavailable,
    CanonicalizationError,
    CheckpointError,
    InvalidAuditRecord,
)
from relay.audit.events import (
    ACTIONS,
    Actor,
    AuditAction,
    AuditRecord,
    Outcome,
    SealedEvent,
    build_audit_event,
    patient_reference,
    search_reference,
)
from relay.audit.keys import AuditKeys, load_keys
from relay.audit.merkle import SALT_SIZE, MerkleTree, entry_commitment, leaf_hash
from relay.audit.sqlstore import SqlNodeStore, StoredEvent
from storage.database import Database
from storage.keys import fsync_dir

__all__ = [
    "DATABASE_FILE",
    "MIGRATIONS",
    "AuditLog",
    "AuditLogSettings",
    "Receipt",
    "RetentionClass",
    "StoredEvent",
    "read_witness_checkpoint",
    "retention_class",
    "seal_event",
    "write_witness_checkpoint",
]

logger = logging.getLogger(__name__)

DATABASE_FILE: Final = "audit.db"
LOCK_FILE: Final = "audit.lock"
MIGRATIONS: Final = Path(__file__).with_name("migrations")
WITNESS_LATEST: Final = "latest.checkpoint"
MAX_BATCH: Final = 4096  # bounds one transaction's size and the time callers wait behind it
ERASE_BATCH: Final = 2000
PAGE_SIZE = 8192

T = TypeVar("T")


@dataclass(frozen=True)
class AuditLogSettings:
    """Configuration of the audit log (``[audit]`` in relais.toml)."""

    origin: str  # checkpoint origin line, e.g. "relais.localhost/audit"
    checkpoint_every_events: int = 1000
    checkpoint_every_seconds: float = 60.0
    # A second location: every checkpoint is also written there, as latest + by size.
    witness_dir: Path | None = None
    retention_access_days: int = 365
    retention_security_days: int = 1095

    def __post_init__(self) -> None:
        # The origin is also the signing key's name (C2SP: it SHOULD be), and key names
        # admit no spaces and no '+'.
        if not self.origin or "+" in self.origin or any(c.isspace() for c in self.origin):
            raise ValueError("audit origin must be one word without spaces or '+'")
        if self.checkpoint_every_events < 1 or self.checkpoint_every_seconds <= 0:
            raise ValueError("checkpoint intervals must be positive")
        if self.retention_access_days < 1 or self.retention_security_days < 1:
            raise ValueError("retention periods must be at least one day")


class RetentionClass:
    """Retention classes (issue 3 item 5): access traces vs security events."""

    ACCESS: Final = "access"
    SECURITY: Final = "security"


# DICOM EventIDs of security events: authentication, security alerts (rights, keys,
# configuration, audit start/stop, denials), audit log use, application start/stop.
_SECURITY_EVENT_IDS: Final = frozenset({"110114", "110113", "110101", "110100"})


def retention_class(action: AuditAction) -> str:
    """``"security"`` for logins, rights, keys, configuration and the audit log itself;
    ``"access"`` for everything else (reads, messages, cases, consultations, exports)."""
    if ACTIONS[action].event_type.code in _SECURITY_EVENT_IDS:
        return RetentionClass.SECURITY
    return RetentionClass.ACCESS


@dataclass(frozen=True)
class Receipt:
    """Proof material handed to the user with a download (issue 3 item 4): the entry's index
    and leaf hash, and a signed checkpoint whose size is greater than the index, so an
    inclusion proof against that checkpoint shows the access was logged."""

    index: int
    leaf_hash: str  # hex
    checkpoint: str

    def to_json(self) -> dict[str, object]:
        """JSON form: ``{"index", "leaf_hash", "checkpoint"}``."""
        return {"index": self.index, "leaf_hash": self.leaf_hash, "checkpoint": self.checkpoint}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Receipt:
        """Inverse of :meth:`to_json`; ``ValueError`` when a member is missing or malformed."""
        index, leaf, note = data.get("index"), data.get("leaf_hash"), data.get("checkpoint")
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise ValueError("receipt index must be a non-negative integer")
        if not isinstance(leaf, str) or len(leaf) != 64 or leaf.strip("0123456789abcdef"):
            raise ValueError("receipt leaf_hash must be 64 lowercase hex digits")
        if not isinstance(note, str) or not note:
            raise ValueError("receipt checkpoint must be a signed note")
        return cls(index, leaf, note)

    def to_header(self) -> str:
        """One header-safe line: unpadded base64url of the RFC 8785 JSON."""
        return base64.urlsafe_b64encode(canonicalize(self.to_json())).rstrip(b"=").decode()

    @classmethod
    def from_header(cls, value: str) -> Receipt:
        """Inverse of :meth:`to_header`; ``ValueError`` on malformed input."""
        try:
            raw = base64.urlsafe_b64decode(value.strip() + "=" * (-len(value.strip()) % 4))
            data = json.loads(raw)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("receipt header is not base64url JSON") from exc
        if not isinstance(data, dict):
            raise ValueError("receipt header is not a JSON object")
        return cls.from_json(data)


# --- witness directory ------------------------------------------------------------------------


def write_witness_checkpoint(directory: Path, size: int, note: str) -> None:
    """Write ``note`` to ``directory`` as ``<size>.checkpoint`` and ``latest.checkpoint``.

    Each file is written to a temporary name, fsynced and renamed (atomic replace), then the
    directory is fsynced: a crash leaves the previous latest checkpoint, never a torn one.
    """
    directory.mkdir(parents=True, exist_ok=True)
    data = note.encode("utf-8")
    for name in (f"{size}.checkpoint", WITNESS_LATEST):
        temporary = directory / f".{name}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        temporary.replace(directory / name)
    fsync_dir(directory)


def read_witness_checkpoint(directory: Path) -> str | None:
    """The latest checkpoint of a witness directory, or None when there is none."""
    try:
        return (directory / WITNESS_LATEST).read_text("utf-8")
    except FileNotFoundError:
        return None


# --- the log ----------------------------------------------------------------------------------


@dataclass
class _Pending:
    record: AuditRecord
    receipt: bool
    future: asyncio.Future[Receipt | None]
    inbox_id: int | None = None  # set for events handed over by another process


INBOX_POLL_SECONDS = 1.0
INBOX_BATCH = 500


@dataclass
class _BatchResult:
    outcomes: list[int | AuditError] = field(default_factory=list)  # index or sealing error
    leaves: dict[int, bytes] = field(default_factory=dict)
    size: int = 0
    note: str | None = None


@dataclass
class _LatestCheckpoint:
    size: int
    note: str | None
    at: datetime


def _set(future: asyncio.Future[T], value: T) -> None:
    if not future.done():  # the caller may have been cancelled; the entry stays written
        future.set_result(value)


def _fail(future: asyncio.Future[T], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


# check_circular off: events are trees built by build_audit_event (and it saves ~20 %).
_EVENT_ENCODER = json.JSONEncoder(
    ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False, check_circular=False
)


def _canonical_event(event: Mapping[str, object]) -> bytes:
    # RFC 8785 for the AuditEvents of build_audit_event, four times faster than the general
    # canonicalizer: those events hold only dicts with ASCII member names, lists, strings and
    # booleans (no numbers). For such values JCS reduces to sorted members, no whitespace
    # and the same string escaping (json's C encode_basestring, which canonicalize also
    # uses), so the bytes are identical. _write_batch checks one event per batch against
    # canonicalize, and the tests check many, so a new kind of member cannot slip by.
    text = _EVENT_ENCODER.encode(event)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: let canonicalize raise its error
        return canonicalize(event)


def seal_event(record: AuditRecord, *, index: int, salt: bytes, check: bool = False) -> SealedEvent:
    """:func:`relay.audit.events.seal` with the fast canonical form; same result.

    With ``check``, the content is also produced by the general RFC 8785 canonicalizer and
    compared (:class:`CanonicalizationError` if they ever differ).
    """
    if len(salt) != SALT_SIZE:
        raise InvalidAuditRecord(f"salt must be {SALT_SIZE} bytes")
    event = build_audit_event(record, index=index)
    content = _canonical_event(event)
    if check and content != canonicalize(event):
        raise CanonicalizationError("fast canonical form differs from RFC 8785: fix log.py")
    commitment = entry_commitment(salt, content)
    return SealedEvent(index, salt, content, commitment, leaf_hash(commitment))


def _log_inbox_failure(future: asyncio.Future[Receipt | None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        # The row stays in the inbox and is retried at the next start.
        logger.error("audit inbox event not appended yet: %s", future.exception())


def _unavailable(exc: BaseException) -> AuditUnavailable:
    return AuditUnavailable(f"audit log cannot write: {exc}")


class AuditLog:
    """The audit log of one relay node. Create it with :meth:`open`; end with :meth:`close`."""

    def __init__(
        self,
        *,
        directory: Path,
        settings: AuditLogSettings,
        node: str,
        clock: Callable[[], datetime],
        database: Database,
        keys: AuditKeys,
        lock_fd: int,
    ) -> None:
        self._directory = directory
        self._settings = settings
        self._node = node
        self._clock = clock
        self._db = database
        self._keys = keys
        self._lock_fd = lock_fd
        self._tree: MerkleTree | None = None  # used on the database thread only
        self._size = 0
        self._latest = _LatestCheckpoint(0, None, clock())
        self._queue: deque[_Pending] = deque()
        self._checkpoint_waiters: list[asyncio.Future[str | None]] = []
        self._wakeup = asyncio.Event()
        self._closing = False
        self._closed = False
        self._writer: asyncio.Task[None] | None = None
        self._timer: asyncio.Task[None] | None = None
        self._inbox_task: asyncio.Task[None] | None = None
        self._inbox_seen = 0  # highest inbox id already queued
        self.batches = 0  # committed append transactions (for tests and metrics)

    # --- opening and closing --------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        directory: Path,
        settings: AuditLogSettings,
        *,
        node: str,
        clock: Callable[[], datetime],
    ) -> AuditLog:
        """Open (creating on first use) the log in ``directory`` and record AUDIT_STARTED.

        Raises :class:`AuditUnavailable` when another process holds the log, a key is missing
        while the database exists, the stored tree disagrees with its latest checkpoint or
        with the witness directory (tampering or truncation: run ``relais audit verify``),
        or the database cannot be opened.
        """
        lock_fd, keys = await asyncio.to_thread(_prepare_directory, directory, settings)
        try:
            try:
                database = await Database.open(directory / DATABASE_FILE, MIGRATIONS)
            except Exception as exc:
                raise AuditUnavailable(f"cannot open the audit database: {exc}") from exc
            log = cls(
                directory=directory,
                settings=settings,
                node=node,
                clock=clock,
                database=database,
                keys=keys,
                lock_fd=lock_fd,
            )
        except BaseException:
            os.close(lock_fd)
            raise
        try:
            try:
                await log._db.run(log._load)
            except AuditError:
                raise
            except Exception as exc:
                raise AuditUnavailable(f"cannot open the audit log: {exc}") from exc
            log._writer = asyncio.create_task(log._write_loop(), name="audit-writer")
            log._timer = asyncio.create_task(log._checkpoint_timer(), name="audit-checkpoints")
            log._inbox_task = asyncio.create_task(log._inbox_poller(), name="audit-inbox")
            await log.record(log._lifecycle_record(AuditAction.AUDIT_STARTED), receipt=True)
        except BaseException:
            await log._shutdown()
            raise
        return log

    def _load(self, conn: sqlite3.Connection) -> None:
        # Database thread: settings, tree, and the checks that refuse to append to a log
        # whose stored state contradicts a signed checkpoint.
        sqlstore.configure(conn)
        origin = sqlstore.get_meta(conn, "origin")
        if origin is None:
            conn.execute("BEGIN IMMEDIATE")
            sqlstore.set_meta(conn, "origin", self._settings.origin)
            conn.execute("COMMIT")
        elif origin != self._settings.origin:
            raise AuditUnavailable(
                f"audit log origin is {origin!r}, configuration says {self._settings.origin!r}"
            )
        tree = self._tree_from(conn)
        self._size = tree.size
        latest = sqlstore.latest_checkpoint(conn)
        if latest is not None:
            size, note, signed_at = latest
            self._check_against(tree, note, "latest stored checkpoint")
            self._latest = _LatestCheckpoint(size, note, sqlstore.parse_time(signed_at))
        witness = self._settings.witness_dir
        note_elsewhere = read_witness_checkpoint(witness) if witness is not None else None
        if note_elsewhere is not None:
            self._check_against(tree, note_elsewhere, "witness checkpoint")
        self._tree = tree

    def _tree_from(self, conn: sqlite3.Connection) -> MerkleTree:
        try:
            return MerkleTree(SqlNodeStore(conn), sqlstore.log_size(conn))
        except KeyError as exc:
            raise AuditUnavailable(
                f"audit tree node {exc.args[0]} is missing: run `relais audit verify`"
            ) from None

    def _check_against(self, tree: MerkleTree, note: str, label: str) -> None:
        try:
            signed = parse_and_verify(note, self._keys.verifier_key, origin=self._settings.origin)
        except CheckpointError as exc:
            raise AuditUnavailable(f"{label} does not verify: {exc}") from exc
        if signed.size > tree.size:
            raise AuditUnavailable(
                f"audit log truncated: {label} has size {signed.size}, the log {tree.size}"
            )
        try:
            matches = tree.root(signed.size) == signed.root_hash
        except KeyError:
            matches = False
        if not matches:
            raise AuditUnavailable(
                f"audit log does not match the {label} at size {signed.size}: "
                "run `relais audit verify`"
            )

    def _lifecycle_record(self, action: AuditAction) -> AuditRecord:
        return AuditRecord(
            action=action,
            outcome=Outcome.SUCCESS,
            now=self._clock(),
            actor=Actor.system(self._node),
            observer=self._node,
            # Which key signs this log, and how long the log was when this happened.
            detail=(
                ("key_id", self._keys.verifier_key.split("+")[1]),
                ("count", str(self._size)),
            ),
        )

    async def close(self) -> None:
        """Record AUDIT_STOPPED, write what is queued, sign a final checkpoint, close."""
        if self._closing:
            return
        self._closing = True
        if self._writer is not None and not self._writer.done():
            stopped = self._enqueue(self._lifecycle_record(AuditAction.AUDIT_STOPPED), True)
            try:
                await stopped
            except AuditUnavailable as exc:
                logger.warning("audit log closed without its AUDIT_STOPPED event: %s", exc)
        await self._shutdown()

    async def _shutdown(self) -> None:
        self._closing = True
        if self._inbox_task is not None:
            self._inbox_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._inbox_task
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
        if self._writer is not None:
            self._wakeup.set()
            await self._writer
        for pending in self._queue:
            _fail(pending.future, AuditUnavailable("audit log is closed"))
        self._queue.clear()
        for waiter in self._checkpoint_waiters:
            _fail(waiter, AuditUnavailable("audit log is closed"))
        self._checkpoint_waiters.clear()
        if not self._closed:
            self._closed = True
            await self._db.close()
            os.close(self._lock_fd)

    # --- appending --------------------------------------------------------------------------

    async def record(self, record: AuditRecord, *, receipt: bool = False) -> Receipt | None:
        """Append ``record`` durably; return once it is committed.

        With ``receipt=True`` the batch ends with a freshly signed checkpoint covering the
        entry, returned in the :class:`Receipt`. Raises :class:`AuditUnavailable` (503) when
        the entry could not be written: the caller must then refuse the audited action.
        Cancelling the caller does not withdraw the record: it is written all the same.
        """
        if self._closing:
            raise AuditUnavailable("audit log is closed")
        return await self._enqueue(record, receipt)

    def _enqueue(self, record: AuditRecord, receipt: bool) -> asyncio.Future[Receipt | None]:
        future: asyncio.Future[Receipt | None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(record, receipt, future))
        self._wakeup.set()
        return future

    async def _request_checkpoint(self) -> str | None:
        if self._writer is None or self._writer.done():
            raise AuditUnavailable("audit log is closed")
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._checkpoint_waiters.append(future)
        self._wakeup.set()
        return await future

    async def drain_inbox(self) -> int:
        """Queue the events other processes left in the inbox; return how many were queued.

        Each is appended by the writer, which deletes its inbox row in the same transaction.
        """

        def fetch(conn: sqlite3.Connection) -> list[tuple[int, str]]:
            rows = conn.execute(
                "SELECT id, record FROM inbox WHERE id > ? ORDER BY id LIMIT ?",
                (self._inbox_seen, INBOX_BATCH),
            ).fetchall()
            return [(int(row[0]), str(row[1])) for row in rows]

        rows = await self._db.run(fetch)
        loop = asyncio.get_running_loop()
        for inbox_id, text in rows:
            self._inbox_seen = max(self._inbox_seen, inbox_id)
            try:
                record = inbox.record_from_json(text)
            except AuditError as exc:
                logger.error("audit inbox entry %d is malformed and is dropped: %s", inbox_id, exc)
                await self._db.execute("DELETE FROM inbox WHERE id = ?", (inbox_id,))
                continue
            future: asyncio.Future[Receipt | None] = loop.create_future()
            future.add_done_callback(_log_inbox_failure)
            self._queue.append(_Pending(record, False, future, inbox_id))
        if rows:
            self._wakeup.set()
        return len(rows)

    async def _inbox_poller(self) -> None:
        while not self._closing:
            try:
                await self.drain_inbox()
            except Exception as exc:  # keep polling: the next tick may succeed
                logger.error("cannot read the audit inbox: %s", exc)
            await asyncio.sleep(INBOX_POLL_SECONDS)

    async def _write_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue or self._checkpoint_waiters:
                count = min(len(self._queue), MAX_BATCH)
                batch = [self._queue.popleft() for _ in range(count)]
                waiters, self._checkpoint_waiters = self._checkpoint_waiters, []
                await self._write(batch, waiters)
            if self._closing and not self._queue:
                return

    async def _write(
        self, batch: list[_Pending], waiters: list[asyncio.Future[str | None]]
    ) -> None:
        now = self._clock()
        elapsed = (now - self._latest.at).total_seconds()
        force = (
            bool(waiters)
            or any(p.receipt for p in batch)
            or elapsed >= self._settings.checkpoint_every_seconds
        )
        records = [p.record for p in batch]
        inbox_ids = [p.inbox_id for p in batch if p.inbox_id is not None]
        try:
            result = await self._db.run(
                lambda conn: self._write_batch(conn, records, force, now, inbox_ids)
            )
        except Exception as exc:
            logger.error("audit append of %d event(s) failed: %s", len(batch), exc)
            for pending in batch:
                _fail(pending.future, _unavailable(exc))
            for waiter in waiters:
                _fail(waiter, _unavailable(exc))
            return
        self.batches += 1
        self._size = result.size
        if result.note is not None:
            self._latest = _LatestCheckpoint(result.size, result.note, now)
        for pending, outcome in zip(batch, result.outcomes, strict=True):
            if isinstance(outcome, AuditError):
                _fail(pending.future, outcome)
            elif pending.receipt and result.note is not None:
                leaf = result.leaves[outcome].hex()
                _set(pending.future, Receipt(outcome, leaf, result.note))
            else:
                _set(pending.future, None)
        for waiter in waiters:
            _set(waiter, self._latest.note)

    def _write_batch(
        self,
        conn: sqlite3.Connection,
        records: list[AuditRecord],
        force: bool,
        now: datetime,
        inbox_ids: Sequence[int] = (),
    ) -> _BatchResult:
        # Database thread. Seal at the next indices, then ONE transaction for entries, tree
        # nodes and the checkpoint; the tree object adopts the nodes before COMMIT so the
        # checkpoint can sign the new root, and is rebuilt from storage if anything fails.
        tree = self._tree if self._tree is not None else self._tree_from(conn)
        self._tree = None  # until this batch is known committed (or rolled back)
        result = _BatchResult()
        rows: list[sqlstore.EntryRow] = []
        salts = os.urandom(SALT_SIZE * len(records))
        for position, record in enumerate(records):
            index = tree.size + len(rows)
            try:
                salt = salts[position * SALT_SIZE : (position + 1) * SALT_SIZE]
                sealed = seal_event(record, index=index, salt=salt, check=not rows)
            except AuditError as exc:  # a bad record fails alone, not its batch
                result.outcomes.append(exc)
                continue
            result.outcomes.append(index)
            result.leaves[index] = sealed.leaf_hash
            rows.append(
                sqlstore.EntryRow(
                    index=index,
                    recorded_at=sqlstore.format_time(record.now),
                    action=record.action.value,
                    outcome=record.outcome.value,
                    actor=record.actor.id,
                    patient=record.patient,
                    retention=retention_class(record.action),
                    salt=sealed.salt,
                    content=sealed.content,
                    commitment=sealed.commitment,
                    leaf_hash=sealed.leaf_hash,
                    resources=tuple((e.kind.value, e.id) for e in record.entities),
                )
            )
        if not rows and (tree.size == self._latest.size or not force):
            self._tree = tree  # nothing to write (a checkpoint was asked, none is due)
            result.size = tree.size
            return result
        nodes = tree.plan_append([row.leaf_hash for row in rows])
        conn.execute("BEGIN IMMEDIATE")
        try:
            sqlstore.insert_entries(conn, rows)
            sqlstore.insert_nodes(conn, nodes)
            # Handed-over events leave the inbox in the transaction that appends them.
            conn.executemany("DELETE FROM inbox WHERE id = ?", [(i,) for i in inbox_ids])
            tree.commit_append(nodes)
            uncovered = tree.size - self._latest.size
            if uncovered > 0 and (force or uncovered >= self._settings.checkpoint_every_events):
                body = Checkpoint(self._settings.origin, tree.size, tree.root())
                result.note = sign(body, self._keys.name, self._keys.signing_key)
                sqlstore.insert_checkpoint(conn, tree.size, result.note, sqlstore.format_time(now))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            with contextlib.suppress(Exception):
                self._tree = self._tree_from(conn)
            raise
        self._tree = tree
        result.size = tree.size
        witness = self._settings.witness_dir
        if result.note is not None and witness is not None:
            try:
                write_witness_checkpoint(witness, tree.size, result.note)
            except OSError as exc:
                # The entries are durable; the witness copy only strengthens truncation
                # detection. Do not refuse the action, but say so loudly.
                logger.error("cannot write the audit checkpoint to %s: %s", witness, exc)
        return result

    async def _checkpoint_timer(self) -> None:
        period = self._settings.checkpoint_every_seconds
        while True:
            await asyncio.sleep(period)
            if self._size > self._latest.size and not self._closing:
                try:
                    await self._request_checkpoint()
                except AuditUnavailable as exc:
                    logger.error("periodic audit checkpoint failed: %s", exc)

    # --- keys and references ----------------------------------------------------------------

    @property
    def verifier_key(self) -> str:
        """Note verifier key ``<name>+<hex key id>+<base64>`` of the checkpoints."""
        return self._keys.verifier_key

    @property
    def origin(self) -> str:
        """Checkpoint origin line of this log."""
        return self._settings.origin

    @property
    def size(self) -> int:
        """Number of committed entries."""
        return self._size

    @property
    def database(self) -> Database:
        """The underlying database (maintenance and fault-injection tests)."""
        return self._db

    def patient_reference(self, identifier: str) -> str:
        """Keyed hash of a patient identifier with this log's patient key."""
        return patient_reference(identifier, self._keys.patient_key)

    def search_reference(self, criteria: Mapping[str, str]) -> str:
        """Keyed hash of search criteria with this log's patient key."""
        return search_reference(criteria, self._keys.patient_key)

    # --- reading ----------------------------------------------------------------------------

    async def latest_checkpoint(self) -> str | None:
        """The latest signed checkpoint note (None before the first one)."""
        return self._latest.note

    async def _signed_size(self, needed: int) -> int:
        # A checkpoint covering `needed` leaves, signing a fresh one if the latest is older.
        if self._latest.size < needed:
            await self._request_checkpoint()
        return self._latest.size

    async def _on_tree(self, work: Callable[[sqlite3.Connection, MerkleTree], T]) -> T:
        def call(conn: sqlite3.Connection) -> T:
            if self._tree is None:
                self._tree = self._tree_from(conn)
            try:
                return work(conn, self._tree)
            except KeyError as exc:
                raise AuditUnavailable(
                    f"audit tree node {exc.args[0]} is missing: run `relais audit verify`"
                ) from None

        return await self._call(call)

    async def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise AuditUnavailable("audit log is closed")
        try:
            return await self._db.run(work)
        except AuditError:
            raise
        except Exception as exc:
            raise AuditUnavailable(f"audit log unavailable: {exc}") from exc

    async def inclusion_proof(self, index: int, size: int | None = None) -> dict[str, object]:
        """RFC 9162 inclusion proof of entry ``index`` in the tree of ``size`` leaves.

        Without ``size``, the proof is against the latest checkpoint (signed now if it does
        not cover ``index`` yet). Returns ``{index, size, leaf_hash, proof: [hex],
        checkpoint}``; ``checkpoint`` is the signed note of that size, or None when no
        checkpoint was signed at exactly that size. ``ProofRequestError`` (400) when out
        of range.
        """
        if size is None and 0 <= index < self._size:
            size = await self._signed_size(index + 1)

        def work(conn: sqlite3.Connection, tree: MerkleTree) -> dict[str, object]:
            tree_size = tree.size if size is None else size
            proof = tree.inclusion_proof(index, tree_size)
            return {
                "index": index,
                "size": tree_size,
                "leaf_hash": tree.leaf(index).hex(),
                "proof": [node.hex() for node in proof],
                "checkpoint": sqlstore.checkpoint_at(conn, tree_size),
            }

        return await self._on_tree(work)

    async def consistency_proof(self, first: int, second: int | None = None) -> dict[str, object]:
        """RFC 9162 consistency proof between tree sizes ``first`` and ``second`` (default:
        the latest checkpoint, signed now if it is smaller than ``first``). Returns
        ``{first, second, proof: [hex], first_checkpoint, checkpoint}`` (notes or None)."""
        if second is None and 0 <= first <= self._size:
            second = await self._signed_size(max(first, 1))

        def work(conn: sqlite3.Connection, tree: MerkleTree) -> dict[str, object]:
            new_size = tree.size if second is None else second
            proof = tree.consistency_proof(first, new_size)
            return {
                "first": first,
                "second": new_size,
                "proof": [node.hex() for node in proof],
                "first_checkpoint": sqlstore.checkpoint_at(conn, first),
                "checkpoint": sqlstore.checkpoint_at(conn, new_size),
            }

        return await self._on_tree(work)

    async def search(
        self,
        *,
        actor: str | None = None,
        patient: str | None = None,
        resource: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        after_index: int | None = None,
        before_index: int | None = None,
        newest_first: bool = False,
    ) -> list[StoredEvent]:
        """Entries matching every given criterion (``patient`` is already a reference,
        ``resource`` an entity id; ``since`` inclusive, ``until`` exclusive), in index order
        (``newest_first`` reverses it), at most ``limit``. Page with ``after_index`` /
        ``before_index``. Erased entries come back with ``event=None``."""
        criteria = sqlstore.SearchFilter(
            actor=actor,
            patient=patient,
            resource=resource,
            action=action,
            outcome=outcome,
            since=None if since is None else sqlstore.format_time(since),
            until=None if until is None else sqlstore.format_time(until),
            after_index=after_index,
            before_index=before_index,
            newest_first=newest_first,
            limit=limit,
        )
        return await self._call(lambda conn: sqlstore.search(conn, criteria))

    async def entries_after(self, index: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` ``(index, canonical event)`` after ``index``, erased ones skipped
        (for the syslog forwarder)."""
        return await self._call(lambda conn: sqlstore.entries_after(conn, index, limit))

    async def get_cursor(self, name: str) -> int:
        """Durable position of consumer ``name`` (-1 if none)."""
        return await self._call(lambda conn: sqlstore.get_cursor(conn, name))

    async def set_cursor(self, name: str, index: int) -> None:
        """Durably store the position of consumer ``name``."""

        def work(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                sqlstore.set_cursor(conn, name, index)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise

        await self._call(work)

    async def erase_expired(self, now: datetime) -> int:
        """Erase the content and salt of entries past their retention period; return how
        many. Commitments and leaf hashes stay, so the tree and proofs still verify; the WAL
        is then checkpointed and truncated so the erased bytes leave the files (with
        ``secure_delete`` they are zeroed, not just unlinked from the b-tree)."""
        access_before = sqlstore.format_time(
            now - timedelta(days=self._settings.retention_access_days)
        )
        security_before = sqlstore.format_time(
            now - timedelta(days=self._settings.retention_security_days)
        )
        erased_at = sqlstore.format_time(now)

        def batch(conn: sqlite3.Connection) -> int:
            conn.execute("BEGIN IMMEDIATE")
            try:
                count = sqlstore.erase_before(
                    conn,
                    access_before=access_before,
                    security_before=security_before,
                    erased_at=erased_at,
                    limit=ERASE_BATCH,
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
            return count

        total = 0
        while True:
            # Small transactions: appends queued meanwhile are not held up for long.
            count = await self._call(batch)
            total += count
            if count < ERASE_BATCH:
                break
        if total:
            # fetchall: a PRAGMA left at its first row keeps a write statement open, and a
            # later COMMIT fails with "SQL statements in progress".
            await self._call(
                lambda conn: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            )
        return total


def _create_database(path: Path) -> None:
    # Created 0600 before SQLite opens it (SQLite gives -wal/-shm the same mode), with a
    # page size chosen before WAL mode fixes it: an entry is ~2.3 KB, so 4 KB pages would
    # hold one entry each and waste 40 % of the file; 8 KB pages hold three (measured: 3.0
    # instead of 4.4 KB per entry, and faster appends than with 4 or 16 KB pages).
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
    conn = sqlite3.connect(path)
    try:
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}").fetchall()
        conn.execute("PRAGMA journal_mode=WAL").fetchall()
    finally:
        conn.close()


def _prepare_directory(directory: Path, settings: AuditLogSettings) -> tuple[int, AuditKeys]:
    # Blocking file work of open(), run in a thread: directory, single-writer lock, keys.
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock_fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise AuditUnavailable(f"cannot use the audit directory {directory}: {exc}") from exc
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AuditUnavailable(
                f"the audit log in {directory} is open in another process"
            ) from None
        db_path = directory / DATABASE_FILE
        exists = db_path.exists() and db_path.stat().st_size > 0
        # Keys first: a database never exists without the keys that sign and search it.
        keys = load_keys(directory, settings.origin, create=not exists)
        if keys.name != settings.origin:
            # C2SP: the key name SHOULD be the origin; `audit verify` relies on it.
            raise AuditUnavailable(
                f"the audit signing key is named {keys.name!r} but the origin is "
                f"{settings.origin!r}: keep the origin the log was created with"
            )
        if not exists:
            _create_database(db_path)
    except BaseException:
        os.close(lock_fd)
        raise
    return lock_fd, keys
