"""Audit events: one frozen record per audited action → a FHIR R4 AuditEvent (IHE BALP shape).

Handlers describe what happened with an :class:`AuditRecord`; :func:`build_audit_event` turns
it into an AuditEvent resource (a plain dict), :func:`seal` into the canonical bytes, salted
commitment and leaf hash the log stores. The event codes come from ONE table, :data:`ACTIONS`.

Privacy rules enforced here, not left to callers:

* no free text: every string is an enumerated code, an identifier matching a strict pattern,
  or a detail value without spaces and at most 200 characters;
* patients appear only as keyed hashes (:func:`patient_reference`, HMAC-SHA256), so an
  auditor can find every event about a patient by hashing the identifier the same way, while
  the log itself reveals nobody;
* searches appear only as keyed hashes of their criteria (:func:`search_reference`);
* professionals are identified by account id and RPPS number, never by name.

The log index is the AuditEvent ``id``: storing it inside the hashed content is what lets the
verifier name a swapped or shifted entry precisely. No other element of the resource carries
an ``id`` member (the verifier relies on that to read the index without parsing the JSON).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final

from relay.audit.canonical import canonicalize
from relay.audit.errors import InvalidAuditRecord
from relay.audit.merkle import SALT_SIZE, entry_commitment, leaf_hash

__all__ = [
    "ACTIONS",
    "ACTION_SYSTEM",
    "DCM",
    "RPPS_SYSTEM",
    "ActionSpec",
    "Actor",
    "ActorKind",
    "AuditAction",
    "AuditRecord",
    "Code",
    "DetailKey",
    "EntityRef",
    "FhirAction",
    "Outcome",
    "OutcomeRule",
    "Purpose",
    "ResourceKind",
    "SealedEvent",
    "build_audit_event",
    "format_instant",
    "patient_reference",
    "seal",
    "search_reference",
]

# --- code systems -----------------------------------------------------------------------------

DCM: Final = "http://dicom.nema.org/resources/ontology/DCM"
ACTION_SYSTEM: Final = "urn:relais-sante:audit-action"
ROLE_SYSTEM: Final = "urn:relais-sante:role"
USER_SYSTEM: Final = "urn:relais-sante:account"
GUEST_SYSTEM: Final = "urn:relais-sante:guest"
PATIENT_HASH_SYSTEM: Final = "urn:relais-sante:patient-hmac-sha256"
QUERY_HASH_SYSTEM: Final = "urn:relais-sante:search-hmac-sha256"
AUDIT_ENTRY_SYSTEM: Final = "urn:relais-sante:audit-entry"
RESOURCE_SYSTEM_PREFIX: Final = "urn:relais-sante:"
# FR Core Practitioner: RPPS numbers use the system https://rpps.esante.gouv.fr.
RPPS_SYSTEM: Final = "https://rpps.esante.gouv.fr"
ENTITY_TYPE_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/security-source-type"
PARTICIPATION_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
ROLE_CLASS_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/v3-RoleClass"
ACT_REASON_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/v3-ActReason"


@dataclass(frozen=True)
class Code:
    """A coding: system, code, display (display is English, from the code system)."""

    system: str
    code: str
    display: str | None = None

    def coding(self) -> dict[str, str]:
        """FHIR ``Coding`` JSON."""
        out = {"system": self.system, "code": self.code}
        if self.display is not None:
            out["display"] = self.display
        return out


def _dcm(code: str, display: str) -> Code:
    return Code(DCM, code, display)


# DICOM PS3.16 CID 400 (EventID) and CID 401/403 (EventTypeCode), as used by PS3.15 A.5.3.
USER_AUTHENTICATION = _dcm("110114", "User Authentication")
LOGIN = _dcm("110122", "Login")
LOGOUT = _dcm("110123", "Logout")
PATIENT_RECORD = _dcm("110110", "Patient Record")
EXPORT = _dcm("110106", "Export")
IMPORT = _dcm("110107", "Import")
AUDIT_LOG_USED = _dcm("110101", "Audit Log Used")
APPLICATION_ACTIVITY = _dcm("110100", "Application Activity")
APPLICATION_START = _dcm("110120", "Application Start")
APPLICATION_STOP = _dcm("110121", "Application Stop")
# PS3.15 A.5.3.11: 110132..110137 are Security Alert *type* codes (DCID 403), so they ride
# as the subtype of EventID 110113 "Security Alert".
SECURITY_ALERT = _dcm("110113", "Security Alert")
SECURITY_CONFIGURATION = _dcm("110129", "Security Configuration")
SOFTWARE_CONFIGURATION = _dcm("110131", "Software Configuration")
USE_OF_RESTRICTED_FUNCTION = _dcm("110132", "Use of Restricted Function")
AUDIT_RECORDING_STOPPED = _dcm("110133", "Audit Recording Stopped")
AUDIT_RECORDING_STARTED = _dcm("110134", "Audit Recording Started")
SECURITY_ROLES_CHANGED = _dcm("110136", "Security Roles Changed")
USER_SECURITY_ATTRIBUTES_CHANGED = _dcm("110137", "User Security Attributes Changed")

SOURCE_ROLE = _dcm("110153", "Source Role ID")
DESTINATION_ROLE = _dcm("110152", "Destination Role ID")
APPLICATION = _dcm("110150", "Application")
# BALP UserAgentTypesVS: IRCP for query/retrieve, AGNT for push/create/update, PAT for the
# patient acting.
INFORMATION_RECIPIENT = Code(PARTICIPATION_SYSTEM, "IRCP", "information recipient")
AGENT = Code(ROLE_CLASS_SYSTEM, "AGNT", "agent")
PATIENT_ROLE_CLASS = Code(ROLE_CLASS_SYSTEM, "PAT", "patient")
APPLICATION_SERVER = Code(SOURCE_TYPE_SYSTEM, "4", "Application Server")


# --- enumerations -----------------------------------------------------------------------------


class FhirAction(StrEnum):
    """AuditEvent.action (FHIR R4 audit-event-action)."""

    CREATE = "C"
    READ = "R"
    UPDATE = "U"
    DELETE = "D"
    EXECUTE = "E"


class Outcome(StrEnum):
    """AuditEvent.outcome (FHIR R4 audit-event-outcome = DICOM EventOutcomeIndicator)."""

    SUCCESS = "0"
    MINOR_FAILURE = "4"
    SERIOUS_FAILURE = "8"
    MAJOR_FAILURE = "12"


class OutcomeRule(StrEnum):
    """Which outcomes an action admits (a "login_failed" that succeeded is a bug)."""

    ANY = "any"
    SUCCESS = "success"
    FAILURE = "failure"


class Purpose(StrEnum):
    """AuditEvent.purposeOfEvent, from HL7 v3 ActReason."""

    TREATMENT = "TREAT"
    EMERGENCY_TREATMENT = "ETREAT"
    OPERATIONS = "HOPERAT"
    PATIENT_REQUEST = "PATRQT"


class AuditAction(StrEnum):
    """Every audited action of the relay (issue 3, "Coverage")."""

    LOGIN_SUCCEEDED = "login_succeeded"
    LOGIN_FAILED = "login_failed"
    LOGOUT = "logout"
    MESSAGE_READ = "message_read"
    ATTACHMENT_DOWNLOADED = "attachment_downloaded"
    PHOTO_VIEWED = "photo_viewed"
    CASE_READ = "case_read"
    CASE_TRANSITION = "case_transition"
    MESSAGE_SENT = "message_sent"
    MESSAGE_RECEIVED = "message_received"
    MESSAGE_RELAYED = "message_relayed"
    MAIL_REFUSED = "mail_refused"
    ACCESS_DENIED = "access_denied"
    CONSULTATION_JOIN = "consultation_join"
    CONSULTATION_LEAVE = "consultation_leave"
    CONSULTATION_ADMIT = "consultation_admit"
    CONSULTATION_REMOVE = "consultation_remove"
    CONSULTATION_CONSENT = "consultation_consent"
    CONSULTATION_RECORDING_START = "consultation_recording_start"
    CONSULTATION_RECORDING_STOP = "consultation_recording_stop"
    CONSULTATION_SCHEDULED = "consultation_scheduled"
    CONSULTATION_READ = "consultation_read"
    CONSULTATION_UPDATED = "consultation_updated"  # participants added
    CONSULTATION_LINK_CHANGED = "consultation_link_changed"  # join link issued / revoked
    CONSULTATION_ENDED = "consultation_ended"
    CONSULTATION_CHAT = "consultation_chat"  # length only, never the text
    RECORDING_DELETED = "recording_deleted"  # a consultation recording erased (row and media)
    ACCOUNT_CREATED = "account_created"
    CREDENTIALS_CHANGED = "credentials_changed"  # password, second factor, certificate
    ROLE_CHANGED = "role_changed"
    TEAM_CHANGED = "team_changed"
    KEY_ROTATED = "key_rotated"
    CONFIG_CHANGED = "config_changed"
    AUDIT_STARTED = "audit_started"
    AUDIT_STOPPED = "audit_stopped"
    AUDIT_READ = "audit_read"
    AUDIT_SEARCHED = "audit_searched"
    EXPORT = "export"
    IMPORT = "import"
    APPLICATION_STARTED = "application_started"
    APPLICATION_STOPPED = "application_stopped"


@dataclass(frozen=True)
class ActionSpec:
    """How one :class:`AuditAction` is coded: DICOM EventID, optional EventTypeCode, FHIR
    action, and the outcomes it admits."""

    event_type: Code
    subtype: Code | None
    action: FhirAction
    outcomes: OutcomeRule = OutcomeRule.ANY


_R, _C, _U, _E = FhirAction.READ, FhirAction.CREATE, FhirAction.UPDATE, FhirAction.EXECUTE
_OK, _KO = OutcomeRule.SUCCESS, OutcomeRule.FAILURE

# THE table. Security Alert actions are "E" (PS3.15 A.5.3.11 "Shall be: E"); Audit Log Used
# is "R" (A.5.3.2); Export is "R" and Import "C" (A.5.3.4 / A.5.3.5).
ACTIONS: Final[Mapping[AuditAction, ActionSpec]] = MappingProxyType(
    {
        AuditAction.LOGIN_SUCCEEDED: ActionSpec(USER_AUTHENTICATION, LOGIN, _E, _OK),
        AuditAction.LOGIN_FAILED: ActionSpec(USER_AUTHENTICATION, LOGIN, _E, _KO),
        AuditAction.LOGOUT: ActionSpec(USER_AUTHENTICATION, LOGOUT, _E),
        AuditAction.MESSAGE_READ: ActionSpec(PATIENT_RECORD, None, _R),
        AuditAction.ATTACHMENT_DOWNLOADED: ActionSpec(PATIENT_RECORD, None, _R),
        AuditAction.PHOTO_VIEWED: ActionSpec(PATIENT_RECORD, None, _R),
        AuditAction.CASE_READ: ActionSpec(PATIENT_RECORD, None, _R),
        AuditAction.CASE_TRANSITION: ActionSpec(PATIENT_RECORD, None, _U),
        AuditAction.MESSAGE_SENT: ActionSpec(PATIENT_RECORD, None, _C),
        AuditAction.MESSAGE_RECEIVED: ActionSpec(IMPORT, None, _C),
        AuditAction.MESSAGE_RELAYED: ActionSpec(EXPORT, None, _R),
        AuditAction.MAIL_REFUSED: ActionSpec(IMPORT, None, _C, _KO),
        AuditAction.ACCESS_DENIED: ActionSpec(SECURITY_ALERT, USE_OF_RESTRICTED_FUNCTION, _E, _KO),
        AuditAction.CONSULTATION_JOIN: ActionSpec(PATIENT_RECORD, None, _E),
        AuditAction.CONSULTATION_LEAVE: ActionSpec(PATIENT_RECORD, None, _E),
        AuditAction.CONSULTATION_ADMIT: ActionSpec(PATIENT_RECORD, None, _E),
        AuditAction.CONSULTATION_REMOVE: ActionSpec(PATIENT_RECORD, None, _E),
        AuditAction.CONSULTATION_CONSENT: ActionSpec(PATIENT_RECORD, None, _C),
        AuditAction.CONSULTATION_RECORDING_START: ActionSpec(PATIENT_RECORD, None, _C),
        AuditAction.CONSULTATION_RECORDING_STOP: ActionSpec(PATIENT_RECORD, None, _U),
        AuditAction.CONSULTATION_SCHEDULED: ActionSpec(PATIENT_RECORD, None, _C),
        AuditAction.CONSULTATION_READ: ActionSpec(PATIENT_RECORD, None, _R),
        AuditAction.CONSULTATION_UPDATED: ActionSpec(PATIENT_RECORD, None, _U),
        AuditAction.CONSULTATION_LINK_CHANGED: ActionSpec(
            SECURITY_ALERT, USER_SECURITY_ATTRIBUTES_CHANGED, _E
        ),
        AuditAction.CONSULTATION_ENDED: ActionSpec(PATIENT_RECORD, None, _U),
        AuditAction.CONSULTATION_CHAT: ActionSpec(PATIENT_RECORD, None, _C),
        AuditAction.RECORDING_DELETED: ActionSpec(PATIENT_RECORD, None, FhirAction.DELETE),
        AuditAction.ACCOUNT_CREATED: ActionSpec(
            SECURITY_ALERT, USER_SECURITY_ATTRIBUTES_CHANGED, _E
        ),
        AuditAction.CREDENTIALS_CHANGED: ActionSpec(
            SECURITY_ALERT, USER_SECURITY_ATTRIBUTES_CHANGED, _E
        ),
        AuditAction.ROLE_CHANGED: ActionSpec(SECURITY_ALERT, SECURITY_ROLES_CHANGED, _E),
        AuditAction.TEAM_CHANGED: ActionSpec(SECURITY_ALERT, SECURITY_ROLES_CHANGED, _E),
        AuditAction.KEY_ROTATED: ActionSpec(SECURITY_ALERT, SECURITY_CONFIGURATION, _E),
        AuditAction.CONFIG_CHANGED: ActionSpec(SECURITY_ALERT, SOFTWARE_CONFIGURATION, _E),
        AuditAction.AUDIT_STARTED: ActionSpec(SECURITY_ALERT, AUDIT_RECORDING_STARTED, _E),
        AuditAction.AUDIT_STOPPED: ActionSpec(SECURITY_ALERT, AUDIT_RECORDING_STOPPED, _E),
        AuditAction.AUDIT_READ: ActionSpec(AUDIT_LOG_USED, None, _R),
        AuditAction.AUDIT_SEARCHED: ActionSpec(AUDIT_LOG_USED, None, _R),
        AuditAction.EXPORT: ActionSpec(EXPORT, None, _R),
        AuditAction.IMPORT: ActionSpec(IMPORT, None, _C),
        AuditAction.APPLICATION_STARTED: ActionSpec(APPLICATION_ACTIVITY, APPLICATION_START, _E),
        AuditAction.APPLICATION_STOPPED: ActionSpec(APPLICATION_ACTIVITY, APPLICATION_STOP, _E),
    }
)


class ActorKind(StrEnum):
    """Who requested the action."""

    PROFESSIONAL = "professional"  # an account (nurse, physician, ..., admin)
    PATIENT = "patient"  # a patient joining a consultation by link (no account)
    SYSTEM = "system"  # the relay itself (start/stop, scheduled jobs)
    REMOTE_SERVER = "remote_server"  # a peer MTA delivering or refusing mail


class ResourceKind(StrEnum):
    """What was acted upon; each maps to a FHIR resource type (or none) and an object role."""

    MESSAGE = "message"
    THREAD = "thread"
    ATTACHMENT = "attachment"
    PHOTO = "photo"
    CASE = "case"
    CONSULTATION = "consultation"
    PARTICIPANT = "participant"  # a consultation participant, id "<consultation>:<participant>"
    RECORDING = "recording"
    CONSENT = "consent"
    MAIL = "mail"
    ACCOUNT = "account"
    TEAM = "team"
    KEY = "key"
    CONFIGURATION = "configuration"
    CERTIFICATE = "certificate"
    AUDIT_LOG = "audit_log"
    EXPORT_FILE = "export_file"


# (FHIR resource type for Reference.type, object-role code, display)
_DOMAIN_RESOURCE = ("4", "Domain Resource")
_SECURITY_RESOURCE = ("13", "Security Resource")
_RESOURCES: Final[Mapping[ResourceKind, tuple[str | None, tuple[str, str]]]] = MappingProxyType(
    {
        ResourceKind.MESSAGE: ("Communication", _DOMAIN_RESOURCE),
        ResourceKind.THREAD: ("Communication", _DOMAIN_RESOURCE),
        ResourceKind.ATTACHMENT: ("DocumentReference", _DOMAIN_RESOURCE),
        ResourceKind.PHOTO: ("Media", _DOMAIN_RESOURCE),
        ResourceKind.CASE: ("Task", _DOMAIN_RESOURCE),
        ResourceKind.CONSULTATION: ("Encounter", _DOMAIN_RESOURCE),
        ResourceKind.PARTICIPANT: (None, _DOMAIN_RESOURCE),
        ResourceKind.RECORDING: ("Media", _DOMAIN_RESOURCE),
        ResourceKind.CONSENT: ("Consent", _DOMAIN_RESOURCE),
        ResourceKind.MAIL: (None, _DOMAIN_RESOURCE),
        ResourceKind.ACCOUNT: (None, _SECURITY_RESOURCE),
        ResourceKind.TEAM: ("CareTeam", _SECURITY_RESOURCE),
        ResourceKind.KEY: (None, _SECURITY_RESOURCE),
        ResourceKind.CONFIGURATION: (None, _SECURITY_RESOURCE),
        ResourceKind.CERTIFICATE: (None, _SECURITY_RESOURCE),
        ResourceKind.AUDIT_LOG: (None, _SECURITY_RESOURCE),
        ResourceKind.EXPORT_FILE: (None, _DOMAIN_RESOURCE),
    }
)


class DetailKey(StrEnum):
    """The only keys allowed in :attr:`AuditRecord.detail`."""

    METHOD = "method"  # login / join method, one of AUTH_METHODS
    TLS_VERSION = "tls_version"
    TLS_CIPHER = "tls_cipher"
    REMOTE_PEER = "remote_peer"  # host[address]:port of an SMTP peer
    CERTIFICATE_SERIAL = "certificate_serial"
    REASON = "reason"  # an enumerated reason code, e.g. not_team_member
    FROM_STATE = "from_state"
    TO_STATE = "to_state"
    NEW_ROLE = "new_role"
    SETTING = "setting"  # dotted configuration key
    KEY_ID = "key_id"
    FORMAT = "format"  # export format: fhir | atna
    COUNT = "count"
    SIZE = "size"  # bytes handed out
    SHA256 = "sha256"  # digest of what was handed out (receipts)
    HTTP_STATUS = "http_status"
    SMTP_REPLY = "smtp_reply"


AUTH_METHODS: Final = frozenset({"password", "totp", "client_certificate", "join_link"})

MAX_DETAIL_VALUE = 200
MAX_DETAILS = 16
MAX_ENTITIES = 16

# Identifiers: opaque ids, never prose (no spaces).
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+\-_]{0,127}")
_HOST_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,252}")
_ROLE_RE = re.compile(r"[a-z][a-z_]{0,31}")
_RPPS_RE = re.compile(r"[0-9]{11}")
_HEX64_RE = re.compile(r"[0-9a-f]{64}")
# Detail values: codes, versions, cipher names, peers, digests — no whitespace, so no prose.
_DETAIL_RE = re.compile(rf"[A-Za-z0-9._:/@+=\-\[\],]{{1,{MAX_DETAIL_VALUE}}}")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidAuditRecord(message)


@dataclass(frozen=True)
class Actor:
    """The requestor: an account, a patient guest, the relay itself or a remote server.

    ``id`` is the account id / guest participant id / node name / peer host; ``role`` the
    account role; ``rpps`` the professional's RPPS number when known. Never a name.
    """

    kind: ActorKind
    id: str
    role: str | None = None
    rpps: str | None = None

    def __post_init__(self) -> None:
        _require(bool(_ID_RE.fullmatch(self.id)), "actor id must be an opaque identifier")
        _require(
            self.role is None or bool(_ROLE_RE.fullmatch(self.role)), "actor role must be a code"
        )
        _require(
            self.rpps is None or bool(_RPPS_RE.fullmatch(self.rpps)),
            "RPPS must be 11 digits",
        )

    @classmethod
    def professional(cls, account_id: str, role: str, rpps: str | None = None) -> Actor:
        """An account holder (any role, including admin)."""
        return cls(ActorKind.PROFESSIONAL, account_id, role, rpps)

    @classmethod
    def patient(cls, participant_id: str) -> Actor:
        """A patient joining by link, known only by an opaque participant id."""
        return cls(ActorKind.PATIENT, participant_id, "patient")

    @classmethod
    def system(cls, node: str) -> Actor:
        """The relay process itself."""
        return cls(ActorKind.SYSTEM, node)

    @classmethod
    def remote_server(cls, host: str) -> Actor:
        """A remote mail server (SMTP peer)."""
        return cls(ActorKind.REMOTE_SERVER, host)


@dataclass(frozen=True)
class EntityRef:
    """A resource acted upon, by kind and opaque id."""

    kind: ResourceKind
    id: str

    def __post_init__(self) -> None:
        _require(bool(_ID_RE.fullmatch(self.id)), "entity id must be an opaque identifier")


@dataclass(frozen=True)
class AuditRecord:
    """What a handler reports: one audited action, with identifiers only.

    ``now`` is passed in (cores never read the clock). ``patient`` and ``search`` are keyed
    hashes from :func:`patient_reference` / :func:`search_reference`. ``detail`` holds
    ``(DetailKey value, value)`` pairs, e.g. ``(("method", "totp"),)``.
    """

    action: AuditAction
    outcome: Outcome
    now: datetime
    actor: Actor
    observer: str
    network_address: str | None = None
    purpose: Purpose | None = None
    entities: tuple[EntityRef, ...] = ()
    patient: str | None = None
    search: str | None = None
    detail: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        _require(isinstance(self.action, AuditAction), "action must be an AuditAction")
        _require(isinstance(self.outcome, Outcome), "outcome must be an Outcome")
        _require(
            self.now.tzinfo is not None and self.now.utcoffset() is not None,
            "now must be timezone-aware",
        )
        rule = ACTIONS[self.action].outcomes
        if rule is OutcomeRule.SUCCESS:
            _require(self.outcome is Outcome.SUCCESS, f"{self.action} must succeed")
        elif rule is OutcomeRule.FAILURE:
            _require(self.outcome is not Outcome.SUCCESS, f"{self.action} must be a failure")
        _require(bool(_HOST_RE.fullmatch(self.observer)), "observer must be a node name")
        if self.network_address is not None:
            try:
                ipaddress.ip_address(self.network_address)
            except ValueError:
                raise InvalidAuditRecord("network address must be an IP address") from None
        _require(len(self.entities) <= MAX_ENTITIES, "too many entities")
        for entity in self.entities:
            _require(isinstance(entity, EntityRef), "entities must be EntityRef")
        for name, value in (("patient", self.patient), ("search", self.search)):
            _require(
                value is None or bool(_HEX64_RE.fullmatch(value)),
                f"{name} must be a keyed hash (64 lowercase hex digits)",
            )
        _require(len(self.detail) <= MAX_DETAILS, "too many details")
        keys = [key for key, _ in self.detail]
        _require(len(set(keys)) == len(keys), "detail keys must be unique")
        allowed = {key.value for key in DetailKey}
        for key, value in self.detail:
            _require(key in allowed, f"unknown detail key {key!r}")
            _require(
                isinstance(value, str) and bool(_DETAIL_RE.fullmatch(value)),
                f"detail {key!r} must be a code without spaces, at most "
                f"{MAX_DETAIL_VALUE} characters",
            )
            if key == DetailKey.METHOD:
                _require(value in AUTH_METHODS, f"unknown method {value!r}")


# --- keyed hashes -----------------------------------------------------------------------------

_MIN_KEY = 32


def patient_reference(identifier: str, hmac_key: bytes) -> str:
    """Keyed hash of a patient identifier (INS/NIR or local id), lowercase hex.

    HMAC-SHA256 rather than a plain hash: a 15-digit INS is easily enumerated, a key is not.
    Spaces are removed and letters upper-cased (Corsica ``2A``/``2B``) so the same patient
    always gives the same reference.
    """
    if len(hmac_key) < _MIN_KEY:
        raise ValueError(f"HMAC key must be at least {_MIN_KEY} bytes")
    normalised = "".join(identifier.split()).upper()
    if not normalised:
        raise ValueError("empty patient identifier")
    message = b"relais-patient\x00" + normalised.encode("utf-8")
    return hmac.new(hmac_key, message, hashlib.sha256).hexdigest()


def search_reference(criteria: Mapping[str, str], hmac_key: bytes) -> str:
    """Keyed hash of search criteria (canonical JSON), lowercase hex: two identical searches
    give the same reference, and the criteria (which may name a patient) stay hidden."""
    if len(hmac_key) < _MIN_KEY:
        raise ValueError(f"HMAC key must be at least {_MIN_KEY} bytes")
    message = b"relais-search\x00" + canonicalize(dict(criteria))
    return hmac.new(hmac_key, message, hashlib.sha256).hexdigest()


# --- FHIR AuditEvent --------------------------------------------------------------------------


def format_instant(now: datetime) -> str:
    """FHIR ``instant`` in UTC with milliseconds, e.g. ``2024-05-01T08:30:00.000Z``."""
    return now.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _concept(code: Code) -> dict[str, Any]:
    return {"coding": [code.coding()]}


def _requestor_agent(record: AuditRecord, action: FhirAction) -> dict[str, Any]:
    actor = record.actor
    agent: dict[str, Any]
    if actor.kind is ActorKind.PROFESSIONAL:
        agent_type = INFORMATION_RECIPIENT if action is FhirAction.READ else AGENT
        identifier = (
            {"system": RPPS_SYSTEM, "value": actor.rpps}
            if actor.rpps is not None
            else {"system": USER_SYSTEM, "value": actor.id}
        )
        agent = {"type": _concept(agent_type), "who": {"identifier": identifier}}
        # altId always carries the account id, so "search by person" needs one field.
        agent["altId"] = actor.id
    elif actor.kind is ActorKind.PATIENT:
        agent = {
            "type": _concept(PATIENT_ROLE_CLASS),
            "who": {"identifier": {"system": GUEST_SYSTEM, "value": actor.id}},
            "altId": actor.id,
        }
    elif actor.kind is ActorKind.SYSTEM:
        agent = {"type": _concept(APPLICATION), "who": {"display": actor.id}, "altId": actor.id}
    else:
        agent = {"type": _concept(SOURCE_ROLE), "who": {"display": actor.id}, "altId": actor.id}
    if actor.role is not None:
        agent["role"] = [_concept(Code(ROLE_SYSTEM, actor.role))]
    agent["requestor"] = True
    if record.network_address is not None:
        # FHIR network-type "2" = IP address.
        agent["network"] = {"address": record.network_address, "type": "2"}
    return agent


def _entities(record: AuditRecord, index: int) -> list[dict[str, Any]]:
    entities: list[dict[str, Any]] = []
    if record.patient is not None:
        # BALP entity:patient — audit-entity-type 1 Person, object-role 1 Patient.
        entities.append(
            {
                "what": {"identifier": {"system": PATIENT_HASH_SYSTEM, "value": record.patient}},
                "type": Code(ENTITY_TYPE_SYSTEM, "1", "Person").coding(),
                "role": Code(OBJECT_ROLE_SYSTEM, "1", "Patient").coding(),
            }
        )
    for entity in record.entities:
        fhir_type, (role_code, role_display) = _RESOURCES[entity.kind]
        what: dict[str, Any] = {
            "identifier": {
                "system": RESOURCE_SYSTEM_PREFIX + entity.kind.value,
                "value": entity.id,
            }
        }
        if fhir_type is not None:
            what["type"] = fhir_type
        entities.append(
            {
                "what": what,
                "type": Code(ENTITY_TYPE_SYSTEM, "2", "System Object").coding(),
                "role": Code(OBJECT_ROLE_SYSTEM, role_code, role_display).coding(),
            }
        )
    if record.search is not None:
        # BALP entity:query — object-role 24 Query; only the keyed hash, never the criteria.
        entities.append(
            {
                "what": {"identifier": {"system": QUERY_HASH_SYSTEM, "value": record.search}},
                "type": Code(ENTITY_TYPE_SYSTEM, "2", "System Object").coding(),
                "role": Code(OBJECT_ROLE_SYSTEM, "24", "Query").coding(),
            }
        )
    if record.detail:
        # R4 AuditEvent carries name/value details only on entities: one context entity
        # (audit-entity-type 4 "Other") holds the transaction details of this entry.
        entities.append(
            {
                "what": {"identifier": {"system": AUDIT_ENTRY_SYSTEM, "value": str(index)}},
                "type": Code(ENTITY_TYPE_SYSTEM, "4", "Other").coding(),
                "detail": [{"type": key, "valueString": value} for key, value in record.detail],
            }
        )
    return entities


def build_audit_event(record: AuditRecord, *, index: int) -> dict[str, Any]:
    """The FHIR R4 AuditEvent for ``record`` stored at log position ``index``."""
    if index < 0:
        raise InvalidAuditRecord("log index must be >= 0")
    spec = ACTIONS[record.action]
    subtype = [spec.subtype.coding()] if spec.subtype is not None else []
    subtype.append(Code(ACTION_SYSTEM, record.action.value).coding())
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": str(index),
        "type": spec.event_type.coding(),
        "subtype": subtype,
        "action": spec.action.value,
        "recorded": format_instant(record.now),
        "outcome": record.outcome.value,
        "agent": [
            _requestor_agent(record, spec.action),
            {
                # BALP: the server side is the Destination Role ID.
                "type": _concept(DESTINATION_ROLE),
                "who": {"display": record.observer},
                "requestor": False,
            },
        ],
        "source": {
            "site": record.observer,
            "observer": {"display": record.observer},
            "type": [APPLICATION_SERVER.coding()],
        },
    }
    if record.purpose is not None:
        event["purposeOfEvent"] = [_concept(Code(ACT_REASON_SYSTEM, record.purpose.value))]
    entities = _entities(record, index)
    if entities:
        event["entity"] = entities
    return event


@dataclass(frozen=True)
class SealedEvent:
    """An event ready to append: canonical bytes, salted commitment and RFC 6962 leaf hash."""

    index: int
    salt: bytes
    content: bytes
    commitment: bytes
    leaf_hash: bytes


def seal(record: AuditRecord, *, index: int, salt: bytes) -> SealedEvent:
    """Build, canonicalise (RFC 8785) and commit to the event for log position ``index``.

    ``salt`` is 32 fresh random bytes from the caller (``secrets.token_bytes(32)``).
    """
    if len(salt) != SALT_SIZE:
        raise InvalidAuditRecord(f"salt must be {SALT_SIZE} bytes")
    content = canonicalize(build_audit_event(record, index=index))
    commitment = entry_commitment(salt, content)
    return SealedEvent(index, salt, content, commitment, leaf_hash(commitment))
