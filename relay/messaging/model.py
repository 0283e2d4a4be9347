"""Values of the messaging domain: one frozen dataclass per thing, enums for states.

Nothing here holds health data in clear except the decrypted views (:class:`ThreadView`,
:class:`MessageView`), whose sensitive fields are kept out of ``repr`` so they cannot leak
into logs by accident.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class ParticipantKind(StrEnum):
    """Who takes part in a thread."""

    PROFESSIONAL = "professional"  # an account of the relay
    TEAM = "team"  # a team of the relay: every member sees the thread
    EXTERNAL = "external"  # an e-mail address outside the relay (guest view, S/MIME)


class MessageSource(StrEnum):
    """Where a message came from."""

    WEB = "web"  # the web app / JSON API
    SMTP = "smtp"  # the inbound SMTP gateway
    GUEST = "guest"  # an external recipient's guest view
    SYSTEM = "system"  # the relay's own notices (delivery failures)


class DeliveryChannel(StrEnum):
    """How a message reaches one participant."""

    INBOX = "inbox"  # in the relay (professionals and teams)
    NOTIFICATION = "notification"  # a mail without health data, with a link
    SMIME = "smime"  # the whole message, S/MIME-encrypted to the recipient's certificate


class DeliveryState(StrEnum):
    """Delivery state of one message to one participant (see ``core.TRANSITIONS``)."""

    QUEUED = "queued"
    DELIVERED = "delivered"
    FAILED = "failed"


class OutboxKind(StrEnum):
    """What an outbound mail is."""

    NOTIFICATION = "notification"
    SMIME = "smime"
    GUEST_CODE = "guest_code"
    MDN = "mdn"
    DSN = "dsn"


@dataclass(frozen=True)
class MailedDelivery:
    """A mail the relay sent about a message to one participant, and that delivery's state:
    what a bounce for (Message-ID, recipient) can fail."""

    outbox_id: str
    rfc822_id: str
    kind: OutboxKind
    recipient: str
    thread_id: str
    message_id: str
    participant_id: str
    state: DeliveryState


@dataclass(frozen=True)
class Participant:
    """One participant of a thread. ``address`` is where mail for them goes (a professional's
    e-mail, a team's relay address, an external address): reply tokens are bound to it."""

    id: str
    thread_id: str
    kind: ParticipantKind
    professional_id: str | None
    team_id: str | None
    address: str
    display_name: str


@dataclass(frozen=True)
class Thread:
    """A thread and its participants; its subject and patient are in its content document."""

    id: str
    content_blob_id: str
    patient_ref: str | None
    created_at: datetime
    last_message_at: datetime
    participants: tuple[Participant, ...]

    def participant(self, participant_id: str) -> Participant | None:
        """The participant with this id, if they take part."""
        return next((p for p in self.participants if p.id == participant_id), None)

    def by_address(self, address: str) -> Participant | None:
        """The participant mail for ``address`` goes to (addresses are lower case)."""
        return next((p for p in self.participants if p.address == address), None)


@dataclass(frozen=True)
class AttachmentInfo:
    """An attachment's stored form; its file name is in the message's content document."""

    id: str
    message_id: str
    position: int
    blob_id: str
    content_type: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Delivery:
    """Delivery state of a message to one participant."""

    message_id: str
    participant_id: str
    channel: DeliveryChannel
    state: DeliveryState
    reason: str | None
    updated_at: datetime


@dataclass(frozen=True)
class Message:
    """A stored message: ids, author, where it came from; content is in the blob."""

    id: str
    thread_id: str
    author_participant_id: str | None
    author_professional_id: str | None
    source: MessageSource
    content_blob_id: str
    raw_blob_id: str | None
    rfc822_id: str | None
    size: int
    created_at: datetime
    attachments: tuple[AttachmentInfo, ...] = ()
    deliveries: tuple[Delivery, ...] = ()


@dataclass(frozen=True)
class ThreadSummary:
    """A line of an inbox: the thread, how many messages, how many unread by the viewer."""

    thread: Thread
    message_count: int
    unread_count: int


@dataclass(frozen=True)
class OutboxEntry:
    """One outbound mail to one recipient, queued in the same transaction as its cause.

    ``rfc822_id`` is the mail's Message-ID: the queue refuses a second entry with the same
    one, so a cause retried after a crash still sends once. ``envelope_from`` is empty for
    the null reverse-path of receipts and bounces (RFC 5321 §4.5.5).
    """

    id: str
    rfc822_id: str
    kind: OutboxKind
    envelope_from: str
    recipient: str
    blob_id: str
    thread_id: str | None = None
    message_id: str | None = None
    participant_id: str | None = None


@dataclass(frozen=True)
class NewAttachment:
    """An attachment being posted: already stored as an encrypted blob (``blob_id``), or small
    and carried inside the message's own content document (``blob_id`` None, ``data`` set)."""

    blob_id: str | None
    filename: str = field(repr=False)
    content_type: str
    size: int
    sha256: str
    data: bytes | None = field(default=None, repr=False)
