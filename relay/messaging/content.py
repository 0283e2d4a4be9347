"""What the encrypted content documents of threads and messages hold, and their byte format.

Subjects, message texts, attachment names and patient identities are health data: they are
never put in SQL columns in clear but in a small JSON document per message, sealed with the
blob store's encryption (a row of ``sealed_documents`` since migration 0007, a blob file
before: :mod:`storage.sealed`). Each document has ``parse``/``__bytes__`` (round-trip tested); a
document that does not parse is reported as :class:`ContentError` (an integrity problem, not
the user's).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

FORMAT_VERSION = 1


class ContentError(ValueError):
    """A content document does not have the expected shape."""


def _load(raw: bytes, kind: str) -> dict[str, Any]:
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ContentError(f"{kind} content is not UTF-8 JSON") from exc
    if not isinstance(data, dict) or data.get("v") != FORMAT_VERSION or data.get("k") != kind:
        raise ContentError(f"not a version-{FORMAT_VERSION} {kind} document")
    return data


def _text(data: dict[str, Any], name: str, *, optional: bool = False) -> str | None:
    value = data.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ContentError(f"field {name} must be a string")
    return value


@dataclass(frozen=True)
class ThreadContent:
    """A thread's subject and, optionally, the patient it is about (INS, checked).

    Stored inside the first message's document (nothing more to write for a new thread);
    ``parse`` reads it from there, or from a document of its own.
    """

    subject: str = field(repr=False)
    patient_ins: str | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        """The JSON object of the thread section."""
        document: dict[str, Any] = {"subject": self.subject}
        if self.patient_ins is not None:
            document["patient_ins"] = self.patient_ins
        return document

    def __bytes__(self) -> bytes:
        document = {"v": FORMAT_VERSION, "k": "thread", **self.to_json()}
        return json.dumps(document, ensure_ascii=False, sort_keys=True).encode("utf-8")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ThreadContent:
        """Inverse of :meth:`to_json`; raises ContentError."""
        return cls(
            subject=_text(data, "subject") or "",
            patient_ins=_text(data, "patient_ins", optional=True),
        )

    @classmethod
    def parse(cls, raw: bytes) -> ThreadContent:
        """Inverse of ``bytes()``, or the thread section of a first message; ContentError."""
        try:
            return cls.from_json(_load(raw, "thread"))
        except ContentError:
            section = _load(raw, "message").get("thread")
            if not isinstance(section, dict):
                raise ContentError("the document holds no thread section") from None
            return cls.from_json(section)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: object, name: str) -> bytes:
    if not isinstance(value, str):
        raise ContentError(f"field {name} must be base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ContentError(f"field {name} is not valid base64") from exc


@dataclass(frozen=True)
class MessageContent:
    """A message's text, its attachments' file names (in attachment order), and for mail the
    display name its sender gave.

    ``inline`` holds the bytes of small attachments kept inside this document rather than in
    blobs of their own (the message is then one sealed row, no file); ``raw_headers`` the header
    section of an inbound mail (for receipts and bounces); ``receipt_to`` where its sender
    asked for read receipts (RFC 8098), when the relay may send them; ``thread`` the thread's
    subject and patient when this is the thread's first message.
    """

    text: str = field(repr=False)
    attachment_names: tuple[str, ...] = field(default=(), repr=False)
    sender_name: str | None = field(default=None, repr=False)
    inline: tuple[bytes, ...] = field(default=(), repr=False)
    raw_headers: bytes | None = field(default=None, repr=False)
    thread: ThreadContent | None = field(default=None, repr=False)
    receipt_to: str | None = None

    def __bytes__(self) -> bytes:
        document: dict[str, Any] = {
            "v": FORMAT_VERSION,
            "k": "message",
            "text": self.text,
            "attachments": list(self.attachment_names),
        }
        if self.sender_name is not None:
            document["sender_name"] = self.sender_name
        if self.inline:
            document["inline"] = [_b64(data) for data in self.inline]
        if self.raw_headers is not None:
            document["raw_headers"] = _b64(self.raw_headers)
        if self.thread is not None:
            document["thread"] = self.thread.to_json()
        if self.receipt_to is not None:
            document["receipt_to"] = self.receipt_to
        return json.dumps(document, ensure_ascii=False, sort_keys=True).encode("utf-8")

    @classmethod
    def parse(cls, raw: bytes) -> MessageContent:
        """Inverse of ``bytes()``; raises ContentError."""
        data = _load(raw, "message")
        names = data.get("attachments", [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ContentError("field attachments must be a list of strings")
        inline = data.get("inline", [])
        if not isinstance(inline, list):
            raise ContentError("field inline must be a list")
        headers = data.get("raw_headers")
        thread = data.get("thread")
        if thread is not None and not isinstance(thread, dict):
            raise ContentError("field thread must be an object")
        return cls(
            text=_text(data, "text") or "",
            attachment_names=tuple(names),
            sender_name=_text(data, "sender_name", optional=True),
            inline=tuple(_unb64(item, "inline") for item in inline),
            raw_headers=None if headers is None else _unb64(headers, "raw_headers"),
            thread=None if thread is None else ThreadContent.from_json(thread),
            receipt_to=_text(data, "receipt_to", optional=True),
        )
