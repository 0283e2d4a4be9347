import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from storage.database import Database
from storage.errors import MigrationError, StorageError


async def test_open_applies_migrations_once_with_durable_pragmas(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "relais.db")
    versions = [row[0] for row in await db.fetchall("SELECT version FROM schema_migrations")]
    assert versions and versions == sorted(versions)
    assert (await db.fetchone("PRAGMA journal_mode"))[0] == "wal"  # type: ignore[index]
    assert (await db.fetchone("PRAGMA synchronous"))[0] == 2  # type: ignore[index]  # FULL
    # Statement journals of the per-message savepoints stay in memory, not in /var/tmp.
    assert (await db.fetchone("PRAGMA temp_store"))[0] == 2  # type: ignore[index]  # MEMORY
    await db.close()
    db = await Database.open(tmp_path / "relais.db")
    again = [row[0] for row in await db.fetchall("SELECT version FROM schema_migrations")]
    assert again == versions
    assert await db.integrity_check() == "ok"
    await db.close()


async def test_failed_migration_applies_nothing(tmp_path: Path) -> None:
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "0001_ok.sql").write_text("CREATE TABLE a (x INTEGER);", encoding="utf-8")
    (migrations / "0002_broken.sql").write_text(
        "CREATE TABLE b (x INTEGER); INSERT INTO missing VALUES (1);", encoding="utf-8"
    )
    with pytest.raises(MigrationError, match=r"0002_broken\.sql failed"):
        await Database.open(tmp_path / "x.db", migrations)
    conn = sqlite3.connect(tmp_path / "x.db")
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert "a" in tables and "b" not in tables
    conn.close()


async def test_badly_named_migration_is_refused(tmp_path: Path) -> None:
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "first.sql").write_text("SELECT 1;", encoding="utf-8")
    with pytest.raises(MigrationError, match="NNNN_description"):
        await Database.open(tmp_path / "x.db", migrations)


async def test_transaction_rolls_back_on_error(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "relais.db")

    def insert_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO teams (id, address, name, kind, created_at) VALUES (?, ?, ?, ?, ?)",
            ("t1", "msp-a", "MSP A", "msp", "2026-01-01"),
        )
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await db.transaction(insert_then_fail)
    assert await db.fetchall("SELECT * FROM teams") == []
    await db.close()


async def test_read_only_database_raises_storage_error(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "relais.db")
    await db.run(lambda conn: conn.execute("PRAGMA query_only=ON"))
    with pytest.raises(StorageError, match="database unavailable"):
        await db.execute(
            "INSERT INTO teams (id, address, name, kind, created_at)"
            " VALUES ('t', 'a', 'n', 'msp', 'x')"
        )
    await db.close()


async def test_reads_do_not_wait_for_the_writer_and_see_only_commits(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "relais.db")
    await db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL)")
    await db.execute("INSERT INTO notes (text) VALUES ('committed')")
    inside, release = threading.Event(), threading.Event()

    def slow_write(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO notes (text) VALUES ('pending')")
        inside.set()
        release.wait(10)  # the writer thread is held mid-transaction

    writing = asyncio.ensure_future(db.transaction(slow_write))
    try:
        await asyncio.to_thread(inside.wait, 10)
        # Answered while the writer is busy, from the last commit only.
        rows = await asyncio.wait_for(db.fetchall("SELECT text FROM notes ORDER BY id"), 5)
        assert [row["text"] for row in rows] == ["committed"]
    finally:
        release.set()
        await writing
    rows = await db.read(lambda conn: conn.execute("SELECT text FROM notes ORDER BY id").fetchall())
    assert [row["text"] for row in rows] == ["committed", "pending"]
    await db.close()


async def test_the_read_connection_refuses_writes(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "relais.db")
    await db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY)")
    with pytest.raises(StorageError, match="readonly"):
        await db.read(lambda conn: conn.execute("INSERT INTO notes DEFAULT VALUES"))
    assert await db.fetchall("SELECT id FROM notes") == []
    await db.close()


async def test_the_queries_of_one_read_see_one_state(tmp_path: Path) -> None:
    """A commit landing between two queries of one read is seen by neither (the thread view
    reads messages, then their attachments and deliveries: they must agree)."""
    db = await Database.open(tmp_path / "relais.db")
    await db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL)")
    await db.execute("INSERT INTO notes (text) VALUES ('first')")
    loop = asyncio.get_running_loop()

    def two_queries(conn: sqlite3.Connection) -> tuple[int, int]:
        before = conn.execute("SELECT count(*) FROM notes").fetchone()[0]
        insert = db.execute("INSERT INTO notes (text) VALUES ('second')")
        asyncio.run_coroutine_threadsafe(insert, loop).result(10)  # committed by the writer
        after = conn.execute("SELECT count(*) FROM notes").fetchone()[0]
        return before, after

    assert await db.read(two_queries) == (1, 1)
    assert (await db.fetchone("SELECT count(*) AS n FROM notes"))["n"] == 2  # type: ignore[index]
    await db.close()


async def test_calls_run_in_order_and_a_cancelled_waiting_call_does_not_run(
    tmp_path: Path,
) -> None:
    db = await Database.open(tmp_path / "relais.db")
    await db.execute("CREATE TABLE log (n INTEGER)")
    release = threading.Event()

    def blocked(conn: sqlite3.Connection) -> None:
        release.wait(10)

    busy = asyncio.ensure_future(db.run(blocked))
    first = asyncio.ensure_future(db.execute("INSERT INTO log VALUES (1)"))
    cancelled = asyncio.ensure_future(db.execute("INSERT INTO log VALUES (2)"))
    last = asyncio.ensure_future(db.execute("INSERT INTO log VALUES (3)"))
    await asyncio.sleep(0.05)
    cancelled.cancel()
    release.set()
    await asyncio.gather(busy, first, last)
    assert cancelled.cancelled()
    assert [row[0] for row in await db.fetchall("SELECT n FROM log ORDER BY rowid")] == [1, 3]
    await db.close()


async def test_an_error_in_a_call_reaches_its_caller_only(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "relais.db")

    def broken(conn: sqlite3.Connection) -> None:
        raise ValueError("not a database problem")

    with pytest.raises(ValueError, match="not a database problem"):
        await db.run(broken)
    with pytest.raises(StorageError, match="database unavailable"):
        await db.run(lambda conn: conn.execute("SELECT * FROM no_such_table"))
    assert await db.integrity_check() == "ok"  # both threads still serve
    await db.close()
    with pytest.raises(RuntimeError, match="closed"):
        await db.fetchone("SELECT 1")
