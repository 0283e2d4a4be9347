"""Automatic erasure of teleconsultation recordings past ``recording_retention_days``: traced
by the system first, then the row, then the encrypted media; recent ones and the default
(0: keep) untouched."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from relay.audit.log import AuditLog, AuditLogSettings
from relay.consultations import ConsultationStore, NewConsultation
from relay.recordings import RecordingStore, erase_expired_recordings
from signaling.recorder import Recording
from storage.blobs import BlobStore
from storage.database import Database
from storage.keys import Keyring

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
NODE = "relais-test"


@dataclass
class Env:
    db: Database
    blobs: BlobStore
    audit: AuditLog
    consultation_id: str


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    db = await Database.open(tmp_path / "relais.db")
    audit = await AuditLog.open(
        tmp_path / "audit", AuditLogSettings("relais.test/audit"), node=NODE, clock=lambda: NOW
    )
    await db.execute(
        "INSERT INTO professionals (id, email, display_name, role, created_at)"
        " VALUES ('doc', 'dr@x.fr', 'Dr Y', 'physician', '2025-01-01')"
    )
    created = await ConsultationStore(db).create(
        NewConsultation(NOW, 30, (), None, None), "doc", "ab" * 32, b"s" * 32, NOW
    )
    blobs = BlobStore(tmp_path / "blobs", Keyring.create(tmp_path / "keys"))
    try:
        yield Env(db, blobs, audit, created.id)
    finally:
        await audit.close()
        await db.close()


async def _recording(env: Env, name: str, ended: datetime) -> Recording:
    stored = await env.blobs.put(f"webm of {name}".encode())
    recording = Recording(
        id=name,
        consultation_id=env.consultation_id,
        participant_id="part-1",
        blob_id=stored.blob_id,
        media_type="video/webm",
        started_at=ended - timedelta(minutes=20),
        ended_at=ended,
        size=stored.size,
        sha256=stored.sha256,
        video_frames=10,
        audio_frames=10,
        end_reason="ended",
    )
    await RecordingStore(env.db).add(recording)
    return recording


async def _erase(env: Env, days: int) -> int:
    return await erase_expired_recordings(
        db=env.db, blobs=env.blobs, audit=env.audit, retention_days=days, now=NOW, node=NODE
    )


async def test_recordings_past_their_retention_are_erased_and_traced(env: Env) -> None:
    old = await _recording(env, "old", NOW - timedelta(days=31))
    recent = await _recording(env, "recent", NOW - timedelta(days=29))
    assert await _erase(env, 0) == 0  # the default: kept until the organizer erases them
    assert await _erase(env, 30) == 1
    store = RecordingStore(env.db)
    assert [r.id for r in await store.list_for(env.consultation_id)] == ["recent"]
    assert not env.blobs.exists(old.blob_id) and env.blobs.exists(recent.blob_id)
    (event,) = await env.audit.search(resource="old", action="recording_deleted")
    assert event.event is not None
    text = str(event.event)
    assert "retention" in text and NODE in text and old.sha256 in text
    assert "ab" * 32 in text  # the consultation's patient reference, for the patient's trail
    assert await _erase(env, 30) == 0  # nothing left to do
