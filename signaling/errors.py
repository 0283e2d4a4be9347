"""Errors of the signaling package; each carries its protocol answer (DESIGN.md rule 4).

Every error says how the WebSocket adapter answers it:

- ``ws_close is None``: reply with an ``error`` message (``code`` + English ``message`` +
  optional French ``human`` text for the page) and keep the socket open. Used for mistakes a
  correct client can make (a race with another participant, an unknown message type from a
  newer client) so one bad message never costs a patient their call.
- ``ws_close`` set: send the ``error`` message, then close the socket with that code. Close
  codes follow RFC 6455 §7.4.1 (1002 protocol error, 1007 inconsistent data, 1008 policy
  violation, 1009 message too big, 1013 try again later) and use the 4000–4999 range that
  §7.4.2 reserves for applications for our own reasons (see ``CloseCode``).

``http_status`` is the answer when the same error surfaces over HTTP (join links).
"""

from __future__ import annotations

from enum import IntEnum
from typing import ClassVar


class CloseCode(IntEnum):
    """WebSocket close codes the signaling server uses (RFC 6455 §7.4)."""

    NORMAL = 1000  # left, or the consultation ended
    PROTOCOL_ERROR = 1002  # first message was not `hello`
    INVALID_DATA = 1007  # not UTF-8, not JSON, not a JSON object
    POLICY_VIOLATION = 1008  # rate limit, refused credentials
    MESSAGE_TOO_BIG = 1009
    TRY_AGAIN_LATER = 1013  # too many sockets on this consultation
    UNSUPPORTED_PROTOCOL = 4000  # `hello` asked for a protocol version we do not speak
    SESSION_REPLACED = 4002  # the same participant resumed on another socket
    REMOVED = 4003  # a professional removed this participant
    CONSULTATION_ENDED = 4004  # joining a consultation that has ended


class SignalingError(Exception):
    """Base class: a signaling request was refused.

    ``str(error)`` is the English machine-oriented message; ``human`` is optional French text
    the page may show as is. Neither ever contains health data.
    """

    code: ClassVar[str] = "signaling_error"
    ws_close: ClassVar[int | None] = None
    http_status: ClassVar[int] = 400

    def __init__(self, message: str, *, human: str | None = None) -> None:
        super().__init__(message)
        self.human = human

    @property
    def message(self) -> str:
        """The English message (same as ``str(self)``)."""
        return str(self)


# --- Framing and parsing (messages.py) -----------------------------------------------------


class MessageTooBig(SignalingError):
    """The frame is larger than the configured maximum (RFC 6455 §7.4.1: 1009)."""

    code = "message_too_big"
    ws_close = CloseCode.MESSAGE_TOO_BIG
    http_status = 413


class MalformedMessage(SignalingError):
    """Not UTF-8, not JSON, or not a JSON object.

    RFC 6455 §7.4.1 gives 1007 for "data within a message that was not consistent with the
    type of the message"; a client that cannot produce JSON cannot be trusted to go on.
    """

    code = "malformed_message"
    ws_close = CloseCode.INVALID_DATA


class UnknownMessageType(SignalingError):
    """The ``type`` is not one this server knows; answered, not closed, so a newer client
    talking to an older server only loses that one feature."""

    code = "unknown_type"


class FieldError(SignalingError):
    """Base class for a problem with one field; ``field`` is its JSON path (``sdp``,
    ``participants[0].role``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class MissingField(FieldError):
    """A required field is absent."""

    code = "missing_field"

    def __init__(self, field: str) -> None:
        super().__init__(field, f"missing field '{field}'")


class InvalidField(FieldError):
    """A field has the wrong JSON type or a value outside its allowed set or pattern."""

    code = "invalid_field"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(field, f"field '{field}' {problem}")


class FieldTooLarge(FieldError):
    """A string or array field exceeds its cap (SDP, ICE candidate, chat text...)."""

    code = "field_too_large"
    http_status = 413

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(field, f"field '{field}' {problem}")


# --- Handshake and room rules (room.py) ----------------------------------------------------


class HelloRequired(SignalingError):
    """The first message on a socket must be ``hello`` (the version handshake)."""

    code = "hello_required"
    ws_close = CloseCode.PROTOCOL_ERROR


class UnsupportedProtocol(SignalingError):
    """``hello`` asked for a protocol version this server does not speak."""

    code = "unsupported_protocol"
    ws_close = CloseCode.UNSUPPORTED_PROTOCOL


class InvalidState(SignalingError):
    """The message is valid but not allowed now (an ``offer`` from the waiting room, a second
    ``join``...)."""

    code = "invalid_state"
    http_status = 409


class Forbidden(SignalingError):
    """The participant's role lacks the permission (a patient cannot admit or end)."""

    code = "forbidden"
    http_status = 403


class UnknownPeer(SignalingError):
    """The addressed participant is not an admitted member of this consultation.

    Deliberately the same answer for "in another consultation", "never existed" and "still in
    the waiting room", so the answer reveals nothing about other consultations.
    """

    code = "unknown_peer"
    http_status = 404


class PeerUnavailable(SignalingError):
    """The addressed participant is a member but its socket dropped; it may resume."""

    code = "peer_unavailable"
    http_status = 409


class RoomFull(SignalingError):
    """The consultation (or its waiting room) is at capacity."""

    code = "room_full"
    http_status = 409


class AlreadyJoined(SignalingError):
    """This participant is already connected on another socket (use ``resume`` to move)."""

    code = "already_joined"
    http_status = 409


class ResumeFailed(SignalingError):
    """Unknown, expired or foreign resume token: the client should send ``join`` instead."""

    code = "resume_failed"
    http_status = 410


class ConsultationEnded(SignalingError):
    """The consultation has ended; nobody can join it again."""

    code = "consultation_ended"
    ws_close = CloseCode.CONSULTATION_ENDED
    http_status = 410


class RateLimited(SignalingError):
    """Too many messages from one socket (token bucket); a policy violation (1008)."""

    code = "rate_limited"
    ws_close = CloseCode.POLICY_VIOLATION
    http_status = 429


class TooManyConnections(SignalingError):
    """Too many sockets are open on this consultation; 1013 asks the client to retry later."""

    code = "too_many_connections"
    ws_close = CloseCode.TRY_AGAIN_LATER
    http_status = 503


# --- Join links (tokens.py) ----------------------------------------------------------------


class TokenError(SignalingError):
    """Base class: a join-link token was refused. Over a socket this is a policy close."""

    code = "token_invalid"
    ws_close = CloseCode.POLICY_VIOLATION
    http_status = 401


class TokenMalformed(TokenError):
    """The token does not have the join-token shape (truncated link, wrong version...)."""

    code = "token_malformed"


class TokenForged(TokenError):
    """The token's MAC does not verify: altered or not issued by us."""

    code = "token_forged"


class TokenExpired(TokenError):
    """The token's expiry time has passed."""

    code = "token_expired"


class TokenWrongConsultation(TokenError):
    """A valid token, but for another consultation."""

    code = "token_wrong_consultation"
    http_status = 403


class TokenRevoked(TokenError):
    """The link was revoked (its version is no longer the consultation's current one)."""

    code = "token_revoked"
    http_status = 403
