"""Short-lived TURN credentials in coturn's "TURN REST API" format, and RTCConfiguration.

coturn started with ``--use-auth-secret --static-auth-secret=S`` accepts any username whose
leading number is a Unix time not yet passed, with password
``base64(HMAC-SHA1(S, username))`` (draft-uberti-behave-turn-rest-00 §2.2; coturn
``userdb.c``: ``get_rest_api_timestamp`` takes the digits before the *first* ``:`` as the
expiry and refuses with 401 once it is in the past). Our username is
``<expiry>:<consultation>:<participant>`` so coturn's logs and quotas can be tied back to a
consultation; identifiers are restricted to ``[A-Za-z0-9_-]`` so they can never contain the
``:`` separator (nor anything a log or a URL would need to escape).

Pure functions: ``now`` is passed in (DESIGN.md rule 1).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "DEFAULT_LIFETIME",
    "IceServer",
    "RtcConfiguration",
    "TurnSettings",
    "credentials_expire_at",
    "rtc_configuration",
    "turn_credentials",
    "turn_password",
    "turn_username",
]

DEFAULT_LIFETIME: Final = 600
"""Credential lifetime in seconds (10 min); the client asks for fresh ones over the socket."""

_SAFE_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ICE_URL: Final = re.compile(r"(stun|stuns|turn|turns):[^\s]{1,250}")


@dataclass(frozen=True)
class IceServer:
    """One entry of ``RTCConfiguration.iceServers`` (W3C WebRTC §4.2.2 RTCIceServer).

    ``username``/``credential`` are ``None`` for a STUN server and omitted from the JSON.
    """

    urls: tuple[str, ...] = field(metadata={"max_items": 8, "max_len": 256})
    username: str | None = field(default=None, metadata={"max_len": 256})
    credential: str | None = field(default=None, metadata={"max_len": 256})

    def as_dict(self) -> dict[str, Any]:
        """The JSON object a browser's ``RTCPeerConnection`` takes."""
        out: dict[str, Any] = {"urls": list(self.urls)}
        if self.username is not None:
            out["username"] = self.username
        if self.credential is not None:
            out["credential"] = self.credential
        return out


@dataclass(frozen=True)
class RtcConfiguration:
    """The part of ``RTCConfiguration`` the server decides: the ICE servers.

    Serialised with the browser's own key (``iceServers``) so the page passes it as is to
    ``new RTCPeerConnection(...)``.
    """

    ice_servers: tuple[IceServer, ...] = field(metadata={"json": "iceServers", "max_items": 8})

    def as_dict(self) -> dict[str, Any]:
        """``{"iceServers": [...]}`` for ``new RTCPeerConnection(config)``."""
        return {"iceServers": [server.as_dict() for server in self.ice_servers]}


@dataclass(frozen=True)
class TurnSettings:
    """How to reach our TURN/STUN servers.

    ``secret`` is coturn's ``static-auth-secret``; ``turn_urls`` like
    ``turn:turn.example.fr:3478?transport=udp``; ``stun_urls`` are sent without credentials.
    """

    secret: str
    turn_urls: tuple[str, ...]
    stun_urls: tuple[str, ...] = ()
    lifetime: int = DEFAULT_LIFETIME

    def __post_init__(self) -> None:
        if not self.secret:
            raise ValueError("TURN secret must not be empty")
        if self.lifetime <= 0:
            raise ValueError("TURN credential lifetime must be positive")
        for url in (*self.turn_urls, *self.stun_urls):
            if not _ICE_URL.fullmatch(url):
                raise ValueError(f"not a STUN/TURN URL: {url!r}")


def _check_id(kind: str, value: str) -> None:
    if not _SAFE_ID.fullmatch(value):
        raise ValueError(f"{kind} must match [A-Za-z0-9_-]{{1,64}} to be safe in a TURN username")


def turn_username(consultation_id: str, participant_id: str, expires_at: int) -> str:
    """``<expiry>:<consultation>:<participant>``; the expiry comes first because coturn reads
    the digits before the first ``:`` as the expiry time."""
    _check_id("consultation id", consultation_id)
    _check_id("participant id", participant_id)
    if expires_at < 0:
        raise ValueError("expiry must be a Unix time")
    return f"{expires_at}:{consultation_id}:{participant_id}"


def turn_password(secret: str, username: str) -> str:
    """``base64(HMAC-SHA1(secret, username))`` as coturn computes it (standard alphabet, with
    padding: coturn compares the base64 text itself)."""
    # SHA-1 here is fixed by coturn's REST scheme (it is an HMAC, where SHA-1 remains sound).
    mac = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(mac).decode("ascii")


def turn_credentials(
    secret: str,
    consultation_id: str,
    participant_id: str,
    now: float,
    *,
    urls: tuple[str, ...],
    lifetime: int = DEFAULT_LIFETIME,
) -> IceServer:
    """Credentials valid from ``now`` for ``lifetime`` seconds on the TURN servers ``urls``."""
    if lifetime <= 0:
        raise ValueError("TURN credential lifetime must be positive")
    username = turn_username(consultation_id, participant_id, int(now) + lifetime)
    return IceServer(urls=urls, username=username, credential=turn_password(secret, username))


def credentials_expire_at(now: float, settings: TurnSettings) -> int:
    """The Unix time at which credentials issued at ``now`` stop working."""
    return int(now) + settings.lifetime


def rtc_configuration(
    settings: TurnSettings | None, consultation_id: str, participant_id: str, now: float
) -> RtcConfiguration:
    """The ``rtcConfiguration`` for one participant: STUN servers, then TURN with fresh
    credentials. ``settings=None`` (no TURN configured) gives an empty server list, which
    browsers accept (host candidates only: enough on one LAN or loopback)."""
    if settings is None:
        return RtcConfiguration(ice_servers=())
    servers: list[IceServer] = []
    if settings.stun_urls:
        servers.append(IceServer(urls=settings.stun_urls))
    if settings.turn_urls:
        servers.append(
            turn_credentials(
                settings.secret,
                consultation_id,
                participant_id,
                now,
                urls=settings.turn_urls,
                lifetime=settings.lifetime,
            )
        )
    return RtcConfiguration(ice_servers=tuple(servers))
