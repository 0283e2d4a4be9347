"""Tele-expertise by e-mail (issue 5 items 5 and 6): the notification hook of the case API
and the inbound handler of case reply addresses ``r+c…``.

Outbound (:func:`notify`, registered in :data:`relay.http.cases.NOTIFICATION_HOOKS`):

* a new case (and an escalation, which opens it to the team) tells the named specialist or
  every member of the recipient team, a reminder tells them again. A recipient with a
  registered S/MIME certificate gets the question and the photos, encrypted (RFC 8551, the
  real subject inside the envelope); anyone else a notification with no health data, only a
  link (:mod:`relay.mail.notifications`). Both carry the reply address ``r+<token>`` bound to
  the recipient (:func:`relay.mail.reply_tokens.issue` with ``ReplyKind.CASE``).
* an answer tells the requester: a push event on their bus channel and a notification mail.

Like messaging, professionals whose address is in the relay's own domain are not mailed (they
read the relay itself; mailing them would loop back into the gateway). Every mail is audited
(``MESSAGE_SENT``) before it is queued.

Inbound (:class:`CaseReplies`, registered for the SMTP gateway by :func:`attach`): a reply
from the recipient a token was issued to becomes the specialist's answer. The quoted history
is cut (:func:`relay.mail.quoting.extract_reply`), image attachments are sanitized like
uploads (:func:`relay.imaging.sanitize.sanitize_photo` in the imaging pool) and attached,
other attachments dropped. A submitted case cannot be answered directly (``Answer`` is only
allowed from ``accepted`` or ``awaiting_requester``): answering by mail is also taking the
case, so ``Accept`` is applied first and both transitions are audited; a case already held by
someone else, or no longer open, refuses the reply at RCPT (``550 5.7.1``, audited).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

from cryptography import x509

from relay import cases as core
from relay.accounts import new_id
from relay.audit.events import Actor as AuditActor
from relay.audit.events import AuditAction, AuditRecord, EntityRef, Outcome, ResourceKind
from relay.case_store import CaseStore, PhotoRecord
from relay.errors import RelayError
from relay.imaging.errors import ImagingError
from relay.imaging.sanitize import SanitizedPhoto, sanitize_photo
from relay.mail import reply_tokens, smtp_server
from relay.mail.addresses import AddressKind, classify, notifications_address, reply_address
from relay.mail.errors import EncryptionFailed, ReplyNotAllowed
from relay.mail.limits import Attachment
from relay.mail.notifications import (
    PRODUCT,
    SUBJECTS,
    Notification,
    NotificationKind,
    build_notification,
    make_message_id,
    thread_root_id,
)
from relay.mail.quoting import extract_reply
from relay.mail.smime import encrypt_message
from relay.messaging.core import is_local
from relay.messaging.events import CaseEvent, user_channel
from relay.messaging.inbound import InboundMail, InboundTarget, TargetKind
from relay.messaging.model import OutboxKind
from relay.runtime import Runtime

log = logging.getLogger("relais.case_mail")

MAX_PHOTOS_PER_REPLY = 10
_OPEN = (core.CaseState.SUBMITTED, core.CaseState.ACCEPTED, core.CaseState.AWAITING_REQUESTER)


@dataclass(frozen=True)
class _Recipient:
    professional_id: str
    address: str


def case_link(public_url: str, case_id: str) -> str:
    """The case in the web application (opaque id only: no health data in URLs)."""
    return f"{public_url}/teleexpertise?case={case_id}"


def case_push_event(case_id: str, state: str) -> bytes:
    """The push payload telling a professional that a case changed (identifiers only)."""
    return bytes(CaseEvent(case_id, state))


def _store(rt: Runtime) -> CaseStore:
    return CaseStore(rt.db, rt.blobs)


def _node(rt: Runtime) -> str:
    return rt.config.server.node_name


# --- outbound --------------------------------------------------------------------------------


async def notify(rt: Runtime, effects: Sequence[core.Effect]) -> None:
    """The case API's notification hook: mail (and push) what ``effects`` call for."""
    for effect in effects:
        if isinstance(effect, core.NotifyRecipient):
            if effect.notice is core.Notice.NEW_CASE:
                kind = NotificationKind.NEW_CASE
            elif effect.notice is core.Notice.REMINDER:
                kind = NotificationKind.CASE_REMINDER
            else:
                continue
            recipients = await _recipient_side(rt, effect.specialist_id, effect.team_id)
            await _mail_recipients(rt, effect.case_id, kind, recipients)
        elif isinstance(effect, core.Escalate):
            recipients = await _recipient_side(rt, None, effect.to_team)
            others = [r for r in recipients if r.professional_id != effect.specialist_id]
            await _mail_recipients(rt, effect.case_id, NotificationKind.NEW_CASE, others)
        elif isinstance(effect, core.NotifyRequester) and effect.notice is core.Notice.ANSWERED:
            await _notify_requester(rt, effect.case_id, effect.requester_id)


async def _recipient_side(
    rt: Runtime, specialist_id: str | None, team_id: str | None
) -> list[_Recipient]:
    found: dict[str, _Recipient] = {}
    if specialist_id is not None:
        pro = await rt.accounts.by_id(specialist_id)
        if pro is not None and pro.active:
            found[pro.id] = _Recipient(pro.id, pro.email)
    if team_id is not None:
        rows = await rt.db.fetchall(
            "SELECT p.id, p.email FROM professionals p"
            " JOIN team_members m ON m.professional_id = p.id"
            " WHERE m.team_id = ? AND p.active ORDER BY p.id",
            (team_id,),
        )
        for row in rows:
            found.setdefault(row["id"], _Recipient(row["id"], row["email"]))
    return [r for r in found.values() if not is_local(r.address, rt.messaging.domain)]


async def _sender_name(rt: Runtime, professional_id: str) -> str:
    pro = await rt.accounts.by_id(professional_id)
    return pro.display_name if pro is not None else PRODUCT


async def _mail_recipients(
    rt: Runtime, case_id: str, kind: NotificationKind, recipients: Sequence[_Recipient]
) -> None:
    if not recipients:
        return
    stored = await _store(rt).get(case_id)
    if stored is None:
        return
    now = rt.clock()
    sender_name = await _sender_name(rt, stored.case.requester_id)
    certificates = await rt.messaging.store.certificates_for([r.address for r in recipients], now)
    full: tuple[str, list[tuple[str, bytes]]] | None = None
    for recipient in recipients:
        token = reply_tokens.issue(
            rt.messaging.reply_secret, reply_tokens.ReplyKind.CASE, case_id, recipient.address
        )
        message_id = make_message_id(rt.messaging.domain)
        message: EmailMessage | None = None
        out_kind = OutboxKind.NOTIFICATION
        pem = certificates.get(recipient.address)
        if pem is not None:
            if full is None:
                full = await _clinical_content(rt, stored.request_blob_id, case_id)
            message = await _encrypted(
                rt, kind, recipient.address, sender_name, full, case_id, message_id, token, pem
            )
            if message is not None:
                out_kind = OutboxKind.SMIME
        if message is None:
            message = _notification(
                rt, kind, recipient.address, sender_name, case_id, message_id, token
            )
        await _audit_sent(rt, case_id, out_kind, kind)
        await rt.messaging.queue_mail(out_kind, message, now)


def _notification(
    rt: Runtime,
    kind: NotificationKind,
    recipient: str,
    sender_name: str,
    case_id: str,
    message_id: str,
    token: str | None = None,
) -> EmailMessage:
    return build_notification(
        Notification(
            kind=kind,
            recipient=recipient,
            sender_name=sender_name,
            link=case_link(rt.messaging.config.public_url, case_id),
            message_id=message_id,
            reply_token=token,
            references=(thread_root_id("case", case_id, rt.messaging.domain),),
        ),
        domain=rt.messaging.domain,
        now=rt.clock(),
    )


async def _clinical_content(
    rt: Runtime, request_blob_id: str, case_id: str
) -> tuple[str, list[tuple[str, bytes]]]:
    store = _store(rt)
    request = await store.load_request(request_blob_id)
    photos = []
    for index, photo in enumerate(await store.photos_of(case_id), start=1):
        data = await rt.blobs.read_all_verified(photo.jpeg_blob_id, max_bytes=photo.size)
        photos.append((f"photo-{index}.jpg", data))
    return request.question or "", photos


async def _encrypted(
    rt: Runtime,
    kind: NotificationKind,
    recipient: str,
    sender_name: str,
    content: tuple[str, list[tuple[str, bytes]]],
    case_id: str,
    message_id: str,
    token: str,
    pem: str,
) -> EmailMessage | None:
    """The question and photos, encrypted for ``recipient``; None when the certificate is
    unusable (then a plain notification goes instead: never health data in clear)."""
    domain = rt.messaging.domain
    now = rt.clock()
    question, photos = content
    message = EmailMessage()
    name = " ".join(sender_name.split())[:100] or PRODUCT
    message["From"] = Address(
        display_name=f"{name} via {PRODUCT}", addr_spec=notifications_address(domain)
    )
    message["To"] = recipient
    message["Subject"] = "Demande de télé-expertise"
    message["Date"] = format_datetime(now)
    message["Message-ID"] = message_id
    message["Reply-To"] = reply_address(token, domain)
    message["References"] = thread_root_id("case", case_id, domain)
    link = case_link(rt.messaging.config.public_url, case_id)
    body = (
        f"{name} vous adresse une demande de télé-expertise.\n\n"
        f"Question :\n{question.rstrip()}\n\n"
        "Pour répondre, répondez simplement à ce courriel (les photos jointes sont "
        f"acceptées) ou utilisez Relais Santé : {link}\n\n-- \n{PRODUCT}\n"
    )
    message.set_content(body, charset="utf-8", cte="quoted-printable")
    for filename, data in photos:
        message.add_attachment(data, maintype="image", subtype="jpeg", filename=filename)
    try:
        certificate = x509.load_pem_x509_certificate(pem.encode("ascii"))
        return await asyncio.to_thread(
            encrypt_message, message, [certificate], now=now, outer_subject=SUBJECTS[kind]
        )
    except (EncryptionFailed, ValueError):
        log.warning("S/MIME certificate unusable for a case recipient; notification sent")
        return None


async def _audit_sent(
    rt: Runtime, case_id: str, out_kind: OutboxKind, kind: NotificationKind
) -> None:
    await rt.audit.record(
        AuditRecord(
            action=AuditAction.MESSAGE_SENT,
            outcome=Outcome.SUCCESS,
            now=rt.clock(),
            actor=AuditActor.system(_node(rt)),
            observer=_node(rt),
            entities=(EntityRef(ResourceKind.CASE, case_id),),
            detail=(("reason", f"{kind.value}.{out_kind.value}"),),
        )
    )


async def _notify_requester(rt: Runtime, case_id: str, requester_id: str) -> None:
    try:
        await rt.bus.publish(user_channel(requester_id), case_push_event(case_id, "answered"))
    except Exception as exc:  # push is best effort: pages also reload
        log.warning("case push event not published: %s", type(exc).__name__)
    requester = await rt.accounts.by_id(requester_id)
    if requester is None or is_local(requester.email, rt.messaging.domain):
        return
    stored = await _store(rt).get(case_id)
    answerer = stored.case.assignee_id if stored is not None else None
    sender_name = PRODUCT if answerer is None else await _sender_name(rt, answerer)
    message = _notification(
        rt,
        NotificationKind.CASE_ANSWER,
        requester.email,
        sender_name,
        case_id,
        make_message_id(rt.messaging.domain),
    )
    await _audit_sent(rt, case_id, OutboxKind.NOTIFICATION, NotificationKind.CASE_ANSWER)
    await rt.messaging.queue_mail(OutboxKind.NOTIFICATION, message, rt.clock())


# --- inbound ---------------------------------------------------------------------------------


Trace = Callable[[tuple[EntityRef, ...]], Awaitable[None]]


class CaseReplies:
    """Case reply addresses for the SMTP gateway of one runtime (module docstring)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def _replier(self, address: str) -> core.Actor | None:
        row = await self.rt.db.fetchone(
            "SELECT id FROM professionals WHERE lower(email) = ? AND active", (address.lower(),)
        )
        pro = None if row is None else await self.rt.accounts.by_id(row["id"])
        if pro is None:
            return None
        teams = frozenset(t.id for t in await self.rt.accounts.teams_of(pro.id))
        return core.Actor.professional(pro.id, pro.role, teams)

    def _events(self, case: core.Case, actor: core.Actor) -> list[core.CaseEvent]:
        """The events that make ``actor``'s mail the answer, or ValueError."""
        if case.state is core.CaseState.SUBMITTED:
            return [core.Accept(), core.Answer()]
        if case.state in _OPEN and case.assignee_id == actor.id:
            return [core.Answer()]
        raise ValueError("not answerable by mail")

    async def _plan(
        self, target: reply_tokens.ReplyTarget
    ) -> tuple[core.Case, core.Actor, list[tuple[core.Case, list[core.Effect]]]]:
        """Load and dry-run: raises ReplyNotAllowed when the reply cannot become the answer."""
        refused = ReplyNotAllowed(reason="forged", target_kind="case", target_id=target.target_id)
        stored = await _store(self.rt).get(target.target_id)
        actor = await self._replier(target.recipient)
        if stored is None or actor is None:
            raise refused
        case = stored.case
        steps: list[tuple[core.Case, list[core.Effect]]] = []
        try:
            for event in self._events(case, actor):
                case, effects = core.apply(case, event, actor, self.rt.clock())
                steps.append((case, list(effects)))
        except (RelayError, ValueError):
            raise refused from None
        return stored.case, actor, steps

    async def resolve(self, target: reply_tokens.ReplyTarget, address: str) -> InboundTarget:
        """At RCPT: the token is genuine and bound to the sender; may they answer now?"""
        _, actor, _ = await self._plan(target)
        return InboundTarget(
            TargetKind.REPLY, address, professional_id=actor.id, bound_sender=target.recipient
        )

    async def receive(self, mail: InboundMail, target: InboundTarget, trace: Trace) -> None:
        """At end of DATA: store the answer (text and sanitized photos), audit, commit,
        then notify the requester. Raises ReplyNotAllowed when the case moved meanwhile."""
        rt = self.rt
        found = classify(target.address, rt.messaging.domain)
        if found.kind is not AddressKind.REPLY or found.reply_token is None:
            raise ReplyNotAllowed(reason="forged")
        token = reply_tokens.verify(
            rt.messaging.reply_secret, found.reply_token, mail.parsed.from_address
        )
        store = _store(rt)
        stored = await store.get(token.target_id)
        if stored is None:
            raise ReplyNotAllowed(reason="forged", target_kind="case", target_id=token.target_id)
        _, actor, _ = await self._plan(token)
        text = extract_reply(mail.parsed.text_body) or "(réponse sans texte)"
        photos = await self._photos(mail.parsed.attachments, actor.id)
        now = rt.clock()
        case = stored.case
        all_effects: list[core.Effect] = []
        role = actor.role.value if actor.role is not None else "specialist"
        for event in self._events(case, actor):
            before = case.state
            case, effects = core.apply(case, event, actor, now)
            all_effects += effects
            await rt.audit.record(
                AuditRecord(
                    action=AuditAction.CASE_TRANSITION,
                    outcome=Outcome.SUCCESS,
                    now=now,
                    actor=AuditActor.professional(actor.id, role),
                    observer=_node(rt),
                    entities=(EntityRef(ResourceKind.CASE, case.id),),
                    patient=case.patient_key,
                    detail=(
                        ("reason", event.kind.value),
                        ("from_state", before.value),
                        ("to_state", case.state.value),
                    ),
                )
            )
        entities = (
            EntityRef(ResourceKind.CASE, case.id),
            *(EntityRef(ResourceKind.PHOTO, p.id) for p in photos),
        )
        await trace(entities[:16])
        for photo in photos:
            await store.add_photo(photo)
        acts = [e for e in all_effects if isinstance(e, core.RecordBillingAct)]
        message = ("answer", actor.id, await store.put_text(text), now)
        await store.update(stored, case, acts=acts, message=message)
        if photos:
            await store.attach_photos(case.id, actor.id, [p.id for p in photos])
        try:
            await notify(rt, all_effects)
        except Exception as exc:  # committed and audited: a failed notice is only logged
            log.error("case answer notification failed: %s", type(exc).__name__)

    async def _photos(self, attachments: Sequence[Attachment], owner_id: str) -> list[PhotoRecord]:
        """Image attachments, sanitized in the imaging pool; others (and refused images) are
        dropped: only re-encoded pixels are ever kept."""
        from relay.http.uploads import imaging_pool  # the process's one imaging pool

        rt = self.rt
        loop = asyncio.get_running_loop()
        records: list[PhotoRecord] = []
        for attachment in attachments:
            if len(records) >= MAX_PHOTOS_PER_REPLY:
                break
            if not attachment.content_type.lower().startswith("image/"):
                continue
            try:
                result: SanitizedPhoto = await loop.run_in_executor(
                    imaging_pool(), sanitize_photo, attachment.data
                )
            except ImagingError as exc:
                log.info("a mailed image was refused: %s", type(exc).__name__)
                continue
            jpeg = await rt.blobs.put(result.jpeg)
            thumb = await rt.blobs.put(result.thumbnail)
            records.append(
                PhotoRecord(
                    id=new_id(),
                    case_id=None,
                    owner_id=owner_id,
                    jpeg_blob_id=jpeg.blob_id,
                    thumbnail_blob_id=thumb.blob_id,
                    width=result.width,
                    height=result.height,
                    size=jpeg.size,
                    sha256=jpeg.sha256,
                    source_format=result.source_format.value,
                    created_at=rt.clock(),
                )
            )
        return records


def attach(rt: Runtime) -> None:
    """Route the case reply addresses of ``rt``'s SMTP gateway here (called at start-up)."""
    smtp_server.CASE_REPLIES[id(rt.messaging)] = CaseReplies(rt)
