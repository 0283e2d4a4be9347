"""Audit events from other processes: durable hand-over to the log's single writer.

Only one process appends to the tree (it holds ``audit.lock``). The command line
(``relais user add`` while ``relais serve`` runs, say) writes its events here instead:
one committed row each, in the audit database itself, before the command reports
success. The writer moves them into the tree, deleting the row in the same
transaction as the append, so an event is never lost nor appended twice.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from relay.audit.errors import AuditUnavailable, InvalidAuditRecord
from relay.audit.events import (
    Actor,
    ActorKind,
    AuditAction,
    AuditRecord,
    EntityRef,
    Outcome,
    Purpose,
    ResourceKind,
)

DATABASE_FILE = "audit.db"


def record_to_json(record: AuditRecord) -> str:
    """Serialise an :class:`AuditRecord` (identifiers and codes only, as validated)."""
    return json.dumps(
        {
            "action": record.action.value,
            "outcome": record.outcome.value,
            "now": record.now.isoformat(),
            "actor": [
                record.actor.kind.value,
                record.actor.id,
                record.actor.role,
                record.actor.rpps,
            ],
            "observer": record.observer,
            "network_address": record.network_address,
            "purpose": record.purpose.value if record.purpose is not None else None,
            "entities": [[e.kind.value, e.id] for e in record.entities],
            "patient": record.patient,
            "search": record.search,
            "detail": [list(pair) for pair in record.detail],
        },
        sort_keys=True,
    )


def record_from_json(text: str) -> AuditRecord:
    """Inverse of :func:`record_to_json`; :class:`InvalidAuditRecord` when malformed."""
    try:
        data: dict[str, Any] = json.loads(text)
        kind, actor_id, role, rpps = data["actor"]
        return AuditRecord(
            action=AuditAction(data["action"]),
            outcome=Outcome(data["outcome"]),
            now=datetime.fromisoformat(data["now"]),
            actor=Actor(ActorKind(kind), actor_id, role, rpps),
            observer=data["observer"],
            network_address=data["network_address"],
            purpose=Purpose(data["purpose"]) if data["purpose"] is not None else None,
            entities=tuple(EntityRef(ResourceKind(k), i) for k, i in data["entities"]),
            patient=data["patient"],
            search=data["search"],
            detail=tuple((str(k), str(v)) for k, v in data["detail"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidAuditRecord(f"malformed inbox record: {exc}") from exc


def _insert(database: Path, payload: str) -> None:
    conn = sqlite3.connect(database, timeout=10, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT INTO inbox (record, submitted_at) VALUES (?, ?)",
            (payload, datetime.now(UTC).isoformat()),
        )
        conn.execute("COMMIT")
    finally:
        conn.close()


async def submit(audit_dir: Path, record: AuditRecord) -> None:
    """Durably hand ``record`` to the log's writer; raise AuditUnavailable if impossible."""
    database = audit_dir / DATABASE_FILE
    if not database.exists():
        raise AuditUnavailable(f"audit database {database} does not exist (run `relais init`)")
    try:
        await asyncio.to_thread(_insert, database, record_to_json(record))
    except sqlite3.Error as exc:
        raise AuditUnavailable(f"cannot write to the audit inbox: {exc}") from exc


async def pending(audit_dir: Path) -> int:
    """Events waiting in the inbox (shown by ``audit verify``)."""
    database = audit_dir / DATABASE_FILE

    def count() -> int:
        conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
        try:
            return int(conn.execute("SELECT count(*) FROM inbox").fetchone()[0])
        except sqlite3.OperationalError:
            return 0
        finally:
            conn.close()

    return await asyncio.to_thread(count)
