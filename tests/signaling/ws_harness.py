"""Test clients for teleconsultations: schedule over the API, open signaling sockets.

Used by the REST and WebSocket end-to-end tests against the real relay subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import aiohttp

from tests.conftest import bearer
from tests.harness.relay_process import RelayProcess

Json = dict[str, Any]


async def schedule(
    http: aiohttp.ClientSession, token: str, participants: list[Json], **extra: Any
) -> Json:
    """Schedule a consultation starting now; returns the API's consultation object."""
    body = {
        "scheduled_at": datetime.now(UTC).isoformat(),
        "duration_minutes": 30,
        "participants": participants,
        **extra,
    }
    async with http.post("/api/consultations", json=body, headers=bearer(token)) as response:
        data: Json = await response.json()
        assert response.status == 201, data
        return data


def link_of(consultation: Json, role: str, index: int = 0) -> tuple[str, str]:
    """(participant id, join token) of the index-th link participant with ``role``."""
    found = [p for p in consultation["participants"] if p["role"] == role and "link" in p]
    participant = found[index]
    url = participant["link"]["url"]
    fragment = urlsplit(url).fragment
    assert fragment.startswith("t=")
    return participant["id"], fragment[2:]


def participant_id(consultation: Json, professional_id: str) -> str:
    """The participant id of a professional in a consultation."""
    for p in consultation["participants"]:
        if p["professional_id"] == professional_id:
            return str(p["id"])
    raise AssertionError("professional not in consultation")


async def me(http: aiohttp.ClientSession, token: str) -> Json:
    """The logged-in professional (``/api/me``)."""
    async with http.get("/api/me", headers=bearer(token)) as response:
        data: Json = await response.json()
        assert response.status == 200, data
        return data


def client_session(relay: RelayProcess) -> aiohttp.ClientSession:
    """A fresh client with its own cookie jar (one per patient/guest)."""
    connector = aiohttp.TCPConnector(ssl=relay.ssl_context())
    return aiohttp.ClientSession(base_url=relay.url, connector=connector)


class Signaling:
    """One signaling socket, with a buffer so tests can wait for a given message type."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.inbox: list[Json] = []
        self.close_frame_code: int | None = None

    async def send(self, message: Json) -> None:
        await self.ws.send_str(json.dumps(message))

    async def _next(self, timeout: float) -> Json | None:
        try:
            msg = await self.ws.receive(timeout=timeout)
        except TimeoutError:
            raise AssertionError(f"nothing received within {timeout:.1f}s") from None
        if msg.type is aiohttp.WSMsgType.TEXT:
            data: Json = json.loads(msg.data)
            return data
        if msg.type is aiohttp.WSMsgType.CLOSE:
            self.close_frame_code = int(msg.data)
        return None

    async def expect(self, kind: str, timeout: float = 5.0, **match: Any) -> Json:
        """The next message of type ``kind`` (whose fields equal ``match``), buffering others."""
        for i, message in enumerate(self.inbox):
            if message["type"] == kind and all(message.get(k) == v for k, v in match.items()):
                return self.inbox.pop(i)
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(f"no {kind} {match} within {timeout}s; got {self.inbox}")
            received = await self._next(left)
            if received is None:
                raise AssertionError(
                    f"socket closed ({self.close_frame_code}) waiting for {kind}; got {self.inbox}"
                )
            if received["type"] == kind and all(received.get(k) == v for k, v in match.items()):
                return received
            self.inbox.append(received)

    async def closed(self, timeout: float = 5.0) -> int | None:
        """Read until the server closes the socket; returns the code of its close frame.

        (aiohttp's ``close_code`` may read 1006 instead: a server closing from another task
        drops TCP right after its close frame, before our reply — the frame's code counts.)
        """
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.ws.closed:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(f"socket still open after {timeout}s; got {self.inbox}")
            msg = await self.ws.receive(timeout=left)
            if msg.type is aiohttp.WSMsgType.TEXT:
                self.inbox.append(json.loads(msg.data))
            elif msg.type is aiohttp.WSMsgType.CLOSE:
                self.close_frame_code = int(msg.data)
        return self.close_frame_code if self.close_frame_code is not None else self.ws.close_code

    async def hello(self) -> Json:
        await self.send({"type": "hello", "protocol": 1})
        return await self.expect("welcome")

    async def join(self) -> Json:
        """hello + join; returns ``joined`` (professionals) or ``waiting`` (others)."""
        await self.hello()
        await self.send({"type": "join"})
        return await self.expect_any(("joined", "waiting", "error"))

    async def expect_any(self, kinds: tuple[str, ...], timeout: float = 5.0) -> Json:
        for i, message in enumerate(self.inbox):
            if message["type"] in kinds:
                return self.inbox.pop(i)
        while True:
            received = await self._next(timeout)
            if received is None:
                raise AssertionError(f"socket closed waiting for {kinds}; got {self.inbox}")
            if received["type"] in kinds:
                return received
            self.inbox.append(received)


@asynccontextmanager
async def professional_socket(
    http: aiohttp.ClientSession, consultation_id: str, token: str
) -> AsyncIterator[Signaling]:
    """A professional's signaling socket (session as bearer token)."""
    async with http.ws_connect(f"/ws/consultations/{consultation_id}", headers=bearer(token)) as ws:
        yield Signaling(ws)


async def guest_pass(
    session: aiohttp.ClientSession,
    consultation_id: str,
    token: str,
    birth_date: str | None = None,
) -> Json:
    """Exchange a join token for the guest-pass cookie (kept in ``session``'s jar)."""
    body: Json = {"token": token}
    if birth_date is not None:
        body["birth_date"] = birth_date
    async with session.post(f"/api/consultations/{consultation_id}/join", json=body) as response:
        data: Json = await response.json()
        assert response.status == 200, data
        return data


@asynccontextmanager
async def guest_socket(
    relay: RelayProcess, consultation_id: str, token: str
) -> AsyncIterator[Signaling]:
    """A patient's/guest's signaling socket, authenticated like the page does."""
    async with client_session(relay) as session:
        await guest_pass(session, consultation_id, token)
        async with session.ws_connect(f"/ws/consultations/{consultation_id}?as=guest") as ws:
            yield Signaling(ws)


def soon(minutes: int = 0) -> str:
    return (datetime.now(UTC) + timedelta(minutes=minutes)).isoformat()


class PeerClient(Protocol):
    """A WebRTC test participant driven by its own reading task (see ``greeted_peer``)."""

    async def send(self, message: Json) -> None: ...
    async def run(self) -> None: ...
    async def event(self, kind: str, timeout: float = ...) -> Json: ...
    async def close(self) -> None: ...


P = TypeVar("P", bound=PeerClient)


@asynccontextmanager
async def greeted_peer(
    make: Callable[[aiohttp.ClientWebSocketResponse], P],
    session: aiohttp.ClientSession,
    path: str,
    headers: dict[str, str] | None = None,
) -> AsyncIterator[P]:
    """Open a signaling socket, start the client's reader, say hello; close it all after."""
    async with session.ws_connect(path, headers=headers or {}) as ws:
        client = make(ws)
        runner = asyncio.create_task(client.run())
        await client.send({"type": "hello", "protocol": 1})
        await client.event("welcome")
        try:
            yield client
        finally:
            await client.close()
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner


async def until(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds (AssertionError naming ``what`` after ``timeout``)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
