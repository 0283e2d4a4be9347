"""Pure rules of the messaging domain: request validation, relations, delivery planning and
the delivery state machine. No I/O, no clock: callers pass what is needed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final

from relay.errors import BadRequest, Conflict
from relay.identifiers import validate_nir
from relay.mail.addresses import normalize_address, normalize_domain
from relay.mail.errors import InvalidAddress
from relay.mail.limits import sanitize_filename
from relay.messaging.model import (
    DeliveryChannel,
    DeliveryState,
    Participant,
    ParticipantKind,
    Thread,
)
from relay.policy import Relation

MAX_RECIPIENTS: Final = 50
MAX_SUBJECT: Final = 200
MAX_TEXT: Final = 100_000
MAX_ATTACHMENTS: Final = 20
MAX_DISPLAY_NAME: Final = 120
_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class AttachmentRef:
    """An uploaded file (``POST /api/files``) to attach, with the name to show for it."""

    file_id: str
    filename: str = field(repr=False)


@dataclass(frozen=True)
class NewMessageRequest:
    """A message posted to an existing thread."""

    text: str = field(repr=False)
    attachments: tuple[AttachmentRef, ...] = ()


@dataclass(frozen=True)
class NewThreadRequest:
    """A new thread: recipients (addresses, normalised), subject, optional patient, and the
    first message."""

    recipients: tuple[str, ...]
    subject: str = field(repr=False)
    first: NewMessageRequest
    patient_ins: str | None = field(default=None, repr=False)


def _string(body: Mapping[str, Any], name: str, *, max_length: int, required: bool) -> str:
    value = body.get(name)
    if value is None:
        if required:
            raise BadRequest(f"Le champ « {name} » est obligatoire.", code="missing_field")
        return ""
    if not isinstance(value, str):
        raise BadRequest(f"Le champ « {name} » doit être une chaîne.", code="invalid_field")
    if len(value) > max_length:
        raise BadRequest(
            f"Le champ « {name} » dépasse {max_length} caractères.", code="invalid_field"
        )
    return value


def _attachments(body: Mapping[str, Any]) -> tuple[AttachmentRef, ...]:
    raw = body.get("attachments", [])
    if not isinstance(raw, list):
        raise BadRequest("« attachments » doit être une liste.", code="invalid_field")
    if len(raw) > MAX_ATTACHMENTS:
        raise BadRequest(
            f"Un message compte au plus {MAX_ATTACHMENTS} pièces jointes.", code="invalid_field"
        )
    refs: list[AttachmentRef] = []
    for number, item in enumerate(raw, 1):
        if not isinstance(item, dict):
            raise BadRequest("Chaque pièce jointe est un objet.", code="invalid_field")
        file_id = item.get("file_id")
        if not isinstance(file_id, str) or not _ID.fullmatch(file_id):
            raise BadRequest(
                "Pièce jointe : « file_id » doit être l'identifiant d'un fichier déposé.",
                code="invalid_field",
            )
        name = _string(item, "filename", max_length=255, required=False)
        refs.append(AttachmentRef(file_id, sanitize_filename(name, "", number)))
    if len({ref.file_id for ref in refs}) != len(refs):
        raise BadRequest("La même pièce jointe figure deux fois.", code="invalid_field")
    return tuple(refs)


def validate_new_message(body: Mapping[str, Any]) -> NewMessageRequest:
    """A reply's fields; raises BadRequest naming the first problem (in French)."""
    text = _string(body, "text", max_length=MAX_TEXT, required=False)
    attachments = _attachments(body)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip() and not attachments:
        raise BadRequest("Le message est vide : écrivez un texte ou joignez un fichier.")
    return NewMessageRequest(text=text, attachments=attachments)


def validate_new_thread(body: Mapping[str, Any]) -> NewThreadRequest:
    """A new thread's fields; recipients are normalised addresses (at least one)."""
    raw = body.get("recipients")
    if not isinstance(raw, list) or not raw:
        raise BadRequest("Indiquez au moins un destinataire.", code="missing_field")
    if len(raw) > MAX_RECIPIENTS:
        raise BadRequest(f"Au plus {MAX_RECIPIENTS} destinataires.", code="invalid_field")
    recipients: list[str] = []
    for value in raw:
        if not isinstance(value, str):
            raise BadRequest("Chaque destinataire est une adresse.", code="invalid_field")
        address = parse_address(value)
        if address not in recipients:
            recipients.append(address)
    subject = " ".join(_string(body, "subject", max_length=MAX_SUBJECT, required=True).split())
    if not subject:
        raise BadRequest("L'objet du message est obligatoire.", code="missing_field")
    ins = _string(body, "patient_ins", max_length=32, required=False)
    return NewThreadRequest(
        recipients=tuple(recipients),
        subject=subject,
        first=validate_new_message(body),
        patient_ins=validate_nir(ins) if ins.strip() else None,
    )


def parse_address(value: str) -> str:
    """A recipient address, normalised; BadRequest (French) when it is not one."""
    try:
        return normalize_address(value)
    except InvalidAddress:
        raise BadRequest(
            f"L'adresse « {value.strip()[:100]} » n'est pas une adresse e-mail valide.",
            code="invalid_address",
        ) from None


def is_local(address: str, domain: str) -> bool:
    """Whether ``address`` (normalised) is at the relay's own mail domain."""
    return address.rpartition("@")[2] == normalize_domain(domain)


def display_name(value: str, fallback: str) -> str:
    """A display name safe to store and show: printable, one line, bounded."""
    cleaned = " ".join("".join(ch if ch.isprintable() else " " for ch in value).split())
    return cleaned[:MAX_DISPLAY_NAME] or fallback


# --- relations and visibility ---------------------------------------------------------------


def relation_of(thread: Thread, professional_id: str, team_ids: Iterable[str]) -> Relation:
    """The caller's relation to a thread (for ``policy.authorize``): OWNER when they take part
    themselves, TEAM when one of their teams does, NONE otherwise."""
    teams = set(team_ids)
    relation = Relation.NONE
    for participant in thread.participants:
        if participant.professional_id == professional_id:
            return Relation.OWNER
        if participant.team_id is not None and participant.team_id in teams:
            relation = Relation.TEAM
    return relation


def acting_participant(
    thread: Thread, professional_id: str, team_ids: Iterable[str]
) -> Participant | None:
    """The participant a professional writes as: themselves, else the first of their teams
    taking part (a team member answering for the team), else None."""
    teams = set(team_ids)
    own = next((p for p in thread.participants if p.professional_id == professional_id), None)
    if own is not None:
        return own
    return next((p for p in thread.participants if p.team_id in teams), None)


# --- deliveries -----------------------------------------------------------------------------


class DeliveryEvent(StrEnum):
    """What the outbound queue reports about a mail to one participant."""

    HANDED_OVER = "handed_over"  # accepted by the smarthost (or written to the outbox dir)
    TEMPORARY_FAILURE = "temporary_failure"  # 4xx, connection refused: retried later
    PERMANENT_FAILURE = "permanent_failure"  # 5xx, or retries exhausted
    BOUNCED = "bounced"  # a remote MTA's DSN (RFC 3464), after the smarthost accepted it


class InvalidTransition(Conflict):
    """A delivery event that its current state does not admit (a bug or a replay)."""

    code = "invalid_delivery_transition"


# THE delivery state machine. Failed is final. "Delivered" means handed over to the next MTA:
# a bounce may still come back from further on, and fail it. A bounce can also overtake the
# hand-over's own commit (a smarthost that bounces at once), hence QUEUED + BOUNCED.
TRANSITIONS: Final[Mapping[tuple[DeliveryState, DeliveryEvent], DeliveryState]] = MappingProxyType(
    {
        (DeliveryState.QUEUED, DeliveryEvent.HANDED_OVER): DeliveryState.DELIVERED,
        (DeliveryState.QUEUED, DeliveryEvent.TEMPORARY_FAILURE): DeliveryState.QUEUED,
        (DeliveryState.QUEUED, DeliveryEvent.PERMANENT_FAILURE): DeliveryState.FAILED,
        (DeliveryState.QUEUED, DeliveryEvent.BOUNCED): DeliveryState.FAILED,
        (DeliveryState.DELIVERED, DeliveryEvent.BOUNCED): DeliveryState.FAILED,
    }
)


def next_delivery_state(state: DeliveryState, event: DeliveryEvent) -> DeliveryState:
    """Apply ``event`` to ``state``; raises InvalidTransition when the table has no entry."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise InvalidTransition(
            f"Transition de remise impossible : {state.value} → {event.value}."
        ) from None


@dataclass(frozen=True)
class DeliveryPlan:
    """How a new message reaches one participant, and the state it starts in."""

    participant: Participant
    channel: DeliveryChannel
    state: DeliveryState
    mail: bool  # whether an outbound mail goes to the participant's address


def plan_deliveries(
    participants: Sequence[Participant],
    author_participant_id: str | None,
    *,
    domain: str,
    smime_addresses: frozenset[str],
) -> tuple[DeliveryPlan, ...]:
    """Who gets a new message, and how (issue 4 item 6):

    * teams, and professionals whose address is at the relay's domain: in the relay's inbox
      (delivered at once), no mail;
    * professionals with an address elsewhere: in the inbox too, plus a mail to that address
      (the full message S/MIME-encrypted when a certificate is registered for it, otherwise a
      notification without health data) so that they can answer from their mail client;
    * external addresses: by mail only, queued until the smarthost takes it; S/MIME when a
      certificate is registered, otherwise a notification whose link opens the guest view.

    The author gets nothing.
    """
    plans: list[DeliveryPlan] = []
    for participant in participants:
        if participant.id == author_participant_id:
            continue
        mail_channel = (
            DeliveryChannel.SMIME
            if participant.address in smime_addresses
            else DeliveryChannel.NOTIFICATION
        )
        if participant.kind is ParticipantKind.TEAM:
            plans.append(
                DeliveryPlan(participant, DeliveryChannel.INBOX, DeliveryState.DELIVERED, False)
            )
        elif participant.kind is ParticipantKind.PROFESSIONAL:
            by_mail = not is_local(participant.address, domain)
            plans.append(
                DeliveryPlan(participant, DeliveryChannel.INBOX, DeliveryState.DELIVERED, by_mail)
            )
        else:
            plans.append(DeliveryPlan(participant, mail_channel, DeliveryState.QUEUED, True))
    return tuple(plans)


def mail_channel_for(plan: DeliveryPlan, smime_addresses: frozenset[str]) -> DeliveryChannel:
    """Which kind of mail goes out for a plan with ``mail`` set."""
    if plan.participant.address in smime_addresses:
        return DeliveryChannel.SMIME
    return DeliveryChannel.NOTIFICATION
