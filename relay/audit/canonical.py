"""RFC 8785 JSON Canonicalization Scheme (JCS).

Audit events are hashed, so the same event must always give the same bytes. JCS fixes the
three freedoms JSON leaves open:

* member order: sorted by the UTF-16 code units of the names (RFC 8785 §3.2.3), which differs
  from Python's code-point order for names mixing astral characters and U+E000..U+FFFF;
* numbers: the ECMAScript ``Number.prototype.toString`` form of the IEEE 754 double
  (RFC 8785 §3.2.2.3); integers beyond 2**53 are accepted only when a double holds them
  exactly (then printed as the double);
* strings: the minimal escaping of ECMAScript ``JSON.stringify`` (RFC 8785 §3.2.2.2): only
  ``"``, ``\\`` and C0 controls are escaped, the five short forms where they exist, lowercase
  ``\\u00xx`` otherwise; everything else is literal UTF-8.

No whitespace is emitted. Values that I-JSON (RFC 7493) forbids are refused rather than
silently altered: NaN and infinities, integers a double cannot hold exactly, lone surrogates,
non-string member names.
"""

from __future__ import annotations

import json.encoder
import math
from collections.abc import Mapping, Sequence
from typing import Any, cast

from relay.audit.errors import CanonicalizationError

__all__ = ["MAX_SAFE_INTEGER", "canonicalize", "format_number"]

# I-JSON (RFC 7493 §2.2): integers outside this range cannot be exchanged exactly.
MAX_SAFE_INTEGER = 2**53 - 1

# ``json.encoder.encode_basestring`` (the C accelerated ``ensure_ascii=False`` encoder)
# produces exactly the JSON.stringify escaping RFC 8785 §3.2.2.2 requires: the short forms
# \b \t \n \f \r \" \\, lowercase \u00xx for the other C0 controls, nothing else escaped
# (U+007F and U+2028 stay literal). The tests pin this against the RFC's own example.
_encode_string = cast("Any", json.encoder).encode_basestring


def canonicalize(value: object) -> bytes:
    """Return the RFC 8785 canonical UTF-8 bytes of a JSON-compatible value.

    Accepts ``dict`` (string keys), ``list``/``tuple``, ``str``, ``int``, ``float``, ``bool``
    and ``None``. Raises :class:`CanonicalizationError` for anything else or for values I-JSON
    forbids.
    """
    parts: list[str] = []
    _write(value, parts, 0)
    try:
        return "".join(parts).encode("utf-8")
    except UnicodeEncodeError as exc:
        # A lone surrogate has no UTF-8 form: RFC 8785 §3.2.2.2 requires valid Unicode.
        raise CanonicalizationError("string contains a lone surrogate") from exc


def format_number(value: float) -> str:
    """Serialise a number as ECMAScript ``Number.prototype.toString`` does (ES2015 §7.1.12.1).

    Python's ``repr`` already yields the shortest digit string that round-trips, the same
    ``s``/``k`` the ECMAScript algorithm selects; only the layout rules differ, and they are
    applied here.
    """
    if isinstance(value, bool):
        raise CanonicalizationError("a boolean is not a number")
    if isinstance(value, int):
        if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            return str(value)
        # JSON numbers are IEEE 754 doubles (RFC 8785 §3.2.2.3): a larger integer is fine
        # only if a double holds it exactly; otherwise canonicalizing would change it.
        try:
            exact = float(value)
        except OverflowError:
            exact = math.inf
        if not math.isfinite(exact) or int(exact) != value:
            raise CanonicalizationError("integer not exactly representable as a double")
        value = exact
    if not math.isfinite(value):
        raise CanonicalizationError("NaN and infinities have no JSON form (RFC 8785 §3.2.2.3)")
    if value == 0:
        return "0"  # also -0.0: ES prints "0" for negative zero
    sign = "-" if value < 0 else ""
    mantissa, _, exp_text = repr(abs(value)).partition("e")
    integer_part, _, fraction_part = mantissa.partition(".")
    digits = integer_part + fraction_part
    # n is the ES "n": value = 0.digits * 10**n with a non-zero leading digit.
    n = len(integer_part) + (int(exp_text) if exp_text else 0)
    stripped = digits.lstrip("0")
    n -= len(digits) - len(stripped)
    digits = stripped.rstrip("0")
    k = len(digits)
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        text = "0." + "0" * (-n) + digits
    else:
        exponent = n - 1
        exp_sign = "+" if exponent >= 0 else "-"
        head = digits if k == 1 else digits[0] + "." + digits[1:]
        text = f"{head}e{exp_sign}{abs(exponent)}"
    return sign + text


def _utf16_key(name: str) -> bytes:
    # Big-endian UTF-16 bytes compare exactly like sequences of UTF-16 code units
    # (RFC 8785 §3.2.3). "surrogatepass" keeps lone surrogates sortable; they are rejected
    # later by the final UTF-8 encoding.
    return name.encode("utf-16-be", "surrogatepass")


_MAX_DEPTH = 64


def _write(value: object, out: list[str], depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise CanonicalizationError("value nested too deeply")
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_encode_string(value))
    elif isinstance(value, int | float):
        out.append(format_number(value))
    elif isinstance(value, Mapping):
        names = list(value.keys())
        for name in names:
            if not isinstance(name, str):
                raise CanonicalizationError("object member names must be strings")
        names.sort(key=_utf16_key)
        out.append("{")
        for position, name in enumerate(names):
            if position:
                out.append(",")
            out.append(_encode_string(name))
            out.append(":")
            _write(value[name], out, depth + 1)
        out.append("}")
    elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        out.append("[")
        for position, item in enumerate(value):
            if position:
                out.append(",")
            _write(item, out, depth + 1)
        out.append("]")
    else:
        raise CanonicalizationError(f"{type(value).__name__} has no JSON form")
