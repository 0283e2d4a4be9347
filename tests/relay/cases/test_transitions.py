"""The transition table, exhaustively: every state x event x actor -> new state or exact error.

The expected outcomes below are written out by hand (from the lifecycle as the product
describes it), not derived from ``relay.cases.TRANSITIONS``, so a wrong table entry fails.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from relay.cases import (
    STATE_LABELS_FR,
    TRANSITIONS,
    Accept,
    Actor,
    Answer,
    AskRequester,
    AuditTransition,
    Cancel,
    Case,
    CaseEvent,
    CaseState,
    Close,
    EscalateToTeam,
    EventKind,
    Expire,
    FollowUp,
    Reject,
    Release,
    Remind,
    ReplyToSpecialist,
    apply,
)
from relay.errors import Conflict, Forbidden, RelayError
from tests.relay.cases.helpers import (
    MEMBER_A,
    MEMBER_B,
    NAMED,
    OUTSIDER,
    REQUESTER,
    SYSTEM,
    T0,
    case_in,
    submit_event,
)

# Late enough for every system event to be due (reminders, escalation, expiry, auto-close).
LATE = T0 + timedelta(days=365)

S = CaseState
OK = "ok"
FORBIDDEN = ("forbidden", "case_action_forbidden")
INVALID = ("conflict", "invalid_case_transition")
NOT_DUE = ("conflict", "case_event_not_due")
TAKEN = ("conflict", "case_already_taken")
ALREADY_ANSWERED = ("conflict", "case_already_answered")
NOT_ANSWERED = ("conflict", "case_not_answered")

Outcome = CaseState | tuple[str, str]


def events(named: bool) -> dict[EventKind, CaseEvent]:
    return {
        EventKind.SUBMIT: submit_event(specialist=NAMED.id if named else None),
        EventKind.ACCEPT: Accept(),
        EventKind.RELEASE: Release(),
        EventKind.REJECT: Reject("Hors de ma spécialité"),
        EventKind.CANCEL: Cancel(),
        EventKind.ANSWER: Answer(),
        EventKind.ASK_REQUESTER: AskRequester(),
        EventKind.REPLY: ReplyToSpecialist(),
        EventKind.FOLLOW_UP: FollowUp(),
        EventKind.CLOSE: Close(),
        EventKind.REMIND: Remind(number=2),
        EventKind.ESCALATE: EscalateToTeam(),
        EventKind.EXPIRE: Expire(),
    }


E = EventKind

# --- Case addressed to the team; MEMBER_A takes it ("taker"), MEMBER_B is a colleague. ------
TEAM_CASE: dict[str, dict[EventKind, dict[str, Outcome]]] = {
    S.DRAFT: {
        E.SUBMIT: {"requester": S.SUBMITTED},
        E.CANCEL: {"requester": S.CANCELLED},
    },
    S.SUBMITTED: {
        E.ACCEPT: {"taker": S.ACCEPTED, "colleague": S.ACCEPTED},
        E.REJECT: {"taker": S.REJECTED, "colleague": S.REJECTED},
        E.CANCEL: {"requester": S.CANCELLED},
        E.REMIND: {"system": S.SUBMITTED},
        # Nobody alone is in charge of a team case before someone takes it.
        E.ESCALATE: {"system": NOT_DUE},
        E.EXPIRE: {"system": S.EXPIRED},
    },
    S.ACCEPTED: {
        # Taking over needs an escalation first; the assignee already has it.
        E.ACCEPT: {"taker": TAKEN, "colleague": TAKEN},
        E.RELEASE: {"taker": S.SUBMITTED},
        E.ANSWER: {"taker": S.ANSWERED},
        E.ASK_REQUESTER: {"taker": S.AWAITING_REQUESTER},
        E.REJECT: {"taker": S.REJECTED},
        E.CANCEL: {"requester": S.CANCELLED},
        E.REMIND: {"system": S.ACCEPTED},
        E.ESCALATE: {"system": S.ACCEPTED},
        E.EXPIRE: {"system": S.EXPIRED},
    },
    S.AWAITING_REQUESTER: {
        E.REPLY: {"requester": S.ACCEPTED},
        E.ANSWER: {"taker": S.ANSWERED},
        E.CANCEL: {"requester": S.CANCELLED},
        E.CLOSE: {"requester": NOT_ANSWERED, "taker": NOT_ANSWERED, "system": NOT_ANSWERED},
        E.REMIND: {"system": S.AWAITING_REQUESTER},
        E.EXPIRE: {"system": S.EXPIRED},
    },
    "awaiting_after_answer": {
        E.REPLY: {"requester": S.ACCEPTED},
        E.ANSWER: {"taker": S.ANSWERED},
        E.CANCEL: {"requester": ALREADY_ANSWERED},
        E.CLOSE: {"requester": S.CLOSED, "taker": S.CLOSED, "system": S.CLOSED},
        E.REMIND: {"system": S.AWAITING_REQUESTER},
        E.EXPIRE: {"system": ALREADY_ANSWERED},
    },
    S.ANSWERED: {
        E.FOLLOW_UP: {"requester": S.ACCEPTED},
        E.ASK_REQUESTER: {"taker": S.AWAITING_REQUESTER},
        E.CLOSE: {"requester": S.CLOSED, "taker": S.CLOSED, "system": S.CLOSED},
    },
    S.CLOSED: {},
    S.REJECTED: {},
    S.CANCELLED: {},
    S.EXPIRED: {},
}

# --- Case naming NAMED ("taker"), TEAM as fallback (MEMBER_A, "colleague", not yet open). ----
NAMED_CASE: dict[str, dict[EventKind, dict[str, Outcome]]] = {
    S.DRAFT: TEAM_CASE[S.DRAFT],
    S.SUBMITTED: {
        E.ACCEPT: {"taker": S.ACCEPTED},
        E.REJECT: {"taker": S.REJECTED},
        E.CANCEL: {"requester": S.CANCELLED},
        E.REMIND: {"system": S.SUBMITTED},
        E.ESCALATE: {"system": S.SUBMITTED},
        E.EXPIRE: {"system": S.EXPIRED},
    },
    S.ACCEPTED: {**TEAM_CASE[S.ACCEPTED], E.ACCEPT: {"taker": TAKEN}},
    S.AWAITING_REQUESTER: TEAM_CASE[S.AWAITING_REQUESTER],
    "awaiting_after_answer": TEAM_CASE["awaiting_after_answer"],
    S.ANSWERED: TEAM_CASE[S.ANSWERED],
    S.CLOSED: {},
    S.REJECTED: {},
    S.CANCELLED: {},
    S.EXPIRED: {},
}


def cast(named: bool) -> dict[str, Actor]:
    if named:
        return {
            "requester": REQUESTER,
            "taker": NAMED,
            "colleague": MEMBER_A,
            "outsider": OUTSIDER,
            "system": SYSTEM,
        }
    return {
        "requester": REQUESTER,
        "taker": MEMBER_A,
        "colleague": MEMBER_B,
        "outsider": OUTSIDER,
        "system": SYSTEM,
    }


def related(case: Case, label: str, named: bool) -> bool:
    """Whether the actor has any relation to the case (else: always Forbidden)."""
    if label in ("requester", "system"):
        return True
    if label == "outsider" or case.state is S.DRAFT:
        return False  # a draft has no recipient yet
    if label == "taker":
        return True
    # The colleague is a team member: related when the team is open to them.
    return not named or case.escalated


def outcome_of(case: Case, event: CaseEvent, actor: Actor) -> Outcome:
    try:
        new, effects = apply(case, event, actor, LATE)
    except (Conflict, Forbidden) as exc:
        kind = "conflict" if isinstance(exc, Conflict) else "forbidden"
        return (kind, exc.code)
    except RelayError as exc:  # pragma: no cover - reported as a mismatch
        return ("other", exc.code)
    # Every successful transition is audited first and recorded in the history.
    assert isinstance(effects[0], AuditTransition)
    assert effects[0].from_state is case.state and effects[0].to_state is new.state
    assert new.history[-1].event is event.kind
    assert new.history[-1].at == LATE and new.history[-1].actor_id == actor.id
    assert len(new.history) == len(case.history) + 1
    return new.state


@pytest.mark.parametrize("named", [True, False], ids=["named", "team"])
@pytest.mark.parametrize("state", [*(s.value for s in CaseState), "awaiting_after_answer"])
def test_every_event_by_every_actor(state: str, named: bool) -> None:
    spec = (NAMED_CASE if named else TEAM_CASE)[state]
    case = case_in(state, named=named)
    mismatches: list[Any] = []
    for kind, event in events(named).items():
        for label, actor in cast(named).items():
            if not related(case, label, named):
                expected: Outcome = FORBIDDEN
            elif kind not in spec:
                expected = INVALID
            else:
                expected = spec[kind].get(label, FORBIDDEN)
            got = outcome_of(case, event, actor)
            if got != expected:
                mismatches.append((kind.value, label, expected, got))
    assert mismatches == []


def test_table_has_a_row_for_every_state_and_terminal_rows_are_empty() -> None:
    assert set(TRANSITIONS) == set(CaseState)
    for state in (S.CLOSED, S.REJECTED, S.CANCELLED, S.EXPIRED):
        assert dict(TRANSITIONS[state]) == {}


@pytest.mark.parametrize("state", list(CaseState))
def test_conflict_message_names_the_current_state_in_french(state: CaseState) -> None:
    case = case_in(state)
    # ``Submit`` is only valid in a draft; ``FollowUp`` only when answered.
    event: CaseEvent = FollowUp() if state is S.DRAFT else submit_event()
    with pytest.raises(Conflict) as info:
        apply(case, event, REQUESTER, LATE)
    assert info.value.code == "invalid_case_transition"
    assert info.value.http_status == 409
    assert f"« {STATE_LABELS_FR[state]} »" in info.value.message
    assert info.value.message.startswith("Impossible de ")


def test_forbidden_message_says_who_may_do_it() -> None:
    case = case_in(S.ACCEPTED)
    with pytest.raises(Forbidden) as info:
        apply(case, Answer(), REQUESTER, LATE)
    assert info.value.message == (
        "Vous ne pouvez pas répondre à la demande : action réservée à "
        "le·la spécialiste qui a pris en charge la demande."
    )
    with pytest.raises(Forbidden) as info:
        apply(case_in(S.SUBMITTED, named=False), Accept(), REQUESTER, LATE)
    assert "le·la spécialiste désigné·e ou un membre de l'équipe destinataire" in (
        info.value.message
    )


def test_strangers_learn_nothing_about_the_state() -> None:
    for state in CaseState:
        with pytest.raises(Forbidden) as info:
            apply(case_in(state), Answer(), OUTSIDER, LATE)
        assert info.value.message == "Vous n'êtes pas concerné·e par cette demande."


def test_fallback_team_member_is_told_the_case_is_named() -> None:
    with pytest.raises(Forbidden) as info:
        apply(case_in(S.SUBMITTED), Accept(), MEMBER_A, LATE)
    assert "adressée nominativement" in info.value.message
