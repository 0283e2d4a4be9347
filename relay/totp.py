"""Time-based one-time passwords (RFC 6238, HMAC-SHA1, 6 digits, 30 s steps).

Pure: the caller passes ``now`` (Unix seconds). SHA-1 and 6 digits because that is
what every authenticator app implements by default (RFC 6238 §1.2, Google
Authenticator key-uri format).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
from urllib.parse import quote

STEP_SECONDS = 30
DIGITS = 6


def new_secret() -> str:
    """A random 160-bit secret, base32 without padding (RFC 4226 §4 recommends 160 bits)."""
    return base64.b32encode(secrets.token_bytes(20)).decode("ascii").rstrip("=")


def _key(secret_b32: str) -> bytes:
    padded = secret_b32.upper() + "=" * (-len(secret_b32) % 8)
    return base64.b32decode(padded)


def hotp(key: bytes, counter: int, digits: int = DIGITS) -> str:
    """RFC 4226 HOTP value for ``counter`` (dynamic truncation, §5.3)."""
    digest = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    code = struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(code % 10**digits).zfill(digits)


def totp(secret_b32: str, now: float, digits: int = DIGITS) -> str:
    """The code an authenticator shows at ``now``."""
    return hotp(_key(secret_b32), int(now // STEP_SECONDS), digits)


def verify(secret_b32: str, code: str, now: float, *, last_used_step: int | None = None) -> int:
    """Check ``code`` allowing one step of clock drift either way (RFC 6238 §5.2).

    Returns the matched time step, which the caller stores so the same code cannot
    be replayed; returns -1 when the code does not match or was already used.
    """
    cleaned = code.replace(" ", "")
    if len(cleaned) != DIGITS or not cleaned.isdigit():
        return -1
    key = _key(secret_b32)
    current = int(now // STEP_SECONDS)
    for step in (current - 1, current, current + 1):
        if last_used_step is not None and step <= last_used_step:
            continue
        if hmac.compare_digest(hotp(key, step), cleaned):
            return step
    return -1


def provisioning_uri(secret_b32: str, account: str, issuer: str) -> str:
    """``otpauth://`` URI for authenticator apps (shown as a QR code or typed in)."""
    label = quote(f"{issuer}:{account}")
    return f"otpauth://totp/{label}?secret={secret_b32}&issuer={quote(issuer)}&digits={DIGITS}"
