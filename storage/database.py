"""SQL store: SQLite in WAL mode with ``synchronous=FULL``, behind one writer thread.

Why one thread: sqlite3 connections are not shareable across threads, and a single
writer is what SQLite serialises to anyway; keeping every write on one thread keeps
the event loop free and the ordering of writes obvious. Plain queries
(:meth:`Database.read`, :meth:`~Database.fetchone`, :meth:`~Database.fetchall`) run on a
second, query-only connection with a thread of its own: in WAL mode a reader sees the last
commit without waiting for the writer, so a lookup is not queued behind other callers'
commits and their fsync (measured: 5-6 ms per lookup under 20 concurrent SMTP
deliveries, issue 4). A read never sees a write that has not returned to its caller.

``synchronous=FULL`` makes a committed transaction survive power loss in WAL mode
(sqlite.org/pragma.html), which is what lets us acknowledge only after commit.

The SQL we write stays portable (no SQLite-only syntax in queries outside this
module) so that a PostgreSQL backend can serve several nodes later.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import re
import sqlite3
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from storage.errors import MigrationError, StorageError

T = TypeVar("T")
Params = Sequence[Any]

DEFAULT_MIGRATIONS = Path(__file__).with_name("migrations")
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=5000")
    # Group commits run each caller's work in a SAVEPOINT, and SQLite then keeps a statement
    # journal per statement: in a temp file by default (/var/tmp/etilqs_*, measured ~50
    # writes per inbound mail). They are small and short-lived: memory is enough.
    conn.execute("PRAGMA temp_store=MEMORY")
    return conn


class _DatabaseThread:
    """One thread that runs calls in order, each answered on the caller's event loop.

    What ``loop.run_in_executor`` with a one-thread ``ThreadPoolExecutor`` did, for less: no
    concurrent future with its condition and callbacks, no work item, no idle semaphore.
    Every message stored costs several such trips, on the event loop and on the database
    threads (measured, issue 4). As with an executor, a call whose caller was cancelled
    before it started does not run; one already running completes. Daemon: a relay stopping
    without :meth:`Database.close` does not wait on it (SQLite rolls back what was not
    committed).
    """

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[_Call[Any] | None] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def call(self, work: Callable[[], T]) -> asyncio.Future[T]:
        if self._closed:
            raise RuntimeError("the database is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put((work, future, loop))
        return future

    def close(self, *, wait: bool) -> None:
        """Stop after the calls already queued."""
        if not self._closed:
            self._closed = True
            self._calls.put(None)
        if wait and self._thread is not threading.current_thread():
            self._thread.join()

    def _serve(self) -> None:
        while (item := self._calls.get()) is not None:
            work, future, loop = item
            if future.cancelled():  # read across threads: at worst the work runs for nothing
                continue
            try:
                result = work()
            except BaseException as exc:  # handed to the caller, whatever it is
                self._answer(loop, _fail, future, exc)
            else:
                self._answer(loop, _succeed, future, result)

    @staticmethod
    def _answer(loop: asyncio.AbstractEventLoop, how: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            loop.call_soon_threadsafe(how, *args)


_Call = tuple[Callable[[], T], "asyncio.Future[T]", asyncio.AbstractEventLoop]


def _succeed(future: asyncio.Future[T], result: T) -> None:
    if not future.done():  # cancelled while the work ran
        future.set_result(result)


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


def migration_files(directory: Path) -> list[tuple[int, Path]]:
    """Numbered migration files of ``directory`` in order; a malformed name is an error."""
    found: list[tuple[int, Path]] = []
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_NAME.fullmatch(path.name)
        if match is None:
            raise MigrationError(f"migration file {path.name} is not named NNNN_description.sql")
        found.append((int(match.group(1)), path))
    numbers = [number for number, _ in found]
    if len(set(numbers)) != len(numbers):
        raise MigrationError(f"two migration files in {directory} share a number")
    return found


def apply_migrations(conn: sqlite3.Connection, directory: Path) -> list[int]:
    """Apply every migration of ``directory`` not yet recorded; return those applied."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )
    done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
    applied: list[int] = []
    for number, path in migration_files(directory):
        if number in done:
            continue
        script = path.read_text(encoding="utf-8")
        now = datetime.now(UTC).isoformat()
        try:
            # One transaction per migration: it applies whole or not at all. The name
            # matched _MIGRATION_NAME and the time is ours: nothing foreign is interpolated.
            conn.executescript(
                "BEGIN IMMEDIATE;\n"  # noqa: S608
                + script
                + "\n;INSERT INTO schema_migrations (version, name, applied_at) VALUES "
                + f"({number}, '{path.name}', '{now}');\nCOMMIT;"
            )
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise MigrationError(f"migration {path.name} failed: {exc}") from exc
        applied.append(number)
    return applied


class Database:
    """An SQLite database used from asyncio; every call runs on the database thread."""

    def __init__(
        self,
        path: Path,
        conn: sqlite3.Connection,
        writer: _DatabaseThread,
        reader: sqlite3.Connection,
        reader_thread: _DatabaseThread,
    ):
        self.path = path
        self._conn = conn
        self._writer = writer
        self._reader = reader
        self._reader_thread = reader_thread

    @classmethod
    async def open(cls, path: Path, migrations: Path = DEFAULT_MIGRATIONS) -> Database:
        """Open (creating if needed) the database at ``path`` and apply pending migrations."""
        writer = _DatabaseThread("sqlite")
        reader_thread = _DatabaseThread("sqlite-read")

        def setup() -> sqlite3.Connection:
            conn = _connect(path)
            apply_migrations(conn, migrations)
            return conn

        def setup_reader() -> sqlite3.Connection:
            reader = _connect(path)
            reader.execute("PRAGMA query_only=ON")  # a write sent here is a bug: refuse it
            return reader

        try:
            conn = await writer.call(setup)
            try:
                reader = await reader_thread.call(setup_reader)
            except BaseException:
                await writer.call(conn.close)
                raise
        except sqlite3.Error as exc:
            writer.close(wait=False)
            reader_thread.close(wait=False)
            raise StorageError(f"cannot open database {path}: {exc}") from exc
        except BaseException:
            writer.close(wait=False)
            reader_thread.close(wait=False)
            raise
        return cls(path, conn, writer, reader, reader_thread)

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work(connection)`` on the writer thread (no transaction implied)."""
        return await self._call(self._writer, self._conn, work)

    async def read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run the queries of ``work(connection)`` on the reader thread, in one read
        transaction: every query sees the same state, which includes every transaction
        committed before the call (a commit landing between two of its queries is not seen
        by either). It may not write."""

        def in_snapshot(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN")
            try:
                return work(conn)
            finally:
                if conn.in_transaction:  # a read transaction: nothing to roll back
                    conn.execute("COMMIT")

        return await self._on_reader(in_snapshot)

    async def _on_reader(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await self._call(self._reader_thread, self._reader, work)

    @staticmethod
    async def _call(
        thread: _DatabaseThread,
        conn: sqlite3.Connection,
        work: Callable[[sqlite3.Connection], T],
    ) -> T:
        def call() -> T:
            try:
                return work(conn)
            except sqlite3.OperationalError as exc:
                # Disk full, read-only file, locked: the caller answers 503.
                raise StorageError(f"database unavailable: {exc}") from exc

        return await thread.call(call)

    async def transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` inside ``BEGIN IMMEDIATE ... COMMIT``; roll back on any error.

        When this returns, the transaction is durable (WAL + synchronous=FULL).
        """

        def in_transaction(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        return await self.run(in_transaction)

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Execute one statement in its own transaction; return the affected row count."""
        return await self.transaction(lambda conn: conn.execute(sql, params).rowcount)

    async def fetchone(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        """Return the first row of a query, or None (on the reader: one statement is its own
        snapshot, no BEGIN/COMMIT needed)."""
        row: sqlite3.Row | None = await self._on_reader(
            lambda conn: conn.execute(sql, params).fetchone()
        )
        return row

    async def fetchall(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        """Return every row of a query (on the reader, as :meth:`fetchone`)."""
        return await self._on_reader(lambda conn: conn.execute(sql, params).fetchall())

    async def integrity_check(self) -> str:
        """``PRAGMA integrity_check``: "ok" when the file is sound."""
        row = await self.fetchone("PRAGMA integrity_check")
        return str(row[0]) if row is not None else "no answer"

    async def close(self) -> None:
        """Close the connections (after pending calls) and stop the database threads."""
        await self._on_reader(lambda conn: conn.close())
        self._reader_thread.close(wait=True)
        await self.run(lambda conn: conn.close())
        self._writer.close(wait=True)
