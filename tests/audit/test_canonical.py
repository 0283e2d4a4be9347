"""RFC 8785 canonicalization: the RFC's own examples and Appendix B number samples."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.audit.canonical import MAX_SAFE_INTEGER, canonicalize, format_number
from relay.audit.errors import CanonicalizationError

# RFC 8785 §3.2.2 (the example input, as JSON text so the parser does the \u escapes).
RFC_EXAMPLE_INPUT = r"""{
  "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
  "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
  "literals": [null, true, false]
}"""
RFC_EXAMPLE_OUTPUT = (
    '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
    '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
)

# RFC 8785 §3.2.3: property sorting by UTF-16 code units.
RFC_SORT_INPUT = r"""{
  "\u20ac": "Euro Sign",
  "\r": "Carriage Return",
  "\ufb33": "Hebrew Letter Dalet With Dagesh",
  "1": "One",
  "\ud83d\ude00": "Emoji: Grinning Face",
  "\u0080": "Control",
  "\u00f6": "Latin Small Letter O With Diaeresis"
}"""
RFC_SORT_ORDER = [
    "Carriage Return",
    "One",
    "Control",
    "Latin Small Letter O With Diaeresis",
    "Euro Sign",
    "Emoji: Grinning Face",
    "Hebrew Letter Dalet With Dagesh",
]

# RFC 8785 Appendix B: IEEE 754 bit patterns and their canonical text.
APPENDIX_B = [
    ("0000000000000000", "0"),
    ("8000000000000000", "0"),
    ("0000000000000001", "5e-324"),
    ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"),
    ("c340000000000000", "-9007199254740992"),
    ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"),
    ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"),
    ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"),
    ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
    ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"),
    ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"),
    ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"),
    ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
]
APPENDIX_B_ERRORS = ["7fffffffffffffff", "7ff0000000000000", "fff0000000000000"]


def _double(bits: str) -> float:
    value: float = struct.unpack(">d", bytes.fromhex(bits))[0]
    return value


def test_rfc8785_section_3_2_2_example() -> None:
    assert canonicalize(json.loads(RFC_EXAMPLE_INPUT)) == RFC_EXAMPLE_OUTPUT.encode("utf-8")


def test_rfc8785_section_3_2_3_utf16_sort_order() -> None:
    canonical = canonicalize(json.loads(RFC_SORT_INPUT))
    assert list(json.loads(canonical).values()) == RFC_SORT_ORDER
    # Code-point order would put the emoji last; UTF-16 order puts it before U+FB33.
    assert canonical.index("\U0001f600".encode()) < canonical.index("\ufb33".encode())


@pytest.mark.parametrize(("bits", "expected"), APPENDIX_B)
def test_rfc8785_appendix_b_numbers(bits: str, expected: str) -> None:
    assert format_number(_double(bits)) == expected
    assert canonicalize([_double(bits)]) == f"[{expected}]".encode()


@pytest.mark.parametrize("bits", APPENDIX_B_ERRORS)
def test_nan_and_infinities_are_refused(bits: str) -> None:
    with pytest.raises(CanonicalizationError):
        canonicalize({"n": _double(bits)})


def test_number_layout_boundaries() -> None:
    assert format_number(1e20) == "100000000000000000000"
    assert format_number(1e21) == "1e+21"
    assert format_number(1e-6) == "0.000001"
    assert format_number(1e-7) == "1e-7"
    assert format_number(4.0) == "4"
    assert format_number(-0.0) == "0"
    assert format_number(MAX_SAFE_INTEGER) == "9007199254740991"
    # Larger integers are doubles in JSON: exact ones print as ECMAScript prints them.
    assert format_number(2**53) == "9007199254740992"
    assert format_number(10**21) == "1e+21"


def test_strings_use_minimal_escaping() -> None:
    assert canonicalize("\u001f\u007f\u2028é\t") == b'"\\u001f\x7f\xe2\x80\xa8\xc3\xa9\\t"'


@pytest.mark.parametrize(
    "value",
    [
        {1: "x"},
        MAX_SAFE_INTEGER + 2,
        -(2**60) - 1,
        b"bytes",
        {"a": {1, 2}},
        "\ud800",
        {"\udc00": 1},
    ],
)
def test_values_outside_i_json_are_refused(value: Any) -> None:
    with pytest.raises(CanonicalizationError):
        canonicalize(value)


def test_error_carries_its_http_answer() -> None:
    assert CanonicalizationError.http_status == 500
    assert CanonicalizationError.code == "canonicalization_failed"


def test_deep_nesting_is_refused() -> None:
    value: Any = []
    for _ in range(100):
        value = [value]
    with pytest.raises(CanonicalizationError):
        canonicalize(value)


json_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER)
    | st.floats(allow_nan=False, allow_infinity=False)
    | json_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(json_text, children, max_size=4)
    ),
    max_leaves=20,
)


def _es_parse(text: bytes) -> Any:
    # ECMAScript reads every JSON number as a double; mirror that when reading back.
    return json.loads(text, parse_int=float)


@given(json_values)
def test_round_trip_and_idempotence(value: Any) -> None:
    canonical = canonicalize(value)
    parsed = _es_parse(canonical)
    assert canonicalize(parsed) == canonical
    assert _same(parsed, value)


def _same(parsed: Any, original: Any) -> bool:
    if isinstance(original, list):
        return len(parsed) == len(original) and all(map(_same, parsed, original))
    if isinstance(original, dict):
        return parsed.keys() == original.keys() and all(
            _same(parsed[k], original[k]) for k in original
        )
    if original is None or isinstance(original, bool):
        return parsed is original
    if isinstance(original, str):
        return bool(parsed == original)
    # Numbers compare by value (-0.0 == 0, 4.0 == 4).
    return isinstance(parsed, float) and bool(parsed == original)


@given(st.dictionaries(json_text, st.integers(0, 9), min_size=2, max_size=8))
def test_members_sorted_by_utf16_code_units(value: dict[str, int]) -> None:
    keys = list(json.loads(canonicalize(value)).keys())
    assert keys == sorted(value, key=lambda k: k.encode("utf-16-be"))


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_number_text_reads_back_to_the_same_double(value: float) -> None:
    assert float(format_number(value)) == value
