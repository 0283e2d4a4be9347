"""Reply tokens: the ``<token>`` of ``r+<token>@D``, bound to one thread or case and one recipient.

Design: stateless, authenticated with HMAC-SHA256 under a server secret
--------------------------------------------------------------------------
The token carries the target (thread or case) id and two truncated MACs::

    kind (1 char: t|c) ‖ base32(id, 16 bytes → 26 chars)
         ‖ base32(MAC_target, 10 bytes → 16 chars) ‖ base32(MAC_recipient, 10 bytes → 16 chars)

59 characters, so the local part ``r+<token>`` is 61 ≤ 64 octets (RFC 5321 §4.5.3.1.1).
Base32 in lower case because mail systems do not preserve the case of local parts in practice
(RFC 5321 §2.4 allows either; the relay lower-cases every address).

* ``MAC_target = HMAC(secret, "target" ‖ kind ‖ id)`` proves the relay issued a token for that
  thread/case: a forged or altered token is refused before any database access.
* ``MAC_recipient = HMAC(secret, "recipient" ‖ kind ‖ id ‖ recipient)`` binds the token to the
  address it was sent to: a genuine token used from another address is refused, and because the
  first MAC already proved the target, that refusal can be audited against the real thread.

Why stateless rather than a random key looked up in a table: no write per outbound mail and no
table to replicate between nodes or to lose in a restore; verification costs two HMACs and
happens at RCPT/DATA time without I/O. Tokens are deterministic, so every notification of a
thread to one recipient carries the same reply address (clients thread and remember it).
What it gives up: revoking one token. Revocation is policy, applied after ``verify`` by the
caller (is this recipient still a participant? is the case still open?); rotating the secret
revokes all tokens (``previous_secrets`` keeps the old ones valid during a transition).
80-bit MACs: a forger must send one mail per guess, so 2^80 guesses are out of reach.

Target ids must be the relay's identifiers: ``secrets.token_hex(16)`` (32 lowercase hex
characters, 128 bits; see ``relay.accounts.new_id``); they are packed back to their 16 bytes
to fit in the local part.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from relay.mail.addresses import normalize_address
from relay.mail.errors import InvalidAddress, ReplyNotAllowed

__all__ = ["TOKEN_LENGTH", "ReplyKind", "ReplyTarget", "issue", "verify"]


class ReplyKind(StrEnum):
    """What a reply address leads to."""

    THREAD = "thread"
    CASE = "case"


_KIND_CHAR = {ReplyKind.THREAD: "t", ReplyKind.CASE: "c"}
_CHAR_KIND = {char: kind for kind, char in _KIND_CHAR.items()}

_ID_BYTES = 16
_ID_CHARS = 26  # base32 of 16 bytes without padding
_MAC_BYTES = 10
_MAC_CHARS = 16
TOKEN_LENGTH = 1 + _ID_CHARS + 2 * _MAC_CHARS
_MIN_SECRET = 16
_TOKEN = re.compile(rf"[tc][a-z2-7]{{{TOKEN_LENGTH - 1}}}")
_LABEL_TARGET = b"relais-sante/reply-token/v1/target\x00"
_LABEL_RECIPIENT = b"relais-sante/reply-token/v1/recipient\x00"


@dataclass(frozen=True)
class ReplyTarget:
    """A verified reply address: the thread or case it leads to, and who may use it."""

    kind: ReplyKind
    target_id: str
    recipient: str


def issue(secret: bytes, kind: ReplyKind, target_id: str, recipient: str) -> str:
    """Return the token for ``recipient`` replying to thread/case ``target_id``.

    ``recipient`` is the address the mail is sent to (normalised here). Raises ValueError for
    a short secret or a target id that is not a 128-bit base64url identifier.
    """
    _check_secret(secret)
    id_bytes = _pack_id(target_id)
    address = normalize_address(recipient)
    kind_char = _KIND_CHAR[ReplyKind(kind)]
    return (
        kind_char
        + _b32(id_bytes)
        + _b32(_mac_target(secret, kind_char, id_bytes))
        + _b32(_mac_recipient(secret, kind_char, id_bytes, address))
    )


def verify(
    secret: bytes,
    token: str,
    sender_address: str,
    *,
    previous_secrets: Sequence[bytes] = (),
) -> ReplyTarget:
    """Check ``token`` and that ``sender_address`` is the recipient it was issued to.

    Raises ReplyNotAllowed with ``reason="forged"`` when the token is malformed or not issued
    under ``secret`` (nor any of ``previous_secrets``), and ``reason="wrong_sender"`` (with the
    genuine target) when it is genuine but bound to another address.
    """
    _check_secret(secret)
    text = token.strip().lower()
    if not _TOKEN.fullmatch(text):
        raise ReplyNotAllowed(reason="forged")
    kind_char = text[0]
    id_bytes = _unb32(text[1 : 1 + _ID_CHARS], _ID_BYTES)
    mac_target = _unb32(text[1 + _ID_CHARS : 1 + _ID_CHARS + _MAC_CHARS], _MAC_BYTES)
    mac_recipient = _unb32(text[1 + _ID_CHARS + _MAC_CHARS :], _MAC_BYTES)
    if id_bytes is None or mac_target is None or mac_recipient is None:
        raise ReplyNotAllowed(reason="forged")
    key = next(
        (
            candidate
            for candidate in (secret, *previous_secrets)
            if hmac.compare_digest(_mac_target(candidate, kind_char, id_bytes), mac_target)
        ),
        None,
    )
    if key is None:
        raise ReplyNotAllowed(reason="forged")
    kind = _CHAR_KIND[kind_char]
    target_id = id_bytes.hex()
    try:
        sender = normalize_address(sender_address, sender=True)
    except InvalidAddress:
        sender = None
    if sender is None or not hmac.compare_digest(
        _mac_recipient(key, kind_char, id_bytes, sender), mac_recipient
    ):
        raise ReplyNotAllowed(reason="wrong_sender", target_kind=kind.value, target_id=target_id)
    return ReplyTarget(kind=kind, target_id=target_id, recipient=sender)


def _check_secret(secret: bytes) -> None:
    if len(secret) < _MIN_SECRET:
        raise ValueError(f"the reply-token secret must be at least {_MIN_SECRET} bytes")


def _pack_id(target_id: str) -> bytes:
    try:
        raw = bytes.fromhex(target_id)
    except ValueError:
        raw = b""
    # Re-encoding must give the id back: one id, one token (no non-canonical spellings).
    if len(raw) != _ID_BYTES or raw.hex() != target_id:
        raise ValueError("target id must be a 128-bit lowercase hex identifier (token_hex(16))")
    return raw


def _mac_target(secret: bytes, kind_char: str, id_bytes: bytes) -> bytes:
    message = _LABEL_TARGET + kind_char.encode("ascii") + id_bytes
    return hmac.new(secret, message, hashlib.sha256).digest()[:_MAC_BYTES]


def _mac_recipient(secret: bytes, kind_char: str, id_bytes: bytes, recipient: str) -> bytes:
    message = _LABEL_RECIPIENT + kind_char.encode("ascii") + id_bytes + recipient.encode("ascii")
    return hmac.new(secret, message, hashlib.sha256).digest()[:_MAC_BYTES]


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").rstrip("=").lower()


def _unb32(text: str, size: int) -> bytes | None:
    """Decode unpadded lower-case base32; None unless canonical and exactly ``size`` bytes."""
    padded = text.upper() + "=" * (-len(text) % 8)
    try:
        raw = base64.b32decode(padded)
    except (binascii.Error, ValueError):
        return None
    if len(raw) != size or _b32(raw) != text:
        return None
    return raw
