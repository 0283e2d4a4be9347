"""Who may do what: the one authorization table every endpoint goes through.

Each route declares an :class:`Action`; the handler works out the caller's
:class:`Relation` to the resource (owner, member of the owning team, or none) and
calls :func:`authorize`. Nothing else grants access. The table is data so that it
can be read, reviewed and tested as a matrix (role x action x relation).

Administrators manage accounts and read audit trails but, by design, do not read
clinical content: separation of duties as hospital security officers expect.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from relay.errors import Forbidden
from relay.roles import Role


class Action(StrEnum):
    PUBLIC = "public"  # no session needed: health checks, login, static pages
    VIEW_SELF = "self.view"
    MANAGE_OWN_SECURITY = "self.security"
    SEARCH_DIRECTORY = "directory.search"
    UPLOAD_FILE = "file.upload"
    DOWNLOAD_FILE = "file.download"
    MANAGE_ACCOUNTS = "accounts.manage"
    READ_OWN_AUDIT = "audit.read_own"
    SEARCH_AUDIT = "audit.search"
    READ_AUDIT_PROOFS = "audit.proofs"
    SCHEDULE_CONSULTATION = "consultation.schedule"
    VIEW_CONSULTATION = "consultation.view"
    MANAGE_CONSULTATION = "consultation.manage"  # participants, join links
    JOIN_CONSULTATION = "consultation.join"  # professionals, over the signaling socket
    VIEW_RECORDING = "consultation.recording"  # list and download a call's recordings
    DELETE_RECORDING = "consultation.recording_delete"  # erase one (the organizer)
    START_THREAD = "message.start"  # a new thread of secure messages
    VIEW_THREAD = "message.view"  # read a thread, its attachments, mark it read
    POST_MESSAGE = "message.post"  # answer in a thread
    CREATE_CASE = "case.create"  # a tele-expertise request (draft, submit)
    VIEW_CASE = "case.view"  # read a case, its photos, its FHIR and DICOM exports
    ACT_ON_CASE = "case.act"  # lifecycle events (the case core checks who may fire which)
    VIEW_CASE_QUEUE = "case.queue"  # the specialists' queue of cases to take


class Relation(StrEnum):
    OWNER = "owner"  # the caller created or is the addressee of the resource
    TEAM = "team"  # the resource belongs to a team the caller is a member of
    NONE = "none"  # no link (also used for resources that have no owner)


EVERYONE = frozenset(Role)
CLINICIANS = frozenset({Role.NURSE, Role.PHYSICIAN, Role.SPECIALIST, Role.COORDINATOR})
ADMINS = frozenset({Role.ADMIN})
NOBODY: frozenset[Role] = frozenset()
CALL_PARTICIPANTS = frozenset({Role.NURSE, Role.PHYSICIAN, Role.SPECIALIST})
CASE_PARTIES = frozenset({Role.NURSE, Role.PHYSICIAN, Role.SPECIALIST})
DOCTORS = frozenset({Role.PHYSICIAN, Role.SPECIALIST})

_ANY_RELATION = (Relation.OWNER, Relation.TEAM, Relation.NONE)


def _same_for_all(roles: frozenset[Role]) -> dict[Relation, frozenset[Role]]:
    return dict.fromkeys(_ANY_RELATION, roles)


# action -> relation -> roles allowed. Absent means refused.
POLICY: Mapping[Action, Mapping[Relation, frozenset[Role]]] = {
    Action.VIEW_SELF: _same_for_all(EVERYONE),
    Action.MANAGE_OWN_SECURITY: _same_for_all(EVERYONE),
    Action.SEARCH_DIRECTORY: _same_for_all(EVERYONE),
    Action.UPLOAD_FILE: _same_for_all(CLINICIANS),
    # A file is read by its owner; team sharing comes with messages and cases.
    Action.DOWNLOAD_FILE: {
        Relation.OWNER: CLINICIANS,
        Relation.TEAM: NOBODY,
        Relation.NONE: NOBODY,
    },
    Action.MANAGE_ACCOUNTS: _same_for_all(ADMINS),
    Action.READ_OWN_AUDIT: _same_for_all(EVERYONE),
    Action.SEARCH_AUDIT: _same_for_all(ADMINS),
    Action.READ_AUDIT_PROOFS: _same_for_all(EVERYONE),
    # Consultations: OWNER = organizer, TEAM = professional taking part. Coordinators
    # schedule for others but do not take part in calls; admins see no clinical content.
    Action.SCHEDULE_CONSULTATION: _same_for_all(CLINICIANS),
    Action.VIEW_CONSULTATION: {
        Relation.OWNER: CLINICIANS,
        Relation.TEAM: CLINICIANS,
        Relation.NONE: NOBODY,
    },
    Action.MANAGE_CONSULTATION: {
        Relation.OWNER: CLINICIANS,
        Relation.TEAM: CLINICIANS,
        Relation.NONE: NOBODY,
    },
    Action.JOIN_CONSULTATION: {
        Relation.OWNER: CALL_PARTICIPANTS,
        Relation.TEAM: CALL_PARTICIPANTS,
        Relation.NONE: NOBODY,
    },
    # A recording is the call itself (faces, voices, the wound): the clinicians who organised
    # or took part in it, not the coordinator who only scheduled it.
    Action.VIEW_RECORDING: {
        Relation.OWNER: CALL_PARTICIPANTS,
        Relation.TEAM: CALL_PARTICIPANTS,
        Relation.NONE: NOBODY,
    },
    # Erasing one (a participant's withdrawal after the call, a retention rule) is the
    # organizer's decision, traced; the other participants may only read.
    Action.DELETE_RECORDING: {
        Relation.OWNER: CALL_PARTICIPANTS,
        Relation.TEAM: NOBODY,
        Relation.NONE: NOBODY,
    },
    # Messages: OWNER = takes part in the thread, TEAM = one of the caller's teams does
    # (any member may read and answer for the team). Admins read no clinical content.
    Action.START_THREAD: _same_for_all(CLINICIANS),
    Action.VIEW_THREAD: {
        Relation.OWNER: CLINICIANS,
        Relation.TEAM: CLINICIANS,
        Relation.NONE: NOBODY,
    },
    Action.POST_MESSAGE: {
        Relation.OWNER: CLINICIANS,
        Relation.TEAM: CLINICIANS,
        Relation.NONE: NOBODY,
    },
    # Tele-expertise cases: OWNER = requester, named specialist or assignee; TEAM = a member
    # of the team the requester shared the case with, or of the recipient team while the
    # case is open to it. A specialist outside the recipient team, a nurse of another team:
    # NONE, refused. Coordinators and admins read no case (clinical content).
    Action.CREATE_CASE: _same_for_all(CASE_PARTIES),
    Action.VIEW_CASE: {
        Relation.OWNER: CASE_PARTIES,
        Relation.TEAM: CASE_PARTIES,
        Relation.NONE: NOBODY,
    },
    Action.ACT_ON_CASE: {
        Relation.OWNER: CASE_PARTIES,
        Relation.TEAM: CASE_PARTIES,
        Relation.NONE: NOBODY,
    },
    Action.VIEW_CASE_QUEUE: _same_for_all(DOCTORS),
}


def is_allowed(role: Role, action: Action, relation: Relation = Relation.NONE) -> bool:
    """True when ``role`` may perform ``action`` on a resource it has ``relation`` to."""
    if action is Action.PUBLIC:
        return True
    return role in POLICY.get(action, {}).get(relation, NOBODY)


def may_ever(role: Role, action: Action) -> bool:
    """True when some relation to some resource lets ``role`` perform ``action``."""
    if action is Action.PUBLIC:
        return True
    return any(role in roles for roles in POLICY.get(action, {}).values())


def authorize(role: Role, action: Action, relation: Relation = Relation.NONE) -> None:
    """Raise :class:`Forbidden` (HTTP 403) unless the table allows it."""
    if not is_allowed(role, action, relation):
        raise Forbidden("Vous n'avez pas les droits nécessaires pour cette action.")
