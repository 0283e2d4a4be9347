"""Posting and reading messages: the orchestration shared by the JSON API, the guest view and
the SMTP gateway. It stores (encrypted blobs, then one SQL transaction), queues the mails a
message causes, and publishes push events; it decides nothing the cores do not say.

Order of a post, so that an acknowledged message is whole after a crash: attachment blobs
(fsynced), the outbound mails as blobs (fsynced), then one transaction with the message, its
content document (sealed into SQL: storage/sealed.py), attachments, deliveries, outbox entries.
A crash before the commit leaves unreferenced blobs only, never a message without its parts.
Push events are published after the commit. Audit events are the callers' (they know the
actor and the network address).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import secrets
import sqlite3
import stat
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

from cryptography import x509

from relay.accounts import Professional, new_id
from relay.config import Config
from relay.errors import (
    BadRequest,
    ConfigError,
    NotFound,
    PayloadTooLarge,
    TooManyRequests,
    Unauthenticated,
)
from relay.locks import KeyedLocks
from relay.mail import reply_tokens
from relay.mail.addresses import normalize_address
from relay.mail.dsn import Bounce
from relay.mail.errors import EncryptionFailed, InvalidAddress, MailError
from relay.mail.limits import Attachment, parse_message
from relay.mail.mdn import Disposition, RecipientFailure, build_bounce, build_mdn, header_section
from relay.mail.notifications import build_guest_code, make_message_id, thread_root_id
from relay.messaging.content import MessageContent, ThreadContent
from relay.messaging.core import (
    AttachmentRef,
    DeliveryPlan,
    NewMessageRequest,
    NewThreadRequest,
    acting_participant,
    display_name,
    is_local,
    plan_deliveries,
)
from relay.messaging.events import EventKind, InboxEvent, user_channel
from relay.messaging.inbound import InboundMail, InboundTarget, TargetKind
from relay.messaging.model import (
    AttachmentInfo,
    Delivery,
    DeliveryChannel,
    DeliveryState,
    MailedDelivery,
    Message,
    MessageSource,
    NewAttachment,
    OutboxEntry,
    OutboxKind,
    Participant,
    ParticipantKind,
    Thread,
)
from relay.messaging.outbound import (
    MailAttachment,
    encrypted_mail,
    full_message_mail,
    guest_link,
    mail_bytes,
    notification_mail,
    thread_link,
)
from relay.messaging.store import GuestCodeOutcome, MessagingStore, NewMessageRecord, code_digest
from relay.messaging.store import Professional as DirectoryProfessional
from storage.blobs import BlobStore, new_blob_id
from storage.bus import EventBus
from storage.database import Database
from storage.errors import BusError
from storage.sealed import SealedDocuments

log = logging.getLogger("relais.messaging")

BeforeCommit = Callable[[str, str], Awaitable[None]]
"""Called with (thread id, message id) once every blob is written, just before the commit:
the audit record goes there, so that nothing is visible to anyone before it is traced."""

INLINE_MAX_BYTES = 64 * 1024
"""Attachments of a mail up to this size in all are kept inside the message document."""
CONTENT_MAX_BYTES = 2 << 20
"""Largest content document read back (100,000 characters of text, inline attachments)."""
GUEST_CODE_RESEND_SECONDS = 60
GUEST_CODE_MAX_FAILURES = 5
NO_SUBJECT = "(sans objet)"


@dataclass(frozen=True)
class MessagingConfig:
    """What the service needs of the configuration."""

    domain: str
    public_url: str
    max_message_bytes: int = 31_457_280
    guest_code_minutes: float = 15.0
    guest_session_hours: float = 8.0


@dataclass(frozen=True)
class Posted:
    """The outcome of one post: where it went, and whether it was a retried duplicate."""

    thread_id: str
    message_id: str
    duplicate: bool = False
    created_thread: bool = False
    queued_mails: int = 0


@dataclass(frozen=True)
class BouncedDelivery:
    """A delivery that a remote MTA's report (RFC 3464) failed after its hand-over."""

    delivery: MailedDelivery
    status: str
    diagnostic: str | None


BeforeBounce = Callable[[BouncedDelivery], Awaitable[None]]
"""Called for each delivery a report is about to fail, before the commit (its audit trace)."""


@dataclass(frozen=True)
class Received:
    """The outcome of one inbound mail: the raw copy kept, the messages posted, the
    deliveries a bounce failed."""

    raw_blob_id: str | None
    posted: tuple[Posted, ...] = ()
    receipts: int = 0
    bounced: tuple[BouncedDelivery, ...] = ()


@dataclass
class _Draft:
    """A message being assembled (blobs written, nothing committed yet)."""

    blobs: list[str] = field(default_factory=list)


class Messaging:
    """Threads and messages over the store, the blob store and the bus (module docstring)."""

    def __init__(
        self,
        *,
        store: MessagingStore,
        blobs: BlobStore,
        bus: EventBus,
        config: MessagingConfig,
        reply_secret: bytes,
        patient_reference: Callable[[str], str],
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.bus = bus
        self.config = config
        self.reply_secret = reply_secret
        self.patient_reference = patient_reference
        self.outbox_wakeup = asyncio.Event()
        """Set whenever a mail is queued: the outbox worker waits on it."""
        self._receiving = KeyedLocks()

    @property
    def domain(self) -> str:
        return self.config.domain

    @property
    def bounce_address(self) -> str:
        """Envelope sender of the relay's own mail: bounces come back to postmaster."""
        return f"postmaster@{self.domain}"

    # --- starting and answering threads (web) -----------------------------------------------

    async def start_thread(
        self,
        author: Professional,
        request: NewThreadRequest,
        now: datetime,
        *,
        before_commit: BeforeCommit | None = None,
    ) -> Posted:
        """A professional starts a thread (recipients resolved against the directory)."""
        thread_id = new_id()
        author_part = Participant(
            new_id(),
            thread_id,
            ParticipantKind.PROFESSIONAL,
            author.id,
            None,
            author.email,
            author.display_name,
        )
        participants = [author_part]
        for address in request.recipients:
            if address == author.email:
                continue
            participants.append(await self._recipient(thread_id, address))
        if len(participants) < 2:
            raise BadRequest("Indiquez au moins un destinataire autre que vous-même.")
        attachments = await self._uploaded_files(author.id, request.first.attachments)
        self._check_size(request.first.text, attachments)
        patient_ref = (
            None if request.patient_ins is None else self.patient_reference(request.patient_ins)
        )
        thread = Thread(thread_id, "", patient_ref, now, now, tuple(participants))
        return await self._post(
            _Draft(),
            thread=thread,
            thread_content=ThreadContent(request.subject, request.patient_ins),
            author=author_part,
            author_professional_id=author.id,
            author_name=author.display_name,
            source=MessageSource.WEB,
            subject=request.subject,
            text=request.first.text,
            attachments=attachments,
            now=now,
            before_commit=before_commit,
        )

    async def reply(
        self,
        author: Professional,
        team_ids: Sequence[str],
        thread: Thread,
        request: NewMessageRequest,
        now: datetime,
        *,
        before_commit: BeforeCommit | None = None,
    ) -> Posted:
        """A professional (or a member of a participating team) answers in a thread."""
        acting = acting_participant(thread, author.id, team_ids)
        if acting is None:
            raise NotFound("Échange introuvable.")
        new_participants: tuple[Participant, ...] = ()
        if acting.professional_id != author.id:
            # A team member answering for the team joins the thread in their own name.
            acting = Participant(
                new_id(),
                thread.id,
                ParticipantKind.PROFESSIONAL,
                author.id,
                None,
                author.email,
                author.display_name,
            )
            new_participants = (acting,)
        attachments = await self._uploaded_files(author.id, request.attachments)
        self._check_size(request.text, attachments)
        subject = (await self.thread_content(thread)).subject
        return await self._post(
            _Draft(),
            thread=thread,
            new_participants=new_participants,
            author=acting,
            author_professional_id=author.id,
            author_name=author.display_name,
            source=MessageSource.WEB,
            subject=subject,
            text=request.text,
            attachments=attachments,
            now=now,
            before_commit=before_commit,
        )

    async def post_guest(
        self,
        participant: Participant,
        text: str,
        now: datetime,
        *,
        attachments: Sequence[NewAttachment] = (),
        before_commit: BeforeCommit | None = None,
    ) -> Posted:
        """An external participant answers from the guest view. ``attachments`` are blobs the
        guest view stored for this answer: they belong to it, and are deleted if it fails."""
        draft = _Draft([a.blob_id for a in attachments if a.blob_id is not None])
        try:
            self._check_size(text, attachments)
            thread = await self.store.thread(participant.thread_id)
            if thread is None:
                raise NotFound("Échange introuvable.")
            subject = (await self.thread_content(thread)).subject
        except BaseException:
            await self._discard(draft)
            raise
        return await self._post(
            draft,
            thread=thread,
            author=participant,
            author_professional_id=None,
            author_name=participant.display_name,
            source=MessageSource.GUEST,
            subject=subject,
            text=text,
            attachments=attachments,
            now=now,
            before_commit=before_commit,
        )

    async def post_notice(self, thread_id: str, text: str, now: datetime) -> Posted | None:
        """A notice of the relay in a thread (a delivery failure): in the inbox only."""
        thread = await self.store.thread(thread_id)
        if thread is None:
            return None
        return await self._post(
            _Draft(),
            thread=thread,
            author=None,
            author_professional_id=None,
            author_name="Relais Santé",
            source=MessageSource.SYSTEM,
            subject="",
            text=text,
            attachments=[],
            now=now,
            by_mail=False,
        )

    # --- inbound mail ----------------------------------------------------------------------

    async def receive_mail(
        self,
        mail: InboundMail,
        now: datetime,
        *,
        before_commit: BeforeCommit | None = None,
        before_bounce: BeforeBounce | None = None,
    ) -> Received:
        """Store an accepted inbound mail in its thread(s); durable when this returns.

        The raw mail itself is kept (encrypted) only for postmaster; a message keeps its
        header section, for receipts and bounces. A delivery report to the bounce address
        fails the deliveries it names (:meth:`_receive_bounce`).
        """
        # Two copies of one mail (a client retrying while the first copy is still being
        # stored) are taken one after the other: the second then finds the first by its
        # Message-ID and is acknowledged without a second message.
        async with self._receiving.hold(mail.parsed.message_id):
            return await self._receive(mail, now, before_commit, before_bounce)

    async def _receive(
        self,
        mail: InboundMail,
        now: datetime,
        before_commit: BeforeCommit | None,
        before_bounce: BeforeBounce | None,
    ) -> Received:
        posted: list[Posted] = []
        for target in mail.targets:
            if target.kind is TargetKind.REPLY:
                result = await self._receive_reply(mail, target, now, before_commit)
                if result is not None:
                    posted.append(result)
        mailboxes = [
            t for t in mail.targets if t.kind in (TargetKind.PROFESSIONAL, TargetKind.TEAM)
        ]
        # Postmaster mail goes to its reader's inbox, unless it is a delivery report the
        # relay reads itself (below) or the reader is a recipient anyway.
        readers = [
            t.reader
            for t in mail.targets
            if t.kind is TargetKind.POSTMASTER and t.reader is not None and mail.bounce is None
        ]
        if readers and all(t.address != readers[0].address for t in mailboxes):
            mailboxes.append(readers[0])
        if mailboxes:
            posted.append(await self._receive_for_mailboxes(mail, mailboxes, now, before_commit))
        receipts = 0
        if any(not p.duplicate for p in posted):
            receipts = await self._processed_receipt(mail, now)
        bounced: tuple[BouncedDelivery, ...] = ()
        if mail.bounce is not None and any(
            t.kind is TargetKind.POSTMASTER and t.address == self.bounce_address
            for t in mail.targets
        ):
            bounced = await self._receive_bounce(mail.bounce, now, before_bounce)
        raw_blob_id = None
        if not readers and any(t.kind is TargetKind.POSTMASTER for t in mail.targets):
            raw_blob_id = (await self.blobs.put(mail.raw)).blob_id  # kept for nobody yet
        return Received(raw_blob_id, tuple(posted), receipts, bounced)

    async def _receive_bounce(
        self, bounce: Bounce, now: datetime, before_bounce: BeforeBounce | None
    ) -> tuple[BouncedDelivery, ...]:
        """Fail each delivery the report says failed: found by (original Message-ID, the
        report's Final-Recipient), both naming the same mail of ours, or nothing changes
        (a report for another mail, or naming another address, is only kept for
        postmaster). ``delayed`` and the other actions change nothing: the MTA still tries.
        Nothing is ever sent because of it (RFC 5321 §4.5.5: no notification of a bounce).
        """
        failures = bounce.failures
        if not failures:
            return ()
        sent = await self.store.mailed_deliveries(bounce.original_message_ids)
        done: list[BouncedDelivery] = []
        for failure in failures:
            for delivery in sent:
                if (
                    delivery.recipient != failure.final_recipient
                    or delivery.state is DeliveryState.FAILED
                    or any(b.delivery == delivery for b in done)  # a block repeated
                ):
                    continue
                bounced = BouncedDelivery(delivery, failure.status, failure.diagnostic)
                if before_bounce is not None:
                    await before_bounce(bounced)
                reason = " ".join(filter(None, (failure.status, failure.diagnostic)))
                state = await self.store.apply_bounce(delivery, reason, now)
                if state is not DeliveryState.FAILED:
                    continue  # a concurrent copy of the report got there first
                done.append(bounced)
                try:
                    await self.delivery_failed(
                        message_id=delivery.message_id,
                        participant_id=delivery.participant_id,
                        recipient=delivery.recipient,
                        status=failure.status,
                        diagnostic=failure.diagnostic or "",
                        now=now,
                        bounced=True,
                    )
                except Exception as exc:  # the failure is recorded; only its notice is lost
                    log.error("bounce notice not posted (%s)", type(exc).__name__)
        return tuple(done)

    async def _receive_reply(
        self,
        mail: InboundMail,
        target: InboundTarget,
        now: datetime,
        before_commit: BeforeCommit | None,
    ) -> Posted | None:
        assert target.thread_id is not None and target.participant_id is not None
        thread = await self.store.thread(target.thread_id)
        author = None if thread is None else thread.participant(target.participant_id)
        if thread is None or author is None:
            return None  # checked at RCPT; gone since: nothing to post to
        subject = (await self.thread_content(thread)).subject
        return await self._post_mail(
            mail, thread, author, (), subject, mail.parsed.reply_text, now, before_commit
        )

    async def _receive_for_mailboxes(
        self,
        mail: InboundMail,
        targets: Sequence[InboundTarget],
        now: datetime,
        before_commit: BeforeCommit | None,
    ) -> Posted:
        parsed = mail.parsed
        sender = parsed.from_address
        # A reply to mail of ours that came to a mailbox address rather than the reply
        # address: In-Reply-To/References name the thread (RFC 5322 §3.6.4).
        found = await self.store.inbound_lookup(
            [*parsed.in_reply_to, *parsed.references], parsed.message_id, sender
        )
        for thread_id in found.threads:
            thread = await self.store.thread(thread_id)
            if thread is None:
                continue
            author = thread.by_address(sender)
            if author is None or not any(_in_thread(thread, t) for t in targets):
                continue
            joining = tuple(
                self._target_participant(thread.id, t) for t in targets if not _in_thread(thread, t)
            )
            subject = (await self.thread_content(thread)).subject
            return await self._post_mail(
                mail, thread, author, joining, subject, parsed.reply_text, now, before_commit
            )
        for thread_id, message_id in found.copies:
            thread = await self.store.thread(thread_id)
            if (
                thread is not None
                and thread.by_address(sender) is not None
                and all(_in_thread(thread, t) for t in targets)
            ):
                return Posted(thread_id, message_id, duplicate=True)
        thread_id = new_id()
        author = self._sender_participant(thread_id, sender, parsed.from_name, found.sender)
        participants = [author]
        for target in targets:
            candidate = self._target_participant(thread_id, target)
            if all(p.address != candidate.address for p in participants):
                participants.append(candidate)
        subject = parsed.subject or NO_SUBJECT
        thread = Thread(thread_id, "", None, now, now, tuple(participants))
        return await self._post_mail(
            mail,
            thread,
            author,
            (),
            subject,
            parsed.text_body,
            now,
            before_commit,
            thread_content=ThreadContent(subject, None),
        )

    async def _post_mail(
        self,
        mail: InboundMail,
        thread: Thread,
        author: Participant,
        joining: tuple[Participant, ...],
        subject: str,
        text: str,
        now: datetime,
        before_commit: BeforeCommit | None,
        *,
        thread_content: ThreadContent | None = None,
    ) -> Posted:
        draft = _Draft()
        try:
            attachments = await self._mail_attachments(draft, mail.parsed.attachments)
        except BaseException:
            await self._discard(draft)
            raise
        return await self._post(
            draft,
            thread=thread,
            thread_content=thread_content,
            new_participants=joining,
            author=author,
            author_professional_id=author.professional_id,
            author_name=author.display_name,
            source=MessageSource.SMTP,
            subject=subject,
            text=text,
            attachments=attachments,
            rfc822_id=mail.parsed.message_id,
            raw_headers=mail.parsed.raw_headers,
            receipt_to=self._receipt_to(mail),
            sender_name=mail.parsed.from_name or None,
            now=now,
            before_commit=before_commit,
        )

    def _receipt_to(self, mail: InboundMail) -> str | None:
        """Where receipts for this mail may go: its Disposition-Notification-To, only when that
        is the envelope sender (RFC 8098 §2.1: an MDN to another address than the
        Return-Path needs the user's consent), never for automatic mail."""
        parsed = mail.parsed
        asked = parsed.disposition_notification_to
        if asked is None or parsed.auto_submitted or not mail.envelope_from:
            return None
        try:
            if normalize_address(asked) != normalize_address(mail.envelope_from):
                return None
        except InvalidAddress:
            return None
        return asked

    async def _processed_receipt(self, mail: InboundMail, now: datetime) -> int:
        """RFC 8098 MDN "processed" once the mail is stored, when asked for."""
        asked = self._receipt_to(mail)
        final = next((t.address for t in mail.targets if t.kind is not TargetKind.POSTMASTER), None)
        if asked is None or final is None:
            return 0
        mdn = build_mdn(
            mail.parsed,
            final_recipient=final,
            now=now,
            domain=self.domain,
            disposition=Disposition.PROCESSED,
        )
        await self._queue_report(OutboxKind.MDN, mdn, asked, now)
        return 1

    # --- delivery failures ----------------------------------------------------------------

    async def delivery_failed(
        self,
        *,
        message_id: str,
        participant_id: str,
        recipient: str,
        status: str,
        diagnostic: str,
        now: datetime,
        bounced: bool = False,
    ) -> None:
        """A mail about a message failed for good: tell the author in the thread, and when
        the author wrote by mail, send them a DSN (RFC 3464) too — except when the failure
        itself came as a report (``bounced``): no mail is ever sent because of a bounce."""
        message = await self.store.message(message_id)
        if message is None:
            return
        await self.publish_delivery(message.thread_id, message_id, participant_id, "failed")
        when = message.created_at.strftime("%d/%m/%Y à %H:%M UTC")
        returned = " : le serveur du destinataire l'a renvoyé" if bounced else ""
        await self.post_notice(
            message.thread_id,
            f"Le message du {when} n'a pas pu être remis à {recipient}{returned} "
            f"(code {status}). L'échec est définitif.",
            now,
        )
        if bounced:
            return
        thread = await self.store.thread(message.thread_id)
        author = (
            None
            if thread is None or message.author_participant_id is None
            else thread.participant(message.author_participant_id)
        )
        if (
            author is None
            or message.source is not MessageSource.SMTP
            or author.kind is not ParticipantKind.EXTERNAL
        ):
            return
        headers = (await self.message_content(message)).raw_headers
        if headers is None:
            return
        bounce = build_bounce(
            original_headers=header_section(headers),
            sender=author.address,
            failures=[RecipientFailure(recipient, status, diagnostic)],
            domain=self.domain,
            now=now,
            arrival_date=message.created_at,
        )
        await self._queue_report(OutboxKind.DSN, bounce, author.address, now)

    # --- other senders ----------------------------------------------------------------------

    async def queue_mail(
        self,
        kind: OutboxKind,
        message: EmailMessage,
        now: datetime,
        *,
        envelope_from: str | None = None,
    ) -> bool:
        """Queue a built mail (with its ``Message-ID`` and ``To``) on the durable outbox, for
        other parts of the relay (tele-expertise notifications). It must carry no health data
        in clear (build it with :mod:`relay.mail.notifications`, or encrypt it). False when a
        mail with that Message-ID is already queued (sent once)."""
        entry = await self._queue_blob(
            kind,
            str(message["Message-ID"]),
            self.bounce_address if envelope_from is None else envelope_from,
            normalize_address(str(message["To"])),
            mail_bytes(message),
        )
        queued = await self.store.enqueue([entry], now) == 1
        if queued:
            self.outbox_wakeup.set()
        else:
            await self.blobs.delete(entry.blob_id)
        return queued

    # --- guests -----------------------------------------------------------------------------

    async def send_guest_code(self, participant: Participant, now: datetime) -> None:
        """Mail a fresh one-time code to an external participant's own address."""
        pending = await self.store.guest_code(participant.id)
        if pending is not None:
            wait = GUEST_CODE_RESEND_SECONDS - (now - pending.sent_at).total_seconds()
            if wait > 0:
                raise TooManyRequests(
                    "Un code vient d'être envoyé ; patientez avant d'en demander un autre.",
                    retry_after=int(wait) + 1,
                )
        code = f"{secrets.randbelow(10**8):08d}"
        valid_for = timedelta(minutes=self.config.guest_code_minutes)
        message_id = make_message_id(self.domain)
        mail = build_guest_code(
            recipient=participant.address,
            code=code,
            valid_for=valid_for,
            message_id=message_id,
            domain=self.domain,
            now=now,
        )
        entry = await self._queue_blob(
            OutboxKind.GUEST_CODE,
            message_id,
            self.bounce_address,
            participant.address,
            mail_bytes(mail),
            thread_id=participant.thread_id,
            participant_id=participant.id,
        )
        await self.store.set_guest_code(participant.id, code, now + valid_for, entry, now)
        self.outbox_wakeup.set()

    async def open_guest_session(
        self, participant: Participant, code: str, now: datetime
    ) -> tuple[str, datetime]:
        """Exchange a valid one-time code for a guest session token (the code is consumed)."""
        token = secrets.token_urlsafe(32)
        expires_at = now + timedelta(hours=self.config.guest_session_hours)
        outcome = await self.store.redeem_guest_code(
            participant.id,
            code_digest(code.strip()),
            token=token,
            expires_at=expires_at,
            max_failures=GUEST_CODE_MAX_FAILURES,
            now=now,
        )
        if outcome is GuestCodeOutcome.TOO_MANY:
            raise TooManyRequests(
                "Trop d'essais : demandez un nouveau code.", retry_after=GUEST_CODE_RESEND_SECONDS
            )
        if outcome is not GuestCodeOutcome.OPENED:
            raise Unauthenticated(
                "Code incorrect ou expiré. Demandez un nouveau code.", code="invalid_guest_code"
            )
        return token, expires_at

    # --- reading ---------------------------------------------------------------------------

    async def thread_content(self, thread: Thread) -> ThreadContent:
        """The decrypted subject and patient of a thread."""
        return ThreadContent.parse(await self._document(thread.content_blob_id))

    async def message_content(self, message: Message) -> MessageContent:
        """The decrypted text and attachment names of a message."""
        return MessageContent.parse(await self._document(message.content_blob_id))

    async def _document(self, doc_id: str) -> bytes:
        # Sealed in SQL since migration 0007; a blob file before.
        found = await self.store.documents.read(doc_id, max_bytes=CONTENT_MAX_BYTES)
        if found is not None:
            return found
        return await self.blobs.read_all_verified(doc_id, max_bytes=CONTENT_MAX_BYTES)

    async def attachment_data(self, message: Message, attachment: AttachmentInfo) -> bytes:
        """An attachment's bytes, authenticated (from its blob, or from the message's content
        document for the small ones carried inline)."""
        if attachment.blob_id != message.content_blob_id:
            return await self.blobs.read_all_verified(
                attachment.blob_id, max_bytes=max(attachment.size, 1)
            )
        inline = [a for a in message.attachments if a.blob_id == message.content_blob_id]
        index = next(n for n, a in enumerate(inline) if a.id == attachment.id)
        return (await self.message_content(message)).inline[index]

    async def mark_read(
        self, reader_id: str, thread_id: str, message_ids: Sequence[str] | None, now: datetime
    ) -> list[str]:
        """Mark messages read; the reader's other pages are told (a ``read`` event), and the
        sender of a mail that asked for it gets a "displayed" receipt at its first reading."""
        newly, first = await self.store.mark_read(reader_id, thread_id, message_ids, now)
        if newly:
            await self._publish([reader_id], InboxEvent(EventKind.READ, thread_id))
        for message_id in first:
            try:
                await self._displayed_receipt(message_id, now)
            except Exception as exc:  # the read is recorded; only the receipt is lost
                log.warning("read receipt not queued (%s)", type(exc).__name__)
        return newly

    async def _displayed_receipt(self, message_id: str, now: datetime) -> None:
        message = await self.store.message(message_id)
        if message is None or message.source is not MessageSource.SMTP:
            return
        content = await self.message_content(message)
        if content.receipt_to is None or content.raw_headers is None:
            return
        try:
            original = parse_message(header_section(content.raw_headers) + b"\r\n")
        except MailError:
            return
        final = next((a for a in original.to if is_local(a, self.domain)), self.bounce_address)
        mdn = build_mdn(
            original,
            final_recipient=final,
            now=now,
            domain=self.domain,
            disposition=Disposition.DISPLAYED,
        )
        await self._queue_report(OutboxKind.MDN, mdn, content.receipt_to, now)

    async def publish_delivery(
        self, thread_id: str, message_id: str, participant_id: str, state: str
    ) -> None:
        """Tell every viewer of the thread that a delivery state changed."""
        event = InboxEvent(EventKind.DELIVERY, thread_id, message_id, participant_id, state)
        await self._publish(await self.store.viewers(thread_id), event)

    # --- internals --------------------------------------------------------------------------

    async def _recipient(self, thread_id: str, address: str) -> Participant:
        """A recipient address resolved against the directory (BadRequest if unknown here)."""
        if is_local(address, self.domain):
            local = address.rpartition("@")[0]
            team = await self.store.team_by_local_part(local)
            if team is not None:
                return Participant(
                    new_id(), thread_id, ParticipantKind.TEAM, None, team[0], address, team[1]
                )
        pro = await self.store.professional_by_email(address)
        if pro is not None:
            return Participant(
                new_id(),
                thread_id,
                ParticipantKind.PROFESSIONAL,
                pro.id,
                None,
                pro.email,
                pro.display_name,
            )
        if is_local(address, self.domain):
            raise BadRequest(
                f"Aucun professionnel ni aucune équipe n'a l'adresse {address}.",
                code="unknown_recipient",
            )
        return Participant(
            new_id(), thread_id, ParticipantKind.EXTERNAL, None, None, address, address
        )

    def _sender_participant(
        self, thread_id: str, address: str, name: str, pro: DirectoryProfessional | None
    ) -> Participant:
        """The author of an inbound mail: the account with that address, or an external."""
        if pro is not None:
            return Participant(
                new_id(),
                thread_id,
                ParticipantKind.PROFESSIONAL,
                pro.id,
                None,
                pro.email,
                pro.display_name,
            )
        return Participant(
            new_id(),
            thread_id,
            ParticipantKind.EXTERNAL,
            None,
            None,
            address,
            display_name(name, address),
        )

    def _target_participant(self, thread_id: str, target: InboundTarget) -> Participant:
        if target.kind is TargetKind.TEAM:
            return Participant(
                new_id(),
                thread_id,
                ParticipantKind.TEAM,
                None,
                target.team_id,
                target.address,
                target.display_name,
            )
        return Participant(
            new_id(),
            thread_id,
            ParticipantKind.PROFESSIONAL,
            target.professional_id,
            None,
            target.address,
            target.display_name,
        )

    async def _uploaded_files(
        self, owner_id: str, refs: Sequence[AttachmentRef]
    ) -> list[NewAttachment]:
        """Files uploaded by the author (``POST /api/files``) become attachments."""
        if not refs:
            return []
        ids = [ref.file_id for ref in refs]

        def query(conn: sqlite3.Connection) -> dict[str, sqlite3.Row]:
            marks = ", ".join("?" * len(ids))
            rows = conn.execute(
                f"SELECT * FROM files WHERE owner_id = ? AND id IN ({marks})",  # noqa: S608
                (owner_id, *ids),
            ).fetchall()
            return {row["id"]: row for row in rows}

        rows = await self.store.db.run(query)
        attachments = []
        for ref in refs:
            row = rows.get(ref.file_id)
            if row is None:
                raise BadRequest(
                    "Pièce jointe introuvable : déposez d'abord le fichier.",
                    code="unknown_attachment",
                )
            attachments.append(
                NewAttachment(
                    row["blob_id"], ref.filename, row["content_type"], row["size"], row["sha256"]
                )
            )
        return attachments

    def _check_size(self, text: str, attachments: Sequence[NewAttachment]) -> None:
        limit = self.config.max_message_bytes
        if len(text.encode("utf-8")) + sum(a.size for a in attachments) > limit:
            raise PayloadTooLarge(
                f"Le message et ses pièces jointes dépassent {limit // (1024 * 1024)} Mo."
            )

    async def _mail_attachments(
        self, draft: _Draft, attachments: Sequence[Attachment]
    ) -> list[NewAttachment]:
        """Small attachments travel inside the message document (sealed in the message's own
        row: no file, no extra fsync); larger ones get blobs of their own (streamed
        downloads)."""
        inline = sum(len(a.data) for a in attachments) <= INLINE_MAX_BYTES
        stored = []
        for attachment in attachments:
            if inline:
                stored.append(
                    NewAttachment(
                        None,
                        attachment.filename,
                        attachment.content_type,
                        len(attachment.data),
                        hashlib.sha256(attachment.data).hexdigest(),
                        attachment.data,
                    )
                )
                continue
            info = await self.blobs.put(attachment.data)
            draft.blobs.append(info.blob_id)
            stored.append(
                NewAttachment(
                    info.blob_id,
                    attachment.filename,
                    attachment.content_type,
                    info.size,
                    info.sha256,
                    attachment.data,
                )
            )
        return stored

    async def _post(
        self,
        draft: _Draft,
        *,
        thread: Thread,
        author: Participant | None,
        author_professional_id: str | None,
        author_name: str,
        source: MessageSource,
        subject: str,
        text: str,
        attachments: Sequence[NewAttachment],
        now: datetime,
        thread_content: ThreadContent | None = None,
        new_participants: tuple[Participant, ...] = (),
        rfc822_id: str | None = None,
        raw_headers: bytes | None = None,
        receipt_to: str | None = None,
        sender_name: str | None = None,
        by_mail: bool = True,
        before_commit: BeforeCommit | None = None,
    ) -> Posted:
        """Write one message (see the module docstring for the order). A new thread is given
        with ``thread_content`` and an empty ``content_blob_id``: its subject and patient go in
        this first message's document."""
        message_id = new_id()
        author_id = None if author is None else author.id
        # The content document is sealed into the message's own transaction (SQL, not a
        # blob file: storage/sealed.py says why).
        content_id = new_blob_id()
        try:
            document = bytes(
                MessageContent(
                    text,
                    tuple(a.filename for a in attachments),
                    sender_name,
                    tuple(a.data for a in attachments if a.blob_id is None and a.data),
                    raw_headers,
                    thread_content,
                    receipt_to,
                )
            )
            if thread_content is not None:
                thread = dataclasses.replace(thread, content_blob_id=content_id)
            participants = (*thread.participants, *new_participants)
            plans = plan_deliveries(
                participants, author_id, domain=self.domain, smime_addresses=frozenset()
            )
            certificates: dict[str, str] = {}
            mailed = [plan.participant.address for plan in plans if plan.mail]
            if by_mail and mailed:
                certificates = await self.store.certificates_for(mailed, now)
                if certificates:
                    plans = plan_deliveries(
                        participants,
                        author_id,
                        domain=self.domain,
                        smime_addresses=frozenset(certificates),
                    )
            if not by_mail:
                plans = tuple(p for p in plans if p.channel is DeliveryChannel.INBOX)
            outbox: list[OutboxEntry] = []
            for plan in plans:
                if plan.mail and by_mail:
                    outbox.append(
                        await self._mail_for(
                            draft,
                            plan,
                            thread=thread,
                            message_id=message_id,
                            author_name=author_name,
                            subject=subject,
                            text=text,
                            attachments=attachments,
                            certificate=certificates.get(plan.participant.address),
                            now=now,
                        )
                    )
            if before_commit is not None:
                await before_commit(thread.id, message_id)
        except BaseException:
            await self._discard(draft)
            raise
        channels = {entry.participant_id: entry.kind for entry in outbox}
        message = Message(
            id=message_id,
            thread_id=thread.id,
            author_participant_id=author_id,
            author_professional_id=author_professional_id,
            source=source,
            content_blob_id=content_id,
            raw_blob_id=None,
            rfc822_id=rfc822_id,
            size=len(text.encode("utf-8")) + sum(a.size for a in attachments),
            created_at=now,
            attachments=tuple(
                AttachmentInfo(
                    new_id(),
                    message_id,
                    n,
                    a.blob_id or content_id,
                    a.content_type,
                    a.size,
                    a.sha256,
                )
                for n, a in enumerate(attachments)
            ),
            deliveries=tuple(
                Delivery(
                    message_id,
                    plan.participant.id,
                    _channel(plan, channels.get(plan.participant.id)),
                    plan.state,
                    None,
                    now,
                )
                for plan in plans
            ),
        )
        mail_ids = tuple(entry.rfc822_id for entry in outbox)
        if outbox:
            mail_ids += (thread_root_id("thread", thread.id, self.domain),)
        if rfc822_id is not None:
            mail_ids += (rfc822_id,)
        record = NewMessageRecord(
            message=message,
            content=document,
            thread=thread if thread_content is not None else None,
            new_participants=new_participants,
            outbox=tuple(outbox),
            mail_ids=mail_ids,
        )
        # From here the blobs belong to the record: the write goes on even if this caller
        # is cancelled, so they must not be deleted then.
        written, draft.blobs = draft.blobs, []
        try:
            stored_id, viewers = await self.store.insert(record, now)
        except Exception:
            await self._discard(_Draft(written))
            raise
        if stored_id != message_id:
            await self._discard(_Draft(written))  # a retried copy: the first one is kept
            return Posted(thread.id, stored_id, duplicate=True)
        if outbox:
            self.outbox_wakeup.set()
        await self._publish(viewers, InboxEvent(EventKind.MESSAGE, thread.id, message_id))
        return Posted(thread.id, message_id, False, thread_content is not None, len(outbox))

    async def _mail_for(
        self,
        draft: _Draft,
        plan: DeliveryPlan,
        *,
        thread: Thread,
        message_id: str,
        author_name: str,
        subject: str,
        text: str,
        attachments: Sequence[NewAttachment],
        certificate: str | None,
        now: datetime,
    ) -> OutboxEntry:
        """The mail telling one participant about a new message (S/MIME or notification)."""
        participant = plan.participant
        rfc822_id = make_message_id(self.domain)
        token = reply_tokens.issue(
            self.reply_secret, reply_tokens.ReplyKind.THREAD, thread.id, participant.address
        )
        link = (
            guest_link(self.config.public_url, participant.id)
            if participant.kind is ParticipantKind.EXTERNAL
            else thread_link(self.config.public_url, thread.id)
        )
        references = (thread_root_id("thread", thread.id, self.domain),)
        raw: bytes | None = None
        kind = OutboxKind.NOTIFICATION
        if certificate is not None:
            data = [
                a.data
                if a.data is not None
                else await self.blobs.read_all_verified(a.blob_id or "", max_bytes=a.size)
                for a in attachments
            ]
            full = full_message_mail(
                recipient=participant.address,
                sender_name=author_name,
                subject=subject,
                text=text,
                attachments=[
                    MailAttachment(a.filename, a.content_type, payload)
                    for a, payload in zip(attachments, data, strict=True)
                ],
                link=link,
                message_id=rfc822_id,
                reply_token=token,
                references=references,
                domain=self.domain,
                now=now,
            )
            try:
                cert = x509.load_pem_x509_certificate(certificate.encode("ascii"))
                raw = await asyncio.to_thread(encrypted_mail, full, cert, now=now)
                kind = OutboxKind.SMIME
            except (EncryptionFailed, ValueError):
                # Never in clear: an unusable certificate means a plain notification.
                log.warning("S/MIME certificate unusable for a recipient; notification sent")
                raw = None
        if raw is None:
            raw = mail_bytes(
                notification_mail(
                    recipient=participant.address,
                    sender_name=author_name,
                    link=link,
                    message_id=rfc822_id,
                    reply_token=token,
                    references=references,
                    domain=self.domain,
                    now=now,
                )
            )
        entry = await self._queue_blob(
            kind,
            rfc822_id,
            self.bounce_address,
            participant.address,
            raw,
            thread_id=thread.id,
            message_id=message_id,
            participant_id=participant.id,
        )
        draft.blobs.append(entry.blob_id)
        return entry

    async def _queue_report(
        self, kind: OutboxKind, report: EmailMessage, recipient: str, now: datetime
    ) -> None:
        """Queue a receipt or bounce, sent from the null reverse-path (RFC 5321 §4.5.5: no
        report is ever answered with another)."""
        entry = await self._queue_blob(
            kind, str(report["Message-ID"]), "", recipient, mail_bytes(report)
        )
        await self.store.enqueue([entry], now)
        self.outbox_wakeup.set()

    async def _queue_blob(
        self,
        kind: OutboxKind,
        rfc822_id: str,
        envelope_from: str,
        recipient: str,
        raw: bytes,
        *,
        thread_id: str | None = None,
        message_id: str | None = None,
        participant_id: str | None = None,
    ) -> OutboxEntry:
        info = await self.blobs.put(raw)
        return OutboxEntry(
            id=new_id(),
            rfc822_id=rfc822_id,
            kind=kind,
            envelope_from=envelope_from,
            recipient=recipient,
            blob_id=info.blob_id,
            thread_id=thread_id,
            message_id=message_id,
            participant_id=participant_id,
        )

    async def _discard(self, draft: _Draft) -> None:
        for blob_id in draft.blobs:
            with contextlib.suppress(Exception):
                await self.blobs.delete(blob_id)
        draft.blobs.clear()

    async def _publish(self, professional_ids: Sequence[str] | set[str], event: InboxEvent) -> None:
        payload = bytes(event)
        for professional_id in sorted(professional_ids):
            try:
                await self.bus.publish(user_channel(professional_id), payload)
            except BusError as exc:  # push is best effort: pages also poll on reconnect
                log.warning("push event not published: %s", type(exc).__name__)
                return


def _in_thread(thread: Thread, target: InboundTarget) -> bool:
    return any(
        (target.professional_id is not None and p.professional_id == target.professional_id)
        or (target.team_id is not None and p.team_id == target.team_id)
        for p in thread.participants
    )


def _channel(plan: DeliveryPlan, kind: OutboxKind | None) -> DeliveryChannel:
    if plan.channel is DeliveryChannel.INBOX:
        return DeliveryChannel.INBOX
    return DeliveryChannel.SMIME if kind is OutboxKind.SMIME else DeliveryChannel.NOTIFICATION


REPLY_SECRET_FILE = "reply-tokens.secret"  # noqa: S105 - a file name, not a secret


def load_reply_secret(keys_dir: Path) -> bytes:
    """The reply-token secret, ``keys/reply-tokens.secret``, created at first use (mode 0600
    from the first byte, fsynced). Blocking file I/O: call it off the event loop.

    Rotating it (deleting the file) invalidates every reply address already sent.
    """
    path = keys_dir / REPLY_SECRET_FILE
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            raise ConfigError(f"{path} is accessible by group/others; chmod 600 it") from None
        value = path.read_text("ascii").strip()
        if len(value) < 32:
            raise ConfigError(f"{path} must hold a secret of at least 32 characters") from None
        return value.encode("ascii")
    value = secrets.token_urlsafe(32)
    try:
        os.write(fd, value.encode("ascii") + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return value.encode("ascii")


def open_messaging(
    *,
    config: Config,
    reply_secret: bytes,
    db: Database,
    blobs: BlobStore,
    bus: EventBus,
    patient_reference: Callable[[str], str],
    public_url: str,
) -> Messaging:
    """The messaging service of one relay (``reply_secret``: :func:`load_reply_secret`)."""
    settings = config.messaging
    return Messaging(
        store=MessagingStore(db, SealedDocuments(db, blobs)),
        blobs=blobs,
        bus=bus,
        config=MessagingConfig(
            domain=config.server.domain,
            public_url=public_url,
            max_message_bytes=settings.max_message_bytes,
            guest_code_minutes=settings.guest_code_minutes,
            guest_session_hours=settings.guest_session_hours,
        ),
        reply_secret=reply_secret,
        patient_reference=patient_reference,
    )
