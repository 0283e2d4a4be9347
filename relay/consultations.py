"""Teleconsultations: scheduling, participants with roles, join links (validation + SQL adapter).

A professional schedules a consultation (time, expected duration, participants with roles) and
hands out join links. Professionals take part with their account; patients, guests and lay
interpreters have none and join by link:

- A link is ``<public url>/consultation/<id>#t=<join token>``. The token sits in the URL
  *fragment*, which browsers never send to a server, so it stays out of access logs, proxies
  and ``Referer`` headers (DESIGN.md: nothing sensitive in URLs). The page reads it and
  exchanges it, with ``POST /api/consultations/<id>/join`` (and the birth date when the link
  asks for one), for a *guest pass*: a short-lived HttpOnly cookie scoped to the consultation's
  WebSocket path, which authenticates the socket. The pass carries the link version, so
  revoking or re-issuing a link also voids the passes obtained with it.
- Tokens are those of :mod:`signaling.tokens` (HMAC-SHA256, bound to one consultation, one
  participant and a role; expiring; revoked by version). Passes use the same format under a
  domain-separated key, so a token can never serve as a pass nor the reverse.
- Nothing identifying sits in clear in the database beyond what the call shows (display
  names): the patient link to a consultation is the audit log's keyed hash of the INS, and
  an optional birth-date check stores an HMAC of the date, never the date.

Validation functions are pure (input and ``now`` in, frozen values out, or a French
:class:`BadRequest` naming the field); :class:`ConsultationStore` only turns values into SQL.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import sqlite3
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

from relay.config import TeleconsultationConfig
from relay.errors import BadRequest, ConfigError, Conflict, NotFound, RelayError
from relay.identifiers import validate_nir
from relay.policy import Relation
from relay.roles import Role as AccountRole
from signaling.errors import ConsultationEnded, SignalingError, TokenError
from signaling.messages import DEFAULT_MAX_MESSAGE_BYTES, MAX_NAME_CHARS, Role
from signaling.room import Identity, RoomSettings
from signaling.tokens import JoinGrant, issue_join_token, verify_join_token
from signaling.turn import DEFAULT_LIFETIME, TurnSettings
from storage.database import Database
from storage.ids import new_id

__all__ = [
    "LINK_ROLES",
    "Consultation",
    "ConsultationSecrets",
    "ConsultationStatus",
    "ConsultationStore",
    "NewConsultation",
    "NewParticipant",
    "Participant",
    "TeleconsultationSettings",
    "birth_date_hash",
    "identity_of",
    "issue_guest_pass",
    "join_token",
    "join_url",
    "link_expires_at",
    "load_secrets",
    "relay_error",
    "validate_birth_date",
    "validate_new_consultation",
    "validate_new_participant",
    "verify_guest_pass",
    "verify_join_link",
]


@dataclass(frozen=True)
class TeleconsultationSettings:
    """Teleconsultation settings, from the ``[teleconsultation]`` section of relais.toml.

    ``turn_secret`` empty: a secret is generated at first use into ``keys/turn.secret``
    (0600) and must then be given to coturn as its ``static-auth-secret``. No ``turn_urls``:
    ``rtcConfiguration`` lists no ICE server (host candidates only: same LAN or loopback).
    """

    turn_urls: tuple[str, ...] = ()
    stun_urls: tuple[str, ...] = ()
    turn_secret: str = ""
    turn_lifetime_seconds: int = DEFAULT_LIFETIME
    grace_seconds: float = 30.0
    max_participants: int = 6
    max_waiting: int = 10
    max_connections: int = 32
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    rate_per_second: float = 50.0
    rate_burst: int = 200
    link_hours_after_end: float = 4.0
    """Join links stay valid this long after the scheduled end (late starts, overruns)."""
    guest_pass_minutes: float = 10.0
    birth_date_max_failures: int = 5
    birth_date_window_minutes: float = 15.0
    max_records: int = 16
    """Participant records per consultation (the room's capacity limits who is present)."""
    recording: bool = True
    recording_max_bytes: int = 2048 * 1024 * 1024

    @classmethod
    def from_config(cls, section: TeleconsultationConfig) -> TeleconsultationSettings:
        """The ``[teleconsultation]`` section of relais.toml (URL lists are comma-separated)."""

        def urls(text: str) -> tuple[str, ...]:
            return tuple(u.strip() for u in text.split(",") if u.strip())

        return cls(
            turn_urls=urls(section.turn_urls),
            stun_urls=urls(section.stun_urls),
            turn_secret=section.turn_secret,
            turn_lifetime_seconds=section.turn_lifetime_seconds,
            grace_seconds=section.grace_seconds,
            max_participants=section.max_participants,
            max_waiting=section.max_waiting,
            rate_per_second=section.rate_per_second,
            rate_burst=section.rate_burst,
            link_hours_after_end=section.link_hours_after_end,
            guest_pass_minutes=section.guest_pass_minutes,
            birth_date_max_failures=section.birth_date_max_failures,
            birth_date_window_minutes=section.birth_date_window_minutes,
            recording=section.recording,
            recording_max_bytes=section.recording_max_megabytes * 1024 * 1024,
        )

    def room_settings(self, turn_secret: str) -> RoomSettings:
        """The room's limits, with TURN credentials when TURN servers are configured."""
        turn = None
        if self.turn_urls or self.stun_urls:
            turn = TurnSettings(
                secret=turn_secret,
                turn_urls=self.turn_urls,
                stun_urls=self.stun_urls,
                lifetime=self.turn_lifetime_seconds,
            )
        return RoomSettings(
            max_participants=self.max_participants,
            max_waiting=self.max_waiting,
            max_connections=self.max_connections,
            grace_seconds=self.grace_seconds,
            rate_per_second=self.rate_per_second,
            rate_burst=self.rate_burst,
            max_message_bytes=self.max_message_bytes,
            turn=turn,
            recording_available=self.recording,
        )


# --- Secrets -------------------------------------------------------------------------------

_GUEST_PASS_DOMAIN: Final = b"relais-sante guest pass v1"
_BIRTH_DATE_DOMAIN: Final = b"relais-sante birth date v1\x00"


@dataclass(frozen=True)
class ConsultationSecrets:
    """``links`` signs join tokens (and, derived, guest passes); ``turn`` is coturn's
    ``static-auth-secret``."""

    links: bytes = field(repr=False)
    turn: str = field(repr=False)

    @property
    def guest_passes(self) -> bytes:
        """Key of guest passes: derived, so a pass never verifies as a join token."""
        return hmac.new(self.links, _GUEST_PASS_DOMAIN, hashlib.sha256).digest()


def _read_or_create(path: Path) -> str:
    """A secret file's text, created (mode 0600 from the first byte, fsynced) if absent."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        info = path.stat()
        if stat.S_IMODE(info.st_mode) & 0o077:
            raise ConfigError(f"{path} is accessible by group/others; chmod 600 it") from None
        value = path.read_text("ascii").strip()
        if len(value) < 32:
            raise ConfigError(f"{path} must hold a secret of at least 32 characters") from None
        return value
    value = secrets.token_urlsafe(32)
    try:
        os.write(fd, value.encode("ascii") + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return value


def load_secrets(keys_dir: Path, settings: TeleconsultationSettings) -> ConsultationSecrets:
    """Read (or create at first use) ``keys/join-links.secret`` and, unless configured,
    ``keys/turn.secret``. Blocking file I/O: call it off the event loop."""
    links = _read_or_create(keys_dir / "join-links.secret").encode("ascii")
    turn = settings.turn_secret or _read_or_create(keys_dir / "turn.secret")
    return ConsultationSecrets(links=links, turn=turn)


# --- Values --------------------------------------------------------------------------------


class ConsultationStatus(StrEnum):
    """``scheduled`` until the last professional ends the call, then ``ended`` (final)."""

    SCHEDULED = "scheduled"
    ENDED = "ended"


LINK_ROLES: Final = frozenset({Role.PATIENT, Role.GUEST, Role.INTERPRETER})
"""Roles that join by link (no account). Professionals always join with their account."""

_ROLE_OF_ACCOUNT: Final[Mapping[AccountRole, Role]] = {
    AccountRole.PHYSICIAN: Role.PHYSICIAN,
    AccountRole.NURSE: Role.NURSE,
    AccountRole.SPECIALIST: Role.SPECIALIST,
}


@dataclass(frozen=True)
class Participant:
    """Someone expected in a consultation."""

    id: str
    consultation_id: str
    role: Role
    display_name: str
    professional_id: str | None
    link_version: int
    link_active: bool
    birth_date_check: bool

    @property
    def is_professional(self) -> bool:
        """Joins with an account (and straight into the call)."""
        return self.professional_id is not None


@dataclass(frozen=True)
class Consultation:
    """A scheduled (or ended) consultation and its participants."""

    id: str
    organizer_id: str
    scheduled_at: datetime
    duration_minutes: int
    status: ConsultationStatus
    patient_ref: str | None
    case_id: str | None
    created_at: datetime
    ended_at: datetime | None
    participants: tuple[Participant, ...]

    def participant(self, participant_id: str) -> Participant | None:
        """The participant with that id, if any."""
        return next((p for p in self.participants if p.id == participant_id), None)

    def participant_for(self, professional_id: str) -> Participant | None:
        """The participant record of a professional, if they take part."""
        return next((p for p in self.participants if p.professional_id == professional_id), None)

    def relation(self, professional_id: str) -> Relation:
        """Policy relation: OWNER (organizer), TEAM (professional participant), NONE."""
        if professional_id == self.organizer_id:
            return Relation.OWNER
        if self.participant_for(professional_id) is not None:
            return Relation.TEAM
        return Relation.NONE

    def link_versions(self) -> dict[str, int]:
        """Current link version of every participant whose link is active."""
        return {p.id: p.link_version for p in self.participants if p.link_active}


@dataclass(frozen=True)
class NewParticipant:
    """A validated participant to add: an account (``professional_id`` or ``email``) or a
    link participant (``role``, ``display_name``, optional ``birth_date``)."""

    role: Role | None
    display_name: str | None = None
    professional_id: str | None = None
    email: str | None = None
    birth_date: date | None = None


@dataclass(frozen=True)
class NewConsultation:
    """A validated scheduling request."""

    scheduled_at: datetime
    duration_minutes: int
    participants: tuple[NewParticipant, ...]
    patient_ins: str | None
    case_id: str | None


# --- Validation (pure) ---------------------------------------------------------------------

_OPAQUE_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_EMAIL: Final = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(\.[A-Za-z0-9\-]+)+")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
MIN_DURATION, MAX_DURATION = 5, 240


def _field(body: Mapping[str, Any], name: str, kind: type, where: str) -> Any:
    value = body.get(name)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        label = {str: "une chaîne", int: "un entier", list: "une liste"}.get(kind, "valide")
        raise BadRequest(f"Le champ « {where}{name} » doit être {label}.", code="invalid_field")
    return value


def validate_birth_date(value: str, today: date) -> date:
    """A birth date ``AAAA-MM-JJ``, not in the future."""
    try:
        parsed = date.fromisoformat(value) if len(value) == 10 else None
    except ValueError:
        parsed = None
    if parsed is None or not date(1900, 1, 1) <= parsed <= today:
        raise BadRequest(
            "La date de naissance doit être une date passée au format AAAA-MM-JJ.",
            code="invalid_birth_date",
        )
    return parsed


def validate_new_participant(raw: Any, today: date, where: str = "") -> NewParticipant:
    """One participant of a scheduling request (``where`` prefixes field names in errors)."""
    if not isinstance(raw, dict):
        raise BadRequest(f"« {where.rstrip('.')} » doit être un objet JSON.", code="invalid_field")
    role_text = _field(raw, "role", str, where)
    role: Role | None = None
    if role_text is not None:
        try:
            role = Role(role_text)
        except ValueError:
            roles = ", ".join(r.value for r in Role)
            raise BadRequest(
                f"Rôle inconnu « {role_text[:40]} » (attendu : {roles}).", code="invalid_role"
            ) from None
    professional_id = _field(raw, "professional_id", str, where)
    email = _field(raw, "email", str, where)
    if professional_id is not None or email is not None:
        if professional_id is not None and not _OPAQUE_ID.fullmatch(professional_id):
            raise BadRequest("Identifiant de professionnel invalide.", code="invalid_field")
        if email is not None and (len(email) > 254 or not _EMAIL.fullmatch(email.strip())):
            raise BadRequest("L'adresse e-mail n'est pas valide.", code="invalid_email")
        if role in LINK_ROLES:
            raise BadRequest(
                "Un patient, un invité ou un interprète non professionnel rejoint par lien, "
                "pas avec un compte.",
                code="invalid_role",
            )
        return NewParticipant(
            role=role,
            professional_id=professional_id,
            email=None if email is None else email.strip().lower(),
        )
    if role is None or role not in LINK_ROLES:
        raise BadRequest(
            "Un participant sans compte doit avoir le rôle patient, guest ou interpreter ; "
            "les professionnels sont désignés par professional_id ou email.",
            code="invalid_role",
        )
    name_text = _field(raw, "display_name", str, where)
    name = " ".join((name_text or "").split())
    if not 1 <= len(name) <= MAX_NAME_CHARS or _CONTROL.search(name):
        raise BadRequest(
            f"Le nom affiché doit comporter entre 1 et {MAX_NAME_CHARS} caractères.",
            code="invalid_display_name",
        )
    birth_text = _field(raw, "birth_date", str, where)
    birth = None if birth_text is None else validate_birth_date(birth_text, today)
    return NewParticipant(role=role, display_name=name, birth_date=birth)


def _parse_instant(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise BadRequest(
            "« scheduled_at » doit être une date et heure ISO 8601 avec fuseau "
            "(ex. 2025-03-14T09:30:00+01:00).",
            code="invalid_scheduled_at",
        )
    return parsed.astimezone(UTC)


def validate_new_consultation(
    body: Mapping[str, Any], now: datetime, settings: TeleconsultationSettings
) -> NewConsultation:
    """A scheduling request: ``scheduled_at``, ``duration_minutes``, ``participants``,
    optional ``patient_ins`` (INS/NIR, kept only as a keyed hash) and ``case_id``."""
    when_text = _field(body, "scheduled_at", str, "")
    if when_text is None:
        raise BadRequest("Le champ « scheduled_at » est obligatoire.", code="missing_field")
    when = _parse_instant(when_text)
    if not now - timedelta(days=1) <= when <= now + timedelta(days=366):
        raise BadRequest(
            "La consultation doit être prévue entre hier et dans un an.",
            code="invalid_scheduled_at",
        )
    duration = _field(body, "duration_minutes", int, "")
    if duration is None:
        duration = 20
    if not MIN_DURATION <= duration <= MAX_DURATION:
        raise BadRequest(
            f"La durée doit être comprise entre {MIN_DURATION} et {MAX_DURATION} minutes.",
            code="invalid_duration",
        )
    raw_participants = _field(body, "participants", list, "") or []
    if len(raw_participants) >= settings.max_records:
        raise BadRequest(
            f"Au plus {settings.max_records - 1} participants en plus de l'organisateur.",
            code="too_many_participants",
        )
    today = now.date()
    participants = tuple(
        validate_new_participant(raw, today, f"participants[{i}].")
        for i, raw in enumerate(raw_participants)
    )
    ins_text = _field(body, "patient_ins", str, "")
    case_id = _field(body, "case_id", str, "")
    if case_id is not None and not _OPAQUE_ID.fullmatch(case_id):
        raise BadRequest("Identifiant de dossier de télé-expertise invalide.", code="invalid_field")
    return NewConsultation(
        scheduled_at=when,
        duration_minutes=duration,
        participants=participants,
        patient_ins=None if ins_text is None else validate_nir(ins_text),
        case_id=case_id,
    )


# --- Links, passes, identities (pure) ------------------------------------------------------


def birth_date_hash(secret: bytes, participant_id: str, birth: date) -> str:
    """Keyed hash of a participant's birth date (the date itself is never stored)."""
    message = _BIRTH_DATE_DOMAIN + f"{participant_id}\x00{birth.isoformat()}".encode("ascii")
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def link_expires_at(consultation: Consultation, settings: TeleconsultationSettings) -> int:
    """When join links of ``consultation`` stop working (Unix seconds)."""
    end = consultation.scheduled_at + timedelta(
        minutes=consultation.duration_minutes, hours=settings.link_hours_after_end
    )
    return int(end.timestamp())


def join_token(
    secrets_: ConsultationSecrets,
    consultation: Consultation,
    participant: Participant,
    settings: TeleconsultationSettings,
) -> str:
    """The current join token of a link participant (deterministic: re-computable)."""
    return issue_join_token(
        secrets_.links,
        consultation_id=consultation.id,
        participant_id=participant.id,
        role=participant.role,
        expires_at=link_expires_at(consultation, settings),
        version=participant.link_version,
        birth_date_check=participant.birth_date_check,
    )


def join_url(public_url: str, consultation_id: str, token: str) -> str:
    """The link to send: the token in the fragment, never sent to any server."""
    return f"{public_url.rstrip('/')}/consultation/{consultation_id}#t={token}"


def _link_participant(consultation: Consultation, grant: JoinGrant) -> Participant:
    participant = consultation.participant(grant.participant_id)
    if participant is None or participant.is_professional or participant.role != grant.role:
        # Only reachable with a token signed by us for a record that changed since.
        raise relay_error(TokenError("join link no longer matches a participant"))
    if consultation.status is ConsultationStatus.ENDED:
        raise relay_error(ConsultationEnded("the consultation has ended"))
    return participant


def verify_join_link(
    secrets_: ConsultationSecrets, token: str, consultation: Consultation, now: float
) -> Participant:
    """The participant a join token designates, or the token's refusal as a RelayError."""
    try:
        grant = verify_join_token(
            secrets_.links,
            token,
            consultation_id=consultation.id,
            now=now,
            current_versions=consultation.link_versions(),
        )
    except SignalingError as exc:
        raise relay_error(exc) from None
    return _link_participant(consultation, grant)


def issue_guest_pass(
    secrets_: ConsultationSecrets,
    consultation: Consultation,
    participant: Participant,
    now: float,
    settings: TeleconsultationSettings,
) -> tuple[str, int]:
    """A short-lived pass for the consultation's WebSocket, and its expiry."""
    expires_at = int(now + settings.guest_pass_minutes * 60)
    value = issue_join_token(
        secrets_.guest_passes,
        consultation_id=consultation.id,
        participant_id=participant.id,
        role=participant.role,
        expires_at=expires_at,
        version=participant.link_version,
    )
    return value, expires_at


def verify_guest_pass(
    secrets_: ConsultationSecrets, value: str, consultation: Consultation, now: float
) -> Participant:
    """The participant a guest pass authenticates; raises the signaling ``TokenError``
    (a WebSocket policy close) when it is forged, expired, revoked or for elsewhere."""
    grant = verify_join_token(
        secrets_.guest_passes,
        value,
        consultation_id=consultation.id,
        now=now,
        current_versions=consultation.link_versions(),
    )
    participant = consultation.participant(grant.participant_id)
    if participant is None or participant.is_professional:
        raise TokenError("guest pass no longer matches a participant")
    return participant


def identity_of(participant: Participant) -> Identity:
    """The room identity of a participant."""
    return Identity(
        participant_id=participant.id,
        role=participant.role,
        display_name=participant.display_name,
        is_professional=participant.is_professional,
    )


_FRENCH: Final[Mapping[str, str]] = {
    "token_malformed": "Ce lien de consultation est incomplet ou mal copié.",
    "token_forged": "Ce lien de consultation n'est pas valide.",
    "token_expired": "Ce lien de consultation a expiré. Demandez un nouveau lien au soignant.",
    "token_wrong_consultation": "Ce lien correspond à une autre consultation.",
    "token_revoked": "Ce lien de consultation a été révoqué. Demandez un nouveau lien au soignant.",
    "token_invalid": "Ce lien de consultation n'est plus valable.",
    "consultation_ended": "Cette consultation est terminée.",
}


def relay_error(exc: SignalingError) -> RelayError:
    """The HTTP form of a signaling refusal: same code and status, French message."""
    error = RelayError(exc.human or _FRENCH.get(exc.code, "Demande refusée."), code=exc.code)
    error.http_status = exc.http_status
    return error


# --- SQL adapter ---------------------------------------------------------------------------


def _instant(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _participant(row: sqlite3.Row) -> Participant:
    return Participant(
        id=row["id"],
        consultation_id=row["consultation_id"],
        role=Role(row["role"]),
        display_name=row["display_name"],
        professional_id=row["professional_id"],
        link_version=int(row["link_version"]),
        link_active=bool(row["link_active"]),
        birth_date_check=row["birth_date_hash"] is not None,
    )


def _load(conn: sqlite3.Connection, consultation_id: str) -> Consultation | None:
    row = conn.execute("SELECT * FROM consultations WHERE id = ?", (consultation_id,)).fetchone()
    if row is None:
        return None
    people = conn.execute(
        "SELECT * FROM consultation_participants WHERE consultation_id = ?"
        " ORDER BY created_at, rowid",
        (consultation_id,),
    ).fetchall()
    created = _instant(row["created_at"])
    assert created is not None
    return Consultation(
        id=row["id"],
        organizer_id=row["organizer_id"],
        scheduled_at=datetime.fromisoformat(row["scheduled_at"]),
        duration_minutes=int(row["duration_minutes"]),
        status=ConsultationStatus(row["status"]),
        patient_ref=row["patient_ref"],
        case_id=row["case_id"],
        created_at=created,
        ended_at=_instant(row["ended_at"]),
        participants=tuple(_participant(p) for p in people),
    )


class ConsultationStore:
    """Consultations in SQL. Every write is one transaction, durable when it returns."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, consultation_id: str) -> Consultation | None:
        """A consultation with its participants, or ``None``."""
        if not _OPAQUE_ID.fullmatch(consultation_id):
            return None
        return await self._db.read(lambda conn: _load(conn, consultation_id))

    async def list_for(self, professional_id: str, limit: int = 100) -> list[Consultation]:
        """Consultations the professional organises or takes part in, latest first."""

        def query(conn: sqlite3.Connection) -> list[Consultation]:
            ids = conn.execute(
                "SELECT c.id FROM consultations c WHERE c.organizer_id = ? OR EXISTS ("
                " SELECT 1 FROM consultation_participants p"
                " WHERE p.consultation_id = c.id AND p.professional_id = ?)"
                " ORDER BY c.scheduled_at DESC LIMIT ?",
                (professional_id, professional_id, limit),
            ).fetchall()
            found = [_load(conn, row["id"]) for row in ids]
            return [c for c in found if c is not None]

        return await self._db.read(query)

    async def create(
        self,
        new: NewConsultation,
        organizer_id: str,
        patient_ref: str | None,
        links_secret: bytes,
        now: datetime,
    ) -> Consultation:
        """Insert a consultation; the organizer takes part when their role is clinical."""
        consultation_id = new_id()

        def insert(conn: sqlite3.Connection) -> Consultation:
            conn.execute(
                "INSERT INTO consultations (id, organizer_id, scheduled_at, duration_minutes,"
                " status, patient_ref, case_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    consultation_id,
                    organizer_id,
                    new.scheduled_at.isoformat(),
                    new.duration_minutes,
                    ConsultationStatus.SCHEDULED.value,
                    patient_ref,
                    new.case_id,
                    now.isoformat(),
                ),
            )
            organizer = _account(conn, NewParticipant(role=None, professional_id=organizer_id))
            if organizer[1] in _ROLE_OF_ACCOUNT:
                _insert_participant(
                    conn,
                    consultation_id,
                    NewParticipant(role=None, professional_id=organizer_id),
                    links_secret,
                    now,
                )
            for participant in new.participants:
                _insert_participant(conn, consultation_id, participant, links_secret, now)
            found = _load(conn, consultation_id)
            assert found is not None
            return found

        return await self._db.transaction(insert)

    async def add_participant(
        self,
        consultation_id: str,
        new: NewParticipant,
        links_secret: bytes,
        now: datetime,
        max_records: int,
    ) -> tuple[Consultation, Participant]:
        """Add someone to a scheduled consultation; link participants get an active link."""

        def insert(conn: sqlite3.Connection) -> tuple[Consultation, Participant]:
            current = _require_open(conn, consultation_id)
            if len(current.participants) >= max_records:
                raise Conflict(
                    f"Cette consultation compte déjà {max_records} participants.",
                    code="too_many_participants",
                )
            pid = _insert_participant(conn, consultation_id, new, links_secret, now)
            found = _load(conn, consultation_id)
            assert found is not None
            participant = found.participant(pid)
            assert participant is not None
            return found, participant

        return await self._db.transaction(insert)

    async def set_link(
        self, consultation_id: str, participant_id: str, *, active: bool
    ) -> tuple[Consultation, Participant]:
        """Re-issue (``active=True``: new version, the previous link stops working) or
        revoke (``active=False``) a participant's join link."""

        def update(conn: sqlite3.Connection) -> tuple[Consultation, Participant]:
            current = _require_open(conn, consultation_id)
            target = current.participant(participant_id)
            if target is None:
                raise NotFound("Participant introuvable dans cette consultation.")
            if target.is_professional:
                raise Conflict(
                    "Les professionnels rejoignent avec leur compte, pas par lien.",
                    code="no_link_for_professional",
                )
            if active:
                conn.execute(
                    "UPDATE consultation_participants SET link_version = link_version + 1,"
                    " link_active = 1 WHERE id = ?",
                    (participant_id,),
                )
            else:
                conn.execute(
                    "UPDATE consultation_participants SET link_active = 0 WHERE id = ?",
                    (participant_id,),
                )
            found = _load(conn, consultation_id)
            assert found is not None
            participant = found.participant(participant_id)
            assert participant is not None
            return found, participant

        return await self._db.transaction(update)

    async def birth_date_matches(self, participant_id: str, expected_hash: str) -> bool:
        """Whether the stored birth-date hash equals ``expected_hash`` (constant time)."""
        row = await self._db.fetchone(
            "SELECT birth_date_hash FROM consultation_participants WHERE id = ?",
            (participant_id,),
        )
        stored = None if row is None else row["birth_date_hash"]
        return stored is not None and hmac.compare_digest(stored, expected_hash)

    async def mark_ended(self, consultation_id: str, now: datetime) -> bool:
        """Persist that the consultation ended (final); False if it already had."""
        changed = await self._db.execute(
            "UPDATE consultations SET status = 'ended', ended_at = ?"
            " WHERE id = ? AND status = 'scheduled'",
            (now.isoformat(), consultation_id),
        )
        return changed == 1


def _require_open(conn: sqlite3.Connection, consultation_id: str) -> Consultation:
    current = _load(conn, consultation_id)
    if current is None:
        raise NotFound("Consultation introuvable.")
    if current.status is ConsultationStatus.ENDED:
        raise Conflict("Cette consultation est terminée.", code="consultation_ended")
    return current


def _account(conn: sqlite3.Connection, new: NewParticipant) -> tuple[str, AccountRole, str]:
    """(id, role, display name) of the active account a participant designates."""
    if new.professional_id is not None:
        row = conn.execute(
            "SELECT id, role, display_name, active FROM professionals WHERE id = ?",
            (new.professional_id,),
        ).fetchone()
    else:
        row = conn.execute(
            "SELECT id, role, display_name, active FROM professionals WHERE email = ?",
            (new.email,),
        ).fetchone()
    if row is None or not row["active"]:
        raise BadRequest("Aucun professionnel actif ne correspond.", code="unknown_professional")
    return row["id"], AccountRole(row["role"]), row["display_name"]


def _insert_participant(
    conn: sqlite3.Connection,
    consultation_id: str,
    new: NewParticipant,
    links_secret: bytes,
    now: datetime,
) -> str:
    participant_id = new_id()
    if new.professional_id is not None or new.email is not None:
        account_id, account_role, name = _account(conn, new)
        role = _ROLE_OF_ACCOUNT.get(account_role)
        if role is None or (new.role is not None and new.role is not role):
            raise BadRequest(
                "Seuls les médecins, spécialistes et infirmier·es participent avec leur "
                "compte, dans le rôle de leur compte.",
                code="invalid_role",
            )
        taken = conn.execute(
            "SELECT 1 FROM consultation_participants"
            " WHERE consultation_id = ? AND professional_id = ?",
            (consultation_id, account_id),
        ).fetchone()
        if taken is not None:
            raise Conflict("Ce professionnel participe déjà.", code="duplicate_participant")
        values: tuple[Any, ...] = (
            participant_id,
            consultation_id,
            role.value,
            name[:MAX_NAME_CHARS],
            account_id,
            0,
            0,
            None,
            now.isoformat(),
        )
    else:
        assert new.role is not None and new.display_name is not None
        birth = (
            None
            if new.birth_date is None
            else birth_date_hash(links_secret, participant_id, new.birth_date)
        )
        values = (
            participant_id,
            consultation_id,
            new.role.value,
            new.display_name,
            None,
            1,
            1,
            birth,
            now.isoformat(),
        )
    conn.execute(
        "INSERT INTO consultation_participants (id, consultation_id, role, display_name,"
        " professional_id, link_version, link_active, birth_date_hash, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        values,
    )
    return participant_id
