"""Push event payloads: parse/serialise round trips and exact refusals."""

from __future__ import annotations

import pytest

from relay.messaging.events import (
    CaseEvent,
    EventFormatError,
    EventKind,
    InboxEvent,
    parse_push_event,
)

CASE = "0123456789abcdef0123456789abcdef"


def test_round_trips() -> None:
    inbox = InboxEvent(EventKind.MESSAGE, CASE, message_id=CASE)
    case = CaseEvent(CASE, "answered")
    assert parse_push_event(bytes(inbox)) == inbox
    assert parse_push_event(bytes(case)) == case
    assert case.to_json() == {"type": "case", "case_id": CASE, "state": "answered"}


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b'{"type": "case", "case_id": "../x", "state": "answered"}',
        b'{"type": "case", "case_id": "' + CASE.encode() + b'", "state": "Answered now"}',
        b'{"type": "other"}',
        b"[1, 2]",
    ],
)
def test_malformed_payloads_are_refused(raw: bytes) -> None:
    with pytest.raises(EventFormatError):
        parse_push_event(raw)
