"""Audit log append throughput: group commit against a bare SQLite insert loop.

Issue 3 target: with group commit (every event durable before its caller is released),
append at >= 0.5 of the rate of a bare SQLite insert loop with the same durability, measured
in the same run, and >= 5,000 events/s absolute.

* baseline: one ``BEGIN IMMEDIATE; INSERT; COMMIT`` per event into a one-table database in
  WAL mode with ``synchronous=FULL``, inserting the same canonical event bytes (already
  built: no sealing, no tree, no index) — the least a durable per-event write costs;
* measured: :meth:`relay.audit.log.AuditLog.record` called by concurrent producers (as
  request handlers would), each event sealed (salt, RFC 8785, commitment, leaf), indexed for
  search, added to the Merkle tree and committed before its caller continues; checkpoints
  every 1,000 events as configured by default.

Informative rows: fewer producers (smaller batches), every event asking for a receipt (a
signed checkpoint per batch, plus the witness copy), and a single sequential producer (no
batching possible: one commit per event). Batches can only be as large as the number of
callers waiting, so throughput grows with concurrency until sealing (CPU) dominates the fsync.
Files go to ``$TMPDIR``: point it at the data disk to measure that disk.

Run: ``python -m bench.audit_append`` (``--events N`` to change the burst size).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from bench.run import Result, format_table
from relay.audit import events as ev
from relay.audit.log import AuditLog, AuditLogSettings

ORIGIN = "relais.bench/audit"
NODE = "relais-bench"
ABSOLUTE_TARGET = 5_000.0  # events/s (issue 3)
RATIO_TARGET = 0.5
PRODUCERS = 256  # requests in flight on a busy relay; group commit needs concurrency
FEW_PRODUCERS = 16
BASELINE = "bare SQLite loop, 1 commit/event"


def make_records(count: int) -> list[ev.AuditRecord]:
    """Realistic attachment downloads: patient hash, entity, TLS details, distinct actors."""
    key = b"k" * 32
    patients = [ev.patient_reference(f"1850578006{n:03d}", key) for n in range(100)]
    now = datetime.now(UTC)
    return [
        ev.AuditRecord(
            action=ev.AuditAction.ATTACHMENT_DOWNLOADED,
            outcome=ev.Outcome.SUCCESS,
            now=now,
            actor=ev.Actor.professional(f"acc-{n % 500:04d}", "nurse"),
            observer=NODE,
            network_address="192.0.2.10",
            purpose=ev.Purpose.TREATMENT,
            entities=(ev.EntityRef(ev.ResourceKind.ATTACHMENT, f"att-{n:08d}"),),
            patient=patients[n % len(patients)],
            detail=(("tls_version", "TLSv1.3"), ("tls_cipher", "TLS_AES_256_GCM_SHA384")),
        )
        for n in range(count)
    ]


def bare_loop(path: Path, contents: Sequence[bytes]) -> float:
    """Events/s of one durable transaction per insert (WAL, synchronous=FULL)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL").fetchall()
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE events (idx INTEGER PRIMARY KEY, content BLOB NOT NULL)")
        started = time.perf_counter()
        for index, content in enumerate(contents):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO events (idx, content) VALUES (?, ?)", (index, content))
            conn.execute("COMMIT")
        return len(contents) / (time.perf_counter() - started)
    finally:
        conn.close()


async def group_commit(
    directory: Path, records: Sequence[ev.AuditRecord], producers: int, *, receipts: bool
) -> tuple[float, float]:
    """(events/s, mean events per transaction) of ``producers`` concurrent callers."""
    settings = AuditLogSettings(ORIGIN, witness_dir=directory / "witness")
    log = await AuditLog.open(directory, settings, node=NODE, clock=lambda: datetime.now(UTC))
    try:
        batches_before = log.batches
        pending = iter(records)

        async def producer() -> None:
            for record in pending:
                await log.record(record, receipt=receipts)

        started = time.perf_counter()
        await asyncio.gather(*(producer() for _ in range(producers)))
        elapsed = time.perf_counter() - started
        return len(records) / elapsed, len(records) / max(1, log.batches - batches_before)
    finally:
        await log.close()


def measure(events: int = 20_000) -> dict[str, float]:
    """Run the baseline and the group-commit cases; return the figures."""
    records = make_records(events)
    contents = [ev.seal(r, index=n, salt=os.urandom(32)).content for n, r in enumerate(records)]
    figures: dict[str, float] = {"events": float(events), "event_bytes": float(len(contents[0]))}
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
        root = Path(tmp)
        baseline_events = min(events, 3000)
        figures["bare_loop"] = bare_loop(root / "bare.db", contents[:baseline_events])
        rate, batch = asyncio.run(
            group_commit(root / "grouped", records, PRODUCERS, receipts=False)
        )
        figures["group_commit"], figures["group_commit_batch"] = rate, batch
        subset = records[: max(1, events // 4)]
        rate, batch = asyncio.run(group_commit(root / "few", subset, FEW_PRODUCERS, receipts=False))
        figures["few_producers"], figures["few_producers_batch"] = rate, batch
        rate, batch = asyncio.run(group_commit(root / "receipts", subset, PRODUCERS, receipts=True))
        figures["receipts"], figures["receipts_batch"] = rate, batch
        sequential = records[: min(events, 1000)]
        rate, _ = asyncio.run(group_commit(root / "sequential", sequential, 1, receipts=False))
        figures["sequential"] = rate
        # The baseline again, after: disk speed drifts; judge against the mean of both runs.
        second = bare_loop(root / "bare2.db", contents[:baseline_events])
        figures["bare_loop"] = (figures["bare_loop"] + second) / 2
    return figures


def results(figures: dict[str, float]) -> list[Result]:
    """The figures as :class:`bench.run.Result` rows."""
    bare = figures["bare_loop"]
    grouped = f"group commit, {PRODUCERS} producers"
    return [
        Result(grouped, figures["group_commit"], bare, "ev/s", BASELINE, target=RATIO_TARGET),
        Result(
            grouped,
            figures["group_commit"],
            ABSOLUTE_TARGET,
            "ev/s",
            "issue 3 target (absolute)",
            target=1.0,
        ),
        Result(
            f"group commit, {FEW_PRODUCERS} producers",
            figures["few_producers"],
            bare,
            "ev/s",
            BASELINE,
        ),
        Result(
            f"receipt on every event, {PRODUCERS} producers",
            figures["receipts"],
            bare,
            "ev/s",
            BASELINE,
        ),
        Result("1 sequential producer", figures["sequential"], bare, "ev/s", BASELINE),
    ]


def main() -> list[Result]:
    """The run for ``python -m bench.run`` (about 10 s)."""
    return results(measure())


def cli(argv: Sequence[str]) -> None:
    """``python -m bench.audit_append [--events N]``."""
    parser = argparse.ArgumentParser(prog="python -m bench.audit_append")
    parser.add_argument("--events", type=int, default=20_000, help="burst size (default 20000)")
    args = parser.parse_args(list(argv))
    if args.events < 100:
        parser.error("--events must be >= 100")
    figures = measure(args.events)
    print(
        f"audit append: {figures['events']:,.0f} events of {figures['event_bytes']:.0f} B; "
        f"mean batch {figures['group_commit_batch']:.0f} events with {PRODUCERS} producers, "
        f"{figures['few_producers_batch']:.0f} with {FEW_PRODUCERS}, "
        f"{figures['receipts_batch']:.0f} with receipts"
    )
    print(format_table([("audit_append", r) for r in results(figures)]))


if __name__ == "__main__":
    cli(sys.argv[1:])
