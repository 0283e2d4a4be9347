"""Errors of the mail gateway; each carries its SMTP reply and its HTTP answer (DESIGN rule 4).

The SMTP adapter answers ``error.smtp_reply`` (``"550 5.1.1 ..."``, one line); the HTTP layer
uses ``http_status`` and ``code``. Messages are English, ASCII, and never contain health data
nor attachment file names (which often carry a patient's name): parts are named by their MIME
position ("part 1.2") and content type only.

Reply codes follow RFC 5321 §4.2; enhanced status codes follow RFC 3463 and the IANA registry
of RFC 5248. Choices that are not obvious:

* Structural limits (MIME depth, part count, header line or block too long) are
  ``554 5.6.0``: X.6.0 is "something about the content of a message caused it to be considered
  undeliverable" (RFC 3463 §3.7). X.3.4 / 552 ("message too big", "exceeded storage
  allocation") would be wrong: a 2 KB message can be nested 1,000 deep, and the sender must
  not believe a smaller copy would pass. 554 is the RFC 5321 answer after end of DATA.
* A forbidden attachment type is ``554 5.6.1`` ("media not supported", RFC 3463 §3.7): the
  relay does not accept that kind of file; 5.7.1 would tell the sender they may not write to
  the recipient at all, which is false.
* An S/MIME message the relay cannot decrypt is ``554 5.7.5`` ("cryptographic failure: ...
  unable to decrypt because necessary information such as key was not available or was
  invalid", RFC 3463 §3.8).
* STARTTLS missing is ``530 5.7.0`` exactly as RFC 3207 §4 prescribes.
"""

from __future__ import annotations

from typing import ClassVar, Literal

__all__ = [
    "ContentRefused",
    "DecryptionFailed",
    "EncryptionFailed",
    "ForbiddenAttachment",
    "HeaderTooLong",
    "InvalidAddress",
    "InvalidSenderAddress",
    "MailError",
    "MalformedMessage",
    "MessageTooLarge",
    "MimeTooDeep",
    "RelayDenied",
    "ReplyNotAllowed",
    "SenderNotAllowed",
    "StartTlsRequired",
    "TooManyParts",
    "TooManyRecipients",
    "UnknownRecipient",
]

# RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets including the code and CRLF.
_MAX_REPLY_TEXT = 400


class MailError(Exception):
    """Base class: the relay refuses or cannot handle a message, with its protocol answers.

    ``message`` is the English text sent after the codes; the default is the class's
    ``default_text``. It must never contain health data (it is logged and sent back).
    """

    smtp_code: ClassVar[int] = 451
    enhanced_status: ClassVar[str] = "4.3.0"
    http_status: ClassVar[int] = 500
    code: ClassVar[str] = "mail_error"
    default_text: ClassVar[str] = "Temporary local problem, try again later"

    def __init__(self, message: str | None = None) -> None:
        text = message if message is not None else self.default_text
        super().__init__(text)
        self.message = text

    @property
    def smtp_reply(self) -> str:
        """The full one-line SMTP reply, e.g. ``550 5.1.1 No such mailbox here``."""
        return f"{self.smtp_code} {self.enhanced_status} {_reply_text(self.message)}"


def _reply_text(text: str) -> str:
    """SMTP reply text: printable ASCII on one line (RFC 5321 §4.2), bounded in length."""
    cleaned = "".join(ch if " " <= ch <= "~" else "?" for ch in " ".join(text.split()))
    return cleaned[:_MAX_REPLY_TEXT] or "Refused"


class MessageTooLarge(MailError):
    """The message exceeds the announced SIZE (RFC 1870 §6: 552 once the limit is passed)."""

    smtp_code = 552
    enhanced_status = "5.3.4"
    http_status = 413
    code = "message_too_large"
    default_text = "Message exceeds the size limit"


class ContentRefused(MailError):
    """Base of the permanent refusals caused by the message content (554 5.6.0)."""

    smtp_code = 554
    enhanced_status = "5.6.0"
    http_status = 422
    code = "message_content_refused"
    default_text = "Message content refused"


class MalformedMessage(ContentRefused):
    """The message is not well-formed MIME: bad boundaries, broken base64, missing From..."""

    http_status = 400
    code = "message_malformed"
    default_text = "Malformed message"


class MimeTooDeep(ContentRefused):
    """MIME entities are nested deeper than the configured limit."""

    code = "mime_too_deep"
    default_text = "MIME nesting exceeds the limit"


class TooManyParts(ContentRefused):
    """The message has more MIME parts than the configured limit."""

    code = "mime_too_many_parts"
    default_text = "Too many MIME parts"


class HeaderTooLong(ContentRefused):
    """A header line or a header section exceeds its limit (RFC 5322 §2.1.1: 998 octets)."""

    code = "header_too_long"
    default_text = "Header line or header section too long"


class ForbiddenAttachment(ContentRefused):
    """An attachment has a type the relay does not accept (executables, archives...)."""

    enhanced_status = "5.6.1"
    http_status = 415
    code = "attachment_forbidden"
    default_text = "Attachment type not accepted"


class InvalidAddress(MailError):
    """A recipient address is syntactically unusable (RFC 3463 X.1.3)."""

    smtp_code = 553
    enhanced_status = "5.1.3"
    http_status = 400
    code = "address_invalid"
    default_text = "Bad destination mailbox address syntax"


class InvalidSenderAddress(InvalidAddress):
    """The sender address is syntactically unusable (RFC 3463 X.1.7)."""

    enhanced_status = "5.1.7"
    code = "sender_address_invalid"
    default_text = "Bad sender mailbox address syntax"


class UnknownRecipient(MailError):
    """The relay serves the domain but no user, team or live reply address has that name."""

    smtp_code = 550
    enhanced_status = "5.1.1"
    http_status = 404
    code = "recipient_unknown"
    default_text = "No such mailbox here"


class RelayDenied(MailError):
    """The recipient is in a domain the relay does not serve: never an open relay."""

    smtp_code = 550
    enhanced_status = "5.7.1"
    http_status = 403
    code = "relay_denied"
    default_text = "Relaying denied"


class StartTlsRequired(MailError):
    """MAIL before STARTTLS (RFC 3207 §4: "530 5.7.0 Must issue a STARTTLS command first")."""

    smtp_code = 530
    enhanced_status = "5.7.0"
    http_status = 403
    code = "starttls_required"
    default_text = "Must issue a STARTTLS command first"


class SenderNotAllowed(MailError):
    """The sending domain or peer certificate is not in the trusted-sender policy."""

    smtp_code = 550
    enhanced_status = "5.7.1"
    http_status = 403
    code = "sender_not_allowed"
    default_text = "Sender not allowed to send to this relay"


class ReplyNotAllowed(MailError):
    """A reply address was used by someone it was not issued to, or was forged.

    ``reason`` says which, for the audit log: ``"forged"`` (the token is not ours: unknown
    format or bad authentication code) or ``"wrong_sender"`` (a genuine token, sent from an
    address other than the one it is bound to). For ``wrong_sender`` the genuine target is
    known: ``target_kind`` ("thread"/"case") and ``target_id`` let the refusal be audited
    against the thread or case. The SMTP text is the same in both cases so that a prober
    learns nothing about which tokens exist.
    """

    smtp_code = 550
    enhanced_status = "5.7.1"
    http_status = 403
    code = "reply_not_allowed"
    default_text = "This reply address does not accept mail from this sender"

    def __init__(
        self,
        message: str | None = None,
        *,
        reason: Literal["forged", "wrong_sender"],
        target_kind: str | None = None,
        target_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.target_kind = target_kind
        self.target_id = target_id


class TooManyRecipients(MailError):
    """More RCPT TO than the relay accepts in one transaction (RFC 5321 §4.5.3.1.8: 452)."""

    smtp_code = 452
    enhanced_status = "4.5.3"
    http_status = 400
    code = "too_many_recipients"
    default_text = "Too many recipients"


class DecryptionFailed(MailError):
    """An S/MIME message addressed to the relay cannot be decrypted (RFC 3463 X.7.5)."""

    smtp_code = 554
    enhanced_status = "5.7.5"
    http_status = 422
    code = "smime_decryption_failed"
    default_text = "Cannot decrypt the S/MIME message"


class EncryptionFailed(MailError):
    """An outbound message cannot be S/MIME-encrypted for a recipient (unusable certificate).

    Local to the outbound path: the message must then go as a plain notification or fail;
    it is never sent in clear.
    """

    smtp_code = 554
    enhanced_status = "5.7.5"
    http_status = 422
    code = "smime_encryption_failed"
    default_text = "Cannot encrypt the message for this recipient"
