"""Shared cast and builders for the tele-expertise core tests (no I/O, explicit clock)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from relay.cases import (
    Accept,
    Actor,
    Answer,
    AskRequester,
    Cancel,
    Case,
    CaseState,
    Close,
    Expire,
    Reject,
    Submit,
    Urgency,
    apply,
    new_draft,
)
from relay.identifiers import luhn_valid, nir_key
from relay.roles import Role

T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
TEAM = "team-derm"

REQUESTER = Actor.professional("nurse-1", Role.NURSE)
NAMED = Actor.professional("derm-1", Role.SPECIALIST, frozenset({TEAM}))
MEMBER_A = Actor.professional("derm-2", Role.SPECIALIST, frozenset({TEAM}))
MEMBER_B = Actor.professional("derm-3", Role.PHYSICIAN, frozenset({TEAM}))
OUTSIDER = Actor.professional("derm-9", Role.SPECIALIST, frozenset({"team-other"}))
SYSTEM = Actor.system()


def with_nir_key(first13: str) -> str:
    """A valid 15-character NIR from its first 13 characters."""
    return f"{first13}{nir_key(first13):02d}"


def with_luhn(first10: str) -> str:
    """A valid RPPS from its first 10 digits."""
    for digit in "0123456789":
        if luhn_valid(first10 + digit):
            return first10 + digit
    raise AssertionError("unreachable")


NIR = with_nir_key("2500375123456")  # female, born 1950
RPPS = with_luhn("1000000000")


def submit_event(
    *,
    specialist: str | None = NAMED.id,
    team: str | None = TEAM,
    urgency: Urgency = Urgency.WITHIN_72H,
    consent: bool = True,
) -> Submit:
    return Submit(
        urgency=urgency,
        patient_key="ins:" + NIR,
        specialist_id=specialist,
        team_id=team,
        consent_recorded=consent,
    )


def run(case: Case, *steps: tuple[Any, Actor], at: datetime = T0) -> Case:
    """Apply events in order, all at ``at``; return the final case."""
    for event, actor in steps:
        case, _ = apply(case, event, actor, at)
    return case


def case_in(state: str, *, named: bool = True, urgency: Urgency = Urgency.WITHIN_72H) -> Case:
    """A case brought to ``state`` through real transitions (all at T0).

    ``state`` is a :class:`CaseState` value, or ``awaiting_after_answer`` (a question from the
    specialist after a first answer). With ``named``, the case names NAMED (team fallback
    TEAM) and NAMED takes it; otherwise it is addressed to TEAM and MEMBER_A takes it.
    """
    taker = NAMED if named else MEMBER_A
    draft = new_draft("case-1", REQUESTER, T0)
    if state == CaseState.DRAFT:
        return draft
    submit = submit_event(specialist=NAMED.id if named else None, urgency=urgency)
    submitted = run(draft, (submit, REQUESTER))
    plans: dict[str, list[tuple[Any, Actor]]] = {
        CaseState.SUBMITTED: [],
        CaseState.ACCEPTED: [(Accept(), taker)],
        CaseState.AWAITING_REQUESTER: [(Accept(), taker), (AskRequester(), taker)],
        "awaiting_after_answer": [(Accept(), taker), (Answer(), taker), (AskRequester(), taker)],
        CaseState.ANSWERED: [(Accept(), taker), (Answer(), taker)],
        CaseState.CLOSED: [(Accept(), taker), (Answer(), taker), (Close(), REQUESTER)],
        CaseState.REJECTED: [(Reject("Hors de ma spécialité"), taker)],
        CaseState.CANCELLED: [(Cancel(), REQUESTER)],
    }
    if state == CaseState.EXPIRED:
        return run(submitted, (Expire(), SYSTEM), at=T0 + timedelta(days=30))
    return run(submitted, *plans[state])


def valid_body() -> dict[str, Any]:
    return {
        "requester": {"id": "nurse-1", "role": "nurse", "rpps": RPPS},
        "patient": {
            "kind": "ins",
            "nir": NIR,
            "family_name": "Durand",
            "given_name": "Jeanne",
            "birth_date": "1950-03-02",
            "sex": "female",
        },
        "recipient": {"specialist_id": "derm-1", "team_id": "team-derm"},
        "question": "La plaie du talon ne cicatrise pas depuis 3 semaines : conduite à tenir ?",
        "wound": {
            "site": "heel",
            "laterality": "left",
            "size_cm": {"length": 3, "width": 2.5, "depth": 0.4},
            "duration": {"value": 3, "unit": "weeks"},
            "treatment": "Hydrocolloïde, changé tous les 3 jours",
        },
        "urgency": "72h",
        "consent": {
            "collected_by": "nurse-1",
            "collected_at": "2024-05-01T09:50:00+02:00",
            "method": "oral",
        },
    }
