"""The signaling codec reads and writes JSON with orjson; the stdlib stays the reference.

Every frame must get the same answer as from the stdlib reading (``_decode_exact``, the
protocol's behaviour before orjson): the same message, or the same error class, code, field
and message. These tests pin the edges where orjson and the stdlib differ.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from signaling import messages
from signaling.errors import (
    CloseCode,
    InvalidField,
    MalformedMessage,
    SignalingError,
    UnknownMessageType,
)
from signaling.messages import (
    Candidate,
    Chat,
    ClientMessage,
    ConsentKind,
    Ended,
    EndReason,
    ErrorReply,
    HostReconnecting,
    LeaveReason,
    Offer,
    ParticipantLeft,
    Ping,
    Pong,
    RelayedAnswer,
    RelayedCandidate,
    RelayedOffer,
    ServerMessage,
    parse_client_message,
    parse_server_message,
    serialize,
    to_json_object,
)


def _client_outcome(frame: str | bytes) -> object:
    """The parsed message, or (error class, code, close code, field, message)."""
    try:
        return parse_client_message(frame, max_bytes=1_000_000)
    except SignalingError as error:
        return _error_key(error)


def _reference_outcome(frame: str | bytes) -> object:
    try:
        return messages._decode_exact(frame, messages._CLIENT_DECODERS)
    except SignalingError as error:
        return _error_key(error)


def _server_outcome(frame: str | bytes, *, exact: bool) -> object:
    try:
        if exact:
            return messages._decode_exact(frame, messages._SERVER_DECODERS)
        return parse_server_message(frame, max_bytes=1_000_000)
    except SignalingError as error:
        return _error_key(error)


def _error_key(error: SignalingError) -> tuple[object, ...]:
    return (type(error), error.code, error.ws_close, getattr(error, "field", None), str(error))


def _same_as_reference(frame: str | bytes) -> object:
    outcome = _client_outcome(frame)
    assert outcome == _reference_outcome(frame), frame
    return outcome


def _between(field: str, low: int, high: int) -> tuple[object, ...]:
    message = f"field '{field}' must be between {low} and {high}"
    return (InvalidField, "invalid_field", None, field, message)


_NOT_JSON = (MalformedMessage, "malformed_message", 1007, None, "message is not valid JSON")


# --- Numbers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        # Past 64 bits orjson gives a float: the range error must still be the integer's.
        ('{"type":"ping","ref":99999999999999999999}', _between("ref", 0, 2**53)),
        ('{"type":"ping","ref":18446744073709551616}', _between("ref", 0, 2**53)),
        ('{"type":"ping","ref":-9223372036854775809}', _between("ref", 0, 2**53)),
        ('{"type":"hello","protocol":340282366920938463463374607431768211456}', None),
        ('{"type":"ping","ref":9007199254740992}', Ping(ref=2**53)),
        ('{"type":"ping","ref":9007199254740993}', _between("ref", 0, 2**53)),
        ('{"type":"ping","ref":-0}', Ping(ref=0)),
        # Python refuses to read an integer of more than 4,300 digits.
        ('{"type":"ping","ref":' + "9" * 5000 + "}", _NOT_JSON),
        ('{"type":"ping","x":' + "9" * 5000 + "}", _NOT_JSON),
        # An ignored key may hold any number the stdlib reads.
        ('{"type":"ping","x":99999999999999999999999}', Ping()),
        ('{"type":"ping","x":1e400}', Ping()),
        ('{"type":"ping","ref":1e400}', None),
        ('{"type":"ping","ref":1.0}', None),
        ('{"type":"ping","ref":1e2}', None),
    ],
)
def test_integers_get_the_reference_answer(frame: str, expected: object) -> None:
    outcome = _same_as_reference(frame)
    if expected is None:
        assert isinstance(outcome, tuple) and outcome[0] is InvalidField
        assert outcome[4] in (
            "field 'ref' must be an integer",
            "field 'protocol' must be between 0 and 1000000",
        )
    else:
        assert outcome == expected


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("key", ["ref", "unknown_key"])
def test_nan_and_infinity_close_with_1007(literal: str, key: str) -> None:
    # RFC 8259 §6 has no NaN/Infinity: the protocol refuses them as malformed (1007) even in
    # an ignored key, as it always has, though Python's json would read them.
    outcome = _same_as_reference(f'{{"type":"ping","{key}":{literal}}}')
    assert outcome == _NOT_JSON
    assert CloseCode.INVALID_DATA.value == 1007


def test_overflowing_floats_are_refused_by_the_field() -> None:
    # 1e400 is valid JSON; the stdlib reads it as inf, which a number field refuses.
    frame = '{"type":"host_reconnecting","participant_id":"d","until":1e400}'
    with pytest.raises(InvalidField, match="'until' must be finite"):
        parse_server_message(frame)
    assert _server_outcome(frame, exact=False) == _server_outcome(frame, exact=True)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.integers(min_value=-(2**80), max_value=2**80).map(str),
        st.from_regex(
            r"-?(0|[1-9][0-9]{0,40})(\.[0-9]{1,30})?([eE][+-]?[0-9]{1,3})?", fullmatch=True
        ),
    )
)
def test_number_literals_decode_as_the_stdlib_reads_them(literal: str) -> None:
    """Floats are correctly rounded by both readers; an integer past 64 bits in a number
    field gives float(int), as the stdlib path does."""
    frame = f'{{"type":"host_reconnecting","participant_id":"d","until":{literal}}}'
    assert _server_outcome(frame, exact=False) == _server_outcome(frame, exact=True)
    ping = f'{{"type":"ping","ref":{literal}}}'
    assert _client_outcome(ping) == _reference_outcome(ping)


# --- Keys, text, nesting --------------------------------------------------------------------


def test_duplicate_keys_last_one_wins() -> None:
    assert _same_as_reference('{"type":"ping","ref":1,"ref":2}') == Ping(ref=2)
    assert _same_as_reference('{"type":"offer","type":"ping"}') == Ping()
    outcome = _same_as_reference('{"type":"ping","ref":1,"ref":"x"}')
    assert isinstance(outcome, tuple) and outcome[0] is InvalidField


@pytest.mark.parametrize(
    "frame",
    [
        '{"type":"chat","text":"\\ud800"}',  # escaped lone high surrogate
        '{"type":"chat","text":"\\udc00x"}',  # lone low surrogate
        '{"type":"chat","text":"caf\\u00e9 \\ud800"}',
        '{"type":"chat","text":"\ud800"}',  # a str frame holding a raw surrogate
    ],
)
def test_lone_surrogates_are_refused_by_the_field(frame: str) -> None:
    outcome = _same_as_reference(frame)
    assert outcome == (
        InvalidField,
        "invalid_field",
        None,
        "text",
        "field 'text' must be valid Unicode text",
    )


def test_lone_surrogates_in_ignored_keys_are_ignored() -> None:
    assert _same_as_reference('{"type":"ping","x":"\\ud800"}') == Ping()
    # In the type itself: an unknown type, answered without closing; the reply quotes the
    # type escaped, so that it can be sent as UTF-8 (it used to stop the socket's writer).
    for frame in ('{"type":"\\ud800"}', '{"type":"\ud800"}'):
        outcome = _same_as_reference(frame)
        assert outcome == (
            UnknownMessageType,
            "unknown_type",
            None,
            None,
            "unknown message type '\\ud800'",
        )
    error = _client_outcome('{"type":"é\\ud83d\\udc4d"}')  # other text is quoted as is
    assert isinstance(error, tuple) and error[4] == "unknown message type 'é👍'"


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (b'{"type":"chat","text":"\xff"}', "message is not valid UTF-8"),
        (b'{"type":"chat","text":"\xed\xa0\x80"}', "message is not valid UTF-8"),  # CESU
        (b'{"type":"chat","text":"\xc3"}', "message is not valid UTF-8"),
        (b'\xef\xbb\xbf{"type":"ping"}', "message is not valid JSON"),  # UTF-8 BOM
        ('\ufeff{"type":"ping"}', "message is not valid JSON"),
        ('{"type":"chat","text":"a\x01"}', "message is not valid JSON"),  # raw control char
        ('{"type":"ping"}\x0c', "message is not valid JSON"),  # form feed is not whitespace
        ('{"type":"ping"}\u00a0', "message is not valid JSON"),
        ('{"type":"ping",}', "message is not valid JSON"),
        ('{"type":"ping","ref":01}', "message is not valid JSON"),
        ("{'type':'ping'}", "message is not valid JSON"),
        ('{"type":"ping"} {}', "message is not valid JSON"),
    ],
)
def test_malformed_frames_close_with_1007(frame: str | bytes, message: str) -> None:
    outcome = _same_as_reference(frame)
    assert outcome == (MalformedMessage, "malformed_message", 1007, None, message)


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (' \t\r\n{"type":"ping"}\n ', Ping()),
        ('{"type":"chat","text":"\\u00e9\\ud83d\\udc4d\\/"}', Chat(text="é👍/")),
        ('{"type":"chat","text":"é👍"}'.encode(), Chat(text="é👍")),
        ('{"type":"chat","text":"\x7f\u2028"}', Chat(text="\x7f\u2028")),
        ('{"type":"consent","kind":"video","granted":true}', None),
    ],
)
def test_valid_frames_read_the_same(frame: str | bytes, expected: ClientMessage | None) -> None:
    outcome = _same_as_reference(frame)
    if expected is not None:
        assert outcome == expected


@pytest.mark.parametrize("depth", [1, 5, 255, 256, 600, 990, 1023, 1024, 1025, 1100])
def test_nesting_in_ignored_keys_gets_the_stdlib_answer(depth: int) -> None:
    # orjson reads 1,024 levels, the stdlib as many as the interpreter's stack allows: a
    # frame with an array or object value always takes the stdlib's answer.
    frame = '{"type":"ping","x":' + "[" * depth + "]" * depth + "}"
    outcome = _same_as_reference(frame)
    assert outcome == Ping() or outcome == _NOT_JSON
    if depth <= 256:
        assert outcome == Ping()
    if depth >= 1025:
        assert outcome == _NOT_JSON


_CANDIDATE = Candidate(to="b", candidate="c")


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        # Only the type's own keys: the fast path skips the scan of the values.
        (
            '{"type":"candidate","to":"b","candidate":"c","sdpMid":"0","sdpMLineIndex":0}',
            Candidate(to="b", candidate="c", sdp_mid="0", sdp_mline_index=0),
        ),
        ('{"type":"candidate","to":"b","candidate":"c","sdpMid":null}', _CANDIDATE),
        (
            '{"type":"candidate","to":"b","candidate":"c","sdpMid":["0"]}',
            (InvalidField, "invalid_field", None, "sdpMid", "field 'sdpMid' must be a string"),
        ),
        # An unknown key beside them: the values are scanned.
        ('{"type":"candidate","to":"b","candidate":"c","sdpMid":null,"x":[[1]]}', _CANDIDATE),
        ('{"type":"candidate","to":"b","candidate":"c","x":{"y":[]}}', _CANDIDATE),
        ('{"type":"candidate","to":"b","candidate":"c","x":1}', _CANDIDATE),
        ('{"type":"offer","to":"b","sdp":"v=0","from":"x"}', Offer(to="b", sdp="v=0")),
    ],
)
def test_known_and_unknown_keys_get_the_reference_answer(frame: str, expected: object) -> None:
    assert _same_as_reference(frame) == expected


def test_a_deep_array_in_an_unknown_key_is_not_skipped_by_the_key_check() -> None:
    # Deeper than the stdlib reads, within what orjson reads: the stdlib's answer stands.
    frame = '{"type":"candidate","to":"b","candidate":"c","x":' + "[" * 1000 + "]" * 1000 + "}"
    assert _same_as_reference(frame) == _NOT_JSON


def test_arrays_and_objects_in_scalar_fields_are_refused_by_the_field() -> None:
    outcome = _same_as_reference('{"type":"offer","to":{"a":1},"sdp":"v=0"}')
    assert outcome == (InvalidField, "invalid_field", None, "to", "field 'to' must be a string")


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["type", "to", "sdp", "ref", "text", "candidate", "sdpMid", "x", "é"]),
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers(min_value=-(2**70), max_value=2**70)
            | st.floats(allow_nan=False, allow_infinity=False)
            | st.text(max_size=20)
            | st.sampled_from(["ping", "offer", "candidate", "chat", "p-1"]),
            lambda children: (
                st.lists(children, max_size=3)
                | st.dictionaries(st.text(max_size=5), children, max_size=3)
            ),
            max_leaves=8,
        ),
        max_size=6,
    )
)
def test_random_frames_get_the_reference_answer(obj: dict[str, Any]) -> None:
    for frame in (json.dumps(obj), json.dumps(obj, ensure_ascii=False).encode()):
        _same_as_reference(frame)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_random_text_gets_the_reference_answer(text: str) -> None:
    _same_as_reference(text)
    _same_as_reference('{"type":"chat","text":' + text + "}")


# --- Writing --------------------------------------------------------------------------------


def _reference_text(message: ClientMessage | ServerMessage) -> str:
    return json.dumps(to_json_object(message), ensure_ascii=False, separators=(",", ":"))


def test_every_code_point_is_written_as_json_dumps_writes_it() -> None:
    text = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)
    for message in (RelayedOffer("a", text), RelayedAnswer("a", text), ErrorReply("x", text)):
        assert serialize(message) == _reference_text(message)
    for start in range(0, len(text), 30_000):  # round trip, in SDP-sized pieces
        offer = RelayedOffer("a", text[start : start + 30_000])
        assert parse_server_message(serialize(offer), max_bytes=10**6) == offer


@pytest.mark.parametrize(
    "message",
    [
        # Values orjson will not write go through the reference encoder: same text as before.
        ErrorReply("unknown_type", "unknown message type '\ud800'"),
        Pong(ref=2**64),
        Pong(ref=-(2**63) - 1),
        Pong(ref=2**64 - 1),
        # Values of an unexpected type (callers bypassing the parser).
        Pong(ref=True),
        RelayedCandidate("a", "c", None, None, None),
        ParticipantLeft("p", LeaveReason.LEFT),
        Ended(EndReason.ENDED_BY_PROFESSIONAL, None),
        HostReconnecting("p", 1e-7),
        HostReconnecting("p", 1e22),
    ],
    ids=repr,
)
def test_edge_values_are_written_as_json_dumps_writes_them(
    message: ClientMessage | ServerMessage,
) -> None:
    assert serialize(message) == _reference_text(message)


def test_wrongly_typed_values_are_written_as_json_dumps_writes_them() -> None:
    class Sdp(str):
        pass

    for message in (
        Offer("p", Sdp("v=0\r\n")),
        Candidate("p", "c", sdp_mline_index=ConsentKind.VIDEO),  # type: ignore[arg-type]
        Chat(text=LeaveReason.LEFT),
    ):
        assert serialize(message) == _reference_text(message)


def test_orjson_refuses_what_the_fallbacks_exist_for() -> None:
    # If a later orjson accepts these, the fallbacks above become dead code, not wrong.
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads('{"a":NaN}')
    with pytest.raises(orjson.JSONEncodeError):
        orjson.dumps("\ud800")
    assert orjson.loads("18446744073709551616") == float(2**64)
