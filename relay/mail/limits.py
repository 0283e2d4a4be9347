"""Parsing inbound mail under explicit limits: raw bytes → :class:`ParsedMessage` (pure).

The standard ``email`` parser is used (``BytesParser`` with ``email.policy.default``, its
header registry memoised — same behaviour, half the time), but it is not safe on hostile
input by itself: it recurses once per MIME level (a 1,000-deep message
raises RecursionError) and checks every line against every enclosing boundary (quadratic in
depth), and it decodes base64 leniently. So, in this order:

1. the total size is checked (MessageTooLarge, 552 5.3.4);
2. a linear pre-scan of the raw lines mirrors the parser's own structure rules (same header
   line pattern, the parser's own Content-Type/boundary reading, same boundary matching,
   message/* nesting, multipart/digest defaults, delivery-status blocks) and stops at the
   first header line or header section over its limit, the first entity deeper than
   ``max_depth`` or the first part past ``max_parts``. Only a message within the limits
   reaches the parser, whose recursion is then bounded by ``max_depth``;
3. the parsed tree is walked again iteratively (the exact check), boundary defects are
   refused, and every leaf is decoded strictly (base64 with ``strict_mode``); a failure names
   the part by its position ("part 1.2") and type, never by its file name.

Only then are the headers, body text and attachments extracted. Attachments of forbidden types
(executables, archives: see :data:`DEFAULT_FORBIDDEN_EXTENSIONS`) are refused.
"""

from __future__ import annotations

import binascii
import mimetypes
import quopri
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import errors as email_errors
from email import policy as email_policy
from email.headerregistry import BaseHeader, HeaderRegistry
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.utils import parsedate_to_datetime
from typing import Any

from relay.mail.addresses import normalize_address
from relay.mail.errors import (
    ForbiddenAttachment,
    HeaderTooLong,
    InvalidAddress,
    MalformedMessage,
    MessageTooLarge,
    MimeTooDeep,
    TooManyParts,
)
from relay.mail.quoting import extract_reply, html_to_text, unflow

__all__ = [
    "DEFAULT_FORBIDDEN_CONTENT_TYPES",
    "DEFAULT_FORBIDDEN_EXTENSIONS",
    "Attachment",
    "MailLimits",
    "ParsedMessage",
    "parse_message",
    "parse_tree",
    "sanitize_filename",
]

DEFAULT_FORBIDDEN_EXTENSIONS = frozenset(
    # Programs and scripts run by a double click on Windows, macOS or Linux desktops.
    [
        "exe", "com", "bat", "cmd", "scr", "pif", "cpl", "msi", "msp", "mst", "dll", "sys",
        "ocx", "drv", "js", "jse", "vbs", "vbe", "vb", "wsf", "wsh", "ws", "wsc", "ps1", "psm1",
        "psd1", "hta", "jar", "lnk", "reg", "inf", "scf", "sct", "chm", "msc", "gadget",
        "application", "appx", "msix", "appref-ms", "sh", "app", "command",
        # Archives and disk images: they hide their content from every check made here.
        "zip", "zipx", "7z", "rar", "tar", "gz", "tgz", "bz2", "tbz", "xz", "txz", "zst", "cab",
        "arj", "ace", "lzh", "lha", "z", "iso", "img", "vhd", "vhdx", "dmg",
    ]
)  # fmt: skip
DEFAULT_FORBIDDEN_CONTENT_TYPES = frozenset(
    [
        "application/x-msdownload", "application/x-msdos-program", "application/x-dosexec",
        "application/x-executable", "application/vnd.microsoft.portable-executable",
        "application/x-msi", "application/x-ms-installer", "application/java-archive",
        "application/x-sh", "application/x-bat", "application/hta", "application/zip",
        "application/x-zip-compressed", "application/x-7z-compressed",
        "application/x-rar-compressed", "application/vnd.rar", "application/x-tar",
        "application/gzip", "application/x-gzip", "application/x-bzip2", "application/x-xz",
        "application/x-iso9660-image", "application/vnd.ms-cab-compressed",
    ]
)  # fmt: skip
# PE ("MZ") and ELF executables whatever their name claims.
_EXECUTABLE_MAGIC = (b"MZ", b"\x7fELF")

# The parser's own header-line rule (email.feedparser.headerRE), on bytes.
_HEADER_LINE = re.compile(rb"From |[\041-\071\073-\176]*:|[\t ]")
_LINE_END = b"\r\n"
_MSG_ID = re.compile(r"<[^<>\s]{1,990}>")
_FATAL_DEFECTS = (
    email_errors.StartBoundaryNotFoundDefect,
    email_errors.CloseBoundaryNotFoundDefect,
    email_errors.MultipartInvariantViolationDefect,
    email_errors.NoBoundaryInMultipartDefect,
)
_SMIME_TYPES = frozenset({"application/pkcs7-mime", "application/x-pkcs7-mime"})
_SIGNATURE_TYPES = frozenset({"application/pkcs7-signature", "application/x-pkcs7-signature"})
_MAX_FILENAME = 150
_WINDOWS_RESERVED = re.compile(r"(?:con|prn|aux|nul|com[0-9]|lpt[0-9])(?:\..*)?", re.IGNORECASE)


class _CachedHeaderRegistry(HeaderRegistry):
    """The default header registry, minus its cost: ``HeaderRegistry[name]`` builds a new
    class on every call (a tenth of the parse time of a small message); cache it per name."""

    def __init__(self) -> None:
        super().__init__()
        self._classes: dict[str, type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        key = name.lower()
        cls = self._classes.get(key)
        if cls is None:
            cls = self._classes[key] = super().__getitem__(name)
        return cls


# email.policy.default, same behaviour, faster header objects.
_POLICY = email_policy.default.clone(header_factory=_CachedHeaderRegistry())
_GENERATOR_POLICY = _POLICY.clone(linesep="\r\n")


@dataclass(frozen=True)
class MailLimits:
    """Limits applied before and during parsing (defaults suit 30 MB of attachments)."""

    # 30 MB of attachments grow by 4/3 in base64, plus text and headers.
    max_message_bytes: int = 42 * 1024 * 1024
    # One header section (of the message or of a part).
    max_header_bytes: int = 64 * 1024
    # RFC 5322 §2.1.1: "Each line of characters MUST be no more than 998 characters".
    max_header_line_bytes: int = 998
    max_depth: int = 20
    max_parts: int = 200
    # HTML-only bodies are converted to text by a pure-Python parser (~2.5 µs per tag): only
    # this many characters are converted, so a body of millions of tags cannot stall a worker.
    max_html_chars: int = 2_000_000
    forbidden_extensions: frozenset[str] = DEFAULT_FORBIDDEN_EXTENSIONS
    forbidden_content_types: frozenset[str] = DEFAULT_FORBIDDEN_CONTENT_TYPES

    def __post_init__(self) -> None:
        for name in ("max_message_bytes", "max_header_bytes", "max_header_line_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")
        if self.max_depth < 0 or self.max_parts < 1:
            raise ValueError("max_depth must be >= 0 and max_parts >= 1")


@dataclass(frozen=True)
class Attachment:
    """A decoded attachment. ``filename`` is sanitised (no path, no control characters)."""

    filename: str = field(repr=False)
    content_type: str
    data: bytes = field(repr=False)
    inline: bool = False
    content_id: str | None = None


@dataclass(frozen=True)
class ParsedMessage:
    """An inbound message within limits. Health-data fields are kept out of ``repr``.

    Addresses are normalised (lower case). ``message_id``, ``in_reply_to`` and ``references``
    keep their angle brackets (``<id@host>``), as they appear in headers. ``raw_headers`` is
    the top-level header section as received (for MDNs). ``smime_enveloped`` messages carry
    no body text nor attachments: decrypt them (``smime.decrypt_message``) and parse again.
    ``auto_submitted`` marks automatic mail (RFC 3834: vacation replies, bounces) that must not
    be posted as a professional's answer.
    """

    message_id: str | None
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    from_address: str
    from_name: str
    to: tuple[str, ...]
    cc: tuple[str, ...]
    subject: str = field(repr=False)
    date: datetime | None
    text_body: str = field(repr=False)
    attachments: tuple[Attachment, ...] = field(repr=False)
    smime_enveloped: bool
    smime_signed: bool
    disposition_notification_to: str | None
    auto_submitted: bool
    raw_headers: bytes = field(repr=False)
    size: int

    @property
    def reply_text(self) -> str:
        """The body without quoted history and signature (``quoting.extract_reply``)."""
        return extract_reply(self.text_body)


# --- 1 + 2: size and structure pre-scan -------------------------------------------------------


@dataclass
class _Boundary:
    pattern: re.Pattern[bytes] | None  # None: a boundary no line can match (non-ASCII)
    depth: int  # depth of the multipart entity
    digest: bool  # multipart/digest: parts default to message/rfc822 (RFC 2046 §5.1.5)


@dataclass
class _Scan:
    limits: MailLimits
    boundaries: list[_Boundary] = field(default_factory=list)
    parts: int = 1
    top_header_bytes: int = -1

    def new_part(self, depth: int) -> None:
        self.parts += 1
        if self.parts > self.limits.max_parts:
            raise TooManyParts(f"More than {self.limits.max_parts} MIME parts")
        self.check_depth(depth)

    def check_depth(self, depth: int) -> None:
        if depth > self.limits.max_depth:
            raise MimeTooDeep(f"MIME nesting deeper than {self.limits.max_depth} levels")

    def match_boundary(self, line: bytes) -> tuple[int, bool] | None:
        """(stack index, is close delimiter) of the innermost boundary the line matches."""
        for index in range(len(self.boundaries) - 1, -1, -1):
            pattern = self.boundaries[index].pattern
            found = pattern.fullmatch(line) if pattern is not None else None
            if found is not None:
                return index, found.group(1) is not None
        return None


def _prescan(raw: bytes, limits: MailLimits) -> int:
    """Check header limits, depth and part count the way the parser will see the structure.

    Returns the size of the top-level header section. Linear in the number of lines (times
    the depth, itself bounded by ``max_depth``).
    """
    scan = _Scan(limits)
    lines = raw.splitlines(keepends=True)
    mode = "headers"  # headers | body | dsn
    depth = 0
    default_type = "text/plain"
    header: list[bytes] = []
    header_size = 0
    offset = 0  # bytes consumed, to locate the end of the top-level header section
    swallow: int | None = None  # stack index whose repeated boundary lines are skipped
    dsn_block_start = True
    index = 0
    while index < len(lines):
        line = lines[index]
        if mode == "body" and not scan.boundaries:
            break  # the rest is opaque body text: nothing can open a part any more
        if line.startswith(b"--") and scan.boundaries:
            found = scan.match_boundary(line)
            if found is not None:
                level, close = found
                index += 1
                if swallow == level:
                    continue  # the parser skips repeated boundary lines (even a close one)
                del scan.boundaries[level + 1 :]
                if close:
                    del scan.boundaries[level]
                    mode, swallow = "body", None
                else:
                    parent = scan.boundaries[level]
                    depth = parent.depth + 1
                    scan.new_part(depth)
                    default_type = "message/rfc822" if parent.digest else "text/plain"
                    mode, header, header_size, swallow = "headers", [], 0, level
                continue
        swallow = None
        if mode == "headers":
            if _HEADER_LINE.match(line):
                header_size += len(line)
                if len(line.rstrip(_LINE_END)) > limits.max_header_line_bytes:
                    raise HeaderTooLong(
                        f"Header line longer than {limits.max_header_line_bytes} octets"
                    )
                if header_size > limits.max_header_bytes:
                    raise HeaderTooLong(f"Header section over {limits.max_header_bytes} octets")
                header.append(line)
                offset += len(line)
                index += 1
                continue
            blank = line[:1] in (b"\r", b"\n")
            if scan.top_header_bytes < 0:
                scan.top_header_bytes = offset
            content_type, boundary = _content_type(header, default_type)
            if blank:
                index += 1  # the separator line; otherwise the line starts the body
            if content_type == "message/delivery-status":
                mode, dsn_block_start = "dsn", True
            elif content_type.startswith("message/"):
                depth += 1
                scan.new_part(depth)
                mode, header, header_size, default_type = "headers", [], 0, "text/plain"
            elif content_type.startswith("multipart/") and boundary is not None:
                scan.boundaries.append(
                    _Boundary(_boundary_pattern(boundary), depth, content_type.endswith("/digest"))
                )
                mode = "body"
            else:
                mode = "body"
            continue
        if mode == "dsn":
            # Blocks of header fields separated by one blank line; the parser makes every
            # block a nested entity, and starts a new one after each separator.
            if len(line.rstrip(_LINE_END)) > limits.max_header_line_bytes:
                raise HeaderTooLong(
                    f"Header line longer than {limits.max_header_line_bytes} octets"
                )
            if dsn_block_start:
                scan.new_part(depth + 1)
            dsn_block_start = line[:1] in (b"\r", b"\n")
        index += 1
    if scan.top_header_bytes < 0:
        scan.top_header_bytes = offset
    return scan.top_header_bytes


def _content_type(header: list[bytes], default_type: str) -> tuple[str, str | None]:
    """The parser's own reading of a header section: content type and multipart boundary.

    The first Content-Type field is cut out the way ``FeedParser._parse_headers`` does and
    read by the same ``Message`` methods the parser calls (``get_content_type``,
    ``get_boundary``), so both always agree.
    """
    field = _first_field(header, b"content-type")
    if field is None:
        return default_type, None
    entity = Message(policy=_POLICY)
    entity.set_raw(*_POLICY.header_source_parse(field))
    entity.set_default_type(default_type)
    content_type = entity.get_content_type()
    boundary = entity.get_boundary() if content_type.startswith("multipart/") else None
    return content_type, boundary


def _first_field(header: list[bytes], wanted: bytes) -> list[str] | None:
    """Source lines of the first field named ``wanted`` (``_parse_headers`` rules: a leading
    continuation, a "From " line and a line starting with ":" belong to no field)."""
    current: list[str] | None = None
    for line in header:
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                current.append(line.decode("ascii", "surrogateescape"))
            continue
        if current is not None:
            return current
        colon = line.find(b":")
        if line.startswith(b"From ") or colon <= 0:
            continue
        if line[:colon].lower() == wanted:
            current = [line.decode("ascii", "surrogateescape")]
    return current


def _boundary_pattern(boundary: str) -> re.Pattern[bytes] | None:
    """The parser's boundary regex (email.feedparser), on the raw bytes of the line."""
    try:
        raw = boundary.encode("ascii", "surrogateescape")
    except UnicodeEncodeError:
        return None  # RFC 2231-decoded non-ASCII: the parser cannot match it either
    return re.compile(re.escape(b"--" + raw) + rb"(--)?[ \t]*(?:\r\n|\r|\n)?")


# --- 3: bounded parse and exact walk ----------------------------------------------------------


def parse_tree(raw: bytes, limits: MailLimits | None = None) -> EmailMessage:
    """Parse ``raw`` with the standard parser after the size and structure checks.

    Raises MessageTooLarge, HeaderTooLong, MimeTooDeep, TooManyParts or MalformedMessage
    (boundary defects). Leaves are not decoded here (see :func:`parse_message`).
    """
    limits = limits or MailLimits()
    _check_size(raw, limits)
    _prescan(raw, limits)
    return _parse_checked(raw, limits)


def _check_size(raw: bytes, limits: MailLimits) -> None:
    if len(raw) > limits.max_message_bytes:
        raise MessageTooLarge(f"Message exceeds {limits.max_message_bytes} octets")


def _parse_checked(raw: bytes, limits: MailLimits) -> EmailMessage:
    try:
        message = BytesParser(policy=_POLICY).parsebytes(raw)
    except RecursionError:  # unreachable after the pre-scan; kept as a last line of defence
        raise MimeTooDeep() from None
    assert isinstance(message, EmailMessage)
    entities = _walk(message)
    if len(entities) > limits.max_parts:
        raise TooManyParts(f"More than {limits.max_parts} MIME parts")
    for part, depth, path in entities:
        if depth > limits.max_depth:
            raise MimeTooDeep(f"MIME nesting deeper than {limits.max_depth} levels")
        for defect in part.defects:
            if isinstance(defect, _FATAL_DEFECTS):
                raise MalformedMessage(f"{_part_name(path, part)}: {_defect_text(defect)}")
    return message


def _walk(message: Message) -> list[tuple[Message, int, str]]:
    """Every entity, pre-order, with its depth and IMAP-like path ("" for the message)."""
    out: list[tuple[Message, int, str]] = []
    stack: list[tuple[Message, int, str]] = [(message, 0, "")]
    while stack:
        part, depth, path = stack.pop()
        out.append((part, depth, path))
        payload = part.get_payload() if part.is_multipart() else None
        if isinstance(payload, list):
            for number in range(len(payload), 0, -1):
                child = payload[number - 1]
                if not isinstance(child, Message):
                    continue
                child_path = f"{path}.{number}" if path else str(number)
                stack.append((child, depth + 1, child_path))
    return out


def _part_name(path: str, part: Message) -> str:
    where = f"part {path}" if path else "message body"
    return f"{where} ({part.get_content_type()})"


def _defect_text(defect: email_errors.MessageDefect) -> str:
    words = re.sub(r"(?<!^)(?=[A-Z])", " ", type(defect).__name__.removesuffix("Defect"))
    return words.lower()


# --- extraction -------------------------------------------------------------------------------


def parse_message(raw: bytes, limits: MailLimits | None = None) -> ParsedMessage:
    """Parse an inbound message under ``limits`` (see the module docstring for the order).

    Raises MessageTooLarge, HeaderTooLong, MimeTooDeep, TooManyParts, MalformedMessage (also
    for a missing or invalid From address) or ForbiddenAttachment.
    """
    limits = limits or MailLimits()
    _check_size(raw, limits)
    header_bytes = _prescan(raw, limits)
    message = _parse_checked(raw, limits)

    top = _PartInfo.of(message, "")
    smime_type = top.params.get("smime-type", "").lower()
    enveloped = top.content_type in _SMIME_TYPES and (
        smime_type in ("enveloped-data", "authenveloped-data")
        or (not smime_type and (top.filename or "").lower().endswith(".p7m"))
    )
    plain: list[str] = []
    html: list[str] = []
    attachments: list[Attachment] = []
    signed = False
    nested_prefixes: list[str] = []
    for part, _depth, path in _walk(message):
        if any(path.startswith(prefix) for prefix in nested_prefixes):
            continue  # inside an attached message: carried whole by that attachment
        info = _PartInfo.of(part, path)
        if info.content_type.startswith("message/"):
            nested_prefixes.append(f"{path}." if path else "")
            if path:
                attachments.append(_message_attachment(info, len(attachments) + 1, limits))
            continue
        if part.is_multipart():
            continue
        data = _decode_leaf(info)
        if enveloped or info.content_type in _SIGNATURE_TYPES:
            signed = signed or info.content_type in _SIGNATURE_TYPES
            continue
        is_text = info.content_type in ("text/plain", "text/html")
        if is_text and info.disposition != "attachment" and not info.filename:
            text = _text_of(info, data)
            (plain if info.content_type == "text/plain" else html).append(text)
            continue
        attachments.append(_attachment(info, data, info.filename, len(attachments) + 1, limits))

    if plain:
        body = "\n".join(plain)
    else:
        body = "\n".join(html_to_text(text[: limits.max_html_chars]) for text in html)
    from_name, from_address = _from(message)
    return ParsedMessage(
        message_id=_first_id(message, "message-id"),
        in_reply_to=_ids(message, "in-reply-to"),
        references=_ids(message, "references"),
        from_address=from_address,
        from_name=from_name,
        to=_addresses(message, "to"),
        cc=_addresses(message, "cc"),
        subject=" ".join(_header_text(message, "subject").split()),
        date=_date(message),
        text_body=body,
        attachments=tuple(attachments),
        smime_enveloped=enveloped,
        smime_signed=signed,
        disposition_notification_to=next(
            iter(_addresses(message, "disposition-notification-to")), None
        ),
        auto_submitted=_is_auto_submitted(message),
        raw_headers=raw[:header_bytes],
        size=len(raw),
    )


@dataclass(frozen=True)
class _PartInfo:
    """What extraction needs from one entity, its header fields each read once (every read
    of a field through the default policy parses it again)."""

    entity: Message
    path: str
    content_type: str
    params: dict[str, str]
    disposition: str | None
    filename: str | None
    transfer_encoding: str

    @classmethod
    def of(cls, entity: Message, path: str) -> _PartInfo:
        content_type = entity.get_default_type()
        params: dict[str, str] = {}
        header = entity.get("content-type")
        if header is not None:
            # Message.get_content_type's rules, on the field already fetched.
            value = str(header).partition(";")[0].strip().lower()
            content_type = value if value.count("/") == 1 else "text/plain"
            params = {k.lower(): str(v) for k, v in getattr(header, "params", {}).items()}
        disposition_header = entity.get("content-disposition")
        disposition = None
        filename = None
        if disposition_header is not None:
            disposition = str(disposition_header).partition(";")[0].strip().lower()
            filename = getattr(disposition_header, "params", {}).get("filename")
        filename = filename or params.get("name")
        encoding = entity.get("content-transfer-encoding")
        return cls(
            entity=entity,
            path=path,
            content_type=content_type,
            params=params,
            disposition=disposition,
            filename=str(filename).strip() if filename else None,
            transfer_encoding=str(encoding).strip().lower() if encoding is not None else "7bit",
        )

    @property
    def name(self) -> str:
        """How errors name the part: position and type, never its file name."""
        where = f"part {self.path}" if self.path else "message body"
        return f"{where} ({self.content_type})"


def _decode_leaf(info: _PartInfo) -> bytes:
    """Strict transfer decoding (the stdlib silently repairs broken base64)."""
    part, encoding = info.entity, info.transfer_encoding
    if encoding == "base64":
        return _strict_base64(info)
    if encoding not in ("7bit", "8bit", "binary", "", "quoted-printable"):
        raise MalformedMessage(f"{info.name}: unsupported Content-Transfer-Encoding")
    # The parser's decode=True gives the exact received bytes for 7bit/8bit/binary (get_payload()
    # would re-decode 8-bit text with the declared charset) and its own, deliberately lenient,
    # quoted-printable decoding (RFC 2045 §6.7 asks decoders to be robust).
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        raise MalformedMessage(f"{info.name}: unexpected payload")
    declared = str(part.get("content-transfer-encoding", "")).lower()
    if encoding == "quoted-printable" and declared != encoding:
        data = quopri.decodestring(data)  # " Quoted-Printable " with spaces: not decoded above
    return data


def _strict_base64(info: _PartInfo) -> bytes:
    payload = info.entity.get_payload()
    invalid = MalformedMessage(f"{info.name}: invalid base64 content")
    if not isinstance(payload, str) or not payload.isascii():
        raise invalid  # 8-bit bytes in a base64 body
    compact = re.sub(r"[ \t\r\n]+", "", payload).encode("ascii")
    # strict_mode refuses bad characters and misplaced padding; it still accepts a padding
    # character after a complete quantum ("QUJD="), hence the length check (RFC 4648 §4).
    if len(compact) % 4:
        raise invalid
    try:
        return binascii.a2b_base64(compact, strict_mode=True)
    except (binascii.Error, ValueError):
        raise invalid from None


def _text_of(info: _PartInfo, data: bytes) -> str:
    charset = info.params.get("charset", "utf-8") or "utf-8"
    try:
        text = data.decode(charset, errors="replace")
    except LookupError:  # unknown charset name: UTF-8 is the most likely truth
        text = data.decode("utf-8", errors="replace")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if info.params.get("format", "").lower() == "flowed":
        text = unflow(text, delsp=info.params.get("delsp", "").lower() == "yes")
    return text


def _attachment(
    info: _PartInfo, data: bytes, filename: str | None, number: int, limits: MailLimits
) -> Attachment:
    name = sanitize_filename(filename, info.content_type, number)
    extension = name.rpartition(".")[2].lower() if "." in name else ""
    if (
        extension in limits.forbidden_extensions
        or info.content_type in limits.forbidden_content_types
        or data.startswith(_EXECUTABLE_MAGIC)
    ):
        shown = f".{extension}" if extension else "without extension"
        raise ForbiddenAttachment(f"{info.name}: attachment type {shown} is not accepted")
    content_id = info.entity.get("content-id")
    return Attachment(
        filename=name,
        content_type=info.content_type,
        data=data,
        inline=info.disposition == "inline",
        content_id=str(content_id).strip() if content_id is not None else None,
    )


def _message_attachment(info: _PartInfo, number: int, limits: MailLimits) -> Attachment:
    """An attached message (message/rfc822, reports): its body bytes, regenerated."""
    try:
        whole = info.entity.as_bytes(policy=_GENERATOR_POLICY)
    except (ValueError, TypeError, LookupError, email_errors.MessageError) as exc:
        raise MalformedMessage(f"{info.name}: cannot be re-encoded") from exc
    body = whole.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in whole else b""
    filename = info.filename or (
        f"message-joint-{number}.eml"
        if info.content_type in ("message/rfc822", "message/global")
        else f"rapport-{number}.txt"
    )
    return _attachment(info, body, filename, number, limits)


def sanitize_filename(filename: str | None, content_type: str, number: int) -> str:
    """A file name safe to store and to offer for download.

    Keeps the last path component only, removes control and format characters (including the
    bidirectional overrides used to disguise ``gpj.exe`` as ``exe.jpg``), characters Windows
    forbids, leading dots (hidden files) and trailing dots/spaces; avoids reserved device names;
    caps the length keeping the extension. Falls back to ``piece-jointe-<n>.<ext>``.
    """
    name = filename or ""
    # Undeclared 8-bit names arrive as surrogate escapes: they are nearly always UTF-8.
    name = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    name = unicodedata.normalize("NFC", name)
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    name = re.sub(r'[<>:"|?*]', "_", name)
    name = " ".join(name.split()).strip(" .")
    if _WINDOWS_RESERVED.fullmatch(name):
        name = f"_{name}"
    if len(name) > _MAX_FILENAME:
        stem, dot, extension = name.rpartition(".")
        if dot and 0 < len(extension) <= 16:
            name = stem[: _MAX_FILENAME - len(extension) - 1].rstrip(" .") + "." + extension
        else:
            name = name[:_MAX_FILENAME].rstrip(" .")
    if not name:
        extension = mimetypes.guess_extension(content_type, strict=False) or ".bin"
        name = f"piece-jointe-{number}{extension}"
    return name


def _header_text(message: Message, name: str) -> str:
    try:
        value = message.get(name)
        return str(value) if value is not None else ""
    except (ValueError, IndexError, TypeError, AttributeError, email_errors.MessageError):
        return ""


def _header_objects(message: Message, name: str) -> list[Any]:
    try:
        return list(message.get_all(name) or [])
    except (ValueError, IndexError, TypeError, AttributeError, email_errors.MessageError):
        return []


def _addresses(message: Message, name: str) -> tuple[str, ...]:
    found: list[str] = []
    for header in _header_objects(message, name):
        if not hasattr(header, "addresses"):
            # Fields unknown to the header registry (Disposition-Notification-To) are
            # unstructured: parse them with the registry's own address-list parser.
            header = _POLICY.header_factory("to", str(header))
        for address in getattr(header, "addresses", ()):
            try:
                normalized = normalize_address(address.addr_spec)
            except (InvalidAddress, ValueError, AttributeError):
                continue
            if normalized not in found:
                found.append(normalized)
    return tuple(found)


def _from(message: Message) -> tuple[str, str]:
    headers = _header_objects(message, "from")
    addresses = [a for h in headers for a in getattr(h, "addresses", ())]
    if not addresses:
        raise MalformedMessage("Missing or empty From header")
    first = addresses[0]
    try:
        address = normalize_address(first.addr_spec, sender=True)
    except InvalidAddress:
        raise MalformedMessage("Invalid From address") from None
    name = " ".join(str(first.display_name or "").split())
    return name, address


def _ids(message: Message, name: str) -> tuple[str, ...]:
    found: list[str] = []
    for value in _header_objects(message, name):
        for message_id in _MSG_ID.findall(str(value)):
            if message_id not in found:
                found.append(message_id)
    return tuple(found)


def _first_id(message: Message, name: str) -> str | None:
    ids = _ids(message, name)
    return ids[0] if ids else None


def _date(message: Message) -> datetime | None:
    text = _header_text(message, "date")
    if not text:
        return None
    try:
        value = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _is_auto_submitted(message: Message) -> bool:
    """RFC 3834 §5 Auto-Submitted (anything but "no"), and the common older markers."""
    auto = _header_text(message, "auto-submitted").strip().lower()
    if auto and not auto.startswith("no"):
        return True
    precedence = _header_text(message, "precedence").strip().lower()
    if precedence in ("bulk", "junk", "list", "auto_reply"):
        return True
    return any(_header_text(message, name) for name in ("x-autoreply", "x-autorespond"))
