"""The teleconsultation signaling protocol, version 1: JSON text frames over a WebSocket.

Every frame is one JSON object with a ``type``; one frozen dataclass per type (DESIGN.md
rule 3). ``parse_client_message``/``parse_server_message`` and ``serialize`` are the pairs the
round-trip tests hold together. The codec is driven by the dataclasses' type hints and field
metadata, so the wire format, the parser and ``json_schema()`` cannot drift apart.

Session, in order (client → server unless marked ←):

1. ``hello {protocol: 1}`` ← ``welcome`` — or the socket is closed with 4000
   (``unsupported_protocol``); anything else first closes with 1002 (``hello_required``).
2. ``join`` ← ``joined`` (professionals: participants, permissions, ``rtcConfiguration``,
   resume token) or ← ``waiting`` (patients, guests); later ← ``admitted`` when a
   professional sends ``admit``. Or ``resume {token}`` after a dropped socket.
3. ``offer``/``answer``/``candidate {to}`` ← relayed to that participant only, with ``from``.
   Mesh rule: the participant who arrives (or resumes) sends the offers; those already there
   answer. On ← ``ice_restart {participant_id}`` keep the peer connection and expect a new
   offer from that participant.
4. ``media_state``, ``chat``, ``consent``, ``record``, ``refresh_turn``, ``ping``;
   ``remove``/``admit``/``end`` for professionals; ``leave``.

Wire conventions: keys are snake_case except values handed as is to a browser API
(``rtcConfiguration`` → ``iceServers``/``urls``/``username``/``credential``; candidates →
``sdpMid``/``sdpMLineIndex``/``usernameFragment``, the names of ``RTCIceCandidateInit``).
A relayed message names its sender ``from``. Optional fields whose value is ``null`` are
omitted. Unknown keys are ignored (a newer client can add fields); unknown *types* are
answered with ``error {code: "unknown_type"}``. Times are Unix seconds.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from json.encoder import encode_basestring
from typing import Any, ClassVar, Final, TypeAlias, Union, get_args, get_origin, get_type_hints

import orjson

from signaling.errors import (
    FieldTooLarge,
    InvalidField,
    MalformedMessage,
    MessageTooBig,
    MissingField,
    SignalingError,
    UnknownMessageType,
)
from signaling.frozen import quick_init
from signaling.turn import IceServer, RtcConfiguration

PROTOCOL_VERSION: Final = 1
SUPPORTED_PROTOCOLS: Final = frozenset({PROTOCOL_VERSION})

DEFAULT_MAX_MESSAGE_BYTES: Final = 64 * 1024
"""Largest frame accepted; an SDP at its cap still fits after JSON escaping."""
MAX_SDP_CHARS: Final = 32 * 1024
"""A browser SDP for one audio + one video + one data section is 3–10 kB."""
MAX_CANDIDATE_CHARS: Final = 1024
"""An ICE candidate line (RFC 8839 §5.1) is ~100–250 characters."""
MAX_CHAT_CHARS: Final = 2000
MAX_NAME_CHARS: Final = 100
MAX_ID_CHARS: Final = 64

ID_PATTERN: Final = re.compile(r"[A-Za-z0-9_-]+")
"""Participant and consultation ids: URL-, log- and TURN-username-safe (no ``:``)."""
TOKEN_PATTERN: Final = re.compile(r"[A-Za-z0-9_-]{16,128}")


class Role(StrEnum):
    """A participant's role in a consultation."""

    PHYSICIAN = "physician"
    NURSE = "nurse"
    PATIENT = "patient"
    SPECIALIST = "specialist"
    INTERPRETER = "interpreter"
    GUEST = "guest"


class Permission(StrEnum):
    """What a participant may do; sent in ``joined``/``admitted`` so the page shows the
    matching buttons (the room enforces the same table)."""

    PUBLISH = "publish"  # send audio/video, offers and answers
    CHAT = "chat"
    ADMIT = "admit"
    REMOVE = "remove"
    END = "end"
    RECORD = "record"


class ConsentKind(StrEnum):
    """What a participant consents to."""

    VIDEO = "video"
    RECORDING = "recording"


class LeaveReason(StrEnum):
    """Why a participant is no longer in the consultation."""

    LEFT = "left"  # sent `leave` (or `end` while other professionals stay)
    REMOVED = "removed"  # a professional removed them
    TIMEOUT = "timeout"  # socket dropped and the grace period passed without `resume`
    CLOSED = "closed"  # the server closed their socket (rate limit, malformed data)
    REJOINED = "rejoined"  # they joined afresh while their old session was in grace


class EndReason(StrEnum):
    """Why the consultation ended."""

    ENDED_BY_PROFESSIONAL = "ended_by_professional"


def _meta(
    *,
    key: str | None = None,
    max_len: int | None = None,
    pattern: re.Pattern[str] | None = None,
    minimum: int | None = None,
    maximum: int | None = None,
    max_items: int | None = None,
) -> dict[str, Any]:
    """Field metadata read by the codec: JSON key and validation caps."""
    out: dict[str, Any] = {}
    for name, value in (
        ("json", key),
        ("max_len", max_len),
        ("pattern", pattern),
        ("minimum", minimum),
        ("maximum", maximum),
        ("max_items", max_items),
    ):
        if value is not None:
            out[name] = value
    return out


_ID = _meta(max_len=MAX_ID_CHARS, pattern=ID_PATTERN)
_SDP = _meta(max_len=MAX_SDP_CHARS)


# --- Shared structures ---------------------------------------------------------------------


@dataclass(frozen=True)
class ConsentRecord:
    """A participant's answer to one consent question, with the time it was given."""

    granted: bool
    at: float


@dataclass(frozen=True)
class ParticipantInfo:
    """What other participants see of someone: no identifiers beyond the room-scoped id."""

    participant_id: str = field(metadata=_ID)
    role: Role
    display_name: str = field(metadata=_meta(max_len=MAX_NAME_CHARS))
    is_professional: bool
    audio: bool = True
    video: bool = True
    connected: bool = True
    video_consent: ConsentRecord | None = None
    recording_consent: ConsentRecord | None = None


# --- Client → server -----------------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    """First message on a socket: the protocol version the client speaks."""

    TYPE: ClassVar[str] = "hello"
    protocol: int = field(metadata=_meta(minimum=0, maximum=1_000_000))


@dataclass(frozen=True)
class Join:
    """Enter the consultation: professionals join the call, others the waiting room."""

    TYPE: ClassVar[str] = "join"


@dataclass(frozen=True)
class Offer:
    """An SDP offer for participant ``to`` (RFC 8829 JSEP)."""

    TYPE: ClassVar[str] = "offer"
    to: str = field(metadata=_ID)
    sdp: str = field(metadata=_SDP)


@dataclass(frozen=True)
class Answer:
    """An SDP answer for participant ``to``."""

    TYPE: ClassVar[str] = "answer"
    to: str = field(metadata=_ID)
    sdp: str = field(metadata=_SDP)


@dataclass(frozen=True)
class Candidate:
    """A trickled ICE candidate for ``to`` (RFC 8838); ``candidate == ""`` marks the end of
    candidates, as ``RTCIceCandidate.toJSON()`` gives it."""

    TYPE: ClassVar[str] = "candidate"
    to: str = field(metadata=_ID)
    candidate: str = field(metadata=_meta(max_len=MAX_CANDIDATE_CHARS))
    sdp_mid: str | None = field(default=None, metadata=_meta(key="sdpMid", max_len=64))
    sdp_mline_index: int | None = field(
        default=None, metadata=_meta(key="sdpMLineIndex", minimum=0, maximum=1023)
    )
    username_fragment: str | None = field(
        default=None, metadata=_meta(key="usernameFragment", max_len=256)
    )


@dataclass(frozen=True)
class Leave:
    """Leave the consultation (the socket is then closed with 1000)."""

    TYPE: ClassVar[str] = "leave"


@dataclass(frozen=True)
class MediaState:
    """Microphone (``audio``) and camera (``video``) on or off."""

    TYPE: ClassVar[str] = "media_state"
    audio: bool
    video: bool


@dataclass(frozen=True)
class Chat:
    """An in-call chat line for everyone admitted."""

    TYPE: ClassVar[str] = "chat"
    text: str = field(metadata=_meta(max_len=MAX_CHAT_CHARS))


@dataclass(frozen=True)
class Ping:
    """Keep-alive; ``ref`` is echoed in ``pong``."""

    TYPE: ClassVar[str] = "ping"
    ref: int | None = field(default=None, metadata=_meta(minimum=0, maximum=2**53))


@dataclass(frozen=True)
class Consent:
    """Grant or revoke consent to video or to recording; timestamped by the server."""

    TYPE: ClassVar[str] = "consent"
    kind: ConsentKind
    granted: bool


@dataclass(frozen=True)
class Admit:
    """(Professional) admit a participant from the waiting room."""

    TYPE: ClassVar[str] = "admit"
    participant_id: str = field(metadata=_ID)


@dataclass(frozen=True)
class Remove:
    """(Professional) remove a participant, admitted or waiting."""

    TYPE: ClassVar[str] = "remove"
    participant_id: str = field(metadata=_ID)


@dataclass(frozen=True)
class End:
    """(Professional) end the consultation; it ends for all when sent by the last
    professional, otherwise the sender just leaves."""

    TYPE: ClassVar[str] = "end"


@dataclass(frozen=True)
class Resume:
    """Take back one's place after a dropped socket, with the token from ``joined``/
    ``waiting``, within the grace period."""

    TYPE: ClassVar[str] = "resume"
    token: str = field(metadata=_meta(max_len=128, pattern=TOKEN_PATTERN))


@dataclass(frozen=True)
class RefreshTurn:
    """Ask for fresh TURN credentials before the current ones expire (long calls)."""

    TYPE: ClassVar[str] = "refresh_turn"


@dataclass(frozen=True)
class Record:
    """(Professional) ask for the call to be recorded, or stop asking. Recording runs only
    while every admitted participant has consented to it."""

    TYPE: ClassVar[str] = "record"
    enabled: bool


ClientMessage: TypeAlias = (
    Hello
    | Join
    | Offer
    | Answer
    | Candidate
    | Leave
    | MediaState
    | Chat
    | Ping
    | Consent
    | Admit
    | Remove
    | End
    | Resume
    | RefreshTurn
    | Record
)

# --- Server → client -----------------------------------------------------------------------


@dataclass(frozen=True)
class Welcome:
    """Answer to ``hello``: the protocol version in use and the frame size limit."""

    TYPE: ClassVar[str] = "welcome"
    protocol: int
    max_message_bytes: int


@dataclass(frozen=True)
class Joined:
    """You are in the call. ``participants`` are the *other* admitted participants."""

    TYPE: ClassVar[str] = "joined"
    you: ParticipantInfo
    participants: tuple[ParticipantInfo, ...] = field(metadata=_meta(max_items=256))
    permissions: tuple[Permission, ...] = field(metadata=_meta(max_items=16))
    rtc_configuration: RtcConfiguration = field(metadata=_meta(key="rtcConfiguration"))
    resume_token: str = field(metadata=_meta(max_len=128, pattern=TOKEN_PATTERN))
    grace_seconds: float
    recording: bool
    resumed: bool = False
    turn_expires_at: int | None = None
    """When the TURN credentials expire (``None``: no TURN server configured)."""


@dataclass(frozen=True)
class Waiting:
    """You are in the waiting room; ``host_present``: a professional is connected."""

    TYPE: ClassVar[str] = "waiting"
    you: ParticipantInfo
    resume_token: str = field(metadata=_meta(max_len=128, pattern=TOKEN_PATTERN))
    grace_seconds: float
    host_present: bool
    resumed: bool = False


@dataclass(frozen=True)
class Admitted:
    """A professional (``by``) admitted you: the same state ``joined`` gives."""

    TYPE: ClassVar[str] = "admitted"
    by: str = field(metadata=_ID)
    participants: tuple[ParticipantInfo, ...] = field(metadata=_meta(max_items=256))
    permissions: tuple[Permission, ...] = field(metadata=_meta(max_items=16))
    rtc_configuration: RtcConfiguration = field(metadata=_meta(key="rtcConfiguration"))
    recording: bool
    turn_expires_at: int | None = None


@dataclass(frozen=True)
class ParticipantJoined:
    """Someone entered the call (joined directly, was admitted)."""

    TYPE: ClassVar[str] = "participant_joined"
    participant: ParticipantInfo


@dataclass(frozen=True)
class ParticipantLeft:
    """Someone is no longer in the call."""

    TYPE: ClassVar[str] = "participant_left"
    participant_id: str = field(metadata=_ID)
    reason: LeaveReason


@dataclass(frozen=True)
class WaitingList:
    """(To professionals) who is in the waiting room, in arrival order."""

    TYPE: ClassVar[str] = "waiting_list"
    waiting: tuple[ParticipantInfo, ...] = field(metadata=_meta(max_items=256))


@dataclass(frozen=True)
class Removed:
    """You were removed by professional ``by``; the socket is then closed with 4003."""

    TYPE: ClassVar[str] = "removed"
    by: str = field(metadata=_ID)


@dataclass(frozen=True)
class RelayedOffer:
    """An offer from participant ``from``."""

    TYPE: ClassVar[str] = "offer"
    sender: str = field(metadata=_meta(key="from", max_len=MAX_ID_CHARS, pattern=ID_PATTERN))
    sdp: str = field(metadata=_SDP)


@dataclass(frozen=True)
class RelayedAnswer:
    """An answer from participant ``from``."""

    TYPE: ClassVar[str] = "answer"
    sender: str = field(metadata=_meta(key="from", max_len=MAX_ID_CHARS, pattern=ID_PATTERN))
    sdp: str = field(metadata=_SDP)


@dataclass(frozen=True)
class RelayedCandidate:
    """An ICE candidate from participant ``from``."""

    TYPE: ClassVar[str] = "candidate"
    sender: str = field(metadata=_meta(key="from", max_len=MAX_ID_CHARS, pattern=ID_PATTERN))
    candidate: str = field(metadata=_meta(max_len=MAX_CANDIDATE_CHARS))
    sdp_mid: str | None = field(default=None, metadata=_meta(key="sdpMid", max_len=64))
    sdp_mline_index: int | None = field(
        default=None, metadata=_meta(key="sdpMLineIndex", minimum=0, maximum=1023)
    )
    username_fragment: str | None = field(
        default=None, metadata=_meta(key="usernameFragment", max_len=256)
    )


@dataclass(frozen=True)
class RelayedMediaState:
    """Participant ``from`` turned their microphone/camera on or off."""

    TYPE: ClassVar[str] = "media_state"
    sender: str = field(metadata=_meta(key="from", max_len=MAX_ID_CHARS, pattern=ID_PATTERN))
    audio: bool
    video: bool


@dataclass(frozen=True)
class RelayedChat:
    """A chat line from ``from``, stamped by the server (sent to the author too, so every
    page shows the same order)."""

    TYPE: ClassVar[str] = "chat"
    sender: str = field(metadata=_meta(key="from", max_len=MAX_ID_CHARS, pattern=ID_PATTERN))
    text: str = field(metadata=_meta(max_len=MAX_CHAT_CHARS))
    at: float


@dataclass(frozen=True)
class Pong:
    """Answer to ``ping``."""

    TYPE: ClassVar[str] = "pong"
    ref: int | None = None


@dataclass(frozen=True)
class ErrorReply:
    """A refused message: ``code`` (stable, machine), ``message`` (English, for developers),
    ``human`` (optional French text for the page)."""

    TYPE: ClassVar[str] = "error"
    code: str = field(metadata=_meta(max_len=64))
    message: str = field(metadata=_meta(max_len=500))
    human: str | None = field(default=None, metadata=_meta(max_len=500))


@dataclass(frozen=True)
class HostReconnecting:
    """A professional's socket dropped; they have until ``until`` to come back. Waiting
    patients stay in the waiting room."""

    TYPE: ClassVar[str] = "host_reconnecting"
    participant_id: str = field(metadata=_ID)
    until: float


@dataclass(frozen=True)
class HostReturned:
    """The professional who was reconnecting is back."""

    TYPE: ClassVar[str] = "host_returned"
    participant_id: str = field(metadata=_ID)


@dataclass(frozen=True)
class IceRestart:
    """Participant ``participant_id`` resumed on a new socket: keep the peer connection and
    expect a new offer (ICE restart, RFC 8445 §9) from them."""

    TYPE: ClassVar[str] = "ice_restart"
    participant_id: str = field(metadata=_ID)


@dataclass(frozen=True)
class ConsentState:
    """A participant's current consents (``None``: not answered yet)."""

    TYPE: ClassVar[str] = "consent_state"
    participant_id: str = field(metadata=_ID)
    video: ConsentRecord | None = None
    recording: ConsentRecord | None = None


@dataclass(frozen=True)
class RecordingState:
    """Whether recording is asked for, whether it runs, and whose consent is missing."""

    TYPE: ClassVar[str] = "recording_state"
    requested: bool
    active: bool
    missing_consent: tuple[str, ...] = field(default=(), metadata=_meta(max_items=256))


@dataclass(frozen=True)
class Ended:
    """The consultation is over for everyone; the socket is then closed with 1000."""

    TYPE: ClassVar[str] = "ended"
    reason: EndReason
    by: str | None = field(default=None, metadata=_ID)


@dataclass(frozen=True)
class TurnCredentials:
    """Fresh ``rtcConfiguration`` (answer to ``refresh_turn``); apply it with
    ``pc.setConfiguration``."""

    TYPE: ClassVar[str] = "turn_credentials"
    rtc_configuration: RtcConfiguration = field(metadata=_meta(key="rtcConfiguration"))
    expires_at: int | None = None


ServerMessage: TypeAlias = (
    Welcome
    | Joined
    | Waiting
    | Admitted
    | ParticipantJoined
    | ParticipantLeft
    | WaitingList
    | Removed
    | RelayedOffer
    | RelayedAnswer
    | RelayedCandidate
    | RelayedMediaState
    | RelayedChat
    | Pong
    | ErrorReply
    | HostReconnecting
    | HostReturned
    | IceRestart
    | ConsentState
    | RecordingState
    | Ended
    | TurnCredentials
)

CLIENT_MESSAGE_TYPES: Final[Mapping[str, type[ClientMessage]]] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        Join,
        Offer,
        Answer,
        Candidate,
        Leave,
        MediaState,
        Chat,
        Ping,
        Consent,
        Admit,
        Remove,
        End,
        Resume,
        RefreshTurn,
        Record,
    )
}
SERVER_MESSAGE_TYPES: Final[Mapping[str, type[ServerMessage]]] = {
    cls.TYPE: cls
    for cls in (
        Welcome,
        Joined,
        Waiting,
        Admitted,
        ParticipantJoined,
        ParticipantLeft,
        WaitingList,
        Removed,
        RelayedOffer,
        RelayedAnswer,
        RelayedCandidate,
        RelayedMediaState,
        RelayedChat,
        Pong,
        ErrorReply,
        HostReconnecting,
        HostReturned,
        IceRestart,
        ConsentState,
        RecordingState,
        Ended,
        TurnCredentials,
    )
}

# Every frame of a call builds messages (the parsed one, then the relayed one): the plain
# dataclass __init__ of a frozen class is most of that cost (see signaling.frozen).
for _message_class in (
    ConsentRecord,
    ParticipantInfo,
    *CLIENT_MESSAGE_TYPES.values(),
    *SERVER_MESSAGE_TYPES.values(),
):
    quick_init(_message_class)

# --- Codec ---------------------------------------------------------------------------------
#
# Every frame of a call goes through here twice (the sender's message parsed, the relayed one
# serialised), so the per-class work is done once: each dataclass gets a decoder and, when its
# fields are all scalars, a JSON text encoder, generated as straight-line Python from its
# fields (as ``dataclasses`` generates ``__init__``). Field validators stay small closures
# shared by every class.
#
# The JSON text itself is read and written by orjson (Rust; several times faster than the
# stdlib on SDP-sized strings), with the stdlib as the reference: orjson differs from it at
# the edges (integers past 64 bits become floats, NaN/Infinity/1e400/lone "\ud800" escapes
# and nesting past 1,024 levels are refused, floats are written "1e-7" not "1e-07"), so
# whatever orjson refuses or cannot decode cleanly is done again by the stdlib path, and its
# answer (value or exact error) is the one given. Decoding an accepted frame gives the same
# message either way: the tests compare both paths.

_Decoder: TypeAlias = Callable[[Any, str], Any]
_Encoder: TypeAlias = Callable[[Any], Any]
_ObjectDecoder: TypeAlias = Callable[[dict[str, Any], str], Any]
_TextEncoder: TypeAlias = Callable[[Any], str]


class _Scalar(StrEnum):
    """How a scalar field is written as JSON text (``None``: a structured field)."""

    STR = "str"
    BOOL = "bool"
    INT = "int"
    FLOAT = "float"
    ENUM = "enum"


@dataclass(frozen=True)
class _FieldPlan:
    name: str
    key: str
    required: bool
    default: Any
    decode: _Decoder
    encode: _Encoder
    scalar: _Scalar | None
    meta: Mapping[str, Any]


def _decode_str(meta: Mapping[str, Any]) -> _Decoder:
    max_len: int | None = meta.get("max_len")
    pattern: re.Pattern[str] | None = meta.get("pattern")

    def decode(value: Any, where: str) -> Any:
        if not isinstance(value, str):
            raise InvalidField(where, "must be a string")
        if max_len is not None and len(value) > max_len:
            raise FieldTooLarge(where, f"exceeds {max_len} characters")
        if pattern is not None and not pattern.fullmatch(value):
            raise InvalidField(where, f"must match {pattern.pattern}")
        if not value.isascii():
            # JSON "\ud800" escapes decode to lone surrogates, which cannot be encoded as
            # UTF-8 (RFC 8259 §8.2): relaying one would make every recipient's send fail.
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidField(where, "must be valid Unicode text") from None
        return value

    return decode


def _decode_int(meta: Mapping[str, Any]) -> _Decoder:
    minimum: int | None = meta.get("minimum")
    maximum: int | None = meta.get("maximum")

    def decode(value: Any, where: str) -> Any:
        # bool is an int subclass in Python, but `true` is not a number in JSON.
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidField(where, "must be an integer")
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise InvalidField(where, f"must be between {minimum} and {maximum}")
        return value

    return decode


def _decode_float(value: Any, where: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidField(where, "must be a number")
    # json.loads turns 1e400 into inf; RFC 8259 §6 numbers are finite.
    if not math.isfinite(value):
        raise InvalidField(where, "must be finite")
    return float(value)


def _decode_bool(value: Any, where: str) -> Any:
    if not isinstance(value, bool):
        raise InvalidField(where, "must be true or false")
    return value


def _decode_enum(enum_type: type[StrEnum]) -> _Decoder:
    allowed = {member.value: member for member in enum_type}
    choices = ", ".join(sorted(allowed))

    def decode(value: Any, where: str) -> Any:
        member = allowed.get(value) if isinstance(value, str) else None
        if member is None:
            raise InvalidField(where, f"must be one of: {choices}")
        return member

    return decode


def _codec_for(tp: Any, meta: Mapping[str, Any]) -> tuple[_Decoder, _Encoder, _Scalar | None]:
    """Decoder, encoder and scalar kind for one annotated type."""
    origin = get_origin(tp)
    if origin is Union or origin is types.UnionType:
        # `X | None`: None never reaches a field codec (an absent or null field takes the
        # default in the object decoder, a None field is omitted by the encoders).
        (inner,) = [arg for arg in get_args(tp) if arg is not type(None)]
        return _codec_for(inner, meta)
    if origin is tuple:
        item_type, _ellipsis = get_args(tp)
        item_decode, item_encode, _scalar = _codec_for(item_type, meta)
        max_items: int = meta.get("max_items", 64)

        def decode_tuple(value: Any, where: str) -> Any:
            if not isinstance(value, list):
                raise InvalidField(where, "must be an array")
            if len(value) > max_items:
                raise FieldTooLarge(where, f"has more than {max_items} items")
            return tuple(item_decode(item, f"{where}[{i}]") for i, item in enumerate(value))

        return decode_tuple, lambda value: [item_encode(item) for item in value], None
    if tp is str:
        return _decode_str(meta), _identity, _Scalar.STR
    if tp is bool:
        return _decode_bool, _identity, _Scalar.BOOL
    if tp is int:
        return _decode_int(meta), _identity, _Scalar.INT
    if tp is float:
        return _decode_float, _identity, _Scalar.FLOAT
    if isinstance(tp, type) and issubclass(tp, StrEnum):
        return _decode_enum(tp), _enum_value, _Scalar.ENUM
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        nested: type[Any] = tp
        return (
            lambda value, where: _decode_object(nested, value, f"{where}."),
            _encode_object,
            None,
        )
    raise TypeError(f"no codec for {tp!r}")  # pragma: no cover - programming error


def _identity(value: Any) -> Any:
    return value


def _enum_value(value: Any) -> Any:
    return value.value


_PLANS: dict[type[Any], tuple[_FieldPlan, ...]] = {}


def _plan(cls: type[Any]) -> tuple[_FieldPlan, ...]:
    """How to read and write each field of a message dataclass (computed once per class)."""
    plans = _PLANS.get(cls)
    if plans is None:
        plans = _PLANS[cls] = _make_plan(cls)
    return plans


def _make_plan(cls: type[Any]) -> tuple[_FieldPlan, ...]:
    hints = get_type_hints(cls)
    plans = []
    for f in dataclasses.fields(cls):
        if not f.init or f.kw_only or f.default_factory is not dataclasses.MISSING:
            # The generated decoder passes every field positionally, defaults as constants.
            raise TypeError(f"{cls.__name__}.{f.name}: unsupported field")  # pragma: no cover
        decode, encode, scalar = _codec_for(hints[f.name], f.metadata)
        plans.append(
            _FieldPlan(
                name=f.name,
                key=f.metadata.get("json", f.name),
                required=f.default is dataclasses.MISSING,
                default=None if f.default is dataclasses.MISSING else f.default,
                decode=decode,
                encode=encode,
                scalar=scalar,
                meta=f.metadata,
            )
        )
    return tuple(plans)


def _compile(source: str, name: str, namespace: dict[str, Any]) -> Any:
    """Define function ``name`` from generated ``source`` (built from our own dataclass fields
    only: keys and constants are embedded with ``repr``, values are passed in ``namespace``)."""
    exec(source, namespace)  # noqa: S102 - see the docstring: no outside input in the source
    return namespace[name]


_OBJECT_DECODERS: dict[type[Any], _ObjectDecoder] = {}


def _valid_as_is(plan: _FieldPlan, i: int, namespace: dict[str, Any]) -> str | None:
    """A Python test that ``raw`` is a value the field's decoder would return unchanged (a
    subset of what it accepts), so the common case skips the call; anything else goes to the
    decoder, which returns it or raises the precise error."""
    meta = plan.meta
    if plan.scalar is _Scalar.STR:
        # ASCII text is valid UTF-8, so the decoder's surrogate check cannot fail on it.
        test = "type(raw) is str and raw.isascii()"
        if "max_len" in meta:
            test += f" and len(raw) <= {int(meta['max_len'])}"
        if "pattern" in meta:
            namespace[f"pattern_{i}"] = meta["pattern"]
            test += f" and pattern_{i}.fullmatch(raw) is not None"
        return test
    if plan.scalar is _Scalar.INT:
        test = "type(raw) is int"
        if "minimum" in meta:
            test += f" and raw >= {int(meta['minimum'])}"
        if "maximum" in meta:
            test += f" and raw <= {int(meta['maximum'])}"
        return test
    if plan.scalar is _Scalar.BOOL:
        return "raw is True or raw is False"
    return None


def _object_decoder(cls: type[Any]) -> _ObjectDecoder:
    """``decode(obj, prefix)`` for a JSON object already known to be a dict: each field in
    declaration order (so the first bad field is the one reported), then ``cls(...)``."""
    decoder = _OBJECT_DECODERS.get(cls)
    if decoder is not None:
        return decoder
    namespace: dict[str, Any] = {"cls": cls, "MissingField": MissingField}
    lines = ["def decode(obj, prefix):"]
    for i, plan in enumerate(_plan(cls)):
        namespace[f"decode_{i}"] = plan.decode
        key = repr(plan.key)
        lines.append(f"    raw = obj.get({key})")
        # Absent and null are the same for optional fields (null ones are omitted).
        if plan.required:
            lines.append("    if raw is None:")
            lines.append(f"        raise MissingField(prefix + {key})")
        else:
            namespace[f"default_{i}"] = plan.default
            lines.append("    if raw is None:")
            lines.append(f"        raw = default_{i}")
        test = _valid_as_is(plan, i, namespace)
        if test is None:
            call = f"decode_{i}(raw, prefix + {key})"
        else:
            call = f"raw if {test} else decode_{i}(raw, prefix + {key})"
        if plan.required:
            lines.append(f"    v{i} = {call}")
        else:
            lines.append("    else:")
            lines.append(f"        raw = {call}")
            lines.append(f"    v{i} = raw")
    lines.append(f"    return cls({', '.join(f'v{i}' for i in range(len(_plan(cls))))})")
    compiled: _ObjectDecoder = _compile("\n".join(lines), "decode", namespace)
    _OBJECT_DECODERS[cls] = compiled
    return compiled


def _decode_object(cls: type[Any], value: Any, prefix: str) -> Any:
    if not isinstance(value, dict):
        raise InvalidField(prefix.rstrip(".") or "message", "must be a JSON object")
    return _object_decoder(cls)(value, prefix)


def _encode_object(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for plan in _plan(type(obj)):
        value = getattr(obj, plan.name)
        if value is not None:
            out[plan.key] = plan.encode(value)
    return out


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN/Infinity; RFC 8259 JSON does not.
    raise ValueError(f"{name} is not JSON")


# One decoder and one encoder for the process: json.loads/json.dumps build a new one on each
# call as soon as an option is given.
_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant)
# The C scanner JSONDecoder.decode calls (set in JSONDecoder.__init__, not in typeshed).
_SCAN: Final[Callable[[str, int], tuple[Any, int]]] = _DECODER.scan_once  # type: ignore[attr-defined]
_ENCODER: Final = json.JSONEncoder(
    ensure_ascii=False,
    separators=(",", ":"),
    check_circular=False,  # encoded dicts are built fresh from acyclic dataclasses
)

# JSON text of one scalar held in local ``v``: the exact-type fast path writes what the
# encoder would (json.encoder's string escaping, int/float repr), anything else goes through
# the encoder itself, so the output is json.dumps's in every case.
_SCALAR_TEXT: Final[Mapping[_Scalar, str]] = {
    _Scalar.STR: "(escape(v) if type(v) is str else encode(v))",
    _Scalar.ENUM: "encode(v.value)",
    _Scalar.BOOL: "('true' if v is True else 'false' if v is False else encode(v))",
    _Scalar.INT: "(int_repr(v) if type(v) is int else encode(v))",
    _Scalar.FLOAT: "(float_repr(v) if type(v) is float and isfinite(v) else encode(v))",
}


def _text_encoder(cls: type[Any]) -> _TextEncoder:
    """``serialize`` for one message class: straight-line string building when every field
    is a scalar, else the JSON encoder over ``to_json_object``."""
    plans = _plan(cls)
    if any(plan.scalar is None for plan in plans):
        return lambda message: _ENCODER.encode(to_json_object(message))
    namespace: dict[str, Any] = {
        "escape": encode_basestring,
        "encode": _ENCODER.encode,
        "int_repr": int.__repr__,
        "float_repr": float.__repr__,
        "isfinite": math.isfinite,
    }
    head = '{"type":' + encode_basestring(cls.TYPE)
    lines = ["def to_text(message):", f"    text = {head!r}"]
    for plan in plans:
        assert plan.scalar is not None
        prefix = "," + encode_basestring(plan.key) + ":"
        lines.append(f"    v = message.{plan.name}")
        lines.append("    if v is not None:")  # null fields are omitted, as in to_json_object
        lines.append(f"        text += {prefix!r} + {_SCALAR_TEXT[plan.scalar]}")
    lines.append("    return text + '}'")
    reference: _TextEncoder = _compile("\n".join(lines), "to_text", namespace)
    if any(plan.scalar is _Scalar.FLOAT for plan in plans):
        return reference  # orjson writes some floats differently ("1e-7"): keep json's text
    return _orjson_encoder(cls, plans, reference)


# Exact-type test for one field value held in local ``v{i}``, for the orjson path (anything
# else, a str subclass or a wrong type, is left to the reference encoder).
_ORJSON_TEST: Final[Mapping[_Scalar, str]] = {
    _Scalar.STR: "type(v{i}) is str",
    _Scalar.ENUM: "type(v{i}) is enum_{i}",
    _Scalar.BOOL: "(v{i} is True or v{i} is False)",
    _Scalar.INT: "type(v{i}) is int",
}


def _orjson_encoder(
    cls: type[Any], plans: tuple[_FieldPlan, ...], reference: _TextEncoder
) -> _TextEncoder:
    """``serialize`` through orjson for a class of str/bool/int/enum fields: the same text as
    ``reference`` (same key order, same string escaping, checked over every code point by
    the tests). Values orjson refuses (lone surrogates, ints past 64 bits) and values of an
    unexpected type go to ``reference``, which writes what json.dumps writes."""
    namespace: dict[str, Any] = {
        "dumps": orjson.dumps,
        "EncodeError": orjson.JSONEncodeError,
        "reference": reference,
    }
    lines = ["def to_text(message):"]
    tests = []
    for i, plan in enumerate(plans):
        assert plan.scalar is not None
        lines.append(f"    v{i} = message.{plan.name}")
        tests.append(f"(v{i} is None or {_ORJSON_TEST[plan.scalar].format(i=i)})")
        if plan.scalar is _Scalar.ENUM:
            hint = get_type_hints(cls)[plan.name]
            (namespace[f"enum_{i}"],) = [
                t for t in get_args(hint) or (hint,) if t is not type(None)
            ]
    lines.append(f"    if {' and '.join(tests) or 'True'}:")
    lines.append(f"        obj = {{'type': {cls.TYPE!r}}}")
    for i, plan in enumerate(plans):
        value = f"v{i}.value" if plan.scalar is _Scalar.ENUM else f"v{i}"
        lines.append(f"        if v{i} is not None:")  # null fields are omitted
        lines.append(f"            obj[{plan.key!r}] = {value}")
    lines.append("        try:")
    lines.append("            return dumps(obj).decode()")
    lines.append("        except EncodeError:")
    lines.append("            pass")
    lines.append("    return reference(message)")
    encoder: _TextEncoder = _compile("\n".join(lines), "to_text", namespace)
    return encoder


def _check_size(raw: str | bytes, max_bytes: int) -> None:
    # A str's UTF-8 length is at least its character count and at most four times it:
    # measure exactly only when the cheap bounds do not decide.
    if isinstance(raw, bytes) or len(raw) > max_bytes:
        size = len(raw)
    elif len(raw) * 4 <= max_bytes:
        size = 0
    else:
        size = len(raw.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise MessageTooBig(f"message of {size} bytes exceeds the {max_bytes}-byte limit")


def _load(raw: str | bytes) -> tuple[str, dict[str, Any]]:
    """The reference reading of a frame (stdlib json): its errors are the protocol's."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        try:
            # The scanner alone, for the usual frame without surrounding whitespace;
            # anything else gets JSONDecoder.decode's own handling and errors.
            obj, end = _SCAN(text, 0)
        except StopIteration:
            end = -1
        if end != len(text):
            obj = _DECODER.decode(text)
    except UnicodeDecodeError as exc:
        raise MalformedMessage("message is not valid UTF-8") from exc
    except (ValueError, RecursionError) as exc:
        raise MalformedMessage("message is not valid JSON") from exc
    if not isinstance(obj, dict):
        raise MalformedMessage("message is not a JSON object")
    kind = obj.get("type")
    if kind is None:
        raise MissingField("type")
    if not isinstance(kind, str):
        raise InvalidField("type", "must be a string")
    return kind, obj


def _decode_exact(raw: str | bytes, decoders: Mapping[str, _ObjectDecoder]) -> Any:
    """A frame through the reference reading: the message, or the protocol's exact error."""
    kind, obj = _load(raw)
    decode = decoders.get(kind)
    if decode is None:
        # Echoed in the error reply: a lone surrogate ("\ud800") would make that reply
        # impossible to send as UTF-8, so it is shown escaped.
        shown = kind[:40].encode("utf-8", "backslashreplace").decode("utf-8")
        raise UnknownMessageType(f"unknown message type '{shown}'")
    return decode(obj, "")


_FastDecoder: TypeAlias = tuple[_ObjectDecoder, frozenset[str]]
"""A message type's object decoder and its JSON keys (``type`` included)."""


def _decode(
    raw: str | bytes,
    max_bytes: int,
    fast: Mapping[str, _FastDecoder],
    decoders: Mapping[str, _ObjectDecoder],
) -> Any:
    """A frame read by orjson and decoded by ``fast`` (the message types whose fields are
    all scalars). Anything short of a clean decode is done again by ``_decode_exact``, whose
    answer is given: orjson refuses the text, not an object, a type not in ``fast``, a field
    refused (perhaps an integer past 64 bits that orjson made a float), or an array or object
    value (only unknown keys can hold one: a scalar field refuses them; the stdlib's nesting
    limit is its own)."""
    if type(raw) is not str or len(raw) * 4 > max_bytes:  # _check_size's cheap bound inline
        _check_size(raw, max_bytes)
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    else:
        if type(obj) is dict:
            kind = obj.get("type")
            entry = fast.get(kind) if type(kind) is str else None
            if entry is not None:
                decode, keys = entry
                # Only keys of the type's own: no array or object can hide in an unknown
                # key, and the value scan is skipped (the usual frame).
                if keys.issuperset(obj) or not any(
                    type(value) is dict or type(value) is list for value in obj.values()
                ):
                    try:
                        return decode(obj, "")
                    except SignalingError:
                        pass
    return _decode_exact(raw, decoders)


_CLIENT_DECODERS: Final[Mapping[str, _ObjectDecoder]] = {
    name: _object_decoder(cls) for name, cls in CLIENT_MESSAGE_TYPES.items()
}
_SERVER_DECODERS: Final[Mapping[str, _ObjectDecoder]] = {
    name: _object_decoder(cls) for name, cls in SERVER_MESSAGE_TYPES.items()
}
_FAST_CLIENT_DECODERS: Final[Mapping[str, _FastDecoder]] = {
    name: (_CLIENT_DECODERS[name], frozenset({"type", *(plan.key for plan in _plan(cls))}))
    for name, cls in CLIENT_MESSAGE_TYPES.items()
    if all(plan.scalar is not None for plan in _plan(cls))
}
_FAST_SERVER_DECODERS: Final[Mapping[str, _FastDecoder]] = {
    name: (_SERVER_DECODERS[name], frozenset({"type", *(plan.key for plan in _plan(cls))}))
    for name, cls in SERVER_MESSAGE_TYPES.items()
    if all(plan.scalar is not None for plan in _plan(cls))
}
_TEXT_ENCODERS: Final[Mapping[type[Any], _TextEncoder]] = {
    cls: _text_encoder(cls)
    for cls in (*CLIENT_MESSAGE_TYPES.values(), *SERVER_MESSAGE_TYPES.values())
}


def parse_client_message(
    raw: str | bytes, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> ClientMessage:
    """Parse one client frame.

    Raises (each carrying its WebSocket answer, see ``signaling.errors``):
    ``MessageTooBig`` (close 1009), ``MalformedMessage`` (not UTF-8/JSON/object, close 1007),
    ``UnknownMessageType``, ``MissingField``, ``InvalidField``, ``FieldTooLarge`` (replies).
    """
    message: ClientMessage = _decode(raw, max_bytes, _FAST_CLIENT_DECODERS, _CLIENT_DECODERS)
    return message


def parse_server_message(
    raw: str | bytes, *, max_bytes: int = 4 * DEFAULT_MAX_MESSAGE_BYTES
) -> ServerMessage:
    """Parse one server frame (for test clients and the aiortc peer); same errors as
    ``parse_client_message``."""
    message: ServerMessage = _decode(raw, max_bytes, _FAST_SERVER_DECODERS, _SERVER_DECODERS)
    return message


def to_json_object(message: ClientMessage | ServerMessage) -> dict[str, Any]:
    """The message as a JSON-ready dict, ``type`` first."""
    return {"type": message.TYPE, **_encode_object(message)}


def serialize(message: ClientMessage | ServerMessage) -> str:
    """The message as one compact JSON text frame (UTF-8 kept as is, not ``\\u``-escaped)."""
    to_text = _TEXT_ENCODERS.get(type(message))
    if to_text is None:  # pragma: no cover - every message class has one
        return _ENCODER.encode(to_json_object(message))
    return to_text(message)


# --- JSON Schema (for the protocol page / OpenAPI components) ------------------------------


def _schema_for(tp: Any, meta: Mapping[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    origin = get_origin(tp)
    if origin is Union or origin is types.UnionType:
        (inner,) = [arg for arg in get_args(tp) if arg is not type(None)]
        return _schema_for(inner, meta, defs)
    if origin is tuple:
        return {
            "type": "array",
            "items": _schema_for(get_args(tp)[0], meta, defs),
            "maxItems": meta.get("max_items", 64),
        }
    if tp is str:
        out: dict[str, Any] = {"type": "string"}
        if "max_len" in meta:
            out["maxLength"] = meta["max_len"]
        if "pattern" in meta:
            out["pattern"] = f"^{meta['pattern'].pattern}$"
        return out
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        out = {"type": "integer"}
        if "minimum" in meta:
            out["minimum"] = meta["minimum"]
        if "maximum" in meta:
            out["maximum"] = meta["maximum"]
        return out
    if tp is float:
        return {"type": "number"}
    if isinstance(tp, type) and issubclass(tp, StrEnum):
        return {"type": "string", "enum": [member.value for member in tp]}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if tp.__name__ not in defs:
            defs[tp.__name__] = {}  # placeholder against recursion
            defs[tp.__name__] = _object_schema(tp, defs, type_name=None)
        return {"$ref": f"#/$defs/{tp.__name__}"}
    raise TypeError(f"no schema for {tp!r}")  # pragma: no cover - programming error


def _object_schema(cls: type[Any], defs: dict[str, Any], type_name: str | None) -> dict[str, Any]:
    hints = get_type_hints(cls)
    properties: dict[str, Any] = {}
    required: list[str] = []
    if type_name is not None:
        properties["type"] = {"const": type_name}
        required.append("type")
    for plan, f in zip(_plan(cls), dataclasses.fields(cls), strict=True):
        properties[plan.key] = _schema_for(hints[f.name], f.metadata, defs)
        if plan.required:
            required.append(plan.key)
    schema: dict[str, Any] = {"type": "object", "properties": properties, "required": required}
    if cls.__doc__:
        schema["description"] = " ".join(cls.__doc__.split())
    return schema


def json_schema() -> dict[str, Any]:
    """JSON Schema (2020-12) of every message, for the protocol documentation/OpenAPI.

    ``client``/``server`` map each ``type`` to its schema; shared structures are in
    ``$defs``.
    """
    defs: dict[str, Any] = {}
    client = {name: _object_schema(cls, defs, name) for name, cls in CLIENT_MESSAGE_TYPES.items()}
    server = {name: _object_schema(cls, defs, name) for name, cls in SERVER_MESSAGE_TYPES.items()}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"Relais Santé teleconsultation signaling, protocol {PROTOCOL_VERSION}",
        "client": client,
        "server": server,
        "$defs": defs,
    }


# IceServer and RtcConfiguration live with the TURN code and are re-exported here.
__all__ = [
    "CLIENT_MESSAGE_TYPES",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "MAX_CANDIDATE_CHARS",
    "MAX_CHAT_CHARS",
    "MAX_SDP_CHARS",
    "PROTOCOL_VERSION",
    "SERVER_MESSAGE_TYPES",
    "SUPPORTED_PROTOCOLS",
    "Admit",
    "Admitted",
    "Answer",
    "Candidate",
    "Chat",
    "ClientMessage",
    "Consent",
    "ConsentKind",
    "ConsentRecord",
    "ConsentState",
    "End",
    "EndReason",
    "Ended",
    "ErrorReply",
    "Hello",
    "HostReconnecting",
    "HostReturned",
    "IceRestart",
    "IceServer",
    "Join",
    "Joined",
    "Leave",
    "LeaveReason",
    "MediaState",
    "Offer",
    "ParticipantInfo",
    "ParticipantJoined",
    "ParticipantLeft",
    "Permission",
    "Ping",
    "Pong",
    "Record",
    "RecordingState",
    "RefreshTurn",
    "RelayedAnswer",
    "RelayedCandidate",
    "RelayedChat",
    "RelayedMediaState",
    "RelayedOffer",
    "Remove",
    "Removed",
    "Resume",
    "Role",
    "RtcConfiguration",
    "ServerMessage",
    "TurnCredentials",
    "Waiting",
    "WaitingList",
    "Welcome",
    "json_schema",
    "parse_client_message",
    "parse_server_message",
    "serialize",
    "to_json_object",
]
