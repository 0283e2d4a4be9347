"""Consultations without the server: validation, links and passes, secrets, the SQL adapter."""

from __future__ import annotations

import stat
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from relay.consultations import (
    Consultation,
    ConsultationSecrets,
    ConsultationStatus,
    ConsultationStore,
    NewConsultation,
    NewParticipant,
    Participant,
    TeleconsultationSettings,
    birth_date_hash,
    issue_guest_pass,
    join_token,
    join_url,
    link_expires_at,
    load_secrets,
    validate_new_consultation,
    validate_new_participant,
    verify_guest_pass,
    verify_join_link,
)
from relay.errors import BadRequest, ConfigError, Conflict, InvalidIdentifier, RelayError
from relay.policy import Relation
from signaling.errors import TokenError, TokenForged
from signaling.messages import Role
from storage.database import Database

NOW = datetime(2025, 3, 14, 9, 0, tzinfo=UTC)
SETTINGS = TeleconsultationSettings()
SECRETS = ConsultationSecrets(links=b"l" * 43, turn="t" * 43)


def test_scheduling_request_is_normalised() -> None:
    new = validate_new_consultation(
        {
            "scheduled_at": "2025-03-14T10:30:00+01:00",
            "participants": [
                {
                    "role": "patient",
                    "display_name": "  Mme   Jeanne Leroy ",
                    "birth_date": "1948-02-29",
                },
                {"email": " Dr.Bernard@Relais.localhost "},
            ],
            "patient_ins": "2 55 08 14 168 025 38",
            "case_id": "case-7",
        },
        NOW,
        SETTINGS,
    )
    assert new.scheduled_at == datetime(2025, 3, 14, 9, 30, tzinfo=UTC)
    assert new.duration_minutes == 20  # default
    assert new.participants == (
        NewParticipant(Role.PATIENT, "Mme Jeanne Leroy", birth_date=date(1948, 2, 29)),
        NewParticipant(None, email="dr.bernard@relais.localhost"),
    )
    assert new.patient_ins == "255081416802538"
    assert new.case_id == "case-7"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"scheduled_at": "2025-03-14 10:30"}, "invalid_scheduled_at"),
        ({"scheduled_at": "2025-03-12T09:00:00Z"}, "invalid_scheduled_at"),  # before yesterday
        ({"scheduled_at": "2025-03-14T09:00:00Z", "duration_minutes": 241}, "invalid_duration"),
        ({"scheduled_at": "2025-03-14T09:00:00Z", "duration_minutes": True}, "invalid_field"),
        ({"scheduled_at": "2025-03-14T09:00:00Z", "participants": "all"}, "invalid_field"),
        ({"scheduled_at": "2025-03-14T09:00:00Z", "participants": [3]}, "invalid_field"),
        (
            {
                "scheduled_at": "2025-03-14T09:00:00Z",
                "participants": [{"role": "guest", "display_name": "a\x00b"}],
            },
            "invalid_display_name",
        ),
        (
            {"scheduled_at": "2025-03-14T09:00:00Z", "participants": [{"professional_id": "a b"}]},
            "invalid_field",
        ),
        (
            {
                "scheduled_at": "2025-03-14T09:00:00Z",
                "participants": [
                    {"role": "guest", "display_name": "x", "birth_date": "14/03/1950"}
                ],
            },
            "invalid_birth_date",
        ),
    ],
)
def test_invalid_requests_name_the_field(body: dict[str, object], code: str) -> None:
    with pytest.raises(BadRequest) as caught:
        validate_new_consultation(body, NOW, SETTINGS)
    assert caught.value.code == code


def test_invalid_ins_is_refused() -> None:
    with pytest.raises(InvalidIdentifier):
        validate_new_consultation(
            {"scheduled_at": "2025-03-14T09:00:00Z", "patient_ins": "255081416802539"},
            NOW,
            SETTINGS,
        )


def test_link_participants_must_have_a_link_role() -> None:
    with pytest.raises(BadRequest):
        validate_new_participant({"role": "nurse", "display_name": "X"}, NOW.date())
    assert validate_new_participant({"role": "interpreter", "display_name": "Ana"}, NOW.date()) == (
        NewParticipant(Role.INTERPRETER, "Ana")
    )


def _consultation(**changes: object) -> Consultation:
    base = Consultation(
        id="c0ffee00c0ffee00c0ffee00c0ffee00",
        organizer_id="org",
        scheduled_at=NOW,
        duration_minutes=30,
        status=ConsultationStatus.SCHEDULED,
        patient_ref=None,
        case_id=None,
        created_at=NOW,
        ended_at=None,
        participants=(),
    )
    patient = Participant("p1", base.id, Role.PATIENT, "Mme X", None, 1, True, False)
    doctor = Participant("p2", base.id, Role.PHYSICIAN, "Dr Y", "doc", 0, False, False)
    fields: dict[str, object] = {"participants": (patient, doctor), **changes}
    return replace(base, **fields)  # type: ignore[arg-type]


def test_relations_for_policy() -> None:
    consultation = _consultation()
    assert consultation.relation("org") is Relation.OWNER
    assert consultation.relation("doc") is Relation.TEAM
    assert consultation.relation("someone") is Relation.NONE
    assert consultation.link_versions() == {"p1": 1}


def test_join_link_round_trip_and_revocation() -> None:
    consultation = _consultation()
    patient = consultation.participants[0]
    token = join_token(SECRETS, consultation, patient, SETTINGS)
    url = join_url("https://relais.example/", consultation.id, token)
    assert url == f"https://relais.example/consultation/{consultation.id}#t={token}"
    assert link_expires_at(consultation, SETTINGS) == int(
        (NOW + timedelta(minutes=30, hours=4)).timestamp()
    )
    assert verify_join_link(SECRETS, token, consultation, NOW.timestamp()) == patient
    revoked = _consultation(participants=(replace(patient, link_active=False),))
    with pytest.raises(RelayError) as caught:
        verify_join_link(SECRETS, token, revoked, NOW.timestamp())
    assert (caught.value.code, caught.value.http_status) == ("token_revoked", 403)
    ended = _consultation(status=ConsultationStatus.ENDED)
    with pytest.raises(RelayError) as caught:
        verify_join_link(SECRETS, token, ended, NOW.timestamp())
    assert (caught.value.code, caught.value.http_status) == ("consultation_ended", 410)


def test_pass_and_token_are_not_interchangeable() -> None:
    consultation = _consultation()
    patient = consultation.participants[0]
    token = join_token(SECRETS, consultation, patient, SETTINGS)
    value, expires_at = issue_guest_pass(SECRETS, consultation, patient, NOW.timestamp(), SETTINGS)
    assert expires_at == int(NOW.timestamp()) + 600
    assert verify_guest_pass(SECRETS, value, consultation, NOW.timestamp()) == patient
    with pytest.raises(TokenForged):
        verify_guest_pass(SECRETS, token, consultation, NOW.timestamp())
    with pytest.raises(RelayError) as caught:
        verify_join_link(SECRETS, value, consultation, NOW.timestamp())
    assert caught.value.code == "token_forged"
    with pytest.raises(TokenError) as expired:
        verify_guest_pass(SECRETS, value, consultation, expires_at + 1.0)
    assert expired.value.code == "token_expired"


def test_birth_date_hash_is_keyed_and_per_participant() -> None:
    first = birth_date_hash(b"k" * 32, "p1", date(1950, 1, 1))
    assert first != birth_date_hash(b"k" * 32, "p2", date(1950, 1, 1))
    assert first != birth_date_hash(b"j" * 32, "p1", date(1950, 1, 1))
    assert "1950" not in first


def test_secrets_are_created_private_and_reused(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    first = load_secrets(keys, SETTINGS)
    for name in ("join-links.secret", "turn.secret"):
        assert stat.S_IMODE((keys / name).stat().st_mode) == 0o600
    assert load_secrets(keys, SETTINGS) == first
    configured = load_secrets(keys, TeleconsultationSettings(turn_secret="from-config"))
    assert configured.turn == "from-config"
    (keys / "join-links.secret").chmod(0o644)
    with pytest.raises(ConfigError):
        load_secrets(keys, SETTINGS)


async def test_store_round_trip(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "relais.db")
    try:
        await db.execute(
            "INSERT INTO professionals (id, email, display_name, role, created_at)"
            " VALUES ('doc', 'dr@x.fr', 'Dr Y', 'physician', '2025-01-01'),"
            " ('coord', 'c@x.fr', 'C', 'coordinator', '2025-01-01')"
        )
        store = ConsultationStore(db)
        new = NewConsultation(
            NOW,
            30,
            (NewParticipant(Role.PATIENT, "Mme X", birth_date=date(1950, 1, 1)),),
            None,
            "case-1",
        )
        created = await store.create(new, "doc", "a" * 64, SECRETS.links, NOW)
        assert [p.role for p in created.participants] == [Role.PHYSICIAN, Role.PATIENT]
        patient = created.participants[1]
        assert patient.birth_date_check and patient.link_active and patient.link_version == 1
        expected = birth_date_hash(SECRETS.links, patient.id, date(1950, 1, 1))
        assert await store.birth_date_matches(patient.id, expected)
        assert not await store.birth_date_matches(patient.id, "0" * 64)
        assert await store.get(created.id) == created
        assert await store.list_for("doc") == [created]
        # A coordinator organises without taking part.
        planned = await store.create(new, "coord", None, SECRETS.links, NOW)
        assert [p.role for p in planned.participants] == [Role.PATIENT]
        _, reissued = await store.set_link(created.id, patient.id, active=True)
        assert reissued.link_version == 2
        _, revoked = await store.set_link(created.id, patient.id, active=False)
        assert (revoked.link_version, revoked.link_active) == (2, False)
        with pytest.raises(Conflict):
            await store.set_link(created.id, created.participants[0].id, active=True)
        assert await store.mark_ended(created.id, NOW)
        assert not await store.mark_ended(created.id, NOW)
        ended = await store.get(created.id)
        assert ended is not None and ended.status is ConsultationStatus.ENDED
        assert ended.ended_at == NOW
        with pytest.raises(Conflict):
            await store.add_participant(
                created.id, NewParticipant(Role.GUEST, "G"), SECRETS.links, NOW, 16
            )
        assert await store.get("../etc") is None
    finally:
        await db.close()
