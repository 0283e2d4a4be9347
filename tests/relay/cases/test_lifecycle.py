"""Effects and guards of the lifecycle: consent, reasons, who takes, billing, history."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta

import pytest

from relay.billing import ActCode
from relay.cases import (
    Accept,
    Actor,
    Answer,
    AskRequester,
    AuditTransition,
    Cancel,
    CaseState,
    Close,
    Effect,
    FollowUp,
    Notice,
    NotifyRecipient,
    NotifyRequester,
    RecordBillingAct,
    Reject,
    Release,
    ScheduleReminder,
    Submit,
    apply,
    new_draft,
)
from relay.errors import BadRequest, Forbidden
from relay.roles import Role
from tests.relay.cases.helpers import (
    MEMBER_A,
    NAMED,
    NIR,
    REQUESTER,
    T0,
    TEAM,
    case_in,
    run,
    submit_event,
)

H = timedelta(hours=1)


def test_submission_without_consent_is_refused_and_changes_nothing() -> None:
    draft = new_draft("c", REQUESTER, T0)
    with pytest.raises(BadRequest) as info:
        apply(draft, submit_event(consent=False), REQUESTER, T0)
    assert info.value.code == "consent_required"
    assert info.value.message.startswith("Consentement du patient")
    assert draft.state is CaseState.DRAFT and draft.history == ()


@pytest.mark.parametrize(
    ("event", "code"),
    [
        (submit_event(specialist=None, team=None), "missing_field"),
        (submit_event(specialist=REQUESTER.id), "invalid_case_field"),
        (replace(submit_event(), patient_key=""), "missing_field"),
    ],
)
def test_submission_routing_is_checked(event: Submit, code: str) -> None:
    with pytest.raises(BadRequest) as info:
        apply(new_draft("c", REQUESTER, T0), event, REQUESTER, T0)
    assert info.value.code == code


def test_submission_notifies_the_named_specialist_or_the_team() -> None:
    _, effects = apply(new_draft("c", REQUESTER, T0), submit_event(), REQUESTER, T0)
    assert effects[1] == NotifyRecipient("c", Notice.NEW_CASE, NAMED.id, None)
    _, effects = apply(new_draft("c", REQUESTER, T0), submit_event(specialist=None), REQUESTER, T0)
    assert effects[1] == NotifyRecipient("c", Notice.NEW_CASE, None, TEAM)


def test_effects_are_audit_first_and_schedule_last() -> None:
    _, effects = apply(new_draft("c", REQUESTER, T0), submit_event(), REQUESTER, T0)
    assert effects[0] == AuditTransition(
        "c", submit_event().kind, REQUESTER.id, CaseState.DRAFT, CaseState.SUBMITTED, T0
    )
    assert isinstance(effects[-1], ScheduleReminder)


@pytest.mark.parametrize("reason", ["", "   ", "x" * 501])
def test_rejection_needs_a_reason(reason: str) -> None:
    with pytest.raises(BadRequest) as info:
        apply(case_in(CaseState.SUBMITTED), Reject(reason), NAMED, T0)
    assert info.value.message.startswith("Motif du refus")


def test_rejection_keeps_the_reason_and_tells_the_requester() -> None:
    case, effects = apply(
        case_in(CaseState.SUBMITTED), Reject("  Hors de ma spécialité "), NAMED, T0 + H
    )
    assert case.state is CaseState.REJECTED
    assert case.rejection_reason == "Hors de ma spécialité"
    assert case.due_at is None
    assert effects[1:] == [NotifyRequester(case.id, Notice.REJECTED, REQUESTER.id)]


def test_only_physicians_take_cases() -> None:
    nurse_in_team = Actor.professional("nurse-2", Role.NURSE, frozenset({TEAM}))
    case = case_in(CaseState.SUBMITTED, named=False)
    with pytest.raises(Forbidden) as info:
        apply(case, Accept(), nurse_in_team, T0)
    assert info.value.message == (
        "Seul un médecin peut prendre en charge une demande de télé-expertise."
    )


def test_requester_cannot_take_their_own_request() -> None:
    physician = Actor.professional("gp-1", Role.PHYSICIAN, frozenset({TEAM}))
    case = run(new_draft("c", physician, T0), (submit_event(specialist=None), physician))
    with pytest.raises(Forbidden, match="votre propre demande"):
        apply(case, Accept(), physician, T0)


@pytest.mark.parametrize("role", [Role.ADMIN, Role.COORDINATOR])
def test_only_clinicians_create_requests(role: Role) -> None:
    with pytest.raises(Forbidden):
        new_draft("c", Actor.professional("x", role), T0)
    with pytest.raises(Forbidden):
        new_draft("c", Actor.system(), T0)


def test_release_by_the_named_specialist_opens_the_case_to_the_team() -> None:
    case = case_in(CaseState.ACCEPTED)
    case, effects = apply(case, Release(), NAMED, T0 + H)
    assert case.state is CaseState.SUBMITTED and case.assignee_id is None and case.escalated
    assert NotifyRecipient(case.id, Notice.RELEASED, None, TEAM) in effects
    case, _ = apply(case, Accept(), MEMBER_A, T0 + 2 * H)
    assert case.assignee_id == MEMBER_A.id


def test_cancel_tells_the_recipient_only_once_it_was_sent() -> None:
    _, effects = apply(new_draft("c", REQUESTER, T0), Cancel(), REQUESTER, T0)
    assert [type(e) for e in effects] == [AuditTransition]
    case, effects = apply(case_in(CaseState.ACCEPTED), Cancel(), REQUESTER, T0)
    assert effects[1:] == [NotifyRecipient(case.id, Notice.CANCELLED, NAMED.id, None)]


def test_close_tells_the_other_party() -> None:
    case = case_in(CaseState.ANSWERED)
    _, effects = apply(case, Close(), REQUESTER, T0)
    assert effects[1:] == [NotifyRecipient(case.id, Notice.CLOSED, NAMED.id, None)]
    _, effects = apply(case, Close(), NAMED, T0)
    assert effects[1:] == [NotifyRequester(case.id, Notice.CLOSED, REQUESTER.id)]


def billing(effects: Sequence[Effect]) -> list[tuple[ActCode, str]]:
    return [(e.code, e.professional_id) for e in effects if isinstance(e, RecordBillingAct)]


def test_acts_are_recorded_once_at_the_first_answer() -> None:
    case = case_in(CaseState.ACCEPTED)
    case, effects = apply(case, Answer(), NAMED, T0 + H)
    assert billing(effects) == [(ActCode.RQD, REQUESTER.id), (ActCode.TE2, NAMED.id)]
    act = next(e for e in effects if isinstance(e, RecordBillingAct))
    assert act.patient_key == "ins:" + NIR and act.at == T0 + H and act.case_id == case.id
    assert case.first_answered_at == T0 + H
    assert NotifyRequester(case.id, Notice.ANSWERED, REQUESTER.id) in effects

    # A follow-up and a second answer, a question and a reply: no new act.
    case, _ = apply(case, FollowUp(), REQUESTER, T0 + 2 * H)
    case, effects = apply(case, Answer(), NAMED, T0 + 3 * H)
    assert billing(effects) == []
    case, _ = apply(case, AskRequester(), NAMED, T0 + 4 * H)
    assert billing(apply(case, Answer(), NAMED, T0 + 5 * H)[1]) == []


def test_no_rqd_for_a_requesting_physician() -> None:
    physician = Actor.professional("gp-1", Role.PHYSICIAN)
    case = run(new_draft("c", physician, T0), (submit_event(), physician), (Accept(), NAMED))
    _, effects = apply(case, Answer(), NAMED, T0)
    assert billing(effects) == [(ActCode.TE2, NAMED.id)]


def test_history_records_every_transition_with_its_time() -> None:
    case = new_draft("c", REQUESTER, T0)
    case = run(case, (submit_event(), REQUESTER), at=T0)
    case = run(case, (Accept(), NAMED), at=T0 + H)
    case = run(case, (AskRequester(), NAMED), at=T0 + 2 * H)
    case = run(case, (Answer(), NAMED), at=T0 + 3 * H)
    case = run(case, (Close(), REQUESTER), at=T0 + 4 * H)
    assert [
        (e.at - T0, e.event.value, e.actor_id, e.from_state.value, e.to_state.value)
        for e in case.history
    ] == [
        (0 * H, "submit", "nurse-1", "draft", "submitted"),
        (1 * H, "accept", "derm-1", "submitted", "accepted"),
        (2 * H, "ask_requester", "derm-1", "accepted", "awaiting_requester"),
        (3 * H, "answer", "derm-1", "awaiting_requester", "answered"),
        (4 * H, "close", "nurse-1", "answered", "closed"),
    ]
    assert case.state_since == T0 + 4 * H


def test_apply_never_mutates_its_input() -> None:
    case = case_in(CaseState.SUBMITTED)
    snapshot = replace(case)
    apply(case, Accept(), NAMED, T0 + H)
    assert case == snapshot
