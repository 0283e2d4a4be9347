"""Deadlines with a fake clock: reminders, escalation, expiry, auto-close, next wake-up."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from relay.cases import (
    Accept,
    Answer,
    AskRequester,
    Case,
    CaseEvent,
    CaseSettings,
    CaseState,
    Close,
    Effect,
    Escalate,
    EscalateToTeam,
    Expire,
    FollowUp,
    Notice,
    NotifyRecipient,
    NotifyRequester,
    Release,
    Remind,
    ReplyToSpecialist,
    ScheduleReminder,
    Urgency,
    apply,
    due_actions,
    escalation_at,
    expiry_at,
    new_draft,
    next_wakeup,
    reminder_times,
)
from relay.errors import Conflict, Forbidden
from tests.relay.cases.helpers import (
    MEMBER_A,
    MEMBER_B,
    NAMED,
    REQUESTER,
    SYSTEM,
    T0,
    TEAM,
    case_in,
    run,
    submit_event,
)

H = timedelta(hours=1)
S = timedelta(seconds=1)


def tick(case: Case, now: datetime) -> tuple[Case, list[CaseEvent], list[Effect]]:
    """What the scheduler adapter does: take due events, apply each as the system."""
    due = due_actions(case, now)
    effects: list[Effect] = []
    for event in due:
        case, out = apply(case, event, SYSTEM, now)
        effects.extend(out)
    return case, due, effects


@pytest.mark.parametrize(
    ("urgency", "delay"),
    [
        (Urgency.URGENT, timedelta(hours=24)),
        (Urgency.WITHIN_72H, timedelta(hours=72)),
        (Urgency.ROUTINE, timedelta(days=7)),
    ],
)
def test_due_date_follows_urgency(urgency: Urgency, delay: timedelta) -> None:
    case, effects = apply(
        new_draft("c", REQUESTER, T0), submit_event(urgency=urgency), REQUESTER, T0
    )
    assert case.window_start == T0 and case.due_at == T0 + delay
    assert reminder_times(case) == (T0 + delay * 0.5, T0 + delay * 0.9)
    assert escalation_at(case) == T0 + delay * 0.75
    assert expiry_at(case) == T0 + delay * 2  # default grace = the delay itself
    # The adapter is told when to come back: the first reminder.
    assert effects[-1] == ScheduleReminder("c", T0 + delay * 0.5)


def test_named_specialist_reminded_then_escalated_then_expired() -> None:
    case = case_in(CaseState.SUBMITTED)  # 72 h, names NAMED, team TEAM
    assert due_actions(case, T0 + 36 * H - S) == []

    case, due, effects = tick(case, T0 + 36 * H)
    assert due == [Remind(number=1)]
    assert NotifyRecipient(case.id, Notice.REMINDER, NAMED.id, None) in effects
    assert due_actions(case, T0 + 36 * H) == []  # idempotent tick
    assert effects[-1] == ScheduleReminder(case.id, T0 + 54 * H)

    # Before escalation, the team cannot take the case.
    with pytest.raises(Forbidden):
        apply(case, Accept(), MEMBER_A, T0 + 40 * H)

    case, due, effects = tick(case, T0 + 54 * H)
    assert due == [EscalateToTeam()]
    assert Escalate(case.id, TEAM, NAMED.id) in effects
    assert case.escalated

    case, due, effects = tick(case, T0 + 64.8 * H)
    assert due == [Remind(number=2)]
    # After escalation both the named specialist and the team hear the reminder.
    assert NotifyRecipient(case.id, Notice.REMINDER, NAMED.id, TEAM) in effects
    assert effects[-1] == ScheduleReminder(case.id, T0 + 144 * H)

    assert due_actions(case, T0 + 144 * H - S) == []
    case, due, effects = tick(case, T0 + 144 * H)
    assert due == [Expire()]
    assert case.state is CaseState.EXPIRED
    assert NotifyRequester(case.id, Notice.EXPIRED, REQUESTER.id) in effects
    assert NotifyRecipient(case.id, Notice.EXPIRED, NAMED.id, TEAM) in effects
    assert not any(isinstance(e, ScheduleReminder) for e in effects)
    assert due_actions(case, T0 + 1000 * H) == []
    assert [entry.event.value for entry in case.history] == [
        "submit",
        "remind",
        "escalate",
        "remind",
        "expire",
    ]
    assert [entry.at for entry in case.history] == [
        T0,
        T0 + 36 * H,
        T0 + 54 * H,
        T0 + 64.8 * H,
        T0 + 144 * H,
    ]


def test_escalation_lets_a_team_member_take_the_case() -> None:
    case = case_in(CaseState.SUBMITTED)
    case, _, _ = tick(case, T0 + 54 * H)  # reminder 1 + escalation in one tick
    case, _ = apply(case, Accept(), MEMBER_A, T0 + 55 * H)
    assert case.state is CaseState.ACCEPTED and case.assignee_id == MEMBER_A.id


def test_a_missed_window_sends_one_reminder_not_two() -> None:
    case = case_in(CaseState.SUBMITTED)
    # The relay was down from T0 to 70 h: both reminder thresholds and escalation passed.
    assert due_actions(case, T0 + 70 * H) == [EscalateToTeam(), Remind(number=2)]
    case, _, effects = tick(case, T0 + 70 * H)
    reminders = [e for e in effects if isinstance(e, NotifyRecipient)]
    assert len(reminders) == 1 and case.reminders_sent == 2
    assert due_actions(case, T0 + 70 * H) == []


def test_system_events_before_their_time_are_refused() -> None:
    case = case_in(CaseState.SUBMITTED)
    early: list[tuple[CaseEvent, datetime]] = [
        (Remind(number=1), T0 + 36 * H - S),
        (Remind(number=2), T0 + 40 * H),
        (EscalateToTeam(), T0 + 54 * H - S),
        (Expire(), T0 + 144 * H - S),
    ]
    for event, at in early:
        with pytest.raises(Conflict) as info:
            apply(case, event, SYSTEM, at)
        assert info.value.code == "case_event_not_due"
    reminded, _ = apply(case, Remind(number=1), SYSTEM, T0 + 36 * H)
    with pytest.raises(Conflict):  # the same reminder twice (a stale tick)
        apply(reminded, Remind(number=1), SYSTEM, T0 + 37 * H)


def test_team_case_reminds_the_team_and_escalates_only_once_taken() -> None:
    case = case_in(CaseState.SUBMITTED, named=False)
    assert escalation_at(case) is None
    case, due, effects = tick(case, T0 + 36 * H)
    assert due == [Remind(number=1)]
    assert NotifyRecipient(case.id, Notice.REMINDER, None, TEAM) in effects

    case, _ = apply(case, Accept(), MEMBER_A, T0 + 37 * H)
    # Accepting keeps the window: escalation at 75 % of it if MEMBER_A sits on the case.
    assert escalation_at(case) == T0 + 54 * H
    case, due, effects = tick(case, T0 + 54 * H)
    assert due == [EscalateToTeam()]
    assert Escalate(case.id, TEAM, MEMBER_A.id) in effects

    # A colleague may now take it over; the former assignee is told.
    case, effects = apply(case, Accept(), MEMBER_B, T0 + 55 * H)
    assert case.assignee_id == MEMBER_B.id
    assert NotifyRecipient(case.id, Notice.TAKEN_OVER, MEMBER_A.id, None) in effects
    assert NotifyRequester(case.id, Notice.ACCEPTED, REQUESTER.id) in effects


def test_taking_a_case_late_does_not_escalate_the_taker() -> None:
    case = case_in(CaseState.SUBMITTED, named=False)
    case, _, _ = tick(case, T0 + 36 * H)  # first reminder, to the team
    case, _ = apply(case, Accept(), MEMBER_A, T0 + 60 * H)  # after the 54 h threshold
    assert escalation_at(case) is None
    assert walk(case) == [(timedelta(hours=64.8), ["remind"]), (144 * H, ["expire"])]


def test_release_keeps_an_escalation() -> None:
    case = case_in(CaseState.ACCEPTED, named=False)
    case, _, _ = tick(case, T0 + 54 * H)
    assert case.escalated
    case, _ = apply(case, Release(), MEMBER_A, T0 + 55 * H)
    assert case.escalated and case.state is CaseState.SUBMITTED


def test_named_specialist_without_team_never_escalates() -> None:
    case = run(new_draft("c", REQUESTER, T0), (submit_event(team=None), REQUESTER))
    assert escalation_at(case) is None
    assert due_actions(case, T0 + 65 * H) == [Remind(number=2)]
    case = run(case, (Accept(), NAMED))
    with pytest.raises(Conflict) as info:
        apply(case, Release(), NAMED, T0)
    assert info.value.code == "case_has_no_team"


def test_awaiting_requester_reminds_the_requester_then_expires() -> None:
    case = case_in(CaseState.ACCEPTED)
    asked_at = T0 + 10 * H
    case, effects = apply(case, AskRequester(), NAMED, asked_at)
    assert NotifyRequester(case.id, Notice.QUESTION, REQUESTER.id) in effects
    assert case.due_at == asked_at + timedelta(days=7) and case.reminders_sent == 0
    assert escalation_at(case) is None  # waiting on the requester, not on a specialist

    case, due, effects = tick(case, asked_at + timedelta(days=3.5))
    assert due == [Remind(number=1)]
    assert effects[1] == NotifyRequester(case.id, Notice.REMINDER, REQUESTER.id)
    case, due, _ = tick(case, asked_at + timedelta(days=6.3))
    assert due == [Remind(number=2)]

    assert due_actions(case, asked_at + timedelta(days=14) - S) == []
    case, due, _ = tick(case, asked_at + timedelta(days=14))
    assert due == [Expire()] and case.state is CaseState.EXPIRED


def test_silent_requester_after_an_answer_gets_the_case_closed_not_expired() -> None:
    case = case_in("awaiting_after_answer")
    case, due, effects = tick(case, T0 + timedelta(days=14))
    assert due == [Close()]
    assert case.state is CaseState.CLOSED
    # The system closing is quiet: only the audit entry, no notification.
    assert [type(e).__name__ for e in effects] == ["AuditTransition"]


def test_reply_restarts_the_specialist_clock() -> None:
    case = run(case_in(CaseState.ACCEPTED), (AskRequester(), NAMED))
    replied_at = T0 + 30 * H
    case, effects = apply(case, ReplyToSpecialist(), REQUESTER, replied_at)
    assert case.state is CaseState.ACCEPTED
    assert case.window_start == replied_at and case.due_at == replied_at + 72 * H
    assert NotifyRecipient(case.id, Notice.REPLY, NAMED.id, None) in effects


def test_answered_case_closes_itself_after_30_days() -> None:
    case = case_in(CaseState.ACCEPTED)
    answered_at = T0 + 5 * H
    case, effects = apply(case, Answer(), NAMED, answered_at)
    assert case.due_at is None and reminder_times(case) == ()
    assert effects[-1] == ScheduleReminder(case.id, answered_at + timedelta(days=30))
    assert due_actions(case, answered_at + timedelta(days=30) - S) == []
    with pytest.raises(Conflict):
        apply(case, Close(), SYSTEM, answered_at + timedelta(days=29))
    case, due, _ = tick(case, answered_at + timedelta(days=30))
    assert due == [Close()] and case.state is CaseState.CLOSED


def test_follow_up_reopens_with_a_fresh_window() -> None:
    case = case_in(CaseState.ANSWERED, urgency=Urgency.URGENT)
    asked_at = T0 + 48 * H
    case, effects = apply(case, FollowUp(), REQUESTER, asked_at)
    assert case.state is CaseState.ACCEPTED and case.assignee_id == NAMED.id
    assert case.window_start == asked_at and case.due_at == asked_at + 24 * H
    assert NotifyRecipient(case.id, Notice.FOLLOW_UP, NAMED.id, None) in effects
    assert due_actions(case, asked_at + 12 * H) == [Remind(number=1)]


def walk(case: Case, limit: int = 20) -> list[tuple[timedelta, list[str]]]:
    """Jump the clock from wake-up to wake-up; check nothing is due a second before each."""
    seen: list[tuple[timedelta, list[str]]] = []
    for _ in range(limit):
        at = next_wakeup(case)
        if at is None:
            return seen
        assert due_actions(case, at - S) == [], at
        case, due, _ = tick(case, at)
        assert due, at
        seen.append((at - T0, [event.kind.value for event in due]))
    raise AssertionError("no end")


def test_next_wakeup_visits_every_deadline_in_order() -> None:
    assert walk(case_in(CaseState.SUBMITTED)) == [
        (36 * H, ["remind"]),
        (54 * H, ["escalate"]),
        (timedelta(hours=64.8), ["remind"]),
        (144 * H, ["expire"]),
    ]
    assert walk(case_in(CaseState.ANSWERED)) == [(timedelta(days=30), ["close"])]
    assert walk(case_in(CaseState.CLOSED)) == []
    assert walk(case_in(CaseState.DRAFT)) == []


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="reminder_fractions"):
        CaseSettings(reminder_fractions=(0.9, 0.5))
    with pytest.raises(ValueError, match="reminder_fractions"):
        CaseSettings(reminder_fractions=(0.0,))
    with pytest.raises(ValueError, match="escalation_fraction"):
        CaseSettings(escalation_fraction=1.5)
    with pytest.raises(ValueError, match="delays"):
        CaseSettings(response_delays={Urgency.URGENT: timedelta(hours=1)})


def test_custom_settings_change_the_deadlines() -> None:
    settings = CaseSettings(reminder_fractions=(0.25,), escalation_fraction=0.5)
    case = case_in(CaseState.SUBMITTED)
    assert reminder_times(case, settings) == (T0 + 18 * H,)
    assert due_actions(case, T0 + 18 * H, settings) == [Remind(number=1)]
    assert due_actions(case, T0 + 36 * H, settings) == [EscalateToTeam(), Remind(number=1)]


def test_naive_datetimes_are_a_programming_error() -> None:
    case = case_in(CaseState.SUBMITTED)
    with pytest.raises(ValueError):
        due_actions(case, T0.replace(tzinfo=None))
    with pytest.raises(ValueError):
        apply(case, Accept(), NAMED, T0.replace(tzinfo=None))
    with pytest.raises(ValueError):
        new_draft("c", REQUESTER, T0.replace(tzinfo=None))
