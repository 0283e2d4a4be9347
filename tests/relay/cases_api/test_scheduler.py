"""The case scheduler in-process with the real stores: reminders, escalation and expiry are
applied when due, audited, kept in the history, and handed to the notification hooks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from pathlib import Path

import pytest

from relay import cases as core
from relay.accounts import validate_new_professional
from relay.case_store import CaseStore
from relay.commands import initialise
from relay.config import load_config
from relay.datadir import DataDir
from relay.http import cases as cases_http
from relay.http import uploads as uploads_http
from relay.roles import Role, TeamKind
from relay.runtime import Runtime
from tests.harness.relay_process import FAST_ENV


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    data = DataDir(tmp_path / "data")
    await initialise(data, domain="relais.localhost", admin_email=None, admin_password="x" * 20)
    rt = await Runtime.open(data, load_config(data.config, FAST_ENV))
    try:
        yield rt
    finally:
        await rt.close()


async def _pro(rt: Runtime, email: str, role: str, specialty: str | None = None) -> str:
    new = validate_new_professional(
        email=email, display_name=email, role=role, rpps=None, specialty=specialty
    )
    return (await rt.accounts.create_professional(new, None, rt.clock())).id


async def test_due_events_applied_audited_and_notified(runtime: Runtime) -> None:
    rt = runtime
    start = rt.clock()
    nurse = await _pro(rt, "ide@relais.localhost", "nurse")
    named = await _pro(rt, "derm@relais.localhost", "specialist", "Dermatologie")
    team = await rt.accounts.create_team(
        address="derm", name="Derm", kind=TeamKind.SPECIALTY_POOL, specialty=None, now=start
    )
    store = CaseStore(rt.db, rt.blobs)
    requester = core.Actor.professional(nurse, Role.NURSE)
    draft = core.new_draft("case-1", requester, start)
    await store.create(
        draft, request_blob_id=await store.put_request({}, start), shared_team_id=None
    )
    stored = await store.get("case-1")
    assert stored is not None
    submit = core.Submit(
        core.Urgency.URGENT,
        rt.audit.patient_reference("local:p1"),
        named,
        team.id,
        consent_recorded=True,
    )
    submitted, _ = core.apply(stored.case, submit, requester, start)
    await store.update(stored, submitted)

    seen: list[core.Effect] = []

    async def hook(_rt: Runtime, effects: Sequence[core.Effect]) -> None:
        seen.extend(effects)

    cases_http.NOTIFICATION_HOOKS.append(hook)
    try:
        assert await cases_http.scheduler_tick(rt) == 0  # nothing due yet
        # 20 h into a 24 h window: reminders due (50 %, not yet 90 %) and escalation (75 %).
        rt.clock = lambda: start + timedelta(hours=20)
        applied = await cases_http.scheduler_tick(rt)
        assert applied == 2
        assert await cases_http.scheduler_tick(rt) == 0  # a second tick does nothing more
        # Past the due date and its grace: expired.
        rt.clock = lambda: start + timedelta(days=3)
        assert await cases_http.scheduler_tick(rt) == 1
    finally:
        cases_http.NOTIFICATION_HOOKS.remove(hook)
    final = await store.get("case-1")
    assert final is not None
    assert final.case.state is core.CaseState.EXPIRED
    events = [h.event for h in final.case.history]
    assert events == [
        core.EventKind.SUBMIT,
        core.EventKind.ESCALATE,
        core.EventKind.REMIND,
        core.EventKind.EXPIRE,
    ]
    assert any(isinstance(e, core.Escalate) for e in seen)
    assert any(
        isinstance(e, core.NotifyRequester) and e.notice is core.Notice.EXPIRED for e in seen
    )
    assert await store.due(start + timedelta(days=365)) == []  # terminal: never wakes again


async def test_abandoned_upload_is_forgotten_with_its_chunks(runtime: Runtime) -> None:
    rt = runtime
    start = rt.clock()
    nurse = await _pro(rt, "ide2@relais.localhost", "nurse")
    chunk = await rt.blobs.put(b"half a wound photo")
    await rt.db.execute(
        "INSERT INTO uploads (id, owner_id, size, content_type, offset_bytes, created_at)"
        " VALUES ('u1', ?, 100, 'image/jpeg', 18, ?)",
        (nurse, start.isoformat()),
    )
    await rt.db.execute(
        "INSERT INTO upload_chunks (upload_id, offset_bytes, length, blob_id)"
        " VALUES ('u1', 0, 18, ?)",
        (chunk.blob_id,),
    )
    assert await uploads_http.expire_uploads(rt, start + timedelta(hours=1)) == 0
    assert rt.blobs.exists(chunk.blob_id)
    assert await uploads_http.expire_uploads(rt, start + timedelta(days=3)) == 1
    assert not rt.blobs.exists(chunk.blob_id)
    assert await rt.db.fetchall("SELECT * FROM upload_chunks") == []
