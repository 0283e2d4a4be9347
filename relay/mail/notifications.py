"""Outbound notification mails, in French, that carry no health data (pure).

A recipient without an S/MIME certificate gets only: who wrote (a professional's or a team's
display name — not health data), a link to the thread or case, and how to reply. No patient
identity, no message content, no attachment, nothing in the subject but a fixed text: the
builders do not even take those as parameters. The link must hold only opaque identifiers.

Headers, and why:

* ``Message-ID`` is given by the caller (the outbox stores it first and deduplicates on it);
  :func:`make_message_id` makes one. ``In-Reply-To``/``References`` (RFC 5322 §3.6.4) thread
  successive notifications of one thread (:func:`thread_root_id` gives a stable root).
* ``Reply-To: r+<token>@D`` (RFC 5322 §3.6.2): a reply from any mail client lands in the right
  thread. ``From`` is ``notifications@D`` with "<name> via Relais Santé" as display name.
* ``Auto-Submitted: auto-generated`` (RFC 3834 §5.1). It does not prevent a person from
  replying; it tells automatic responders not to answer (RFC 3834 §2), and their vacation
  notices would otherwise arrive through the reply address and be posted in the thread as the
  professional's message. ``X-Auto-Response-Suppress: OOF, AutoReply`` asks the same of
  Exchange/Outlook, which ignores Auto-Submitted ([MS-OXCMAIL] §2.2.3.2.20).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from enum import StrEnum

from relay.mail.addresses import normalize_address, normalize_domain, notifications_address
from relay.mail.addresses import reply_address as make_reply_address

__all__ = [
    "GUEST_CODE_SUBJECT",
    "SUBJECTS",
    "Notification",
    "NotificationKind",
    "build_guest_code",
    "build_notification",
    "make_message_id",
    "thread_root_id",
]

PRODUCT = "Relais Santé"


class NotificationKind(StrEnum):
    """Which event a notification announces."""

    NEW_MESSAGE = "new_message"
    NEW_CASE = "new_case"
    CASE_ANSWER = "case_answer"
    CASE_REMINDER = "case_reminder"


SUBJECTS = {
    NotificationKind.NEW_MESSAGE: "[Relais Santé] Nouveau message sécurisé",
    NotificationKind.NEW_CASE: "[Relais Santé] Nouvelle demande de télé-expertise",
    NotificationKind.CASE_ANSWER: "[Relais Santé] Réponse à votre demande de télé-expertise",
    NotificationKind.CASE_REMINDER: "[Relais Santé] Rappel : demande de télé-expertise en attente",
}
GUEST_CODE_SUBJECT = "[Relais Santé] Votre code d'accès"

_OPENINGS = {
    NotificationKind.NEW_MESSAGE: "{sender} vous a adressé un nouveau message sécurisé.",
    NotificationKind.NEW_CASE: "{sender} vous a adressé une nouvelle demande de télé-expertise.",
    NotificationKind.CASE_ANSWER: "{sender} a répondu à votre demande de télé-expertise.",
    NotificationKind.CASE_REMINDER: (
        "Une demande de télé-expertise de {sender} attend toujours votre réponse."
    ),
}
_REPLY_BY_MAIL = (
    "Vous pouvez aussi répondre directement à ce courriel : votre réponse sera ajoutée à "
    "l'échange. Si elle contient des données de santé, envoyez-la depuis votre messagerie "
    "sécurisée de santé (MSSanté)."
)
_REPLY_BY_LINK = "Pour répondre, utilisez le lien ci-dessus."
_NO_HEALTH_DATA = (
    "Ce courriel ne contient volontairement aucune donnée de santé : le contenu, les pièces "
    "jointes et l'identité du patient restent sur Relais Santé, où vous devez vous connecter "
    "pour les consulter."
)
_SIGNATURE = (
    "-- \n"
    "Relais Santé — messagerie sécurisée des professionnels de santé\n"
    "Courriel envoyé automatiquement."
)
_LINK = re.compile(r"https?://[!-~]{1,2000}")
_CODE = re.compile(r"[0-9A-Za-z]{4,12}")
_MAX_NAME = 100


@dataclass(frozen=True)
class Notification:
    """One notification to one recipient. ``references``: earlier Message-IDs of the same
    thread for this recipient, oldest first (the last becomes ``In-Reply-To``)."""

    kind: NotificationKind
    recipient: str
    sender_name: str
    link: str
    message_id: str
    reply_token: str | None = None
    references: tuple[str, ...] = ()


def make_message_id(domain: str) -> str:
    """A new random Message-ID ``<random@domain>`` (RFC 5322 §3.6.4), no clock, no host."""
    return f"<{secrets.token_urlsafe(18)}@{normalize_domain(domain)}>"


def thread_root_id(kind: str, target_id: str, domain: str) -> str:
    """A stable pseudo Message-ID for a thread/case, to put first in ``References``."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", target_id) or kind not in ("thread", "case"):
        raise ValueError("thread_root_id needs kind thread|case and a URL-safe identifier")
    return f"<{kind}.{target_id}@{normalize_domain(domain)}>"


def build_notification(notification: Notification, *, domain: str, now: datetime) -> EmailMessage:
    """The notification mail: fixed subject, sender name, link, how to reply; nothing else."""
    sender = _display_name(notification.sender_name)
    link = _checked_link(notification.link)
    paragraphs = [
        "Bonjour,",
        _OPENINGS[notification.kind].format(sender=sender),
        f"Pour y accéder, ouvrez ce lien :\n{link}",
        _REPLY_BY_MAIL if notification.reply_token else _REPLY_BY_LINK,
        _NO_HEALTH_DATA,
        _SIGNATURE,
    ]
    message = _base(
        recipient=notification.recipient,
        from_name=f"{sender} via {PRODUCT}",
        subject=SUBJECTS[notification.kind],
        message_id=notification.message_id,
        domain=domain,
        now=now,
    )
    if notification.reply_token:
        message["Reply-To"] = make_reply_address(notification.reply_token, domain)
    references = [_checked_id(value) for value in notification.references]
    if references:
        message["In-Reply-To"] = references[-1]
        message["References"] = " ".join(references)
    _set_french_text(message, paragraphs)
    return message


def build_guest_code(
    *,
    recipient: str,
    code: str,
    valid_for: timedelta,
    message_id: str,
    domain: str,
    now: datetime,
) -> EmailMessage:
    """The one-time code mail for an external guest: the code and its validity, no content.

    The code is in the body only: subjects show on locked phone screens.
    """
    if not _CODE.fullmatch(code):
        raise ValueError("a one-time code is 4 to 12 letters or digits")
    paragraphs = [
        "Bonjour,",
        f"Voici votre code d'accès à Relais Santé :\n\n    {code}",
        f"Il est valable {_duration(valid_for)} et ne sert qu'une fois. Saisissez-le sur la "
        "page qui vous l'a demandé.",
        "Si vous n'êtes pas à l'origine de cette demande, ignorez ce courriel : sans ce code, "
        "personne ne peut accéder à l'échange.",
        _SIGNATURE,
    ]
    message = _base(
        recipient=recipient,
        from_name=PRODUCT,
        subject=GUEST_CODE_SUBJECT,
        message_id=message_id,
        domain=domain,
        now=now,
    )
    _set_french_text(message, paragraphs)
    return message


def _base(
    *, recipient: str, from_name: str, subject: str, message_id: str, domain: str, now: datetime
) -> EmailMessage:
    if now.tzinfo is None:
        raise ValueError("`now` must be timezone-aware")
    sender_address = notifications_address(domain)
    message = EmailMessage()
    message["From"] = Address(display_name=from_name, addr_spec=sender_address)
    message["To"] = normalize_address(recipient)
    message["Subject"] = subject
    message["Date"] = format_datetime(now)
    message["Message-ID"] = _checked_id(message_id)
    message["Auto-Submitted"] = "auto-generated"
    message["X-Auto-Response-Suppress"] = "OOF, AutoReply"
    return message


def _set_french_text(message: EmailMessage, paragraphs: list[str]) -> None:
    # Quoted-printable: 7-bit safe through any smarthost, still readable in the raw source.
    message.set_content("\n\n".join(paragraphs) + "\n", charset="utf-8", cte="quoted-printable")
    message["Content-Language"] = "fr"  # after set_content, which clears Content-* fields


def _display_name(name: str) -> str:
    cleaned = " ".join("".join(ch if ch.isprintable() else " " for ch in name).split())
    if not cleaned:
        raise ValueError("the sender's display name is empty")
    return cleaned[:_MAX_NAME]


def _checked_link(link: str) -> str:
    if not _LINK.fullmatch(link):
        raise ValueError("the link must be an http(s) URL without spaces")
    return link


def _checked_id(message_id: str) -> str:
    if not re.fullmatch(r"<[!-;=?-~]{1,250}@[A-Za-z0-9.-]{1,253}>", message_id):
        raise ValueError("a Message-ID looks like <random@domain>")
    return message_id


def _duration(delta: timedelta) -> str:
    minutes = max(1, int(delta.total_seconds() // 60))
    if minutes % 60 == 0:
        hours = minutes // 60
        return f"{hours} heure{'s' if hours > 1 else ''}"
    return f"{minutes} minute{'s' if minutes > 1 else ''}"
