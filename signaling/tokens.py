"""Join-link tokens: signed, expiring, bound to one consultation and one participant.

Patients and guests have no account; their link ``/consultation/{id}?t=<token>`` carries
this token. Design decisions:

- **No health data in the URL** (DESIGN.md "Data at rest"): the token holds opaque ids, the
  role, times and a flag — never a name or a birth date. The display name is bound through
  the participant id (the server reads it from the consultation's participant record), so a
  name correction needs no new link.
- **Readable, canonical payload**: dot-separated fields whose grammar admits exactly one
  spelling of each value (ids ``[A-Za-z0-9_-]``, decimals without leading zeros), so the MAC
  is computed over the received text itself — no re-serialisation ambiguity.
- **HMAC-SHA256** (RFC 2104) over a domain-separated payload (so a MAC made with the same
  secret for another purpose never verifies here), base64url without padding (RFC 4648 §5):
  ~120 characters, fine in a URL and a text message.
- **Revocation by version**: each participant's link has a version; re-issuing bumps it, and
  a token whose version is not the current one is revoked.
- Checks run MAC first, so nothing about the consultation or the clock is revealed to a
  forger; then consultation, revocation, expiry.

Shape: ``j1.<consultation>.<participant>.<role>.<expires_at>.<version>.<flags>.<mac>``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from signaling.errors import (
    TokenExpired,
    TokenForged,
    TokenMalformed,
    TokenRevoked,
    TokenWrongConsultation,
)
from signaling.messages import ID_PATTERN, MAX_ID_CHARS, Role

__all__ = ["MIN_SECRET_BYTES", "JoinGrant", "issue_join_token", "verify_join_token"]

MIN_SECRET_BYTES: Final = 32
"""HMAC-SHA256 keys shorter than the hash output weaken it (RFC 2104 §3)."""

_PREFIX: Final = "j1"
_DOMAIN: Final = b"relais-sante join-token v1\n"
_FLAG_BIRTH_DATE: Final = 1
_MAX_TOKEN_CHARS: Final = 400
_TOKEN: Final = re.compile(
    r"j1\.(?P<consultation>[A-Za-z0-9_-]{1,64})\.(?P<participant>[A-Za-z0-9_-]{1,64})"
    r"\.(?P<role>[a-z]{1,16})\.(?P<expires>0|[1-9][0-9]{0,11})\.(?P<version>0|[1-9][0-9]{0,9})"
    r"\.(?P<flags>[0-9])\.(?P<mac>[A-Za-z0-9_-]{43})"
)
_MAX_VERSION: Final = 10**10 - 1
_MAX_EXPIRY: Final = 10**12 - 1


@dataclass(frozen=True)
class JoinGrant:
    """What a verified join token lets its holder do."""

    consultation_id: str
    participant_id: str
    role: Role
    expires_at: int
    version: int
    birth_date_check: bool
    """The page must ask for the birth date and the server compare it before joining."""


def _check_secret(secret: bytes) -> None:
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"join-token secret must be at least {MIN_SECRET_BYTES} bytes")


def _mac(secret: bytes, payload: str) -> str:
    digest = hmac.new(secret, _DOMAIN + payload.encode("ascii"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def issue_join_token(
    secret: bytes,
    *,
    consultation_id: str,
    participant_id: str,
    role: Role,
    expires_at: int,
    version: int,
    birth_date_check: bool = False,
) -> str:
    """A join token for one participant of one consultation, valid until ``expires_at``
    (Unix seconds) and while ``version`` is that participant's current link version."""
    _check_secret(secret)
    for kind, value in (("consultation id", consultation_id), ("participant id", participant_id)):
        if len(value) > MAX_ID_CHARS or not ID_PATTERN.fullmatch(value):
            raise ValueError(f"{kind} must match [A-Za-z0-9_-]{{1,64}}")
    if not 0 <= expires_at <= _MAX_EXPIRY:
        raise ValueError("expires_at must be a Unix time")
    if not 0 <= version <= _MAX_VERSION:
        raise ValueError("version must be between 0 and 10^10 - 1")
    flags = _FLAG_BIRTH_DATE if birth_date_check else 0
    payload = (
        f"{_PREFIX}.{consultation_id}.{participant_id}.{role.value}.{expires_at}.{version}.{flags}"
    )
    return f"{payload}.{_mac(secret, payload)}"


def verify_join_token(
    secret: bytes,
    token: str,
    *,
    consultation_id: str,
    now: float,
    current_versions: Mapping[str, int] | int,
) -> JoinGrant:
    """Check a join token presented for ``consultation_id`` at time ``now``.

    ``current_versions`` is each participant's current link version (a participant absent
    from the mapping has no valid link), or one version for all.

    Raises ``TokenMalformed``, ``TokenForged``, ``TokenWrongConsultation``, ``TokenRevoked``
    or ``TokenExpired`` (each with its HTTP status and WebSocket close code).
    """
    _check_secret(secret)
    match = _TOKEN.fullmatch(token) if len(token) <= _MAX_TOKEN_CHARS else None
    if match is None:
        raise TokenMalformed("not a join token")
    payload, _, mac = token.rpartition(".")
    if not hmac.compare_digest(_mac(secret, payload), mac):
        raise TokenForged("join token signature does not verify")
    try:
        role = Role(match["role"])
    except ValueError:  # pragma: no cover - only a token we signed can get here
        raise TokenMalformed("unknown role in join token") from None
    grant = JoinGrant(
        consultation_id=match["consultation"],
        participant_id=match["participant"],
        role=role,
        expires_at=int(match["expires"]),
        version=int(match["version"]),
        birth_date_check=bool(int(match["flags"]) & _FLAG_BIRTH_DATE),
    )
    if not hmac.compare_digest(grant.consultation_id, consultation_id):
        raise TokenWrongConsultation("join token is for another consultation")
    if isinstance(current_versions, int):
        current: int | None = current_versions
    else:
        current = current_versions.get(grant.participant_id)
    if current is None or grant.version != current:
        raise TokenRevoked("join link was revoked or re-issued")
    if now >= grant.expires_at:
        raise TokenExpired("join token has expired")
    return grant
