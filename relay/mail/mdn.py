"""Receipts: MDNs (RFC 8098) as MSSanté structures them, DSN bounces (RFC 3464); their parsers.

Both are ``multipart/report`` (RFC 6522): a human-readable French ``text/plain`` part, the
machine-readable part (``message/disposition-notification`` or ``message/delivery-status``),
then the original header section as ``text/rfc822-headers`` — never the original body.

Privacy: the subject of a receipt is fixed ("Accusé de traitement", "Accusé de lecture",
"Échec de distribution") and the copied original headers lose ``Subject``, ``Thread-Topic``
(Outlook's copy of the subject) and ``Bcc``: a subject may carry a patient's name, and the
receipt may travel through systems the original never touched.

For the adapter that sends them: MDNs and DSNs go out with a null envelope sender
``MAIL FROM:<>`` (RFC 8098 §2.1, RFC 5321 §4.5.5) so that they can never cause a loop; an MDN
is only sent when the original asked for one (``Disposition-Notification-To``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage, Message, MIMEPart
from email.utils import format_datetime
from enum import StrEnum

from relay.mail.addresses import normalize_address, normalize_domain
from relay.mail.errors import InvalidAddress, MalformedMessage
from relay.mail.limits import MailLimits, ParsedMessage, parse_tree
from relay.mail.notifications import PRODUCT, make_message_id

__all__ = [
    "DeliveryReport",
    "Disposition",
    "DispositionReport",
    "RecipientFailure",
    "RecipientStatus",
    "build_bounce",
    "build_mdn",
    "header_section",
    "parse_dsn",
    "parse_mdn",
]


class Disposition(StrEnum):
    """What happened to the original (RFC 8098 §3.2.6.2 disposition-type)."""

    PROCESSED = "processed"  # stored in the relay, available to the recipient
    DISPLAYED = "displayed"  # opened by the recipient in the web app


# RFC 8098 §3.2.6.1: "processed" results from the relay's own action; "displayed" from the
# user opening the message, the MDN itself being sent without asking them.
_MODES = {
    Disposition.PROCESSED: "automatic-action/MDN-sent-automatically",
    Disposition.DISPLAYED: "manual-action/MDN-sent-automatically",
}
_SUBJECTS = {
    Disposition.PROCESSED: "Accusé de traitement",
    Disposition.DISPLAYED: "Accusé de lecture",
}
BOUNCE_SUBJECT = "Échec de distribution d'un message"
_DROPPED_HEADERS = frozenset({"subject", "thread-topic", "bcc"})
_STATUS = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}")
_STATUS_TEXT = {
    "1": "adresse du destinataire inconnue ou invalide",
    "2": "boîte aux lettres du destinataire indisponible ou pleine",
    "3": "système de messagerie du destinataire indisponible",
    "4": "problème de réseau ou d'acheminement",
    "5": "erreur de protocole entre serveurs de messagerie",
    "6": "contenu du message refusé par le destinataire",
    "7": "message refusé par la politique de sécurité du destinataire",
}


@dataclass(frozen=True)
class DispositionReport:
    """The fields of a parsed ``message/disposition-notification`` (RFC 8098 §3.1)."""

    reporting_ua: str | None
    original_recipient: str | None
    final_recipient: str
    original_message_id: str | None
    action_mode: str
    sending_mode: str
    disposition: str


@dataclass(frozen=True)
class RecipientFailure:
    """A permanent delivery failure to report. ``diagnostic`` is the remote SMTP reply."""

    recipient: str
    status: str
    diagnostic: str | None = None
    remote_mta: str | None = None
    original_recipient: str | None = None


@dataclass(frozen=True)
class RecipientStatus:
    """One per-recipient block of a parsed DSN (RFC 3464 §2.3)."""

    final_recipient: str
    action: str
    status: str
    diagnostic: str | None
    remote_mta: str | None


@dataclass(frozen=True)
class DeliveryReport:
    """A parsed ``message/delivery-status`` (RFC 3464 §2.2-2.3)."""

    reporting_mta: str
    recipients: tuple[RecipientStatus, ...]


def build_mdn(
    original: ParsedMessage,
    *,
    final_recipient: str,
    now: datetime,
    domain: str,
    disposition: Disposition | str = Disposition.PROCESSED,
    original_recipient: str | None = None,
    reporting_ua: str | None = None,
    message_id: str | None = None,
) -> EmailMessage:
    """The MDN for ``original`` as received by ``final_recipient`` (a relay address).

    Sent to the original's ``Disposition-Notification-To`` (ValueError when it asked for
    none). ``original_recipient``: the address as the sender wrote it, when known (RFC 8098
    §3.2.3). ``reporting_ua`` defaults to ``<domain>; Relais-Sante`` (ASCII, §3.2.1).
    """
    if original.disposition_notification_to is None:
        raise ValueError("the original message did not ask for a disposition notification")
    kind = Disposition(disposition)
    domain = normalize_domain(domain)
    recipient = normalize_address(final_recipient)
    ua = _ascii_field(reporting_ua or f"{domain}; Relais-Sante")

    fields = Message()
    fields["Reporting-UA"] = ua
    if original_recipient is not None:
        fields["Original-Recipient"] = f"rfc822;{normalize_address(original_recipient)}"
    fields["Final-Recipient"] = f"rfc822;{recipient}"
    if original.message_id is not None:
        fields["Original-Message-ID"] = original.message_id
    fields["Disposition"] = f"{_MODES[kind]}; {kind.value}"

    when = (
        f"envoyé le {original.date:%d/%m/%Y à %H:%M} (UTC{original.date:%z}) "
        if original.date is not None
        else ""
    )
    if kind is Disposition.PROCESSED:
        text = (
            f"Votre message {when}à {recipient} a été reçu et enregistré par Relais Santé."
            "\n\nCet accusé de traitement ne signifie pas que le destinataire l'a déjà lu."
        )
    else:
        text = f"Votre message {when}à {recipient} a été ouvert par son destinataire."

    report = _report(
        "disposition-notification",
        sender=Address(addr_spec=recipient),
        to=original.disposition_notification_to,
        subject=_SUBJECTS[kind],
        now=now,
        message_id=message_id or make_message_id(domain),
    )
    if original.message_id is not None:
        report["In-Reply-To"] = original.message_id
        report["References"] = " ".join([*original.references, original.message_id])
    machine = MIMEPart()
    machine.set_content(fields, subtype="disposition-notification")
    _attach_parts(report, text, machine, original.raw_headers)
    return report


def build_bounce(
    *,
    original_headers: bytes,
    sender: str,
    failures: Sequence[RecipientFailure],
    domain: str,
    now: datetime,
    arrival_date: datetime | None = None,
    message_id: str | None = None,
) -> EmailMessage:
    """A DSN (RFC 3464) telling ``sender`` that delivery failed permanently to ``failures``.

    ``original_headers`` is the header section of the undelivered message
    (:func:`header_section`). Statuses must be RFC 3463 codes (``5.1.1``).
    """
    if not failures:
        raise ValueError("a bounce needs at least one failed recipient")
    domain = normalize_domain(domain)
    per_message = Message()
    per_message["Reporting-MTA"] = f"dns; {domain}"
    if arrival_date is not None:
        per_message["Arrival-Date"] = format_datetime(arrival_date)
    blocks: list[Message | str] = [per_message]
    lines = []
    for failure in failures:
        if not _STATUS.fullmatch(failure.status):
            raise ValueError(f"{failure.status!r} is not an RFC 3463 status code")
        recipient = normalize_address(failure.recipient)
        block = Message()
        if failure.original_recipient is not None:
            block["Original-Recipient"] = f"rfc822; {normalize_address(failure.original_recipient)}"
        block["Final-Recipient"] = f"rfc822; {recipient}"
        block["Action"] = "failed"
        block["Status"] = failure.status
        if failure.remote_mta is not None:
            block["Remote-MTA"] = f"dns; {normalize_domain(failure.remote_mta)}"
        if failure.diagnostic is not None:
            block["Diagnostic-Code"] = f"smtp; {_ascii_field(failure.diagnostic)}"
        block["Last-Attempt-Date"] = format_datetime(now)
        blocks.append(block)
        reason = _STATUS_TEXT.get(failure.status.split(".")[1], "erreur définitive")
        lines.append(f"  - {recipient} : {reason} (code {failure.status})")
    text = (
        "Votre message n'a pas pu être distribué aux destinataires suivants :\n\n"
        + "\n".join(lines)
        + "\n\nL'échec est définitif : le message ne sera pas renvoyé. Vérifiez l'adresse ou "
        "contactez le destinataire par un autre moyen."
    )
    report = _report(
        "delivery-status",
        sender=Address(display_name=PRODUCT, addr_spec=f"postmaster@{domain}"),
        to=normalize_address(sender),
        subject=BOUNCE_SUBJECT,
        now=now,
        message_id=message_id or make_message_id(domain),
    )
    machine = MIMEPart()
    machine["Content-Type"] = "message/delivery-status"
    machine.set_payload(blocks)
    _attach_parts(report, text, machine, original_headers)
    return report


def header_section(raw: bytes) -> bytes:
    """The header section of a raw message: its lines with their line ends, no blank line."""
    match = re.search(rb"\r?\n\r?\n", raw)
    if match is None:
        return raw
    first_end = 2 if raw[match.start() : match.start() + 1] == b"\r" else 1
    return raw[: match.start() + first_end]


def parse_mdn(raw: bytes, limits: MailLimits | None = None) -> DispositionReport:
    """Read an MDN (ours or a peer's). Raises MalformedMessage when it is not one."""
    fields = _report_part(raw, "disposition-notification", limits)[0]
    final = _field(fields, "final-recipient")
    disposition = _field(fields, "disposition")
    if final is None or disposition is None:
        raise MalformedMessage("Disposition notification without Final-Recipient or Disposition")
    modes, _, kind = disposition.partition(";")
    action_mode, _, sending_mode = modes.strip().partition("/")
    original = _field(fields, "original-recipient")
    return DispositionReport(
        reporting_ua=_field(fields, "reporting-ua"),
        original_recipient=_address_field(original) if original else None,
        final_recipient=_address_field(final),
        original_message_id=_field(fields, "original-message-id"),
        action_mode=action_mode.strip().lower(),
        sending_mode=sending_mode.strip(),
        disposition=kind.strip().split("/")[0].lower(),
    )


def parse_dsn(raw: bytes, limits: MailLimits | None = None) -> DeliveryReport:
    """Read a DSN (ours or a peer's bounce). Raises MalformedMessage when it is not one."""
    blocks = _report_part(raw, "delivery-status", limits)
    reporting = _field(blocks[0], "reporting-mta")
    if reporting is None:
        raise MalformedMessage("Delivery status without Reporting-MTA")
    recipients = []
    for block in blocks[1:]:
        final = _field(block, "final-recipient")
        action = _field(block, "action")
        status = _field(block, "status")
        if final is None or action is None or status is None:
            raise MalformedMessage("Delivery status block without Final-Recipient/Action/Status")
        remote = _field(block, "remote-mta")
        recipients.append(
            RecipientStatus(
                final_recipient=_address_field(final),
                action=action.lower(),
                status=status,
                diagnostic=_field(block, "diagnostic-code"),
                remote_mta=remote.partition(";")[2].strip() if remote else None,
            )
        )
    if not recipients:
        raise MalformedMessage("Delivery status without a recipient block")
    return DeliveryReport(
        reporting_mta=reporting.partition(";")[2].strip(), recipients=tuple(recipients)
    )


def _report(
    report_type: str, *, sender: Address, to: str, subject: str, now: datetime, message_id: str
) -> EmailMessage:
    if now.tzinfo is None:
        raise ValueError("`now` must be timezone-aware")
    report = EmailMessage()
    report["From"] = sender
    report["To"] = to
    report["Subject"] = subject
    report["Date"] = format_datetime(now)
    report["Message-ID"] = message_id
    # RFC 3834 §5: receipts and bounces are automatic responses to a message.
    report["Auto-Submitted"] = "auto-replied"
    report["MIME-Version"] = "1.0"
    report["Content-Type"] = f"multipart/report; report-type={report_type}"
    return report


def _attach_parts(report: EmailMessage, text: str, machine: MIMEPart, headers: bytes) -> None:
    human = MIMEPart()
    human.set_content(text + "\n", charset="utf-8", cte="quoted-printable")
    human["Content-Language"] = "fr"
    original = MIMEPart()
    filtered = _filtered_headers(headers)
    original.set_content(
        filtered,
        maintype="text",
        subtype="rfc822-headers",
        cte="7bit" if filtered.isascii() else "8bit",
    )
    report.set_payload([human, machine, original])


def _filtered_headers(raw: bytes) -> bytes:
    """The header section without the fields that may name a patient (module docstring)."""
    kept: list[bytes] = []
    keep = True
    for line in header_section(raw).splitlines():
        if line[:1] in (b" ", b"\t"):
            if keep:
                kept.append(line)
            continue
        name = line.split(b":", 1)[0].strip().lower()
        keep = bool(line.strip()) and name.decode("ascii", "replace") not in _DROPPED_HEADERS
        if keep:
            kept.append(line)
    return b"".join(line + b"\r\n" for line in kept)


def _report_part(raw: bytes, report_type: str, limits: MailLimits | None) -> list[Message]:
    message = parse_tree(raw, limits)
    declared = str(message.get_param("report-type", "") or "").lower()
    if message.get_content_type() != "multipart/report" or declared != report_type:
        raise MalformedMessage(f"Not a multipart/report of type {report_type}")
    payload = message.get_payload()
    for part in payload if isinstance(payload, list) else []:
        if isinstance(part, Message) and part.get_content_type() == f"message/{report_type}":
            inner = part.get_payload()
            blocks = [block for block in inner if isinstance(block, Message)]
            if isinstance(inner, list) and blocks:
                return blocks
    raise MalformedMessage(f"No message/{report_type} part in the report")


def _field(block: Message, name: str) -> str | None:
    value = block.get(name)
    return " ".join(str(value).split()) if value is not None else None


def _address_field(value: str) -> str:
    """``rfc822;addr`` → normalised addr (RFC 3464 §2.3.2 address-type; address)."""
    address_type, _, address = value.partition(";")
    if address_type.strip().lower() != "rfc822" or not address.strip():
        raise MalformedMessage("Recipient field is not of type rfc822")
    try:
        return normalize_address(address)
    except InvalidAddress:
        raise MalformedMessage("Recipient field holds an invalid address") from None


def _ascii_field(value: str) -> str:
    """A report field value: printable ASCII on one line (RFC 3464/8098 fields are ASCII)."""
    return "".join(ch if " " <= ch <= "~" else "?" for ch in " ".join(value.split()))[:900]
