"""Outbound mails a message causes, built without I/O (issue 4 item 6).

* :func:`notification_mail` — to anyone without a registered S/MIME certificate: the fixed
  subject, the author's name, a link, a reply address; nothing about the patient or content
  (:mod:`relay.mail.notifications` does not even take those as parameters).
* :func:`full_message_mail` — the whole message (subject, text, attachments) for a recipient
  with a certificate; it must go through :func:`relay.mail.smime.encrypt_message` (which
  moves the real subject inside the envelope) before it leaves: :func:`encrypted_mail` does
  both and is the only way the full message is ever serialised for sending.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email import policy as email_policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

from cryptography import x509

from relay.mail.addresses import normalize_address, notifications_address, reply_address
from relay.mail.notifications import (
    PRODUCT,
    SUBJECTS,
    Notification,
    NotificationKind,
    build_notification,
)
from relay.mail.smime import encrypt_message

SMTP_POLICY = email_policy.SMTP


def mail_bytes(message: EmailMessage) -> bytes:
    """A mail as sent: CRLF line ends, no ``From `` mangling (RFC 5322)."""
    return message.as_bytes(policy=SMTP_POLICY)


def guest_link(public_url: str, participant_id: str) -> str:
    """The guest view of one external participant (opaque id only: no health data in URLs)."""
    return f"{public_url}/invite/{participant_id}"


def thread_link(public_url: str, thread_id: str) -> str:
    """The thread page, for recipients with an account."""
    return f"{public_url}/messagerie/{thread_id}"


def notification_mail(
    *,
    recipient: str,
    sender_name: str,
    link: str,
    message_id: str,
    reply_token: str,
    references: Sequence[str],
    domain: str,
    now: datetime,
) -> EmailMessage:
    """The notification of a new message (no health data; see the module docstring)."""
    return build_notification(
        Notification(
            kind=NotificationKind.NEW_MESSAGE,
            recipient=recipient,
            sender_name=sender_name,
            link=link,
            message_id=message_id,
            reply_token=reply_token,
            references=tuple(references),
        ),
        domain=domain,
        now=now,
    )


@dataclass(frozen=True)
class MailAttachment:
    """An attachment of a full (to be encrypted) message."""

    filename: str = field(repr=False)
    content_type: str
    data: bytes = field(repr=False)


def full_message_mail(
    *,
    recipient: str,
    sender_name: str,
    subject: str,
    text: str,
    attachments: Sequence[MailAttachment],
    link: str,
    message_id: str,
    reply_token: str,
    references: Sequence[str],
    domain: str,
    now: datetime,
) -> EmailMessage:
    """The whole message, in clear: only ever passed to :func:`encrypted_mail`."""
    message = EmailMessage()
    name = " ".join(sender_name.split())[:100] or PRODUCT
    message["From"] = Address(display_name=f"{name} via {PRODUCT}", addr_spec=_from(domain))
    message["To"] = normalize_address(recipient)
    message["Subject"] = subject
    message["Date"] = format_datetime(now)
    message["Message-ID"] = message_id
    message["Reply-To"] = reply_address(reply_token, domain)
    if references:
        message["In-Reply-To"] = references[-1]
        message["References"] = " ".join(references)
    body = (
        f"{text.rstrip()}\n\n-- \nMessage sécurisé transmis par {PRODUCT}. "
        f"L'échange complet : {link}\n"
    )
    message.set_content(body, charset="utf-8", cte="quoted-printable")
    for attachment in attachments:
        maintype, _, subtype = attachment.content_type.partition("/")
        if not subtype:
            guessed = mimetypes.guess_type(attachment.filename)[0] or "application/octet-stream"
            maintype, _, subtype = guessed.partition("/")
        if maintype in ("multipart", "message"):
            # A stored attachment is opaque bytes: re-labelling it keeps the encoder from
            # trying to re-parse it as a MIME structure.
            maintype, subtype = "application", "octet-stream"
        message.add_attachment(
            attachment.data, maintype=maintype, subtype=subtype, filename=attachment.filename
        )
    return message


def _from(domain: str) -> str:
    return notifications_address(domain)


def encrypted_mail(message: EmailMessage, certificate: x509.Certificate, *, now: datetime) -> bytes:
    """S/MIME-encrypt a full message for its recipient; the outer subject is the generic one.

    CPU work (RSA, AES over up to 30 MB): call it in a worker thread.
    """
    encrypted = encrypt_message(
        message, [certificate], now=now, outer_subject=SUBJECTS[NotificationKind.NEW_MESSAGE]
    )
    return mail_bytes(encrypted)
