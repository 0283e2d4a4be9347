"""``relais audit verify`` and ``relais audit export``: read a (copy of the) log, read-only.

Both open ``audit.db`` with SQLite's ``mode=ro`` URI, so they work on a copy handed to an
auditor as well as next to a running relay (WAL readers never block the writer), and they
stream rows: a million entries are never a million objects in memory at once.

``verify`` needs nothing but the database and the public ``verifier.key`` (plus, to detect a
truncation of the newest entries, a checkpoint kept elsewhere: a file or the witness
directory). The checking itself is :mod:`relay.audit.verify`, which imports nothing of ours.

When copying a live log, copy ``audit.db`` together with ``audit.db-wal`` (or stop the relay
first): recent commits may still sit in the write-ahead log.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Literal

from relay.audit import sqlstore
from relay.audit.atna import audit_message_xml
from relay.audit.errors import CheckpointError
from relay.audit.fhir_bundle import BundleType, iter_bundle_json
from relay.audit.keys import VERIFIER_KEY_FILE, read_verifier_key
from relay.audit.log import DATABASE_FILE, read_witness_checkpoint
from relay.audit.verify import VerificationReport, verify_log

__all__ = ["export_command", "open_read_only", "report_lines", "verify_command"]

ExportFormat = Literal["fhir", "atna"]


def open_read_only(path: Path) -> sqlite3.Connection:
    """Open an audit database read-only (``mode=ro``); nothing is ever written to it."""
    if not path.is_file():
        raise FileNotFoundError(f"no audit database at {path}")
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)


def report_lines(report: VerificationReport, *, external: str | None) -> list[str]:
    """Human-readable lines of a verification report; each finding names its index."""
    if not report.ok:
        lines = [
            f"audit log verification FAILED: {len(report.findings)} problem(s) "
            f"in {report.entries} stored entries"
        ]
        lines.extend(f"  [{f.kind.value}] {f.message}" for f in report.findings)
        return lines
    lines = [
        f"audit log OK: {report.log_size} entries ({report.erased} erased by retention), "
        f"{report.checkpoints_verified} signed checkpoint(s) verified",
        f"  tree root {report.root.hex()}",
        f"  latest checkpoint covers {report.covered_size} entries",
    ]
    if report.uncovered:
        lines.append(
            f"  warning: the newest {report.uncovered} entries (from index "
            f"{report.covered_size}) are not covered by any checkpoint yet"
        )
    if external is not None:
        lines.append(f"  {external}: consistent with the log, no truncation")
    else:
        lines.append(
            "  note: no external checkpoint given; truncation of the newest entries cannot "
            "be ruled out (use --witness-dir or --external-checkpoint)"
        )
    return lines


def _verify(
    audit_dir: Path,
    database: Path | None,
    verifier_key_file: Path | None,
    external_checkpoint: Path | None,
    witness_dir: Path | None,
) -> tuple[bool, list[str]]:
    key_path = verifier_key_file or audit_dir / VERIFIER_KEY_FILE
    db_path = database or audit_dir / DATABASE_FILE
    try:
        key = read_verifier_key(key_path)
    except (OSError, UnicodeDecodeError, CheckpointError) as exc:
        return False, [f"cannot read the verifier key {key_path}: {exc}"]
    external: str | None = None
    label: str | None = None
    try:
        if external_checkpoint is not None:
            external = external_checkpoint.read_text("utf-8")
            label = f"external checkpoint {external_checkpoint}"
        elif witness_dir is not None:
            external = read_witness_checkpoint(witness_dir)
            if external is None:
                return False, [f"no checkpoint in the witness directory {witness_dir}"]
            label = f"witness checkpoint in {witness_dir}"
    except (OSError, UnicodeDecodeError) as exc:
        return False, [f"cannot read the external checkpoint: {exc}"]
    # The key name is the log origin (C2SP: it SHOULD be), and it is authenticated by the
    # key ID, unlike anything stored in the database under audit.
    origin = key.split("+", 1)[0]
    try:
        conn = open_read_only(db_path)
    except (OSError, sqlite3.Error) as exc:
        return False, [f"cannot open the audit database {db_path}: {exc}"]
    try:
        checkpoints = list(sqlstore.iter_checkpoints(conn))
        report = verify_log(
            sqlstore.iter_log_entries(conn),
            checkpoints,
            key,
            external_checkpoint=external,
            origin=origin,
        )
    except sqlite3.Error as exc:
        return False, [f"the audit database {db_path} cannot be read: {exc}"]
    finally:
        conn.close()
    lines = report_lines(report, external=label)
    if report.ok and report.log_size and not checkpoints:
        # The log signs a checkpoint as soon as it starts: entries without any checkpoint
        # mean the checkpoints were removed, and nothing vouches for the entries.
        return False, [
            f"audit log verification FAILED: {report.log_size} entries but no signed "
            "checkpoint (checkpoints deleted?)"
        ]
    return report.ok, lines


async def verify_command(
    audit_dir: Path,
    *,
    database: Path | None = None,
    verifier_key_file: Path | None = None,
    external_checkpoint: Path | None = None,
    witness_dir: Path | None = None,
) -> tuple[bool, list[str]]:
    """Verify a copy of the audit log; return ``(ok, report lines)``.

    ``database`` defaults to ``audit_dir/audit.db``, ``verifier_key_file`` to
    ``audit_dir/verifier.key``. ``external_checkpoint`` (a file) or else ``witness_dir``'s
    latest checkpoint is checked against the log to detect truncation. Runs in a thread.
    """
    return await asyncio.to_thread(
        _verify, audit_dir, database, verifier_key_file, external_checkpoint, witness_dir
    )


def _export(
    db_path: Path,
    fmt: ExportFormat,
    out: IO[bytes],
    since: datetime | None,
    until: datetime | None,
    base_url: str | None,
    now: datetime,
) -> int:
    conn = open_read_only(db_path)
    try:
        contents = sqlstore.iter_contents(
            conn,
            None if since is None else sqlstore.format_time(since),
            None if until is None else sqlstore.format_time(until),
        )
        count = 0

        def counted() -> Iterator[bytes]:
            nonlocal count
            for content in contents:
                count += 1
                yield content

        if fmt == "fhir":
            if base_url is None:
                origin = sqlstore.get_meta(conn, "origin") or "relais.localhost/audit"
                base_url = f"https://{origin}"
            for chunk in iter_bundle_json(
                counted(), bundle_type=BundleType.COLLECTION, timestamp=now, base_url=base_url
            ):
                out.write(chunk)
        elif fmt == "atna":
            for content in counted():
                document = audit_message_xml(json.loads(content))
                # One complete XML document per line: drop the newline after the declaration
                # (ElementTree escapes newlines inside attribute values).
                out.write(document.replace(b"?>\n", b"?>", 1) + b"\n")
        else:
            raise ValueError(f"unknown export format {fmt!r} (fhir or atna)")
        out.flush()
        return count
    finally:
        conn.close()


async def export_command(
    audit_dir: Path,
    *,
    fmt: ExportFormat,
    out: IO[bytes],
    since: datetime | None = None,
    until: datetime | None = None,
    database: Path | None = None,
    base_url: str | None = None,
    now: datetime | None = None,
) -> int:
    """Stream the events not erased (``since <= recorded < until``) to ``out``; return how
    many were written.

    ``fhir``: one FHIR R4 Bundle (type ``collection``) as RFC 8785 JSON, ``fullUrl``
    ``<base_url>/AuditEvent/<index>`` (default base ``https://<log origin>``).
    ``atna``: DICOM PS3.15 ``AuditMessage`` XML documents, one per line.
    """
    db_path = database or audit_dir / DATABASE_FILE
    moment = now or datetime.now(UTC)
    return await asyncio.to_thread(_export, db_path, fmt, out, since, until, base_url, moment)
