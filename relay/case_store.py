"""SQL adapter of tele-expertise cases (issue 5): cases, history, photos, texts, acts.

What goes where, and why:

- SQL keeps what the relay must query: ids, states, dates, routing (named specialist,
  team, assignee), the requester's shared team, and a *keyed hash* of the patient
  identifier (billing limits and "same patient" matching count on it; it names nobody).
- Clinical content — the request (patient identity, question, wound details, consent)
  and every text exchanged (answer, questions, rejection reason) — goes to the encrypted
  blob store (AES-256-GCM, envelope keys). The request is stored as the validated JSON body
  with the instant it was validated, and re-read through :func:`parse_case_request` with
  that same instant: the parser is the one serialisation format, so the round trip cannot
  drift from what was accepted.

Writes use optimistic concurrency (a ``version`` column): two specialists taking the same
case at once cannot both win; the loser gets a :class:`~relay.errors.Conflict`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from relay.accounts import new_id
from relay.billing import ActCode, BillingAct
from relay.case_request import CaseRequest, parse_case_request
from relay.cases import (
    TERMINAL_STATES,
    Case,
    CaseState,
    EventKind,
    HistoryEntry,
    RecordBillingAct,
    Urgency,
    next_wakeup,
)
from relay.errors import Conflict
from relay.roles import Role
from storage.blobs import BlobStore
from storage.database import Database

__all__ = [
    "CaseMessage",
    "CaseStore",
    "PhotoRecord",
    "StoredCase",
]

MAX_REQUEST_BYTES: Final = 256 * 1024
MAX_TEXT_BYTES: Final = 64 * 1024


@dataclass(frozen=True)
class StoredCase:
    """A case as stored: its lifecycle, sharing, where its request is, and its version."""

    case: Case
    shared_team_id: str | None
    request_blob_id: str
    version: int


@dataclass(frozen=True)
class PhotoRecord:
    """A sanitized photo (only the re-encoded JPEG and its thumbnail are ever stored)."""

    id: str
    case_id: str | None
    owner_id: str
    jpeg_blob_id: str
    thumbnail_blob_id: str
    width: int
    height: int
    size: int
    sha256: str
    source_format: str
    created_at: datetime
    summary_blob_id: str | None = None  # DICOM uploads: encrypted display summary


@dataclass(frozen=True)
class CaseMessage:
    """A text on a case (answer, question, reply, follow-up, rejection); text in a blob."""

    id: str
    case_id: str
    kind: str
    author_id: str
    blob_id: str
    created_at: datetime


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _case_of(row: sqlite3.Row, history: Sequence[sqlite3.Row]) -> Case:
    created = datetime.fromisoformat(row["created_at"])
    return Case(
        id=row["id"],
        requester_id=row["requester_id"],
        requester_role=Role(row["requester_role"]),
        created_at=created,
        state=CaseState(row["state"]),
        state_since=datetime.fromisoformat(row["state_since"]),
        urgency=Urgency(row["urgency"]),
        patient_key=row["patient_key"],
        specialist_id=row["specialist_id"],
        team_id=row["team_id"],
        assignee_id=row["assignee_id"],
        escalated=bool(row["escalated"]),
        window_start=_dt(row["window_start"]),
        due_at=_dt(row["due_at"]),
        reminders_sent=row["reminders_sent"],
        first_answered_at=_dt(row["first_answered_at"]),
        history=tuple(
            HistoryEntry(
                datetime.fromisoformat(h["at"]),
                EventKind(h["event"]),
                h["actor_id"],
                CaseState(h["from_state"]),
                CaseState(h["to_state"]),
            )
            for h in history
        ),
    )


def _stored_of(conn: sqlite3.Connection, row: sqlite3.Row) -> StoredCase:
    history = conn.execute(
        "SELECT * FROM case_history WHERE case_id = ? ORDER BY seq", (row["id"],)
    ).fetchall()
    return StoredCase(
        _case_of(row, history), row["shared_team_id"], row["request_blob_id"], row["version"]
    )


def _photo_of(row: sqlite3.Row) -> PhotoRecord:
    return PhotoRecord(
        id=row["id"],
        case_id=row["case_id"],
        owner_id=row["owner_id"],
        jpeg_blob_id=row["jpeg_blob_id"],
        thumbnail_blob_id=row["thumbnail_blob_id"],
        width=row["width"],
        height=row["height"],
        size=row["size"],
        sha256=row["sha256"],
        source_format=row["source_format"],
        created_at=datetime.fromisoformat(row["created_at"]),
        summary_blob_id=row["summary_blob_id"],
    )


def _case_columns(case: Case) -> dict[str, Any]:
    return {
        "state": case.state.value,
        "state_since": case.state_since.isoformat(),
        "urgency": case.urgency.value,
        "patient_key": case.patient_key,
        "specialist_id": case.specialist_id,
        "team_id": case.team_id,
        "assignee_id": case.assignee_id,
        "escalated": int(case.escalated),
        "window_start": _iso(case.window_start),
        "due_at": _iso(case.due_at),
        "reminders_sent": case.reminders_sent,
        "first_answered_at": _iso(case.first_answered_at),
        # Terminal cases never wake up; the scheduler only scans the index up to now.
        "next_wakeup": None if case.state in TERMINAL_STATES else _iso(next_wakeup(case)),
    }


def _insert_history(conn: sqlite3.Connection, case: Case, start: int) -> None:
    conn.executemany(
        "INSERT INTO case_history (case_id, seq, at, event, actor_id, from_state, to_state)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (
                case.id,
                seq,
                entry.at.isoformat(),
                entry.event.value,
                entry.actor_id,
                entry.from_state.value,
                entry.to_state.value,
            )
            for seq, entry in enumerate(case.history[start:], start=start)
        ],
    )


def _attach(conn: sqlite3.Connection, case_id: str, owner_id: str, photo_ids: Sequence[str]) -> int:
    """Attach the owner's photos not yet attached elsewhere; how many were."""
    count = 0
    for photo_id in photo_ids:
        count += conn.execute(
            "UPDATE case_photos SET case_id = ? WHERE id = ? AND owner_id = ?"
            " AND (case_id IS NULL OR case_id = ?)",
            (case_id, photo_id, owner_id, case_id),
        ).rowcount
    return count


class CaseStore:
    """Cases in SQL, clinical content in the encrypted blob store."""

    def __init__(self, db: Database, blobs: BlobStore) -> None:
        self.db = db
        self.blobs = blobs

    # -- clinical content (encrypted) ---------------------------------------------------------

    async def put_request(self, body: dict[str, Any], validated_at: datetime) -> str:
        """Store a validated request body encrypted; returns its blob id."""
        document = {"validated_at": validated_at.isoformat(), "body": body}
        raw = json.dumps(document, ensure_ascii=False, sort_keys=True).encode()
        info = await self.blobs.put(raw, max_bytes=MAX_REQUEST_BYTES)
        return info.blob_id

    async def request_body(self, blob_id: str) -> tuple[dict[str, Any], datetime]:
        """The stored body and the instant it was validated."""
        raw = await self.blobs.read_all_verified(blob_id, max_bytes=MAX_REQUEST_BYTES)
        document = json.loads(raw)
        return document["body"], datetime.fromisoformat(document["validated_at"])

    async def load_request(self, blob_id: str) -> CaseRequest:
        """The request, parsed again with the instant it was validated at."""
        body, at = await self.request_body(blob_id)
        return parse_case_request(body, at)

    async def put_text(self, text: str) -> str:
        info = await self.blobs.put(text.encode(), max_bytes=MAX_TEXT_BYTES)
        return info.blob_id

    async def read_text(self, blob_id: str) -> str:
        raw = await self.blobs.read_all_verified(blob_id, max_bytes=MAX_TEXT_BYTES)
        return raw.decode()

    # -- cases --------------------------------------------------------------------------------

    async def create(
        self,
        case: Case,
        *,
        request_blob_id: str,
        shared_team_id: str | None,
        idempotency_key: str | None = None,
        photo_ids: Sequence[str] = (),
    ) -> tuple[str, bool]:
        """Insert a new case with its history and attach the requester's photos, in one
        transaction; with an idempotency key already used by the requester, insert nothing
        and return the first case's id. Returns ``(case_id, created)``."""

        def insert(conn: sqlite3.Connection) -> tuple[str, bool]:
            if idempotency_key is not None:
                found = conn.execute(
                    "SELECT case_id FROM case_idempotency_keys WHERE owner_id = ? AND idem_key = ?",
                    (case.requester_id, idempotency_key),
                ).fetchone()
                if found is not None:
                    return str(found["case_id"]), False
            columns = _case_columns(case)
            columns.update(
                id=case.id,
                requester_id=case.requester_id,
                requester_role=case.requester_role.value,
                shared_team_id=shared_team_id,
                created_at=case.created_at.isoformat(),
                request_blob_id=request_blob_id,
                version=0,
            )
            names = ", ".join(columns)
            marks = ", ".join("?" for _ in columns)
            conn.execute(f"INSERT INTO cases ({names}) VALUES ({marks})", tuple(columns.values()))  # noqa: S608 (our column names)
            _insert_history(conn, case, 0)
            if idempotency_key is not None:
                conn.execute(
                    "INSERT INTO case_idempotency_keys (owner_id, idem_key, case_id, created_at)"
                    " VALUES (?, ?, ?, ?)",
                    (case.requester_id, idempotency_key, case.id, case.created_at.isoformat()),
                )
            _attach(conn, case.id, case.requester_id, photo_ids)
            return case.id, True

        return await self.db.transaction(insert)

    async def get(self, case_id: str) -> StoredCase | None:
        def load(conn: sqlite3.Connection) -> StoredCase | None:
            row = conn.execute("SELECT * FROM cases WHERE id = ?", (case_id,)).fetchone()
            return None if row is None else _stored_of(conn, row)

        return await self.db.read(load)

    async def update(
        self,
        stored: StoredCase,
        case: Case,
        *,
        request_blob_id: str | None = None,
        acts: Iterable[RecordBillingAct] = (),
        message: tuple[str, str, str, datetime] | None = None,
    ) -> None:
        """Write ``case`` over ``stored`` (same version, else :class:`Conflict`), its new
        history entries, billing acts and an optional ``(kind, author, blob_id, at)`` text."""
        acts = list(acts)

        def write(conn: sqlite3.Connection) -> None:
            columns = _case_columns(case)
            columns["version"] = stored.version + 1
            if request_blob_id is not None:
                columns["request_blob_id"] = request_blob_id
            sets = ", ".join(f"{name} = ?" for name in columns)
            count = conn.execute(
                f"UPDATE cases SET {sets} WHERE id = ? AND version = ?",  # noqa: S608 (our names)
                (*columns.values(), case.id, stored.version),
            ).rowcount
            if count != 1:
                raise Conflict(
                    "La demande vient d'être modifiée par quelqu'un d'autre : rechargez-la.",
                    code="case_changed",
                )
            _insert_history(conn, case, len(stored.case.history))
            conn.executemany(
                "INSERT OR IGNORE INTO billing_acts"
                " (case_id, code, professional_id, patient_key, performed_at)"
                " VALUES (?, ?, ?, ?, ?)",
                [
                    (a.case_id, a.code.value, a.professional_id, a.patient_key, a.at.isoformat())
                    for a in acts
                ],
            )
            if message is not None:
                kind, author, blob_id, at = message
                conn.execute(
                    "INSERT INTO case_messages (id, case_id, kind, author_id, blob_id, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (new_id(), case.id, kind, author, blob_id, at.isoformat()),
                )

        await self.db.transaction(write)

    async def _select(self, sql: str, params: Sequence[Any]) -> list[StoredCase]:
        def load(conn: sqlite3.Connection) -> list[StoredCase]:
            return [_stored_of(conn, row) for row in conn.execute(sql, params).fetchall()]

        return await self.db.read(load)

    async def for_requester(self, pro_id: str, team_ids: Iterable[str]) -> list[StoredCase]:
        """The professional's own cases and those shared with one of their teams."""
        teams = sorted(team_ids)
        marks = ", ".join("?" for _ in teams) or "NULL"
        # Only "?" placeholders are interpolated; values are bound.
        sql = f"SELECT * FROM cases WHERE requester_id = ? OR shared_team_id IN ({marks})"  # noqa: S608
        return await self._select(sql + " ORDER BY created_at DESC LIMIT 200", (pro_id, *teams))

    async def queue(
        self,
        pro_id: str,
        team_ids: Iterable[str],
        *,
        urgency: Urgency | None = None,
        due_before: datetime | None = None,
    ) -> list[StoredCase]:
        """Open cases addressed to the professional, taken by them, or to one of their
        teams (filtered by the core's notion of team access afterwards), due first."""
        teams = sorted(team_ids)
        marks = ", ".join("?" for _ in teams) or "NULL"
        audience = f"(specialist_id = ? OR assignee_id = ? OR team_id IN ({marks}))"
        sql = (
            "SELECT * FROM cases WHERE state NOT IN ('draft', 'closed', 'rejected',"  # noqa: S608
            " 'cancelled', 'expired') AND " + audience
        )
        params: list[Any] = [pro_id, pro_id, *teams]
        if urgency is not None:
            sql += " AND urgency = ?"
            params.append(urgency.value)
        if due_before is not None:
            sql += " AND due_at IS NOT NULL AND due_at <= ?"
            params.append(due_before.isoformat())
        sql += " ORDER BY due_at IS NULL, due_at LIMIT 500"
        return await self._select(sql, params)

    async def same_patient(self, patient_key: str, *, exclude: str) -> list[StoredCase]:
        """Other cases about the same patient (same keyed hash), newest first."""
        return await self._select(
            "SELECT * FROM cases WHERE patient_key = ? AND id <> ?"
            " ORDER BY created_at DESC LIMIT 50",
            (patient_key, exclude),
        )

    async def due(self, now: datetime) -> list[StoredCase]:
        """Cases whose next scheduled instant has come (the scheduler's scan)."""
        return await self._select(
            "SELECT * FROM cases WHERE next_wakeup IS NOT NULL AND next_wakeup <= ?"
            " ORDER BY next_wakeup LIMIT 500",
            (now.isoformat(),),
        )

    # -- texts, photos, acts ------------------------------------------------------------------

    async def messages_of(self, case_id: str) -> list[CaseMessage]:
        rows = await self.db.read(
            lambda conn: conn.execute(
                "SELECT * FROM case_messages WHERE case_id = ? ORDER BY created_at, rowid",
                (case_id,),
            ).fetchall()
        )
        return [
            CaseMessage(
                r["id"],
                r["case_id"],
                r["kind"],
                r["author_id"],
                r["blob_id"],
                datetime.fromisoformat(r["created_at"]),
            )
            for r in rows
        ]

    async def add_photo(self, photo: PhotoRecord) -> None:
        await self.db.execute(
            "INSERT INTO case_photos (id, case_id, owner_id, jpeg_blob_id, thumbnail_blob_id,"
            " width, height, size, sha256, source_format, created_at, summary_blob_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                photo.id,
                photo.case_id,
                photo.owner_id,
                photo.jpeg_blob_id,
                photo.thumbnail_blob_id,
                photo.width,
                photo.height,
                photo.size,
                photo.sha256,
                photo.source_format,
                photo.created_at.isoformat(),
                photo.summary_blob_id,
            ),
        )

    async def photo(self, photo_id: str) -> PhotoRecord | None:
        row = await self.db.read(
            lambda conn: conn.execute(
                "SELECT * FROM case_photos WHERE id = ?", (photo_id,)
            ).fetchone()
        )
        return None if row is None else _photo_of(row)

    async def photos_of(self, case_id: str) -> list[PhotoRecord]:
        rows = await self.db.read(
            lambda conn: conn.execute(
                "SELECT * FROM case_photos WHERE case_id = ? ORDER BY created_at, id", (case_id,)
            ).fetchall()
        )
        return [_photo_of(r) for r in rows]

    async def attach_photos(self, case_id: str, owner_id: str, photo_ids: Sequence[str]) -> int:
        """Attach the owner's unattached photos to the case; returns how many were."""

        return await self.db.transaction(lambda conn: _attach(conn, case_id, owner_id, photo_ids))

    async def by_idempotency_key(self, owner_id: str, key: str) -> str | None:
        """The case a requester created with this idempotency key, if any."""
        row = await self.db.fetchone(
            "SELECT case_id FROM case_idempotency_keys WHERE owner_id = ? AND idem_key = ?",
            (owner_id, key),
        )
        return None if row is None else str(row["case_id"])

    async def billing_acts(self, professional_id: str, patient_key: str) -> list[BillingAct]:
        rows = await self.db.read(
            lambda conn: conn.execute(
                "SELECT * FROM billing_acts WHERE professional_id = ? AND patient_key = ?",
                (professional_id, patient_key),
            ).fetchall()
        )
        return [
            BillingAct(
                ActCode(r["code"]),
                r["professional_id"],
                r["patient_key"],
                r["case_id"],
                datetime.fromisoformat(r["performed_at"]),
            )
            for r in rows
        ]

    async def acts_of_case(self, case_id: str) -> list[BillingAct]:
        rows = await self.db.read(
            lambda conn: conn.execute(
                "SELECT * FROM billing_acts WHERE case_id = ? ORDER BY performed_at", (case_id,)
            ).fetchall()
        )
        return [
            BillingAct(
                ActCode(r["code"]),
                r["professional_id"],
                r["patient_key"],
                r["case_id"],
                datetime.fromisoformat(r["performed_at"]),
            )
            for r in rows
        ]
