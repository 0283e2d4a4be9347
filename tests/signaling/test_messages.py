"""The signaling protocol: round trips for every message type and the exact parse errors."""

from __future__ import annotations

import json
from typing import Any

import pytest

from signaling.errors import (
    CloseCode,
    FieldTooLarge,
    InvalidField,
    MalformedMessage,
    MessageTooBig,
    MissingField,
    SignalingError,
    UnknownMessageType,
)
from signaling.messages import (
    CLIENT_MESSAGE_TYPES,
    DEFAULT_MAX_MESSAGE_BYTES,
    MAX_CANDIDATE_CHARS,
    MAX_CHAT_CHARS,
    MAX_SDP_CHARS,
    SERVER_MESSAGE_TYPES,
    Admit,
    Admitted,
    Answer,
    Candidate,
    Chat,
    ClientMessage,
    Consent,
    ConsentKind,
    ConsentRecord,
    ConsentState,
    End,
    Ended,
    EndReason,
    ErrorReply,
    Hello,
    HostReconnecting,
    HostReturned,
    IceRestart,
    Join,
    Joined,
    Leave,
    LeaveReason,
    MediaState,
    Offer,
    ParticipantInfo,
    ParticipantJoined,
    ParticipantLeft,
    Permission,
    Ping,
    Pong,
    Record,
    RecordingState,
    RefreshTurn,
    RelayedAnswer,
    RelayedCandidate,
    RelayedChat,
    RelayedMediaState,
    RelayedOffer,
    Remove,
    Removed,
    Resume,
    Role,
    ServerMessage,
    TurnCredentials,
    Waiting,
    WaitingList,
    Welcome,
    json_schema,
    parse_client_message,
    parse_server_message,
    serialize,
)
from signaling.turn import IceServer, RtcConfiguration

SDP = "v=0\r\no=- 4611 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
CANDIDATE = "candidate:842163049 1 udp 1677729535 192.0.2.7 46154 typ srflx raddr 0.0.0.0 rport 0"
RTC = RtcConfiguration(
    ice_servers=(
        IceServer(urls=("stun:turn.example:3478",)),
        IceServer(
            urls=("turn:turn.example:3478?transport=udp", "turns:turn.example:5349"),
            username="1700000600:consult-1:pat-1",
            credential="HI0cJORiYbDovuOwGRIuXdRutlo=",
        ),
    )
)
DOC = ParticipantInfo(
    participant_id="doc-1",
    role=Role.PHYSICIAN,
    display_name="Dr Émilie Martin",
    is_professional=True,
    video_consent=ConsentRecord(granted=True, at=1_700_000_000.5),
)
PAT = ParticipantInfo(
    participant_id="pat-1",
    role=Role.PATIENT,
    display_name="M. Dupont",
    is_professional=False,
    audio=False,
    video=True,
    connected=False,
    recording_consent=ConsentRecord(granted=False, at=1_700_000_001.0),
)

CLIENT_SAMPLES: list[ClientMessage] = [
    Hello(protocol=1),
    Join(),
    Offer(to="pat-1", sdp=SDP),
    Answer(to="doc-1", sdp=SDP),
    Candidate(to="pat-1", candidate=CANDIDATE, sdp_mid="0", sdp_mline_index=0),
    Candidate(to="pat-1", candidate="", username_fragment="a1b2"),
    Leave(),
    MediaState(audio=False, video=True),
    Chat(text="Bonjour, je vous entends bien ? 👍"),
    Ping(ref=42),
    Ping(),
    Consent(kind=ConsentKind.RECORDING, granted=True),
    Consent(kind=ConsentKind.VIDEO, granted=False),
    Admit(participant_id="pat-1"),
    Remove(participant_id="guest_2"),
    End(),
    Resume(token="AbCdEfGhIjKlMnOpQrStUvWx"),
    RefreshTurn(),
    Record(enabled=True),
]

SERVER_SAMPLES: list[ServerMessage] = [
    Welcome(protocol=1, max_message_bytes=65536),
    Joined(
        you=DOC,
        participants=(PAT,),
        permissions=tuple(Permission),
        rtc_configuration=RTC,
        resume_token="AbCdEfGhIjKlMnOpQrStUvWx",
        grace_seconds=30.0,
        recording=False,
        resumed=True,
        turn_expires_at=1_700_000_600,
    ),
    Waiting(
        you=PAT, resume_token="AbCdEfGhIjKlMnOpQrStUvWx", grace_seconds=30.0, host_present=False
    ),
    Admitted(
        by="doc-1",
        participants=(DOC,),
        permissions=(Permission.PUBLISH, Permission.CHAT),
        rtc_configuration=RtcConfiguration(ice_servers=()),
        recording=True,
    ),
    ParticipantJoined(participant=PAT),
    ParticipantLeft(participant_id="pat-1", reason=LeaveReason.TIMEOUT),
    WaitingList(waiting=(PAT,)),
    WaitingList(waiting=()),
    Removed(by="doc-1"),
    RelayedOffer(sender="doc-1", sdp=SDP),
    RelayedAnswer(sender="pat-1", sdp=SDP),
    RelayedCandidate(sender="doc-1", candidate=CANDIDATE, sdp_mid="1", sdp_mline_index=1),
    RelayedMediaState(sender="pat-1", audio=True, video=False),
    RelayedChat(sender="pat-1", text="Merci docteur", at=1_700_000_002.25),
    Pong(ref=42),
    Pong(),
    ErrorReply(
        code="room_full", message="the call is full (6)", human="La consultation est pleine."
    ),
    ErrorReply(code="unknown_peer", message="no admitted participant 'x'"),
    HostReconnecting(participant_id="doc-1", until=1_700_000_030.0),
    HostReturned(participant_id="doc-1"),
    IceRestart(participant_id="pat-1"),
    ConsentState(
        participant_id="pat-1",
        video=ConsentRecord(granted=True, at=1.0),
        recording=ConsentRecord(granted=False, at=2.0),
    ),
    ConsentState(participant_id="pat-1"),
    RecordingState(requested=True, active=False, missing_consent=("pat-1",)),
    Ended(reason=EndReason.ENDED_BY_PROFESSIONAL, by="doc-1"),
    TurnCredentials(rtc_configuration=RTC, expires_at=1_700_000_600),
]


# --- Round trips ----------------------------------------------------------------------------


def test_every_message_type_has_a_round_trip_sample() -> None:
    assert {type(m) for m in CLIENT_SAMPLES} == set(CLIENT_MESSAGE_TYPES.values())
    assert {type(m) for m in SERVER_SAMPLES} == set(SERVER_MESSAGE_TYPES.values())


@pytest.mark.parametrize("message", CLIENT_SAMPLES, ids=lambda m: type(m).__name__)
def test_client_message_round_trip(message: ClientMessage) -> None:
    text = serialize(message)
    assert json.loads(text)["type"] == message.TYPE
    assert parse_client_message(text) == message
    assert parse_client_message(text.encode()) == message


@pytest.mark.parametrize("message", SERVER_SAMPLES, ids=lambda m: type(m).__name__)
def test_server_message_round_trip(message: ServerMessage) -> None:
    text = serialize(message)
    assert json.loads(text)["type"] == message.TYPE
    assert parse_server_message(text) == message


def test_wire_format_uses_browser_names_and_from() -> None:
    joined = json.loads(serialize(SERVER_SAMPLES[1]))
    assert joined["rtcConfiguration"]["iceServers"][1] == {
        "urls": ["turn:turn.example:3478?transport=udp", "turns:turn.example:5349"],
        "username": "1700000600:consult-1:pat-1",
        "credential": "HI0cJORiYbDovuOwGRIuXdRutlo=",
    }
    assert joined["rtcConfiguration"]["iceServers"][0] == {"urls": ["stun:turn.example:3478"]}
    assert joined["permissions"] == ["publish", "chat", "admit", "remove", "end", "record"]
    relayed = json.loads(serialize(RelayedCandidate("doc-1", CANDIDATE, "0", 0)))
    assert relayed == {
        "type": "candidate",
        "from": "doc-1",
        "candidate": CANDIDATE,
        "sdpMid": "0",
        "sdpMLineIndex": 0,
    }


def test_serialize_is_compact_keeps_utf8_and_omits_nulls() -> None:
    text = serialize(ErrorReply(code="x", message="é"))
    assert text == '{"type":"error","code":"x","message":"é"}'


def test_browser_candidate_json_parses() -> None:
    # What RTCIceCandidate.toJSON() gives, plus our `type` and `to`.
    frame = json.dumps(
        {
            "type": "candidate",
            "to": "doc-1",
            "candidate": CANDIDATE,
            "sdpMid": "0",
            "sdpMLineIndex": 0,
            "usernameFragment": "XqZ3",
        }
    )
    assert parse_client_message(frame) == Candidate("doc-1", CANDIDATE, "0", 0, "XqZ3")


def test_unknown_keys_are_ignored_and_null_optionals_are_absent() -> None:
    frame = '{"type":"ping","ref":null,"future_field":{"x":1}}'
    assert parse_client_message(frame) == Ping(ref=None)


# --- Exact errors ---------------------------------------------------------------------------


def _error(frame: str | bytes, **kwargs: Any) -> SignalingError:
    with pytest.raises(SignalingError) as caught:
        parse_client_message(frame, **kwargs)
    return caught.value


def test_too_big_is_1009() -> None:
    frame = serialize(Chat(text="x" * 100))
    assert parse_client_message(frame, max_bytes=len(frame)) == Chat(text="x" * 100)
    error = _error(frame, max_bytes=len(frame) - 1)
    assert isinstance(error, MessageTooBig)
    assert error.ws_close == CloseCode.MESSAGE_TOO_BIG
    assert CloseCode.MESSAGE_TOO_BIG.value == 1009
    assert error.code == "message_too_big"
    assert isinstance(_error(frame.encode(), max_bytes=len(frame) - 1), MessageTooBig)


def test_one_megabyte_frame_is_1009() -> None:
    error = _error('{"type":"chat","text":"' + "a" * 1_000_000 + '"}')
    assert isinstance(error, MessageTooBig) and error.ws_close == 1009


def test_size_is_counted_in_utf8_bytes_not_characters() -> None:
    frame = serialize(Chat(text="é" * 40))  # 40 characters, 80 bytes of text
    limit = len(frame) + 10
    assert len(frame.encode()) > limit
    assert isinstance(_error(frame, max_bytes=limit), MessageTooBig)


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (b'{"type":"ping"}\xff', "not valid UTF-8"),
        ('{"type": "ping"', "not valid JSON"),
        ("", "not valid JSON"),
        ('{"type":"ping","ref":NaN}', "not valid JSON"),
        ('{"type":"ping","ref":Infinity}', "not valid JSON"),
        ("[" * 50_000 + "]" * 50_000, "not valid JSON"),
        ('["ping"]', "not a JSON object"),
        ('"ping"', "not a JSON object"),
        ("null", "not a JSON object"),
    ],
)
def test_malformed_is_1007(frame: str | bytes, message: str) -> None:
    error = _error(frame, max_bytes=200_000)
    assert isinstance(error, MalformedMessage)
    assert error.ws_close == CloseCode.INVALID_DATA
    assert CloseCode.INVALID_DATA.value == 1007
    assert error.code == "malformed_message"
    assert message in str(error)


def test_unknown_type_is_answered_not_closed() -> None:
    error = _error('{"type":"subscribe","to":"x"}')
    assert isinstance(error, UnknownMessageType)
    assert error.ws_close is None
    assert error.code == "unknown_type"
    assert str(error) == "unknown message type 'subscribe'"


def test_server_types_are_unknown_to_the_client_parser() -> None:
    assert isinstance(_error(serialize(Welcome(1, 10))), UnknownMessageType)


@pytest.mark.parametrize(
    ("frame", "field", "message"),
    [
        ('{"to":"x"}', "type", "missing field 'type'"),
        ('{"type":null}', "type", "missing field 'type'"),
        ('{"type":"offer","to":"pat-1"}', "sdp", "missing field 'sdp'"),
        ('{"type":"hello"}', "protocol", "missing field 'protocol'"),
        ('{"type":"consent","kind":"video"}', "granted", "missing field 'granted'"),
    ],
)
def test_missing_field(frame: str, field: str, message: str) -> None:
    error = _error(frame)
    assert isinstance(error, MissingField)
    assert error.ws_close is None and error.code == "missing_field"
    assert error.field == field
    assert str(error) == message


@pytest.mark.parametrize(
    ("frame", "field", "problem"),
    [
        ('{"type":7}', "type", "must be a string"),
        ('{"type":"hello","protocol":"1"}', "protocol", "must be an integer"),
        ('{"type":"hello","protocol":true}', "protocol", "must be an integer"),
        ('{"type":"hello","protocol":1.5}', "protocol", "must be an integer"),
        ('{"type":"hello","protocol":-1}', "protocol", "must be between 0 and 1000000"),
        ('{"type":"offer","to":"a:b","sdp":"v=0"}', "to", "must match"),
        ('{"type":"offer","to":"","sdp":"v=0"}', "to", "must match"),
        ('{"type":"offer","to":["x"],"sdp":"v=0"}', "to", "must be a string"),
        ('{"type":"media_state","audio":1,"video":true}', "audio", "must be true or false"),
        ('{"type":"consent","kind":"photo","granted":true}', "kind", "must be one of"),
        ('{"type":"resume","token":"short"}', "token", "must match"),
        (
            '{"type":"candidate","to":"x","candidate":"","sdpMLineIndex":-1}',
            "sdpMLineIndex",
            "must be between",
        ),
    ],
)
def test_invalid_field(frame: str, field: str, problem: str) -> None:
    error = _error(frame)
    assert isinstance(error, InvalidField)
    assert error.ws_close is None and error.code == "invalid_field"
    assert error.field == field
    assert problem in str(error)


@pytest.mark.parametrize(
    ("message", "field", "cap"),
    [
        ({"type": "offer", "to": "p", "sdp": "v" * (MAX_SDP_CHARS + 1)}, "sdp", MAX_SDP_CHARS),
        ({"type": "answer", "to": "p", "sdp": "v" * (MAX_SDP_CHARS + 1)}, "sdp", MAX_SDP_CHARS),
        (
            {"type": "candidate", "to": "p", "candidate": "c" * (MAX_CANDIDATE_CHARS + 1)},
            "candidate",
            MAX_CANDIDATE_CHARS,
        ),
        ({"type": "chat", "text": "c" * (MAX_CHAT_CHARS + 1)}, "text", MAX_CHAT_CHARS),
        ({"type": "admit", "participant_id": "p" * 65}, "participant_id", 64),
    ],
)
def test_caps_on_sdp_candidate_chat_and_ids(message: dict[str, str], field: str, cap: int) -> None:
    error = _error(json.dumps(message))
    assert isinstance(error, FieldTooLarge)
    assert error.ws_close is None and error.code == "field_too_large"
    assert error.field == field
    assert str(error) == f"field '{field}' exceeds {cap} characters"
    # At the cap exactly, it parses.
    at_cap = {**message, field: message[field][:cap]}
    parse_client_message(json.dumps(at_cap))


def test_sdp_at_cap_fits_in_default_frame_after_escaping() -> None:
    sdp = ("a=candidate:1 1 udp 2122260223 192.0.2.1 54321 typ host\r\n" * 600)[:MAX_SDP_CHARS]
    frame = serialize(Offer(to="pat-1", sdp=sdp))
    assert len(frame.encode()) <= DEFAULT_MAX_MESSAGE_BYTES
    assert parse_client_message(frame) == Offer(to="pat-1", sdp=sdp)


def test_nested_errors_name_the_path() -> None:
    joined = json.loads(serialize(SERVER_SAMPLES[1]))
    joined["participants"][0]["role"] = "surgeon"
    with pytest.raises(InvalidField) as caught:
        parse_server_message(json.dumps(joined))
    assert caught.value.field == "participants[0].role"
    joined["participants"] = "nobody"
    with pytest.raises(InvalidField, match="'participants' must be an array"):
        parse_server_message(json.dumps(joined))
    joined["participants"] = [{}] * 300
    with pytest.raises(FieldTooLarge, match="more than 256 items"):
        parse_server_message(json.dumps(joined))


def test_lone_surrogates_are_refused() -> None:
    # Valid JSON, but not encodable as UTF-8: relaying it would break every recipient's send.
    error = _error('{"type":"chat","text":"caf\\u00e9 \\ud800"}')
    assert isinstance(error, InvalidField)
    assert (error.field, str(error)) == ("text", "field 'text' must be valid Unicode text")
    pair = '{"type":"chat","text":"\\ud83d\\udc4d"}'  # a proper surrogate pair is fine
    assert parse_client_message(pair) == Chat(text="👍")


def test_non_finite_numbers_are_refused() -> None:
    with pytest.raises(InvalidField, match="must be finite"):
        parse_server_message('{"type":"host_reconnecting","participant_id":"d","until":1e400}')


# --- Schema ---------------------------------------------------------------------------------


def test_json_schema_describes_every_type_with_wire_keys() -> None:
    schema = json_schema()
    assert set(schema["client"]) == set(CLIENT_MESSAGE_TYPES)
    assert set(schema["server"]) == set(SERVER_MESSAGE_TYPES)
    candidate = schema["client"]["candidate"]
    assert candidate["required"] == ["type", "to", "candidate"]
    assert candidate["properties"]["sdpMid"] == {"type": "string", "maxLength": 64}
    assert candidate["properties"]["to"]["pattern"] == "^[A-Za-z0-9_-]+$"
    assert schema["server"]["offer"]["required"] == ["type", "from", "sdp"]
    assert schema["server"]["joined"]["properties"]["rtcConfiguration"] == {
        "$ref": "#/$defs/RtcConfiguration"
    }
    assert "iceServers" in schema["$defs"]["RtcConfiguration"]["properties"]
    assert schema["$defs"]["ParticipantInfo"]["properties"]["role"]["enum"] == [
        r.value for r in Role
    ]
    json.dumps(schema)  # serialisable as is for the protocol page


def test_every_sample_validates_against_its_schema_keys() -> None:
    schema = json_schema()
    for side, samples in (("client", CLIENT_SAMPLES), ("server", SERVER_SAMPLES)):
        for message in samples:
            obj = json.loads(serialize(message))
            spec = schema[side][obj["type"]]
            assert set(spec["required"]) <= set(obj), message
            assert set(obj) <= set(spec["properties"]), message


@pytest.mark.parametrize(
    "message", [*CLIENT_SAMPLES, *SERVER_SAMPLES], ids=lambda m: type(m).__name__
)
def test_fast_encoder_matches_the_reference_json(message: ClientMessage | ServerMessage) -> None:
    """The generated per-type encoders must never drift from plain json.dumps output."""
    from signaling.messages import to_json_object

    reference = json.dumps(to_json_object(message), ensure_ascii=False, separators=(",", ":"))
    assert serialize(message) == reference
