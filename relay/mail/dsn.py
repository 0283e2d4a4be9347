"""Reading bounces: the DSNs (RFC 3464) that remote MTAs send back, often long after the
smarthost accepted a mail of ours. Pure: bytes in, a :class:`Bounce` out.

:func:`relay.mail.mdn.parse_dsn` reads our own reports strictly (round-trip tests); this
reader is for the outside world, lenient where real MTAs differ and strict where a wrong
reading would mark a delivery failed:

* ``multipart/report`` with ``report-type=delivery-status`` (RFC 6522), or
  ``global-delivery-status`` (RFC 6533, Exim with SMTPUTF8), at the top level.
* Per-recipient fields by name, in any order (Exim writes ``Action`` first), folded lines
  unfolded (Exchange folds ``Diagnostic-Code``), ``X-`` fields ignored.
* ``Final-Recipient: rfc822; addr`` with or without spaces, brackets or upper case; a block
  without a usable ``Final-Recipient`` or ``Action`` is skipped, never guessed; a report with
  no usable block is refused (MalformedMessage).
* ``Status``: the first RFC 3463 code of the field (``5.0.0 (permanent failure)``). Postfix
  reports ``Action: failed`` with a 4.x.x status when it gives up on a temporary error: the
  action decides, not the class. A bare ``X.0.0`` (Exim's constant ``5.0.0``) gives way to
  the more precise code of the same class in ``Diagnostic-Code``.
* The original's Message-ID: from the returned header section (``text/rfc822-headers``,
  ``message/rfc822``, their RFC 6533 forms), then the report's In-Reply-To and References
  (Gmail sets them). Never from the human-readable text, which may quote anything.
* ``Diagnostic-Code`` is kept short (200 printable ASCII characters, its type prefix dropped):
  remote replies name codes and addresses; it is stored as the delivery's reason.
"""

from __future__ import annotations

import email
import re
from dataclasses import dataclass
from email import policy as email_policy
from email.message import Message
from email.parser import BytesHeaderParser
from enum import StrEnum

from relay.mail.addresses import normalize_address
from relay.mail.errors import InvalidAddress, MailError, MalformedMessage
from relay.mail.limits import MailLimits, parse_tree

__all__ = ["Bounce", "BouncedRecipient", "ReportedAction", "is_delivery_report", "read_bounce"]

REPORT_TYPES = frozenset({"delivery-status", "global-delivery-status"})
_STATUS_PARTS = frozenset({"message/delivery-status", "message/global-delivery-status"})
_HEADER_PARTS = frozenset({"text/rfc822-headers", "message/global-headers", "message/global"})
_STATUS = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")
_MESSAGE_ID = re.compile(r"<[^<>\s@]{1,250}@[^<>\s@]{1,250}>")
_BLOCK_SEPARATOR = re.compile(r"\r?\n[ \t]*\r?\n")
MAX_DIAGNOSTIC = 200
MAX_MESSAGE_IDS = 8
MAX_RECIPIENTS = 100


class ReportedAction(StrEnum):
    """RFC 3464 §2.3.3: what the reporting MTA did for one recipient."""

    FAILED = "failed"
    DELAYED = "delayed"
    DELIVERED = "delivered"
    RELAYED = "relayed"
    EXPANDED = "expanded"


@dataclass(frozen=True)
class BouncedRecipient:
    """One usable per-recipient block of a report."""

    final_recipient: str
    action: ReportedAction
    status: str
    diagnostic: str | None = None
    original_recipient: str | None = None


@dataclass(frozen=True)
class Bounce:
    """A delivery report as read: who reported, about which mail, for whom."""

    reporting_mta: str | None
    original_message_ids: tuple[str, ...]
    recipients: tuple[BouncedRecipient, ...]

    @property
    def failures(self) -> tuple[BouncedRecipient, ...]:
        """The recipients the reporting MTA gave up on (``Action: failed``)."""
        return tuple(r for r in self.recipients if r.action is ReportedAction.FAILED)


def is_delivery_report(header_section: bytes) -> bool:
    """Whether a top-level header section declares a delivery report (cheap: no body read)."""
    if b"report" not in header_section.lower():
        # The media type must name it: almost every mail stops here, without the header
        # parse (~0.1 ms, a fifth of an inbound mail's parse, issue 4).
        return False
    headers = BytesHeaderParser(policy=email_policy.compat32).parsebytes(header_section)
    report_type = str(headers.get_param("report-type", "") or "").strip().lower()
    return headers.get_content_type() == "multipart/report" and report_type in REPORT_TYPES


def read_bounce(raw: bytes, limits: MailLimits | None = None) -> Bounce:
    """Read a delivery report (module docstring). Raises MalformedMessage (or another
    MailError of the parser's limits) when ``raw`` is not a usable one."""
    try:
        return _read(parse_tree(raw, limits))
    except MailError:
        raise
    except Exception:  # the email package on hostile input: a refusal, never a crash
        raise MalformedMessage("Unreadable delivery report") from None


def _read(report: Message) -> Bounce:
    report_type = str(report.get_param("report-type", "") or "").strip().lower()
    if report.get_content_type() != "multipart/report" or report_type not in REPORT_TYPES:
        raise MalformedMessage("Not a multipart/report of type delivery-status")
    parts = report.get_payload()
    if not isinstance(parts, list):
        raise MalformedMessage("Delivery report without parts")
    status_part = next(
        (p for p in parts if isinstance(p, Message) and p.get_content_type() in _STATUS_PARTS),
        None,
    )
    if status_part is None:
        raise MalformedMessage("No message/delivery-status part in the report")
    blocks = _blocks(status_part)
    if not blocks:
        raise MalformedMessage("Empty delivery-status part")
    per_message = dict(blocks[0])
    recipients = []
    for fields in blocks[1 : MAX_RECIPIENTS + 1]:
        recipient = _recipient(dict(fields))
        if recipient is not None:
            recipients.append(recipient)
    if not recipients:
        raise MalformedMessage("Delivery report without a usable recipient block")
    reporting = _typed_value(per_message.get("reporting-mta", ""))[1]
    return Bounce(
        reporting_mta=reporting or None,
        original_message_ids=_original_ids(report, parts),
        recipients=tuple(recipients),
    )


def _blocks(part: Message) -> list[list[tuple[str, str]]]:
    """The field blocks of a delivery-status part: ``[(lower-case name, unfolded value)]``.

    The email package splits ``message/delivery-status`` into blocks itself, but reads the
    RFC 6533 form as one message (first block as headers, the rest as its body), and leaves
    an encoded part as text: all come back to text here, split at blank lines."""
    payload = part.get_payload()
    if isinstance(payload, list):
        pieces = []
        for block in payload:
            if not isinstance(block, Message):
                continue
            pieces.append("\n".join(f"{name}: {value}" for name, value in block.items()))
            body = block.get_payload()
            if isinstance(body, str) and body.strip():
                pieces.append(body)
        text = "\n\n".join(pieces)
    else:
        data = part.get_payload(decode=True)
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(payload)
    blocks = []
    for chunk in _BLOCK_SEPARATOR.split(text):
        if not chunk.strip():
            continue
        fields = email.message_from_string(
            chunk.strip("\r\n") + "\n", policy=email_policy.compat32
        ).items()
        if fields:
            blocks.append(
                [(name.strip().lower(), " ".join(value.split())) for name, value in fields]
            )
    return blocks


def _typed_value(value: str) -> tuple[str, str]:
    """``type; value`` (RFC 3464 §2.1.2) → (lower-case type, value); no ``;``: no type."""
    kind, separator, rest = value.partition(";")
    if not separator:
        return "", value.strip()
    return kind.strip().lower(), rest.strip()


def _address(value: str | None) -> str | None:
    if not value:
        return None
    kind, address = _typed_value(value)
    if kind not in ("", "rfc822", "utf-8"):
        return None  # X.400 and other address types name nothing we sent to
    try:
        return normalize_address(address.strip("<> \t"))
    except InvalidAddress:
        return None


def _recipient(fields: dict[str, str]) -> BouncedRecipient | None:
    final = _address(fields.get("final-recipient"))
    try:
        action = ReportedAction(fields.get("action", "").split(" ")[0].lower())
    except ValueError:
        return None
    if final is None:
        return None
    found = _STATUS.search(fields.get("status", ""))
    if found is not None:
        status = found.group(1)
    else:  # RFC 3464 requires Status; a report without one still says what happened
        status = "5.0.0" if action is ReportedAction.FAILED else "4.0.0"
    diagnostic = _short(_typed_value(fields.get("diagnostic-code", ""))[1])
    detailed = _STATUS.search(diagnostic or "")
    if status.endswith(".0.0") and detailed and detailed.group(1)[0] == status[0]:
        status = detailed.group(1)  # Exim always says 5.0.0; the remote reply says more
    return BouncedRecipient(
        final_recipient=final,
        action=action,
        status=status,
        diagnostic=diagnostic,
        original_recipient=_address(fields.get("original-recipient")),
    )


def _short(text: str) -> str | None:
    """Printable ASCII on one line, at most MAX_DIAGNOSTIC characters; None when empty."""
    cleaned = "".join(ch if " " <= ch <= "~" else "?" for ch in " ".join(text.split()))
    return cleaned[:MAX_DIAGNOSTIC] or None


def _original_ids(report: Message, parts: list[Message | str]) -> tuple[str, ...]:
    found: list[str] = []
    for part in parts:
        if not isinstance(part, Message):
            continue
        kind = part.get_content_type()
        headers: Message | None = None
        if kind == "message/rfc822":
            inner = part.get_payload()
            first = inner[0] if isinstance(inner, list) and inner else None
            headers = first if isinstance(first, Message) else None
        elif kind in _HEADER_PARTS:
            data = part.get_payload(decode=True)
            if isinstance(data, bytes):
                headers = BytesHeaderParser(policy=email_policy.compat32).parsebytes(data)
        if headers is not None:
            found += _MESSAGE_ID.findall(" ".join(str(headers.get("message-id", "")).split()))[:1]
    for name in ("in-reply-to", "references"):
        ids = _MESSAGE_ID.findall(" ".join(str(report.get(name, "")).split()))
        found += reversed(ids)  # References: the last one is the nearest (RFC 5322 §3.6.4)
    unique = list(dict.fromkeys(found))
    return tuple(unique[:MAX_MESSAGE_IDS])
