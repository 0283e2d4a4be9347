"""Push events of the messaging domain, as carried on the event bus and ``/ws/events``.

Each professional has one bus channel, ``user:<id>``: every event that concerns them (a new
message in a thread they or their team take part in, a delivery state change, a read done in
another session) is published there, so that one socket resumes from one offset. Events
carry identifiers only — the page fetches what changed through the API, which audits the read.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

_ID = re.compile(r"[0-9a-f]{32}")


class EventKind(StrEnum):
    """What happened."""

    MESSAGE = "message"  # a new message in a thread
    DELIVERY = "delivery"  # a delivery state changed
    READ = "read"  # the viewer read messages (in another page or session)


def user_channel(professional_id: str) -> str:
    """The bus channel of one professional's push events."""
    return f"user:{professional_id}"


class EventFormatError(ValueError):
    """A payload that is not a messaging event."""


@dataclass(frozen=True)
class InboxEvent:
    """One push event. ``state`` is set for DELIVERY only."""

    kind: EventKind
    thread_id: str
    message_id: str | None = None
    participant_id: str | None = None
    state: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON object sent to pages (the socket adds the bus offset)."""
        out: dict[str, Any] = {"type": self.kind.value, "thread_id": self.thread_id}
        if self.message_id is not None:
            out["message_id"] = self.message_id
        if self.participant_id is not None:
            out["participant_id"] = self.participant_id
        if self.state is not None:
            out["state"] = self.state
        return out

    def __bytes__(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True).encode("ascii")

    @classmethod
    def parse(cls, raw: bytes) -> InboxEvent:
        """Inverse of ``bytes()``; raises EventFormatError."""
        try:
            data = json.loads(raw.decode("ascii"))
            kind = EventKind(data["type"])
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise EventFormatError("not a messaging event") from None
        ids = [data.get(name) for name in ("thread_id", "message_id", "participant_id")]
        if not isinstance(ids[0], str) or not all(
            value is None or (isinstance(value, str) and _ID.fullmatch(value)) for value in ids
        ):
            raise EventFormatError("event identifiers are malformed")
        state = data.get("state")
        if state is not None and not isinstance(state, str):
            raise EventFormatError("event state is malformed")
        return cls(kind, ids[0], ids[1], ids[2], state)


@dataclass(frozen=True)
class CaseEvent:
    """A tele-expertise case changed state (sent to the requester's pages; ids only)."""

    case_id: str
    state: str

    def to_json(self) -> dict[str, Any]:
        return {"type": "case", "case_id": self.case_id, "state": self.state}

    def __bytes__(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True).encode("ascii")

    @classmethod
    def parse(cls, raw: bytes) -> CaseEvent:
        """Inverse of ``bytes()``; raises EventFormatError."""
        try:
            data = json.loads(raw.decode("ascii"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise EventFormatError("not a case event") from None
        if not isinstance(data, dict) or data.get("type") != "case":
            raise EventFormatError("not a case event")
        case_id, state = data.get("case_id"), data.get("state")
        if not isinstance(case_id, str) or not _ID.fullmatch(case_id):
            raise EventFormatError("case identifier is malformed")
        if not isinstance(state, str) or not _STATE.fullmatch(state):
            raise EventFormatError("case state is malformed")
        return cls(case_id, state)


_STATE = re.compile(r"[a-z_]{1,32}")


def parse_push_event(raw: bytes) -> InboxEvent | CaseEvent:
    """Any event of a ``user:<id>`` channel; raises EventFormatError for anything else."""
    try:
        return InboxEvent.parse(raw)
    except EventFormatError:
        return CaseEvent.parse(raw)
