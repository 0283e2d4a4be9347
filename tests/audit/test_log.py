"""The durable audit log: appends, group commit, receipts, proofs, faults, tampering, retention."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import sqlite3
import stat
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fhir.resources.R4B.bundle import Bundle

from relay.audit import checkpoint as cp
from relay.audit import events as ev
from relay.audit import merkle, sqlstore
from relay.audit.commands import export_command, verify_command
from relay.audit.errors import AuditUnavailable, ProofRequestError
from relay.audit.keys import PATIENT_KEY_FILE, SIGNING_KEY_FILE, VERIFIER_KEY_FILE
from relay.audit.log import (
    DATABASE_FILE,
    AuditLog,
    AuditLogSettings,
    Receipt,
    StoredEvent,
    retention_class,
    seal_event,
)

ORIGIN = "relais.test/audit"
NODE = "relais-1"
T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
INS = "1 85 05 78 006 084 36"


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def download(
    n: int,
    *,
    actor: str | None = None,
    patient: str | None = None,
    when: datetime = T0,
    action: ev.AuditAction = ev.AuditAction.ATTACHMENT_DOWNLOADED,
    outcome: ev.Outcome = ev.Outcome.SUCCESS,
) -> ev.AuditRecord:
    """A download of attachment ``att-<n>`` by ``user-<n>`` (unique markers per event)."""
    return ev.AuditRecord(
        action,
        outcome,
        when,
        ev.Actor.professional(actor or f"user-{n:05d}", "nurse"),
        NODE,
        network_address="192.0.2.10",
        entities=(ev.EntityRef(ev.ResourceKind.ATTACHMENT, f"att-{n:05d}"),),
        patient=patient,
        detail=(("tls_version", "TLSv1.3"),),
    )


@dataclass
class Env:
    root: Path
    clock: FakeClock

    @property
    def audit_dir(self) -> Path:
        return self.root / "audit"

    @property
    def witness(self) -> Path:
        return self.root / "witness"

    def settings(self, **overrides: object) -> AuditLogSettings:
        values: dict[str, object] = {"origin": ORIGIN, "witness_dir": self.witness}
        values.update(overrides)
        return AuditLogSettings(**values)  # type: ignore[arg-type]

    async def open(self, **overrides: object) -> AuditLog:
        return await AuditLog.open(
            self.audit_dir, self.settings(**overrides), node=NODE, clock=self.clock
        )

    def sql(self) -> sqlite3.Connection:
        """A plain read-write connection to the (closed) log, as an administrator would use."""
        return sqlite3.connect(self.audit_dir / DATABASE_FILE, isolation_level=None)

    async def verify(self, **kwargs: object) -> tuple[bool, list[str]]:
        return await verify_command(self.audit_dir, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path, FakeClock())


@pytest.fixture
async def log(env: Env) -> AsyncIterator[AuditLog]:
    audit_log = await env.open()
    yield audit_log
    await audit_log.close()


def checked(note: str, key: str) -> cp.Checkpoint:
    return cp.parse_and_verify(note, key, origin=ORIGIN)


def hexes(values: object) -> list[bytes]:
    assert isinstance(values, list)
    return [bytes.fromhex(v) for v in values]


async def assert_included(log: AuditLog, index: int, note: str) -> None:
    """Entry ``index`` is provably in the tree signed by ``note``."""
    head = checked(note, log.verifier_key)
    proof = await log.inclusion_proof(index, head.size)
    assert proof["size"] == head.size
    leaf = bytes.fromhex(str(proof["leaf_hash"]))
    merkle.verify_inclusion(index, head.size, leaf, hexes(proof["proof"]), head.root_hash)


# --- appending, proofs, receipts ------------------------------------------------------------


async def test_open_records_audit_started_with_a_checkpoint(log: AuditLog) -> None:
    assert log.size == 1
    (started,) = await log.search()
    assert started.action == "audit_started" and started.index == 0
    note = await log.latest_checkpoint()
    assert note is not None and checked(note, log.verifier_key).size == 1


async def test_appended_entries_are_provable_against_the_checkpoint(log: AuditLog) -> None:
    first_note = await log.latest_checkpoint()
    assert first_note is not None
    for n in range(20):
        assert await log.record(download(n)) is None
    assert log.size == 21
    for index in (0, 1, 7, 20):
        proof = await log.inclusion_proof(index)  # signs a checkpoint covering the entry
        note = proof["checkpoint"]
        assert isinstance(note, str)
        head = checked(note, log.verifier_key)
        assert head.size == proof["size"] == (1 if index == 0 else 21)
        leaf = bytes.fromhex(str(proof["leaf_hash"]))
        merkle.verify_inclusion(index, head.size, leaf, hexes(proof["proof"]), head.root_hash)
    # The stored leaf is SHA-256(0x00 || SHA-256(salt || canonical event)).
    (entry,) = await log.search(actor="user-00003")
    assert entry.event is not None and entry.event["id"] == str(entry.index)
    consistency = await log.consistency_proof(1)
    old, new = (
        checked(first_note, log.verifier_key),
        checked(str(consistency["checkpoint"]), log.verifier_key),
    )
    assert consistency["first_checkpoint"] == first_note
    merkle.verify_consistency(
        old.size, new.size, old.root_hash, new.root_hash, hexes(consistency["proof"])
    )
    with pytest.raises(ProofRequestError):
        await log.inclusion_proof(21, 21)
    with pytest.raises(ProofRequestError):
        await log.consistency_proof(5, 99)


async def test_receipt_proves_inclusion_immediately(log: AuditLog) -> None:
    await log.record(download(1))
    receipt = await log.record(download(2), receipt=True)
    assert isinstance(receipt, Receipt)
    assert receipt.index == 2
    head = checked(receipt.checkpoint, log.verifier_key)
    assert head.size > receipt.index
    assert await log.latest_checkpoint() == receipt.checkpoint
    await assert_included(log, receipt.index, receipt.checkpoint)
    proof = await log.inclusion_proof(receipt.index, head.size)
    assert proof["leaf_hash"] == receipt.leaf_hash
    assert proof["checkpoint"] == receipt.checkpoint
    # Serialisation pairs.
    header = receipt.to_header()
    assert header.isascii() and "\n" not in header and "=" not in header
    assert Receipt.from_header(header) == receipt
    assert Receipt.from_json(json.loads(json.dumps(receipt.to_json()))) == receipt


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("%%%", "base64url"),
        (base64.urlsafe_b64encode(b"[1]").decode(), "JSON object"),
        (base64.urlsafe_b64encode(b'{"index":-1}').decode(), "index"),
        (
            base64.urlsafe_b64encode(b'{"index":1,"leaf_hash":"zz","checkpoint":"x"}').decode(),
            "leaf_hash",
        ),
        (
            base64.urlsafe_b64encode(
                b'{"index":1,"leaf_hash":"' + b"a" * 64 + b'","checkpoint":""}'
            ).decode(),
            "checkpoint",
        ),
    ],
)
def test_receipt_header_errors(header: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Receipt.from_header(header)


async def test_concurrent_records_share_transactions_in_index_order(
    env: Env, log: AuditLog
) -> None:
    before = log.batches
    count = 300
    receipts = await asyncio.gather(
        *(log.record(download(n), receipt=n == count - 1) for n in range(count))
    )
    batches = log.batches - before
    assert 1 <= batches <= 4, batches  # group commit: not one transaction per event
    assert log.size == count + 1
    last = receipts[-1]
    assert last is not None and last.index == count
    # Index order is the order in which the callers asked (FIFO queue, one writer).
    found = await log.search(limit=1000, after_index=0)
    assert [e.event["entity"][0]["what"]["identifier"]["value"] for e in found if e.event] == [
        f"att-{n:05d}" for n in range(count)
    ]
    # Durable: an independent read-only connection already sees every acknowledged entry.
    conn = sqlite3.connect(f"{(env.audit_dir / DATABASE_FILE).as_uri()}?mode=ro", uri=True)
    try:
        assert conn.execute("SELECT COUNT(*) FROM audit_entries").fetchone()[0] == count + 1
    finally:
        conn.close()
    await assert_included(log, count, last.checkpoint)


async def test_a_cancelled_caller_still_gets_its_event_written(log: AuditLog) -> None:
    task = asyncio.create_task(log.record(download(1)))
    await asyncio.sleep(0)  # queued
    task.cancel()
    await log.record(download(2))
    assert [e.index for e in await log.search(resource="att-00001")] == [1]
    assert log.size == 3


async def test_verify_runs_next_to_the_live_log(env: Env, log: AuditLog) -> None:
    for n in range(5):
        await log.record(download(n))
    ok, lines = await env.verify(witness_dir=env.witness)
    assert ok, lines
    assert "audit log OK: 6 entries" in lines[0]
    assert any("the newest 5 entries (from index 1)" in line for line in lines), lines
    await log.record(download(9))  # the read-only reader did not disturb the writer


async def test_fast_canonical_form_equals_rfc8785() -> None:
    patient = ev.patient_reference(INS, b"k" * 32)
    for n, action in enumerate(ev.AuditAction):
        rule = ev.ACTIONS[action].outcomes
        outcome = ev.Outcome.MAJOR_FAILURE if rule is ev.OutcomeRule.FAILURE else ev.Outcome.SUCCESS
        record = ev.AuditRecord(
            action,
            outcome,
            T0 + timedelta(milliseconds=n),
            ev.Actor.patient(f"guest-{n}")
            if n % 3
            else ev.Actor.professional("a", "nurse", "10003456789"),
            NODE,
            network_address="2001:db8::1" if n % 2 else None,
            purpose=ev.Purpose.TREATMENT if n % 2 else None,
            entities=(ev.EntityRef(ev.ResourceKind.PHOTO, f"p-{n}"),),
            patient=patient if n % 2 else None,
            search=patient if n % 5 == 0 else None,
            detail=(("reason", "a:b/c=d[e],f"), ("count", str(n))),
        )
        salt = bytes([n]) * 32
        assert seal_event(record, index=n * 977, salt=salt, check=True) == ev.seal(
            record, index=n * 977, salt=salt
        )


# --- checkpoints ----------------------------------------------------------------------------


def checkpoint_sizes(env: Env) -> list[int]:
    conn = env.sql()
    try:
        return [row[0] for row in conn.execute("SELECT size FROM audit_checkpoints ORDER BY size")]
    finally:
        conn.close()


async def test_checkpoint_every_n_events(env: Env) -> None:
    log = await env.open(checkpoint_every_events=5)
    for n in range(12):
        await log.record(download(n))
    assert checkpoint_sizes(env) == [1, 6, 11]
    await log.close()  # AUDIT_STOPPED at index 13, final checkpoint
    assert checkpoint_sizes(env) == [1, 6, 11, 14]


async def test_checkpoint_every_t_seconds_by_the_clock(env: Env) -> None:
    log = await env.open(checkpoint_every_seconds=60)
    for n in range(3):
        await log.record(download(n))
    assert checkpoint_sizes(env) == [1]
    env.clock.advance(61)
    await log.record(download(3))
    assert checkpoint_sizes(env) == [1, 5]
    await log.close()


async def test_checkpoint_timer_covers_an_idle_log(env: Env) -> None:
    log = await env.open(checkpoint_every_seconds=0.05)
    await log.record(download(1))
    for _ in range(100):
        if checkpoint_sizes(env)[-1] == 2:
            break
        await asyncio.sleep(0.02)
    assert checkpoint_sizes(env) == [1, 2]
    await log.close()


async def test_witness_dir_holds_every_checkpoint(env: Env, log: AuditLog) -> None:
    receipt = await log.record(download(1), receipt=True)
    assert receipt is not None
    assert (env.witness / "latest.checkpoint").read_text() == receipt.checkpoint
    assert (env.witness / "2.checkpoint").read_text() == receipt.checkpoint
    assert (env.witness / "1.checkpoint").is_file()
    assert not list(env.witness.glob(".*"))  # no temporary file left behind


async def test_close_records_stop_and_reopen_continues_the_tree(env: Env) -> None:
    log = await env.open()
    receipt = await log.record(download(1), receipt=True)
    assert receipt is not None
    await log.close()
    await log.close()  # idempotent
    with pytest.raises(AuditUnavailable):
        await log.record(download(2))
    conn = env.sql()
    last = conn.execute("SELECT idx, action FROM audit_entries ORDER BY idx DESC").fetchone()
    conn.close()
    assert tuple(last) == (2, "audit_stopped")
    assert checkpoint_sizes(env)[-1] == 3  # the final checkpoint covers AUDIT_STOPPED
    assert (env.witness / "latest.checkpoint").read_text().split("\n")[1] == "3"

    reopened = await env.open()
    try:
        assert reopened.size == 4
        (started,) = await reopened.search(after_index=2)
        assert started.index == 3 and started.action == "audit_started"
        # The old receipt still proves inclusion in the grown tree, and the trees agree.
        old = checked(receipt.checkpoint, reopened.verifier_key)
        consistency = await reopened.consistency_proof(old.size)
        new = checked(str(consistency["checkpoint"]), reopened.verifier_key)
        merkle.verify_consistency(
            old.size, new.size, old.root_hash, new.root_hash, hexes(consistency["proof"])
        )
        await assert_included(reopened, receipt.index, str(consistency["checkpoint"]))
    finally:
        await reopened.close()
    ok, lines = await env.verify(witness_dir=env.witness)
    assert ok, lines
    assert "audit log OK: 5 entries" in lines[0]


# --- keys and the directory -------------------------------------------------------------------


async def test_keys_are_created_once_with_modes(env: Env) -> None:
    log = await env.open()
    verifier = log.verifier_key
    await log.close()
    modes = {
        name: stat.S_IMODE((env.audit_dir / name).stat().st_mode)
        for name in (SIGNING_KEY_FILE, VERIFIER_KEY_FILE, PATIENT_KEY_FILE, DATABASE_FILE)
    }
    assert modes == {
        SIGNING_KEY_FILE: 0o600,
        VERIFIER_KEY_FILE: 0o644,
        PATIENT_KEY_FILE: 0o600,
        DATABASE_FILE: 0o600,
    }
    assert stat.S_IMODE(env.audit_dir.stat().st_mode) == 0o700
    conn = env.sql()
    assert conn.execute("PRAGMA page_size").fetchone()[0] == 8192  # 3 entries a page
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    assert (env.audit_dir / VERIFIER_KEY_FILE).read_text().strip() == verifier
    assert verifier.startswith(ORIGIN + "+")
    assert len((env.audit_dir / PATIENT_KEY_FILE).read_bytes()) == 32
    # The public key is derived: deleting it is repaired; the secret keys are not.
    (env.audit_dir / VERIFIER_KEY_FILE).unlink()
    log = await env.open()
    assert log.verifier_key == verifier
    reference = log.patient_reference(INS)
    assert reference == log.patient_reference(INS.replace(" ", ""))
    await log.close()
    (env.audit_dir / PATIENT_KEY_FILE).unlink()
    with pytest.raises(AuditUnavailable, match="patient key"):
        await env.open()
    (env.audit_dir / SIGNING_KEY_FILE).unlink()
    with pytest.raises(AuditUnavailable, match="signing key"):
        await env.open()


async def test_one_process_appends_at_a_time(env: Env, log: AuditLog) -> None:
    with pytest.raises(AuditUnavailable, match="another process"):
        await env.open()
    await log.record(download(1))  # the first one is unaffected


@pytest.mark.parametrize(
    "overrides",
    [
        {"origin": "two words"},
        {"origin": "a+b"},
        {"checkpoint_every_events": 0},
        {"checkpoint_every_seconds": 0},
        {"retention_access_days": 0},
    ],
)
def test_settings_are_checked(overrides: dict[str, object]) -> None:
    values: dict[str, object] = {"origin": ORIGIN, **overrides}
    with pytest.raises(ValueError):
        AuditLogSettings(**values)  # type: ignore[arg-type]


async def test_changing_the_origin_is_refused(env: Env) -> None:
    await (await env.open()).close()
    with pytest.raises(AuditUnavailable, match="origin"):
        await env.open(origin="other.example/audit")


# --- faults: refused, nothing half written --------------------------------------------------


async def test_read_only_database_refuses_with_503_and_recovers(env: Env, log: AuditLog) -> None:
    await log.record(download(1))
    await log.database.run(lambda conn: conn.execute("PRAGMA query_only=ON").fetchall())
    for wants_receipt in (False, True):
        with pytest.raises(AuditUnavailable) as caught:
            await log.record(download(2), receipt=wants_receipt)
        assert caught.value.http_status == 503
    assert log.size == 2
    await log.database.run(lambda conn: conn.execute("PRAGMA query_only=OFF").fetchall())
    receipt = await log.record(download(3), receipt=True)
    assert receipt is not None and receipt.index == 2
    await assert_included(log, 2, receipt.checkpoint)
    assert await log.search(actor="user-00002") == []
    await log.close()
    ok, lines = await env.verify(witness_dir=env.witness)
    assert ok, lines


async def test_disk_full_refuses_and_leaves_no_half_written_batch(env: Env, log: AuditLog) -> None:
    def fill_disk(conn: sqlite3.Connection) -> None:
        # SQLITE_FULL for real: the file may not grow past its current size.
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count={pages}").fetchall()

    await log.database.run(fill_disk)
    refused = None
    for n in range(2000):
        try:
            await log.record(download(n))
        except AuditUnavailable as exc:
            refused = n
            assert exc.http_status == 503
            break
    assert refused is not None
    size = log.size
    assert size == refused + 1
    # A concurrent burst fails as a whole; nothing of it is stored.
    results = await asyncio.gather(
        *(log.record(download(10_000 + n)) for n in range(50)), return_exceptions=True
    )
    assert all(isinstance(r, AuditUnavailable) for r in results)
    assert log.size == size
    await log.database.run(lambda conn: conn.execute("PRAGMA max_page_count=1073741823").fetchall())
    receipt = await log.record(download(20_000), receipt=True)
    assert receipt is not None and receipt.index == size
    await assert_included(log, size, receipt.checkpoint)
    await log.close()
    conn = env.sql()
    stored = conn.execute("SELECT COUNT(*), MAX(idx) FROM audit_entries").fetchone()
    orphans = conn.execute(
        "SELECT COUNT(*) FROM audit_entry_resources"
        " WHERE idx NOT IN (SELECT idx FROM audit_entries)"
    ).fetchone()[0]
    conn.close()
    assert tuple(stored) == (size + 2, size + 1) and orphans == 0
    ok, lines = await env.verify(witness_dir=env.witness)
    assert ok, lines


# --- tampering, detected by `relais audit verify` on the real database file ------------------


@pytest.fixture
async def closed_log(env: Env) -> Env:
    """A stopped log of 42 entries: AUDIT_STARTED, downloads 1..40 at indexes 1..40, STOPPED;
    checkpoints every 10 entries."""
    log = await env.open(checkpoint_every_events=10)
    for n in range(1, 41):
        await log.record(download(n))
    await log.close()
    ok, lines = await env.verify(witness_dir=env.witness)
    assert ok, lines
    return env


async def test_tamper_flipped_byte_in_a_stored_event(closed_log: Env) -> None:
    env = closed_log
    path = env.audit_dir / DATABASE_FILE
    wal = path.with_name(DATABASE_FILE + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0  # everything is in the main file
    data = bytearray(path.read_bytes())
    marker = b'"altId":"user-00017"'
    assert data.count(marker) == 1
    position = data.index(marker) + len(marker) - 2
    data[position] ^= 0x01  # "7" -> "6"
    path.write_bytes(bytes(data))
    ok, lines = await env.verify(witness_dir=env.witness)
    assert not ok
    assert any("entry 17 altered" in line for line in lines), lines


async def test_tamper_deleted_event_in_the_middle(closed_log: Env) -> None:
    conn = closed_log.sql()
    conn.execute("DELETE FROM audit_entries WHERE idx = 20")
    conn.close()
    ok, lines = await closed_log.verify()
    assert not ok
    assert any("entry 20 missing (index gap 19 -> 21)" in line for line in lines), lines


async def test_tamper_swapped_events(closed_log: Env) -> None:
    conn = closed_log.sql()
    conn.execute("UPDATE audit_entries SET idx = -1 WHERE idx = 11")
    conn.execute("UPDATE audit_entries SET idx = 11 WHERE idx = 12")
    conn.execute("UPDATE audit_entries SET idx = 12 WHERE idx = -1")
    conn.close()
    ok, lines = await closed_log.verify()
    assert not ok
    assert any("entries 11 and 12 out of order" in line for line in lines), lines


async def test_tamper_dropped_newest_entries_detected_by_the_witness(closed_log: Env) -> None:
    env = closed_log
    conn = env.sql()
    conn.execute("DELETE FROM audit_entries WHERE idx >= 32")
    conn.execute("DELETE FROM audit_nodes WHERE idx * (1 << level) + (1 << level) > 32")
    conn.execute("DELETE FROM audit_checkpoints WHERE size > 32")
    conn.close()
    # The log alone is self-consistent: only a checkpoint held elsewhere shows the loss.
    ok, lines = await env.verify()
    assert ok, lines
    ok, lines = await env.verify(witness_dir=env.witness)
    assert not ok
    assert any("log truncated" in line and "has size 42 but log has 32" in line for line in lines)
    external = env.root / "dpo-mail.checkpoint"
    external.write_text((env.witness / "42.checkpoint").read_text())
    ok, lines = await env.verify(external_checkpoint=external)
    assert not ok and any("log truncated" in line for line in lines), lines
    # The relay itself refuses to continue a truncated log.
    with pytest.raises(AuditUnavailable, match="truncated"):
        await env.open()


async def test_tamper_replaced_checkpoint_signature(closed_log: Env) -> None:
    conn = closed_log.sql()
    sizes = [row[0] for row in conn.execute("SELECT size FROM audit_checkpoints ORDER BY size")]
    assert sizes == [1, 11, 21, 31, 41, 42]
    (note,) = conn.execute("SELECT note FROM audit_checkpoints WHERE size = 21").fetchone()
    parsed = cp.Note.parse(note)
    (signature,) = parsed.signatures
    forged_sig = Ed25519PrivateKey.generate().sign(parsed.text.encode())
    forged = cp.Note(parsed.text, (cp.NoteSignature(signature.name, signature.key_id, forged_sig),))
    conn.execute("UPDATE audit_checkpoints SET note = ? WHERE size = 21", (str(forged),))
    conn.close()
    ok, lines = await closed_log.verify()
    assert not ok
    assert any("checkpoint at size 21 signature invalid" in line for line in lines), lines


async def test_tamper_removed_checkpoints(closed_log: Env) -> None:
    conn = closed_log.sql()
    conn.execute("DELETE FROM audit_checkpoints")
    conn.close()
    ok, lines = await closed_log.verify()
    assert not ok and "no signed checkpoint" in lines[0]


async def test_tampered_log_is_not_continued(closed_log: Env) -> None:
    conn = closed_log.sql()
    # An interior node the tree head is computed from (42 = 32 + 8 + 2: node (5, 0)).
    conn.execute("UPDATE audit_nodes SET hash = zeroblob(32) WHERE level = 5 AND idx = 0")
    conn.close()
    with pytest.raises(AuditUnavailable, match="does not match"):
        await closed_log.open()


async def test_verify_reports_unusable_inputs(env: Env, tmp_path: Path) -> None:
    ok, lines = await verify_command(tmp_path / "nothing")
    assert not ok and "verifier key" in lines[0]
    await (await env.open()).close()
    ok, lines = await env.verify(database=tmp_path / "missing.db")
    assert not ok and "cannot open the audit database" in lines[0]
    ok, lines = await env.verify(witness_dir=tmp_path / "empty")
    assert not ok and "no checkpoint in the witness directory" in lines[0]


# --- retention --------------------------------------------------------------------------------


def file_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.glob(DATABASE_FILE + "*")))


async def test_retention_erases_content_and_keeps_proofs(env: Env) -> None:
    log = await env.open(retention_access_days=30, retention_security_days=90)
    now = T0 + timedelta(days=60)
    old_access = [await log.record(download(n, when=T0), receipt=True) for n in range(3)]
    login = ev.AuditRecord(
        ev.AuditAction.LOGIN_SUCCEEDED,
        ev.Outcome.SUCCESS,
        T0,
        ev.Actor.professional("user-login", "nurse"),
        NODE,
        detail=(("method", "totp"),),
    )
    await log.record(login)
    await log.record(download(9, when=now - timedelta(days=1)))
    erased_index = old_access[0].index if old_access[0] else -1
    conn = env.sql()
    (salt,) = conn.execute(
        "SELECT salt FROM audit_entries WHERE idx = ?", (erased_index,)
    ).fetchone()
    conn.close()
    assert b"user-00000" in file_bytes(env.audit_dir)

    assert await log.erase_expired(now) == 3
    assert await log.erase_expired(now) == 0
    entries = {e.index: e for e in await log.search(limit=100)}
    for receipt in old_access:
        assert receipt is not None
        assert entries[receipt.index].event is None
        assert entries[receipt.index].action == "attachment_downloaded"
        # Proofs still hold for the erased entry.
        await assert_included(log, receipt.index, receipt.checkpoint)
    assert await log.search(actor="user-00000") == []
    assert await log.search(resource="att-00000") == []
    assert len(await log.search(actor="user-login")) == 1  # security: kept 90 days
    assert len(await log.search(actor="user-00009")) == 1  # recent access: kept

    # The erased bytes are gone from the files, not just unlinked (secure_delete + WAL reset).
    content = file_bytes(env.audit_dir)
    for gone in (b"user-00000", b"user-00001", b"att-00002", salt):
        assert gone not in content
    assert b"user-00009" in content
    assert len(await log.entries_after(-1, 100)) == log.size - 3
    await log.close()
    ok, lines = await env.verify(witness_dir=env.witness)
    assert ok, lines
    assert "(3 erased by retention)" in lines[0]


def test_retention_classes() -> None:
    assert {retention_class(a) for a in ev.AuditAction} == {"access", "security"}
    security = {a for a in ev.AuditAction if retention_class(a) == "security"}
    assert security >= {
        ev.AuditAction.LOGIN_SUCCEEDED,
        ev.AuditAction.LOGIN_FAILED,
        ev.AuditAction.LOGOUT,
        ev.AuditAction.ACCESS_DENIED,
        ev.AuditAction.ACCOUNT_CREATED,
        ev.AuditAction.ROLE_CHANGED,
        ev.AuditAction.TEAM_CHANGED,
        ev.AuditAction.KEY_ROTATED,
        ev.AuditAction.CONFIG_CHANGED,
        ev.AuditAction.AUDIT_STARTED,
        ev.AuditAction.AUDIT_STOPPED,
        ev.AuditAction.AUDIT_READ,
        ev.AuditAction.AUDIT_SEARCHED,
        ev.AuditAction.APPLICATION_STARTED,
        ev.AuditAction.APPLICATION_STOPPED,
    }
    access = set(ev.AuditAction) - security
    assert access >= {
        ev.AuditAction.MESSAGE_READ,
        ev.AuditAction.ATTACHMENT_DOWNLOADED,
        ev.AuditAction.PHOTO_VIEWED,
        ev.AuditAction.CASE_READ,
        ev.AuditAction.CASE_TRANSITION,
        ev.AuditAction.MESSAGE_SENT,
        ev.AuditAction.MAIL_REFUSED,
        ev.AuditAction.CONSULTATION_JOIN,
        ev.AuditAction.EXPORT,
    }


# --- search, cursors, export ------------------------------------------------------------------


@pytest.fixture
async def searchable(log: AuditLog) -> AuditLog:
    patient = log.patient_reference(INS)
    other = log.patient_reference("2 55 08 2A 123 456 78")
    for n in range(10):
        await log.record(
            download(
                n,
                actor="user-a" if n % 2 else "user-b",
                patient=patient if n < 4 else other,
                when=T0 + timedelta(hours=n),
                action=ev.AuditAction.PHOTO_VIEWED
                if n == 5
                else ev.AuditAction.ATTACHMENT_DOWNLOADED,
            )
        )
    denied = ev.AuditRecord(
        ev.AuditAction.ACCESS_DENIED,
        ev.Outcome.MINOR_FAILURE,
        T0 + timedelta(hours=20),
        ev.Actor.professional("user-a", "nurse"),
        NODE,
        entities=(ev.EntityRef(ev.ResourceKind.CASE, "case-7"),),
        patient=patient,
        detail=(("reason", "not_team_member"),),
    )
    await log.record(denied)
    return log


async def test_search_filters(searchable: AuditLog) -> None:
    log = searchable
    patient = log.patient_reference(INS.replace(" ", ""))

    def indexes(found: list[StoredEvent]) -> list[int]:
        return [e.index for e in found]

    assert indexes(await log.search(actor="user-a")) == [2, 4, 6, 8, 10, 11]
    assert indexes(await log.search(patient=patient)) == [1, 2, 3, 4, 11]
    assert indexes(await log.search(resource="att-00003")) == [4]
    assert indexes(await log.search(resource="case-7")) == [11]
    assert indexes(await log.search(action="photo_viewed")) == [6]
    assert indexes(await log.search(outcome=ev.Outcome.MINOR_FAILURE.value)) == [11]
    window = await log.search(since=T0 + timedelta(hours=2), until=T0 + timedelta(hours=5))
    assert indexes(window) == [3, 4, 5]
    assert window[0].recorded_at == T0 + timedelta(hours=2)
    assert indexes(await log.search(actor="user-a", patient=patient)) == [2, 4, 11]
    page = await log.search(actor="user-a", limit=2)
    assert indexes(page) == [2, 4]
    assert indexes(await log.search(actor="user-a", limit=2, after_index=4)) == [6, 8]
    assert indexes(await log.search(actor="user-a", limit=2, newest_first=True)) == [11, 10]
    assert indexes(
        await log.search(actor="user-a", limit=2, newest_first=True, before_index=10)
    ) == [8, 6]
    assert await log.search(actor="nobody") == []
    (found,) = await log.search(resource="case-7")
    assert found.event is not None and found.event["outcome"] == "4"


async def test_cursors_and_entries_after(log: AuditLog) -> None:
    assert await log.get_cursor("syslog") == -1
    for n in range(5):
        await log.record(download(n))
    batch = await log.entries_after(-1, 3)
    assert [i for i, _ in batch] == [0, 1, 2]
    assert json.loads(batch[2][1])["id"] == "2"
    await log.set_cursor("syslog", 2)
    await log.set_cursor("syslog", 4)
    assert await log.get_cursor("syslog") == 4
    assert [i for i, _ in await log.entries_after(4, 10)] == [5]


async def test_export_fhir_and_atna(env: Env, searchable: AuditLog) -> None:
    await searchable.close()
    out = io.BytesIO()
    count = await export_command(env.audit_dir, fmt="fhir", out=out, now=T0)
    assert count == 13  # started, 11 events, stopped
    bundle = Bundle.model_validate_json(out.getvalue())
    assert bundle.type == "collection" and bundle.entry is not None
    assert bundle.entry[1].fullUrl == f"https://{ORIGIN}/AuditEvent/1"

    out = io.BytesIO()
    count = await export_command(
        env.audit_dir,
        fmt="atna",
        out=out,
        since=T0 + timedelta(hours=2),
        until=T0 + timedelta(hours=5),
    )
    lines = out.getvalue().splitlines()
    assert count == len(lines) == 3
    for line in lines:
        message = ET.fromstring(line)  # noqa: S314 (our own output)
        assert message.tag == "AuditMessage"
        event_id = message.find("EventIdentification/EventID")
        assert event_id is not None and event_id.get("csd-code") == "110110"


def test_audit_connections_keep_deleted_content_and_temporary_journals_off_disk() -> None:
    conn = sqlite3.connect(":memory:")
    sqlstore.configure(conn)
    assert conn.execute("PRAGMA secure_delete").fetchone()[0] == 1
    assert conn.execute("PRAGMA temp_store").fetchone()[0] == 2  # MEMORY
    conn.close()
