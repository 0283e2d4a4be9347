"""Teleconsultation recordings in SQL: which encrypted blob holds whose media, when.

The media itself is written by the recording peer (:mod:`signaling.recorder`) into the blob
store (AES-256-GCM); a row here is added only once its blob is durably stored, so a listed
recording can always be read back. Rows carry ids, times and sizes: nothing clinical.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from datetime import datetime, timedelta
from typing import Final

from relay.audit.events import Actor, AuditAction, AuditRecord, EntityRef, Outcome, ResourceKind
from relay.audit.log import AuditLog
from relay.consultations import ConsultationStore
from signaling.recorder import Recording
from storage.blobs import BlobStore
from storage.database import Database

log = logging.getLogger("relais.recordings")

RETENTION_BATCH: Final = 200

_OPAQUE_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")


_COLUMNS: Final = (
    "id, consultation_id, participant_id, blob_id, media_type, started_at, ended_at, size,"
    " sha256, video_frames, audio_frames, end_reason"
)


def _recording(row: sqlite3.Row) -> Recording:
    return Recording(
        id=row["id"],
        consultation_id=row["consultation_id"],
        participant_id=row["participant_id"],
        blob_id=row["blob_id"],
        media_type=row["media_type"],
        started_at=datetime.fromisoformat(row["started_at"]),
        ended_at=datetime.fromisoformat(row["ended_at"]),
        size=int(row["size"]),
        sha256=row["sha256"],
        video_frames=int(row["video_frames"]),
        audio_frames=int(row["audio_frames"]),
        end_reason=row["end_reason"],
    )


class RecordingStore:
    """Recording rows. Every write is one transaction, durable when it returns."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, recording: Recording) -> None:
        """Record a stored recording (its blob must already be durable)."""

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"INSERT INTO consultation_recordings ({_COLUMNS})"  # noqa: S608 - constant
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    recording.id,
                    recording.consultation_id,
                    recording.participant_id,
                    recording.blob_id,
                    recording.media_type,
                    recording.started_at.isoformat(),
                    recording.ended_at.isoformat(),
                    recording.size,
                    recording.sha256,
                    recording.video_frames,
                    recording.audio_frames,
                    recording.end_reason,
                ),
            )

        await self._db.transaction(insert)

    async def delete(self, consultation_id: str, recording_id: str) -> bool:
        """Forget one recording's row (the caller then deletes its blob); False if absent."""

        def remove(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "DELETE FROM consultation_recordings WHERE consultation_id = ? AND id = ?",
                (consultation_id, recording_id),
            )
            return cursor.rowcount == 1

        return await self._db.transaction(remove)

    async def ended_before(self, cutoff: datetime, limit: int) -> list[Recording]:
        """Recordings that ended before ``cutoff``, oldest first, at most ``limit``."""
        rows = await self._db.fetchall(
            f"SELECT {_COLUMNS} FROM consultation_recordings"  # noqa: S608 - constant
            " WHERE ended_at < ? ORDER BY ended_at, id LIMIT ?",
            (cutoff.isoformat(), limit),
        )
        return [_recording(row) for row in rows]

    async def list_for(self, consultation_id: str) -> list[Recording]:
        """A consultation's recordings, oldest first."""
        if not _OPAQUE_ID.fullmatch(consultation_id):
            return []
        rows = await self._db.fetchall(
            f"SELECT {_COLUMNS} FROM consultation_recordings"  # noqa: S608 - constant
            " WHERE consultation_id = ? ORDER BY started_at, id",
            (consultation_id,),
        )
        return [_recording(row) for row in rows]

    async def get(self, consultation_id: str, recording_id: str) -> Recording | None:
        """One recording of a consultation, or ``None``."""
        if not (_OPAQUE_ID.fullmatch(consultation_id) and _OPAQUE_ID.fullmatch(recording_id)):
            return None
        row = await self._db.fetchone(
            f"SELECT {_COLUMNS} FROM consultation_recordings"  # noqa: S608 - constant
            " WHERE consultation_id = ? AND id = ?",
            (consultation_id, recording_id),
        )
        return None if row is None else _recording(row)


async def erase_expired_recordings(
    *,
    db: Database,
    blobs: BlobStore,
    audit: AuditLog,
    retention_days: int,
    now: datetime,
    node: str,
) -> int:
    """Erase the recordings that ended more than ``retention_days`` ago (0: keep them until
    their organizer erases one); return how many. Each erasure is traced first
    (``recording_deleted``, reason ``retention``, by the system), then its row goes, then
    its encrypted media, as when the organizer erases one."""
    if retention_days <= 0:
        return 0
    store = RecordingStore(db)
    consultations = ConsultationStore(db)
    cutoff = now - timedelta(days=retention_days)
    erased = 0
    patients: dict[str, str | None] = {}  # a consultation's recordings share its patient
    while batch := await store.ended_before(cutoff, RETENTION_BATCH):
        for recording in batch:
            if recording.consultation_id not in patients:
                found = await consultations.get(recording.consultation_id)
                patients[recording.consultation_id] = None if found is None else found.patient_ref
            await audit.record(
                AuditRecord(
                    action=AuditAction.RECORDING_DELETED,
                    outcome=Outcome.SUCCESS,
                    now=now,
                    actor=Actor.system(node),
                    observer=node,
                    entities=(
                        EntityRef(ResourceKind.CONSULTATION, recording.consultation_id),
                        EntityRef(ResourceKind.RECORDING, recording.id),
                    ),
                    patient=patients[recording.consultation_id],
                    detail=(
                        ("reason", "retention"),
                        ("size", str(recording.size)),
                        ("sha256", recording.sha256),
                    ),
                )
            )
            if await store.delete(recording.consultation_id, recording.id):
                await blobs.delete(recording.blob_id)
                erased += 1
    if erased:
        log.info("recording retention: %d recording(s) erased", erased)
    return erased
