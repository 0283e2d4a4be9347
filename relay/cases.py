"""Tele-expertise lifecycle: a transition table in a core without I/O.

A case ("demande de télé-expertise") moves through the states of :class:`CaseState`
(the table :data:`TRANSITIONS` is the reference; this is its picture)::

    draft ─submit─▶ submitted ─accept─▶ accepted ─answer─▶ answered ─close─▶ closed
                        ▲                 │   ▲                │
                        └─────release─────┘   └───follow_up────┘

    accepted, answered  ─ask_requester─▶ awaiting_requester
    awaiting_requester  ─reply─▶ accepted    ─answer─▶ answered    ─close─▶ closed (if answered)
    submitted, accepted ─reject (reason)─▶ rejected
    draft, submitted, accepted, awaiting_requester (never answered) ─cancel─▶ cancelled
    submitted, accepted, awaiting_requester (never answered) ─expire (system)─▶ expired
    accepted ─accept (a team member, once escalated)─▶ accepted (taken over)
    submitted, accepted, awaiting_requester ─remind, escalate (system)─▶ same state

Follow-up questions, in either direction, keep the case open:

- the specialist in charge asks the requester something (another photo, a detail):
  ``ask_requester`` moves the case to ``awaiting_requester``; the requester's ``reply``
  brings it back to ``accepted`` (the specialist owes an answer again). The specialist may
  also answer without waiting (``answer`` from ``awaiting_requester``);
- after an answer, the requester asks a ``follow_up`` question: back to ``accepted``, with the
  same specialist in charge; or the specialist asks the requester (``ask_requester`` from
  ``answered``).

An explicit ``awaiting_requester`` state (rather than a flag) is what lets the clock know
whom to remind: the recipient while the case is ``submitted``/``accepted``, the requester
while it is ``awaiting_requester``.

**The table.** :data:`TRANSITIONS` maps ``state -> event -> (new state, parties allowed)``,
in the spirit of h11's ``EVENT_TRIGGERED_TRANSITIONS``: an event absent from a state's row is
refused with :class:`~relay.errors.Conflict` naming the current state; an event present but
fired by the wrong party is refused with :class:`~relay.errors.Forbidden`. A few guards that
a table cannot express (consent before submission, taking over only after escalation, system
events only once they are due) are checked after the table, each with its own message.

**Parties** (:class:`Party`) are the actor's relations to the case: the requester; the named
specialist; a member of the recipient team — counted only while the case is open to the team
(addressed to the team, or escalated/released to it); the assignee (who took the case); and
the system (the scheduler). Only physicians and specialists may take a case (TE2 is a
physician's act).

**Clock.** Every wait has a window ``[window_start, due_at]``:

- the recipient's window opens on ``submit``, ``follow_up`` and ``reply`` and lasts the
  response delay of the urgency (:class:`CaseSettings`; defaults urgent 24 h, "72 h" 72 h,
  routine 7 days — the teams' triage urgent / 48–72 h / routine, at its upper bound);
- the requester's window opens on ``ask_requester`` and lasts ``requester_reply_delay``.

:func:`due_actions` (the scheduler tick, pure) returns the system events that are due:
a ``Remind`` at 50 % and 90 % of the window (one event even if several thresholds passed
while the relay was down), an ``EscalateToTeam`` at 75 % when an individual (the named
specialist, or the assignee — unless they took it after that point) is in charge and the
case has a team, and ``Expire`` at
``due_at`` + grace (urgent 24 h, 72 h 72 h, routine 7 days). A requester who never answers a
question about an *already answered* case gets it closed instead of expired; an answered case
with no follow-up is closed after ``auto_close_after`` (30 days). The adapter feeds each event
back through :func:`apply` with :meth:`Actor.system`, so reminders, escalations and expiries
are audited and appear in the case history like any other transition.

:func:`apply` returns the new case and the effects to carry out, audit first
(:class:`AuditTransition` — the audit log is written before any result is released), then
notifications, escalations, billing acts, and last a :class:`ScheduleReminder` giving the
next instant :func:`due_actions` has something to do for this case.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Any, ClassVar, Final

from relay.billing import ActCode, expert_act, requester_act
from relay.errors import BadRequest, Conflict, Forbidden
from relay.roles import Role

__all__ = [
    "ANSWERING_ROLES",
    "DEFAULT_SETTINGS",
    "EVENT_VERBS_FR",
    "PARTY_LABELS_FR",
    "REQUESTING_ROLES",
    "STATE_LABELS_FR",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "URGENCY_LABELS_FR",
    "Accept",
    "Actor",
    "Answer",
    "AskRequester",
    "AuditTransition",
    "Cancel",
    "Case",
    "CaseEvent",
    "CaseSettings",
    "CaseState",
    "Close",
    "Effect",
    "Escalate",
    "EscalateToTeam",
    "EventKind",
    "Expire",
    "FollowUp",
    "HistoryEntry",
    "Notice",
    "NotifyRecipient",
    "NotifyRequester",
    "Party",
    "RecordBillingAct",
    "Reject",
    "Release",
    "Remind",
    "ReplyToSpecialist",
    "ScheduleReminder",
    "Submit",
    "Urgency",
    "apply",
    "due_actions",
    "escalation_at",
    "expiry_at",
    "new_draft",
    "next_wakeup",
    "parties_of",
    "reminder_times",
]


# --- States, urgency, parties -----------------------------------------------------------------


class CaseState(StrEnum):
    DRAFT = "draft"
    SUBMITTED = "submitted"
    ACCEPTED = "accepted"
    AWAITING_REQUESTER = "awaiting_requester"
    ANSWERED = "answered"
    CLOSED = "closed"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


TERMINAL_STATES: Final = frozenset(
    {CaseState.CLOSED, CaseState.REJECTED, CaseState.CANCELLED, CaseState.EXPIRED}
)

STATE_LABELS_FR: Final[Mapping[CaseState, str]] = {
    CaseState.DRAFT: "brouillon",
    CaseState.SUBMITTED: "envoyée",
    CaseState.ACCEPTED: "prise en charge",
    CaseState.AWAITING_REQUESTER: "en attente d'une réponse du demandeur",
    CaseState.ANSWERED: "répondue",
    CaseState.CLOSED: "clôturée",
    CaseState.REJECTED: "refusée",
    CaseState.CANCELLED: "annulée",
    CaseState.EXPIRED: "expirée",
}


class Urgency(StrEnum):
    """The requester's triage: the recipient's response delay follows from it."""

    URGENT = "urgent"
    WITHIN_72H = "72h"
    ROUTINE = "routine"


URGENCY_LABELS_FR: Final[Mapping[Urgency, str]] = {
    Urgency.URGENT: "Urgent (24 h)",
    Urgency.WITHIN_72H: "Sous 72 h",
    Urgency.ROUTINE: "Non urgent (7 jours)",
}


class Party(StrEnum):
    """An actor's relation to a case; the table grants events to parties, not to roles."""

    REQUESTER = "requester"
    NAMED_SPECIALIST = "named_specialist"
    TEAM_MEMBER = "team_member"
    ASSIGNEE = "assignee"
    SYSTEM = "system"


PARTY_LABELS_FR: Final[Mapping[Party, str]] = {
    Party.REQUESTER: "l'auteur·rice de la demande",
    Party.NAMED_SPECIALIST: "le·la spécialiste désigné·e",
    Party.TEAM_MEMBER: "un membre de l'équipe destinataire",
    Party.ASSIGNEE: "le·la spécialiste qui a pris en charge la demande",
    Party.SYSTEM: "le relais (tâche planifiée)",
}

REQUESTING_ROLES: Final = frozenset({Role.NURSE, Role.PHYSICIAN, Role.SPECIALIST})
"""Roles that may create a tele-expertise request."""

ANSWERING_ROLES: Final = frozenset({Role.PHYSICIAN, Role.SPECIALIST})
"""Roles that may take (and so answer) a case: the requested professional is a physician."""


@dataclass(frozen=True)
class Actor:
    """Who fires an event: a professional (from the session) or the relay's scheduler.

    ``team_ids`` are the teams the professional belongs to. The system actor can only be
    made with :meth:`system`, so no account can pass for it.
    """

    id: str
    role: Role | None
    team_ids: frozenset[str] = frozenset()
    is_system: bool = False

    @classmethod
    def system(cls) -> Actor:
        """The scheduler, firing due reminders, escalations, expiries and auto-closes."""
        return cls(id="system", role=None, is_system=True)

    @classmethod
    def professional(
        cls, account_id: str, role: Role, team_ids: frozenset[str] = frozenset()
    ) -> Actor:
        """A signed-in professional."""
        return cls(id=account_id, role=role, team_ids=team_ids)


# --- Events (one frozen dataclass each) ------------------------------------------------------


class EventKind(StrEnum):
    SUBMIT = "submit"
    ACCEPT = "accept"
    RELEASE = "release"
    REJECT = "reject"
    CANCEL = "cancel"
    ANSWER = "answer"
    ASK_REQUESTER = "ask_requester"
    REPLY = "reply"
    FOLLOW_UP = "follow_up"
    CLOSE = "close"
    REMIND = "remind"
    ESCALATE = "escalate"
    EXPIRE = "expire"


EVENT_VERBS_FR: Final[Mapping[EventKind, str]] = {
    EventKind.SUBMIT: "envoyer la demande",
    EventKind.ACCEPT: "prendre en charge la demande",
    EventKind.RELEASE: "rendre la demande à l'équipe",
    EventKind.REJECT: "refuser la demande",
    EventKind.CANCEL: "annuler la demande",
    EventKind.ANSWER: "répondre à la demande",
    EventKind.ASK_REQUESTER: "poser une question au demandeur",
    EventKind.REPLY: "répondre à la question du spécialiste",
    EventKind.FOLLOW_UP: "poser une question complémentaire",
    EventKind.CLOSE: "clôturer la demande",
    EventKind.REMIND: "relancer le destinataire",
    EventKind.ESCALATE: "transmettre la demande à l'équipe",
    EventKind.EXPIRE: "faire expirer la demande",
}


@dataclass(frozen=True)
class Submit:
    """The requester sends the draft. Carries the routing of the validated request.

    ``patient_key`` is opaque to the core (the adapter's keyed hash of the INS, or the
    pseudonymous local id); it is what billing limits are counted on. Build it with
    :func:`relay.case_request.submit_event`.
    """

    urgency: Urgency
    patient_key: str
    specialist_id: str | None
    team_id: str | None
    consent_recorded: bool
    kind: ClassVar[EventKind] = EventKind.SUBMIT


@dataclass(frozen=True)
class Accept:
    """A physician takes the case (or, once escalated, a team member takes it over)."""

    kind: ClassVar[EventKind] = EventKind.ACCEPT


@dataclass(frozen=True)
class Release:
    """The specialist in charge (or named) gives the case back to the team's queue."""

    kind: ClassVar[EventKind] = EventKind.RELEASE


@dataclass(frozen=True)
class Reject:
    """The recipient declines the case; the reason is shown to the requester."""

    reason: str
    kind: ClassVar[EventKind] = EventKind.REJECT


@dataclass(frozen=True)
class Cancel:
    """The requester withdraws the case before it is answered."""

    kind: ClassVar[EventKind] = EventKind.CANCEL


@dataclass(frozen=True)
class Answer:
    """The specialist in charge answers (the text itself is stored by the adapter)."""

    kind: ClassVar[EventKind] = EventKind.ANSWER


@dataclass(frozen=True)
class AskRequester:
    """The specialist in charge asks the requester for information."""

    kind: ClassVar[EventKind] = EventKind.ASK_REQUESTER


@dataclass(frozen=True)
class ReplyToSpecialist:
    """The requester answers the specialist's question."""

    kind: ClassVar[EventKind] = EventKind.REPLY


@dataclass(frozen=True)
class FollowUp:
    """The requester asks a follow-up question after an answer."""

    kind: ClassVar[EventKind] = EventKind.FOLLOW_UP


@dataclass(frozen=True)
class Close:
    """The conversation is over (requester, specialist in charge, or the scheduler)."""

    kind: ClassVar[EventKind] = EventKind.CLOSE


@dataclass(frozen=True)
class Remind:
    """System: the ``number``-th reminder threshold of the current window has passed."""

    number: int
    kind: ClassVar[EventKind] = EventKind.REMIND


@dataclass(frozen=True)
class EscalateToTeam:
    """System: the individual in charge has not answered by the escalation threshold."""

    kind: ClassVar[EventKind] = EventKind.ESCALATE


@dataclass(frozen=True)
class Expire:
    """System: the window and its grace period are over without an answer."""

    kind: ClassVar[EventKind] = EventKind.EXPIRE


CaseEvent = (
    Submit
    | Accept
    | Release
    | Reject
    | Cancel
    | Answer
    | AskRequester
    | ReplyToSpecialist
    | FollowUp
    | Close
    | Remind
    | EscalateToTeam
    | Expire
)


# --- Effects ------------------------------------------------------------------------------------


class Notice(StrEnum):
    """Why someone is notified (the adapter picks the French wording and channel)."""

    NEW_CASE = "new_case"
    ACCEPTED = "accepted"
    TAKEN_OVER = "taken_over"
    RELEASED = "released"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    ANSWERED = "answered"
    QUESTION = "question"
    REPLY = "reply"
    FOLLOW_UP = "follow_up"
    CLOSED = "closed"
    REMINDER = "reminder"
    EXPIRED = "expired"


@dataclass(frozen=True)
class NotifyRecipient:
    """Notify the recipient side: ``specialist_id`` (one professional) and/or every member
    of ``team_id``."""

    case_id: str
    notice: Notice
    specialist_id: str | None
    team_id: str | None


@dataclass(frozen=True)
class NotifyRequester:
    """Notify the professional who made the request."""

    case_id: str
    notice: Notice
    requester_id: str


@dataclass(frozen=True)
class ScheduleReminder:
    """Run :func:`due_actions` for this case at ``at`` (the next thing due on its clock)."""

    case_id: str
    at: datetime


@dataclass(frozen=True)
class Escalate:
    """Tell the team that ``specialist_id`` has not answered; its members may now take it."""

    case_id: str
    to_team: str
    specialist_id: str


@dataclass(frozen=True)
class AuditTransition:
    """Write the transition to the audit log (before anything else is released)."""

    case_id: str
    event: EventKind
    actor_id: str
    from_state: CaseState
    to_state: CaseState
    at: datetime


@dataclass(frozen=True)
class RecordBillingAct:
    """Record an act code for a professional (see :mod:`relay.billing`)."""

    case_id: str
    code: ActCode
    professional_id: str
    patient_key: str
    at: datetime


Effect = (
    NotifyRecipient
    | NotifyRequester
    | ScheduleReminder
    | Escalate
    | AuditTransition
    | RecordBillingAct
)


# --- The case -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class HistoryEntry:
    """One transition, as shown in the case history (no clinical content)."""

    at: datetime
    event: EventKind
    actor_id: str
    from_state: CaseState
    to_state: CaseState


@dataclass(frozen=True)
class Case:
    """The lifecycle state of one case. Clinical content lives in the request, not here.

    ``specialist_id`` is the named specialist (if any), ``team_id`` the recipient team (or
    the named specialist's fallback team); ``escalated`` opens a named case to its team.
    ``window_start``/``due_at`` bound the current wait, ``reminders_sent`` counts the
    reminders of that window. ``first_answered_at`` marks that billing acts were recorded.
    """

    id: str
    requester_id: str
    requester_role: Role
    created_at: datetime
    state: CaseState
    state_since: datetime
    urgency: Urgency = Urgency.ROUTINE
    patient_key: str | None = None
    specialist_id: str | None = None
    team_id: str | None = None
    assignee_id: str | None = None
    escalated: bool = False
    window_start: datetime | None = None
    due_at: datetime | None = None
    reminders_sent: int = 0
    first_answered_at: datetime | None = None
    rejection_reason: str | None = None
    history: tuple[HistoryEntry, ...] = ()

    @property
    def team_open(self) -> bool:
        """True when any member of the recipient team may take the case."""
        return self.team_id is not None and (self.specialist_id is None or self.escalated)


def _default_delays() -> Mapping[Urgency, timedelta]:
    return MappingProxyType(
        {
            Urgency.URGENT: timedelta(hours=24),
            Urgency.WITHIN_72H: timedelta(hours=72),
            Urgency.ROUTINE: timedelta(days=7),
        }
    )


@dataclass(frozen=True)
class CaseSettings:
    """Delays of the lifecycle (to become the ``[tele_expertise]`` section of relais.toml)."""

    response_delays: Mapping[Urgency, timedelta] = field(default_factory=_default_delays)
    """Time the recipient has to answer, from submission (or follow-up, or reply)."""
    expiry_grace: Mapping[Urgency, timedelta] = field(default_factory=_default_delays)
    """After ``due_at``, how long before an unanswered case expires."""
    reminder_fractions: tuple[float, ...] = (0.5, 0.9)
    """Reminders at these fractions of the window (ascending, each in ]0, 1])."""
    escalation_fraction: float = 0.75
    """Escalate to the team at this fraction of the window if an individual is in charge."""
    requester_reply_delay: timedelta = timedelta(days=7)
    requester_reply_grace: timedelta = timedelta(days=7)
    auto_close_after: timedelta = timedelta(days=30)
    """An answered case with no follow-up is closed after this."""
    max_reason_chars: int = 500

    def __post_init__(self) -> None:
        fractions = self.reminder_fractions
        if any(not 0 < f <= 1 for f in fractions) or list(fractions) != sorted(set(fractions)):
            raise ValueError("reminder_fractions must be ascending, distinct, in ]0, 1]")
        if not 0 < self.escalation_fraction <= 1:
            raise ValueError("escalation_fraction must be in ]0, 1]")
        for mapping in (self.response_delays, self.expiry_grace):
            if set(mapping) != set(Urgency) or any(d <= timedelta(0) for d in mapping.values()):
                raise ValueError("delays must be positive and given for every urgency")


DEFAULT_SETTINGS: Final = CaseSettings()


# --- The transition table -----------------------------------------------------------------------

_R, _N, _T, _A, _S = (
    Party.REQUESTER,
    Party.NAMED_SPECIALIST,
    Party.TEAM_MEMBER,
    Party.ASSIGNEE,
    Party.SYSTEM,
)


def _row(
    entries: Mapping[EventKind, tuple[CaseState, set[Party]]],
) -> Mapping[EventKind, tuple[CaseState, frozenset[Party]]]:
    return MappingProxyType({kind: (to, frozenset(who)) for kind, (to, who) in entries.items()})


TRANSITIONS: Final[Mapping[CaseState, Mapping[EventKind, tuple[CaseState, frozenset[Party]]]]] = (
    MappingProxyType(
        {
            CaseState.DRAFT: _row(
                {
                    EventKind.SUBMIT: (CaseState.SUBMITTED, {_R}),
                    EventKind.CANCEL: (CaseState.CANCELLED, {_R}),
                }
            ),
            CaseState.SUBMITTED: _row(
                {
                    EventKind.ACCEPT: (CaseState.ACCEPTED, {_N, _T}),
                    EventKind.REJECT: (CaseState.REJECTED, {_N, _T}),
                    EventKind.CANCEL: (CaseState.CANCELLED, {_R}),
                    EventKind.REMIND: (CaseState.SUBMITTED, {_S}),
                    EventKind.ESCALATE: (CaseState.SUBMITTED, {_S}),
                    EventKind.EXPIRE: (CaseState.EXPIRED, {_S}),
                }
            ),
            CaseState.ACCEPTED: _row(
                {
                    # Taking over a case someone else holds: only once escalated (guard).
                    EventKind.ACCEPT: (CaseState.ACCEPTED, {_T}),
                    EventKind.RELEASE: (CaseState.SUBMITTED, {_A}),
                    EventKind.ANSWER: (CaseState.ANSWERED, {_A}),
                    EventKind.ASK_REQUESTER: (CaseState.AWAITING_REQUESTER, {_A}),
                    EventKind.REJECT: (CaseState.REJECTED, {_A}),
                    EventKind.CANCEL: (CaseState.CANCELLED, {_R}),
                    EventKind.REMIND: (CaseState.ACCEPTED, {_S}),
                    EventKind.ESCALATE: (CaseState.ACCEPTED, {_S}),
                    EventKind.EXPIRE: (CaseState.EXPIRED, {_S}),
                }
            ),
            CaseState.AWAITING_REQUESTER: _row(
                {
                    EventKind.REPLY: (CaseState.ACCEPTED, {_R}),
                    EventKind.ANSWER: (CaseState.ANSWERED, {_A}),
                    # Guards: cancel/expire only before any answer, close only after one.
                    EventKind.CANCEL: (CaseState.CANCELLED, {_R}),
                    EventKind.CLOSE: (CaseState.CLOSED, {_R, _A, _S}),
                    EventKind.REMIND: (CaseState.AWAITING_REQUESTER, {_S}),
                    EventKind.EXPIRE: (CaseState.EXPIRED, {_S}),
                }
            ),
            CaseState.ANSWERED: _row(
                {
                    EventKind.FOLLOW_UP: (CaseState.ACCEPTED, {_R}),
                    EventKind.ASK_REQUESTER: (CaseState.AWAITING_REQUESTER, {_A}),
                    EventKind.CLOSE: (CaseState.CLOSED, {_R, _A, _S}),
                }
            ),
            CaseState.CLOSED: _row({}),
            CaseState.REJECTED: _row({}),
            CaseState.CANCELLED: _row({}),
            CaseState.EXPIRED: _row({}),
        }
    )
)
"""``state -> event -> (new state, parties allowed to fire it)``. Absent: Conflict."""


# --- Clock --------------------------------------------------------------------------------------


def _check_aware(now: datetime) -> None:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")


def reminder_times(case: Case, settings: CaseSettings = DEFAULT_SETTINGS) -> tuple[datetime, ...]:
    """Instants of the reminders of the current window (empty when nothing is awaited)."""
    if case.window_start is None or case.due_at is None:
        return ()
    span = case.due_at - case.window_start
    return tuple(case.window_start + span * f for f in settings.reminder_fractions)


def _reminders_due(case: Case, now: datetime, settings: CaseSettings) -> int:
    return sum(1 for at in reminder_times(case, settings) if at <= now)


def _individual_in_charge(case: Case) -> str | None:
    """Who, alone, owes the answer now: the assignee, or the named specialist before that."""
    if case.state is CaseState.ACCEPTED:
        return case.assignee_id
    if case.state is CaseState.SUBMITTED and not case.escalated:
        return case.specialist_id
    return None


def escalation_at(case: Case, settings: CaseSettings = DEFAULT_SETTINGS) -> datetime | None:
    """When the case escalates to its team, or None if escalation does not apply (no team,
    already escalated, nobody in charge alone, nothing awaited from the recipient, or the
    assignee took the case only after the threshold — they are not sitting on it)."""
    if (
        case.team_id is None
        or case.escalated
        or case.window_start is None
        or case.due_at is None
        or _individual_in_charge(case) is None
    ):
        return None
    at = case.window_start + (case.due_at - case.window_start) * settings.escalation_fraction
    if case.state is CaseState.ACCEPTED and case.state_since > at:
        return None
    return at


def expiry_at(case: Case, settings: CaseSettings = DEFAULT_SETTINGS) -> datetime | None:
    """When the current wait ends (expiry, or closing an answered case whose requester went
    silent), or None when nothing is awaited."""
    if case.due_at is None:
        return None
    if case.state is CaseState.AWAITING_REQUESTER:
        return case.due_at + settings.requester_reply_grace
    if case.state in (CaseState.SUBMITTED, CaseState.ACCEPTED):
        return case.due_at + settings.expiry_grace[case.urgency]
    return None


def _auto_close_at(case: Case, settings: CaseSettings) -> datetime | None:
    if case.state is CaseState.ANSWERED:
        return case.state_since + settings.auto_close_after
    return None


def due_actions(
    case: Case, now: datetime, settings: CaseSettings = DEFAULT_SETTINGS
) -> list[CaseEvent]:
    """The system events due at ``now`` (the scheduler tick). Pure and deterministic.

    Apply each with ``Actor.system()`` in order. Calling it again after applying them
    returns nothing new, so a tick may safely run more than once.
    """
    _check_aware(now)
    end = expiry_at(case, settings)
    if end is not None and now >= end:
        answered = case.first_answered_at is not None
        if case.state is CaseState.AWAITING_REQUESTER and answered:
            return [Close()]
        return [Expire()]
    close_at = _auto_close_at(case, settings)
    if close_at is not None and now >= close_at:
        return [Close()]
    events: list[CaseEvent] = []
    escalate = escalation_at(case, settings)
    if escalate is not None and now >= escalate:
        events.append(EscalateToTeam())
    due = _reminders_due(case, now, settings)
    if due > case.reminders_sent:
        # One reminder even if several thresholds passed while the relay was down.
        events.append(Remind(number=due))
    return events


def next_wakeup(case: Case, settings: CaseSettings = DEFAULT_SETTINGS) -> datetime | None:
    """The next instant at which :func:`due_actions` will return something, if any."""
    candidates = list(reminder_times(case, settings)[case.reminders_sent :])
    for at in (escalation_at(case, settings), expiry_at(case, settings)):
        if at is not None:
            candidates.append(at)
    close_at = _auto_close_at(case, settings)
    if close_at is not None:
        candidates.append(close_at)
    return min(candidates) if candidates else None


# --- Parties and checks ---------------------------------------------------------------------------


def parties_of(case: Case, actor: Actor) -> frozenset[Party]:
    """The actor's relations to the case (empty: a stranger to it)."""
    if actor.is_system:
        return frozenset({Party.SYSTEM})
    parties: set[Party] = set()
    if actor.id == case.requester_id:
        parties.add(Party.REQUESTER)
    if case.specialist_id is not None and actor.id == case.specialist_id:
        parties.add(Party.NAMED_SPECIALIST)
    if case.team_open and case.team_id in actor.team_ids:
        parties.add(Party.TEAM_MEMBER)
    if case.assignee_id is not None and actor.id == case.assignee_id:
        parties.add(Party.ASSIGNEE)
    return frozenset(parties)


def _conflict(case: Case, kind: EventKind) -> Conflict:
    label = STATE_LABELS_FR[case.state]
    return Conflict(
        f"Impossible de {EVENT_VERBS_FR[kind]} : la demande est à l'état « {label} ».",
        code="invalid_case_transition",
    )


def _not_due(kind: EventKind) -> Conflict:
    return Conflict(
        f"Impossible de {EVENT_VERBS_FR[kind]} : l'échéance n'est pas atteinte.",
        code="case_event_not_due",
    )


def _forbidden_party(kind: EventKind, allowed: frozenset[Party]) -> Forbidden:
    who = " ou ".join(PARTY_LABELS_FR[p] for p in Party if p in allowed)
    return Forbidden(
        f"Vous ne pouvez pas {EVENT_VERBS_FR[kind]} : action réservée à {who}.",
        code="case_action_forbidden",
    )


def _check_parties(case: Case, kind: EventKind, actor: Actor, parties: frozenset[Party]) -> None:
    if parties:
        return
    if case.team_id is not None and case.team_id in actor.team_ids:
        # A member of the fallback team of a case addressed to a named specialist.
        raise Forbidden(
            "Cette demande est adressée nominativement à un·e spécialiste ; votre équipe "
            "pourra la prendre en charge si elle lui est transmise.",
            code="case_action_forbidden",
        )
    raise Forbidden("Vous n'êtes pas concerné·e par cette demande.", code="case_action_forbidden")


def _require_text(value: str, label: str, max_chars: int) -> str:
    text = value.strip()
    if not text:
        raise BadRequest(f"{label} : ce champ est obligatoire.", code="missing_field")
    if len(text) > max_chars:
        raise BadRequest(f"{label} : {max_chars} caractères au maximum.", code="invalid_case_field")
    return text


# --- apply -----------------------------------------------------------------------------------


def new_draft(case_id: str, requester: Actor, now: datetime) -> Case:
    """A new draft case of ``requester`` (a nurse, physician or specialist)."""
    _check_aware(now)
    if requester.is_system or requester.role not in REQUESTING_ROLES:
        raise Forbidden(
            "Seuls les infirmier·es et les médecins peuvent demander une télé-expertise.",
            code="case_action_forbidden",
        )
    return Case(
        id=case_id,
        requester_id=requester.id,
        requester_role=requester.role,
        created_at=now,
        state=CaseState.DRAFT,
        state_since=now,
    )


def _recipient_audience(case: Case) -> tuple[str | None, str | None]:
    """``(specialist_id, team_id)`` who should hear about the case now."""
    if case.assignee_id is not None:
        return case.assignee_id, None
    if case.team_open:
        # After an escalation the named specialist is still told (they may yet take it).
        return (case.specialist_id if case.escalated else None), case.team_id
    return case.specialist_id, None


def _notify_recipient(case: Case, notice: Notice) -> NotifyRecipient:
    specialist, team = _recipient_audience(case)
    return NotifyRecipient(case.id, notice, specialist, team)


def _recipient_window(case: Case, now: datetime, settings: CaseSettings) -> dict[str, Any]:
    return {
        "window_start": now,
        "due_at": now + settings.response_delays[case.urgency],
        "reminders_sent": 0,
    }


_NO_WINDOW: Final[Mapping[str, Any]] = MappingProxyType(
    {"window_start": None, "due_at": None, "reminders_sent": 0}
)


def _check_guards(
    case: Case, event: CaseEvent, actor: Actor, now: datetime, settings: CaseSettings
) -> None:
    """Rules the table cannot express. Raises the precise error, else returns."""
    kind = event.kind
    answered = case.first_answered_at is not None
    if isinstance(event, Submit):
        if not event.consent_recorded:
            raise BadRequest(
                "Consentement du patient : il doit être recueilli et enregistré avant l'envoi "
                "de la demande.",
                code="consent_required",
            )
        if event.specialist_id is None and event.team_id is None:
            raise BadRequest(
                "Destinataire : indiquez un·e spécialiste ou une équipe.", code="missing_field"
            )
        if event.specialist_id == case.requester_id:
            raise BadRequest(
                "Destinataire : vous ne pouvez pas vous adresser la demande à vous-même.",
                code="invalid_case_field",
            )
        if not event.patient_key:
            raise BadRequest("Patient : ce champ est obligatoire.", code="missing_field")
    elif isinstance(event, Accept):
        if actor.id == case.requester_id:
            raise Forbidden(
                "Vous ne pouvez pas prendre en charge votre propre demande.",
                code="case_action_forbidden",
            )
        if actor.role not in ANSWERING_ROLES:
            raise Forbidden(
                "Seul un médecin peut prendre en charge une demande de télé-expertise.",
                code="case_action_forbidden",
            )
        if case.state is CaseState.ACCEPTED and not case.escalated:
            raise Conflict(
                "Cette demande est déjà prise en charge par un·e autre spécialiste.",
                code="case_already_taken",
            )
    elif isinstance(event, Release):
        if case.team_id is None:
            raise Conflict(
                "Cette demande n'a pas d'équipe à qui la rendre : refusez-la en indiquant "
                "un motif.",
                code="case_has_no_team",
            )
    elif isinstance(event, Reject):
        _require_text(event.reason, "Motif du refus", settings.max_reason_chars)
    elif case.state is CaseState.AWAITING_REQUESTER and kind in (
        EventKind.CANCEL,
        EventKind.EXPIRE,
    ):
        if answered:
            raise Conflict(
                "Cette demande a déjà reçu une réponse : elle peut seulement être clôturée.",
                code="case_already_answered",
            )
    elif case.state is CaseState.AWAITING_REQUESTER and kind is EventKind.CLOSE and not answered:
        raise Conflict(
            "Cette demande n'a pas encore reçu de réponse : annulez-la plutôt que de la clôturer.",
            code="case_not_answered",
        )
    if actor.is_system:
        _check_due(case, event, now, settings)


def _check_due(case: Case, event: CaseEvent, now: datetime, settings: CaseSettings) -> None:
    """System events are only valid once due: a stale tick must not act twice or early."""
    kind = event.kind
    if isinstance(event, Remind):
        due = _reminders_due(case, now, settings)
        if not case.reminders_sent < event.number <= due:
            raise _not_due(kind)
    elif isinstance(event, EscalateToTeam):
        at = escalation_at(case, settings)
        if at is None or now < at:
            raise _not_due(kind)
    elif isinstance(event, Expire):
        at = expiry_at(case, settings)
        if at is None or now < at:
            raise _not_due(kind)
    elif isinstance(event, Close):
        at = (
            expiry_at(case, settings)
            if case.state is CaseState.AWAITING_REQUESTER
            else _auto_close_at(case, settings)
        )
        if at is None or now < at:
            raise _not_due(kind)


def apply(
    case: Case,
    event: CaseEvent,
    actor: Actor,
    now: datetime,
    settings: CaseSettings = DEFAULT_SETTINGS,
) -> tuple[Case, list[Effect]]:
    """Fire ``event`` by ``actor`` at ``now``: the new case and the effects to carry out.

    Errors, checked in this order so a stranger learns nothing about the case:
    :class:`Forbidden` if the actor has no relation to the case; :class:`Conflict` (code
    ``invalid_case_transition``, the message names the current state) if the event is not
    possible in this state; :class:`Forbidden` if this party may not fire it; then the
    guards' own errors (:class:`BadRequest` for missing consent or reason,
    :class:`Conflict` for a taken case or a system event that is not due yet).
    """
    _check_aware(now)
    kind = event.kind
    parties = parties_of(case, actor)
    _check_parties(case, kind, actor, parties)
    row = TRANSITIONS[case.state]
    if kind not in row:
        raise _conflict(case, kind)
    to_state, allowed = row[kind]
    if isinstance(event, Accept) and case.state is CaseState.ACCEPTED and Party.ASSIGNEE in parties:
        raise Conflict("Vous avez déjà pris en charge cette demande.", code="case_already_taken")
    if not parties & allowed:
        raise _forbidden_party(kind, allowed)
    _check_guards(case, event, actor, now, settings)

    changes, effects = _transition(case, event, actor, now, settings)
    entry = HistoryEntry(now, kind, actor.id, case.state, to_state)
    state_since = now if to_state is not case.state else case.state_since
    new = replace(
        case, **changes, state=to_state, state_since=state_since, history=(*case.history, entry)
    )
    out: list[Effect] = [AuditTransition(case.id, kind, actor.id, case.state, to_state, now)]
    out.extend(effects)
    wakeup = next_wakeup(new, settings)
    if wakeup is not None:
        out.append(ScheduleReminder(case.id, wakeup))
    return new, out


def _transition(
    case: Case, event: CaseEvent, actor: Actor, now: datetime, settings: CaseSettings
) -> tuple[dict[str, Any], list[Effect]]:
    """The field changes and effects of one allowed event (state is set by the caller)."""
    effects: list[Effect] = []
    changes: dict[str, Any] = {}
    if isinstance(event, Submit):
        routed = replace(
            case,
            urgency=event.urgency,
            patient_key=event.patient_key,
            specialist_id=event.specialist_id,
            team_id=event.team_id,
            escalated=False,
            assignee_id=None,
        )
        changes = {
            "urgency": routed.urgency,
            "patient_key": routed.patient_key,
            "specialist_id": routed.specialist_id,
            "team_id": routed.team_id,
            "escalated": False,
            "assignee_id": None,
            **_recipient_window(routed, now, settings),
        }
        effects.append(_notify_recipient(routed, Notice.NEW_CASE))
    elif isinstance(event, Accept):
        previous = case.assignee_id
        changes = {"assignee_id": actor.id}
        effects.append(NotifyRequester(case.id, Notice.ACCEPTED, case.requester_id))
        if previous is not None:
            effects.append(NotifyRecipient(case.id, Notice.TAKEN_OVER, previous, None))
    elif isinstance(event, Release):
        # Releasing opens a named case to its team (the named specialist declined it); an
        # escalation already made stays.
        changes = {
            "assignee_id": None,
            "escalated": case.escalated or case.specialist_id is not None,
        }
        effects.append(NotifyRecipient(case.id, Notice.RELEASED, None, case.team_id))
    elif isinstance(event, Reject):
        changes = {
            "rejection_reason": event.reason.strip(),
            **_NO_WINDOW,
        }
        effects.append(NotifyRequester(case.id, Notice.REJECTED, case.requester_id))
    elif isinstance(event, Cancel):
        changes = dict(_NO_WINDOW)
        if case.state is not CaseState.DRAFT:
            effects.append(_notify_recipient(case, Notice.CANCELLED))
    elif isinstance(event, Answer):
        changes = dict(_NO_WINDOW)
        if case.first_answered_at is None:
            changes["first_answered_at"] = now
            effects.extend(_billing_acts(case, actor, now))
        effects.append(NotifyRequester(case.id, Notice.ANSWERED, case.requester_id))
    elif isinstance(event, AskRequester):
        changes = {
            "window_start": now,
            "due_at": now + settings.requester_reply_delay,
            "reminders_sent": 0,
        }
        effects.append(NotifyRequester(case.id, Notice.QUESTION, case.requester_id))
    elif isinstance(event, ReplyToSpecialist | FollowUp):
        notice = Notice.REPLY if isinstance(event, ReplyToSpecialist) else Notice.FOLLOW_UP
        changes = _recipient_window(case, now, settings)
        effects.append(NotifyRecipient(case.id, notice, case.assignee_id, None))
    elif isinstance(event, Close):
        changes = dict(_NO_WINDOW)
        if actor.id == case.requester_id:
            effects.append(_notify_recipient(case, Notice.CLOSED))
        elif actor.id == case.assignee_id:
            effects.append(NotifyRequester(case.id, Notice.CLOSED, case.requester_id))
    elif isinstance(event, Remind):
        changes = {"reminders_sent": event.number}
        if case.state is CaseState.AWAITING_REQUESTER:
            effects.append(NotifyRequester(case.id, Notice.REMINDER, case.requester_id))
        else:
            effects.append(_notify_recipient(case, Notice.REMINDER))
    elif isinstance(event, EscalateToTeam):
        changes = {"escalated": True}
        in_charge = _individual_in_charge(case)
        assert case.team_id is not None and in_charge is not None  # guaranteed by _check_due
        effects.append(Escalate(case.id, case.team_id, in_charge))
    elif isinstance(event, Expire):
        changes = dict(_NO_WINDOW)
        effects.append(NotifyRequester(case.id, Notice.EXPIRED, case.requester_id))
        effects.append(_notify_recipient(case, Notice.EXPIRED))
    return changes, effects


def _billing_acts(case: Case, answerer: Actor, now: datetime) -> list[RecordBillingAct]:
    """Acts recorded once, at the first answer: the tele-expertise took place then."""
    acts: list[RecordBillingAct] = []
    patient_key = case.patient_key or ""
    code = requester_act(case.requester_role)
    if code is not None:
        acts.append(RecordBillingAct(case.id, code, case.requester_id, patient_key, now))
    if answerer.role is not None:
        code = expert_act(answerer.role)
        if code is not None:
            acts.append(RecordBillingAct(case.id, code, answerer.id, patient_key, now))
    return acts
