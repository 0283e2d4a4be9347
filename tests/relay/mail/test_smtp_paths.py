"""MAIL FROM / RCPT TO paths: the gateway's direct reading of plain ``<local@domain>`` paths
gives exactly what aiosmtpd's own parser gives, for every shape (RFC 5321 §4.1.2)."""

from __future__ import annotations

import random

import pytest
from aiosmtpd.smtp import SMTP

from relay.mail.smtp_server import RelaySMTP


def _reader(cls: type[SMTP], local_part_limit: int) -> SMTP:
    # _getaddr reads only this attribute: no handler, loop or socket needed.
    reader = cls.__new__(cls)
    reader.local_part_limit = local_part_limit
    return reader


def _read(reader: SMTP, arg: str) -> tuple[str | None, str | None] | str:
    try:
        return reader._getaddr(arg)
    except Exception as exc:
        return type(exc).__name__


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("<a@b.c>", ("a@b.c", "")),
        ("<Dr.Martin+cr@Nord-3.example> SIZE=2", ("Dr.Martin+cr@Nord-3.example", "SIZE=2")),
        (" <a@b.c>BODY=8BITMIME", ("a@b.c", "BODY=8BITMIME")),
        ("<>", ("<>", "")),
        ('<"x y"@b.c>', ('"x y"@b.c', "")),
        ("<@relay.example:a@b.c>", ("a@b.c", "")),
        ("<a@b.c> (comment) SIZE=1", ("a@b.c", "SIZE=1")),
    ],
)  # fmt: skip
def test_known_paths(arg: str, expected: tuple[str, str]) -> None:
    assert _read(_reader(RelaySMTP, 0), arg) == expected
    assert _read(_reader(SMTP, 0), arg) == expected


def test_local_part_limit_applies_to_plain_paths() -> None:
    arg = "<" + "a" * 65 + "@b.c>"
    assert _read(_reader(RelaySMTP, 64), arg) == (None, None)
    assert _read(_reader(SMTP, 64), arg) == (None, None)


@pytest.mark.parametrize("seed", range(4))
def test_random_paths_read_like_aiosmtpd(seed: int) -> None:
    pieces = ["<", ">", "a", "Z", "0", ".", "@", "-", "+", " ", "\t", "(", ")", '"', "=", ":",
              ",", "[", "]", "x@y.org", "é", "\\", "_", "SIZE=1"]  # fmt: skip
    rng = random.Random(seed)
    plain = 0
    for _ in range(1500):
        middle = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))
        if rng.random() < 0.4:
            middle = middle.strip("<> ") + "@" + rng.choice(["b.c", "ex-ample.org", "a..b", "-a"])
        arg = rng.choice(["<", " <", ""]) + middle
        arg += rng.choice([">", "> SIZE=10", ">BODY=8BITMIME", "", "> (c) X", ">  "])
        limit = rng.choice([0, 3])
        assert _read(_reader(RelaySMTP, limit), arg) == _read(_reader(SMTP, limit), arg), arg
        plain += arg.lstrip(" ").startswith("<") and "@" in arg
    assert plain > 100
