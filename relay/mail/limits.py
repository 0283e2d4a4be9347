"""Parsing inbound mail under explicit limits: raw bytes → :class:`ParsedMessage` (pure).

The standard ``email`` parser builds the tree with ``email.policy.compat32``: the tree is the
same as with ``email.policy.default`` (both policies cut header fields the same way, and the
parser itself only reads Content-Type), without building header objects for every field it
looks at. The few fields extraction uses are then read the way ``policy.default`` reads them
(unfolded, RFC 2047/2231 decoded): a value in a plain shape (ASCII, no encoded word, comment
or quoted pair) is read directly, anything else goes through the default header registry
(see :func:`_unstructured`, :func:`_mime_field`, :func:`_mailboxes`; a test checks both
readings agree). The parser is not safe on hostile input by itself: it recurses once per MIME
level (a 1,000-deep message raises RecursionError) and checks every line against every
enclosing boundary (quadratic in depth), and it decodes base64 leniently. So, in this order:

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
import bisect
import functools
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
from email.policy import Policy
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
# The tree parse_message walks: header fields kept as raw strings (read on demand below).
_TREE_POLICY = email_policy.compat32

# Plain shapes of the fields extraction reads, whose policy.default reading is the text itself
# (no encoded word, comment, quoted pair, RFC 2231 section, group or domain literal).
_MIME_ATOM = r"[!#$%&'*+\-.^_`{|}~0-9A-Za-z]+"  # RFC 2045 §5.1 token
# Parameter names and values: a token without RFC 2231's "*", "'" and "%" (RFC 2231 §3, §4).
_ATTRIBUTE = r"[!#$&+\-.^_`{|}~0-9A-Za-z]+"
_PLAIN_QUOTED = r'"[ !#-\[\]-~]*"'  # printable, no quote nor backslash
_PLAIN_MIME = re.compile(
    rf"[ \t]*{_MIME_ATOM}(?:/{_MIME_ATOM})?[ \t]*"
    rf"(?:;[ \t]*{_ATTRIBUTE}=(?:{_ATTRIBUTE}|{_PLAIN_QUOTED})[ \t]*)*"
)
_PLAIN_PARAM = re.compile(rf";[ \t]*({_ATTRIBUTE})=(?:({_ATTRIBUTE})|\"([^\"]*)\")")
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"  # RFC 5322 §3.2.3
_PLAIN_ADDR_SPEC = rf"{_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
_PLAIN_MAILBOX = re.compile(
    rf"[ \t]*(?:((?:{_ATEXT}[ \t]+)*{_ATEXT})?[ \t]*<({_PLAIN_ADDR_SPEC})>"
    rf"|({_PLAIN_ADDR_SPEC}))[ \t]*"
)
_PLAIN_MSG_ID = re.compile(rf"[ \t]*<{_ATEXT}(?:\.{_ATEXT})*@{_ATEXT}(?:\.{_ATEXT})*>[ \t]*")
_NOT_PLAIN_ADDRESS = re.compile(r'["()\\:;\[\]]|=\?')
_HEADER_ERRORS = (ValueError, IndexError, TypeError, AttributeError, email_errors.MessageError)


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


def _prescan(raw: bytes, limits: MailLimits, policy: Policy = _TREE_POLICY) -> int:
    """Check header limits, depth and part count the way the parser (with ``policy``) will see
    the structure.

    Returns the size of the top-level header section. Linear in the number of lines (times
    the depth, itself bounded by ``max_depth``).
    """
    scan = _Scan(limits)
    lines = raw.splitlines(keepends=True)
    # Inside a body only a boundary line changes anything: the body loop jumps between these.
    dashes = [number for number, line in enumerate(lines) if line[:2] == b"--"]
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
        if mode == "body":
            after = bisect.bisect_right(dashes, index)
            index = dashes[after] if after < len(dashes) else len(lines)
            continue
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
            content_type, boundary = _content_type(header, default_type, policy)
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


def _content_type(header: list[bytes], default_type: str, policy: Policy) -> tuple[str, str | None]:
    """The parser's own reading of a header section: content type and multipart boundary.

    The first Content-Type field is cut out the way ``FeedParser._parse_headers`` does and
    read by the same ``Message`` methods the parser calls (``get_content_type``,
    ``get_boundary``) under the same policy, so both always agree.
    """
    field = _first_field(header, b"content-type")
    if field is None:
        return default_type, None
    if sum(map(len, field)) > 512:  # only short fields are kept: the cache stays small
        return _read_content_type.__wrapped__(tuple(field), default_type, policy)
    return _read_content_type(tuple(field), default_type, policy)


@functools.lru_cache(maxsize=512)
def _read_content_type(
    field: tuple[str, ...], default_type: str, policy: Policy
) -> tuple[str, str | None]:
    # Memoised: a pure function of its arguments, and most parts carry one of a few fields.
    entity = Message(policy=policy)
    entity.set_raw(*policy.header_source_parse(list(field)))
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
    _prescan(raw, limits, _POLICY)
    message = _parse_checked(raw, limits, _POLICY)
    assert isinstance(message, EmailMessage)
    return message


def _check_size(raw: bytes, limits: MailLimits) -> None:
    if len(raw) > limits.max_message_bytes:
        raise MessageTooLarge(f"Message exceeds {limits.max_message_bytes} octets")


def _parse_checked(raw: bytes, limits: MailLimits, policy: Policy) -> Message:
    try:
        message = BytesParser(policy=policy).parsebytes(raw)
    except RecursionError:  # unreachable after the pre-scan; kept as a last line of defence
        raise MimeTooDeep() from None
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
    return f"{where} ({_PartInfo.content_type_of(part)})"


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
    header_bytes = _prescan(raw, limits, _TREE_POLICY)
    message = _parse_checked(raw, limits, _TREE_POLICY)

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
    fields = _Fields(message)
    from_name, from_address = _from(fields)
    return ParsedMessage(
        message_id=_first_id(fields, "message-id"),
        in_reply_to=_ids(fields, "in-reply-to"),
        references=_ids(fields, "references"),
        from_address=from_address,
        from_name=from_name,
        to=_addresses(fields, "to"),
        cc=_addresses(fields, "cc"),
        subject=" ".join((_unstructured(fields, "subject") or "").split()),
        date=_date(fields),
        text_body=body,
        attachments=tuple(attachments),
        smime_enveloped=enveloped,
        smime_signed=signed,
        disposition_notification_to=next(
            iter(_addresses(fields, "disposition-notification-to")), None
        ),
        auto_submitted=_is_auto_submitted(fields),
        raw_headers=raw[:header_bytes],
        size=len(raw),
    )


@dataclass(frozen=True)
class _PartInfo:
    """What extraction needs from one entity, each header field read once, as
    ``policy.default`` reads it."""

    entity: Message
    path: str
    content_type: str
    params: dict[str, str]
    disposition: str | None
    filename: str | None
    transfer_encoding: str

    @classmethod
    def of(cls, entity: Message, path: str) -> _PartInfo:
        fields = _Fields(entity)
        content_type = entity.get_default_type()
        params: dict[str, str] = {}
        found = _mime_field(fields, "content-type")
        if found is not None:
            # Message.get_content_type's rules, on the field as policy.default reads it.
            value = found[0].partition(";")[0].strip().lower()
            content_type = value if value.count("/") == 1 else "text/plain"
            params = found[1]
        disposition = None
        filename = None
        found = _mime_field(fields, "content-disposition")
        if found is not None:
            disposition = found[0].partition(";")[0].strip().lower()
            filename = found[1].get("filename")
        filename = filename or params.get("name")
        encoding = _entity_text(fields, "content-transfer-encoding")
        return cls(
            entity=entity,
            path=path,
            content_type=content_type,
            params=params,
            disposition=disposition,
            filename=filename.strip() if filename else None,
            transfer_encoding=encoding.strip().lower() if encoding is not None else "7bit",
        )

    @staticmethod
    def content_type_of(entity: Message) -> str:
        """The content type alone (for error texts)."""
        found = _mime_field(_Fields(entity), "content-type")
        if found is None:
            return entity.get_default_type()
        value = found[0].partition(";")[0].strip().lower()
        return value if value.count("/") == 1 else "text/plain"

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
    compact = payload.encode("ascii").translate(None, b" \t\r\n")
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
    content_id = _entity_text(_Fields(info.entity), "content-id")
    return Attachment(
        filename=name,
        content_type=info.content_type,
        data=data,
        inline=info.disposition == "inline",
        content_id=content_id.strip() if content_id is not None else None,
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


# --- header fields, read as policy.default reads them ---------------------------------------


class _Fields:
    """An entity's header fields by lower-case name, unfolded the way
    ``policy.default.header_fetch_parse`` unfolds them (CR and LF removed)."""

    def __init__(self, entity: Message) -> None:
        self._by_name: dict[str, list[str]] = {}
        for name, value in entity.raw_items():
            text = value if isinstance(value, str) else str(value)
            self._by_name.setdefault(name.lower(), []).append(
                text.replace("\r", "").replace("\n", "")
            )

    def all(self, name: str) -> list[str]:
        """Every field ``name``, in order."""
        return self._by_name.get(name, [])

    def first(self, name: str) -> str | None:
        """The first field ``name`` (what ``Message.get`` returns)."""
        values = self._by_name.get(name)
        return values[0] if values else None


def _registry(name: str, value: str) -> Any:
    """The default policy's header object (None when its parser gives up on hostile input)."""
    try:
        return _POLICY.header_factory(name, value)
    except _HEADER_ERRORS:
        return None


def _entity_registry(name: str, value: str) -> Any:
    """The default policy's header object for a field of an entity's structure; its parser
    giving up is not caught here (the caller answers for the whole message)."""
    return _POLICY.header_factory(name, value)


def _is_plain(value: str) -> bool:
    # 8-bit text and RFC 2047 encoded words are what policy.default decodes in these fields.
    return value.isascii() and "=?" not in value


def _text(name: str, value: str) -> str:
    """``str()`` of the default policy's header object: the value itself when plain."""
    if _is_plain(value) and (name != "message-id" or _PLAIN_MSG_ID.fullmatch(value)):
        return value
    header = _registry(name, value)
    return str(header) if header is not None else ""


def _unstructured(fields: _Fields, name: str) -> str | None:
    """The first field ``name`` as text (None when absent)."""
    value = fields.first(name)
    return None if value is None else _text(name, value)


def _entity_text(fields: _Fields, name: str) -> str | None:
    """The first field ``name`` of an entity's structure as text (None when absent)."""
    value = fields.first(name)
    if value is None or _is_plain(value):
        return value
    return str(_entity_registry(name, value))


def _mime_field(fields: _Fields, name: str) -> tuple[str, dict[str, str]] | None:
    """The first Content-Type or Content-Disposition: (text, parameters with lower-case
    names, RFC 2231 and RFC 2047 decoded), as the default header registry reads it."""
    value = fields.first(name)
    return None if value is None else _mime_value(name, value)


def _mime_value(name: str, value: str) -> tuple[str, dict[str, str]]:
    if _is_plain(value) and _PLAIN_MIME.fullmatch(value):
        params: dict[str, str] = {}
        for found in _PLAIN_PARAM.finditer(value):
            key = found.group(1).lower()
            if key in params:
                break  # a repeated parameter: the registry's recovery rules decide
            token = found.group(2)
            params[key] = token if token is not None else found.group(3)
        else:
            return value, params
    header = _entity_registry(name, value)
    registry_params = getattr(header, "params", {})
    return str(header), {str(k).lower(): str(v) for k, v in registry_params.items()}


def _mailboxes(name: str, value: str) -> list[tuple[str, str]]:
    """(display name, addr-spec) of each mailbox of an address-list field (groups included).

    Fields unknown to the header registry (Disposition-Notification-To) are read with its
    address-list parser too.
    """
    if _is_plain(value) and not _NOT_PLAIN_ADDRESS.search(value):
        found: list[tuple[str, str]] = []
        for item in value.split(","):
            mailbox = _PLAIN_MAILBOX.fullmatch(item)
            if mailbox is None:
                break  # an empty item or another shape: the registry decides
            display_name, bracketed, bare = mailbox.groups()
            found.append((display_name or "", bracketed or bare))
        else:
            return found
    if name not in ("from", "to", "cc"):
        # Unstructured for the registry: read as text (encoded words decoded), then as a list.
        value = _text(name, value)
    header = _registry("to", value) if name not in ("from", "cc") else _registry(name, value)
    out: list[tuple[str, str]] = []
    for address in getattr(header, "addresses", ()):
        try:
            out.append((str(address.display_name or ""), str(address.addr_spec)))
        except _HEADER_ERRORS:
            continue
    return out


def _addresses(fields: _Fields, name: str) -> tuple[str, ...]:
    found: list[str] = []
    for value in fields.all(name):
        for _display_name, addr_spec in _mailboxes(name, value):
            try:
                normalized = normalize_address(addr_spec)
            except (InvalidAddress, ValueError):
                continue
            if normalized not in found:
                found.append(normalized)
    return tuple(found)


def _from(fields: _Fields) -> tuple[str, str]:
    mailboxes = [m for value in fields.all("from") for m in _mailboxes("from", value)]
    if not mailboxes:
        raise MalformedMessage("Missing or empty From header")
    display_name, addr_spec = mailboxes[0]
    try:
        address = normalize_address(addr_spec, sender=True)
    except InvalidAddress:
        raise MalformedMessage("Invalid From address") from None
    return " ".join(display_name.split()), address


def _ids(fields: _Fields, name: str) -> tuple[str, ...]:
    found: list[str] = []
    for value in fields.all(name):
        for message_id in _MSG_ID.findall(_text(name, value)):
            if message_id not in found:
                found.append(message_id)
    return tuple(found)


def _first_id(fields: _Fields, name: str) -> str | None:
    ids = _ids(fields, name)
    return ids[0] if ids else None


def _date(fields: _Fields) -> datetime | None:
    # The registry's Date object renders a valid date with format_datetime, which reads back
    # as the same datetime: parsing the field text directly gives the same answer.
    text = fields.first("date")
    if not text:
        return None
    try:
        value = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _is_auto_submitted(fields: _Fields) -> bool:
    """RFC 3834 §5 Auto-Submitted (anything but "no"), and the common older markers."""
    auto = (_unstructured(fields, "auto-submitted") or "").strip().lower()
    if auto and not auto.startswith("no"):
        return True
    precedence = (_unstructured(fields, "precedence") or "").strip().lower()
    if precedence in ("bulk", "junk", "list", "auto_reply"):
        return True
    return any(_unstructured(fields, name) for name in ("x-autoreply", "x-autorespond"))
