"""``/ws/events`` on the real relay: live push to every open session of the recipient,
resume from the last offset without gap or repeat, authentication at the upgrade."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from tests.harness.accounts import NURSE, PHYSICIAN
from tests.harness.relay_process import RelayProcess
from tests.relay.messaging.helpers import headers_for, json_of, start_thread


async def _next(ws: aiohttp.ClientWebSocketResponse, timeout: float = 10.0) -> dict[str, Any]:
    message = await ws.receive(timeout=timeout)
    assert message.type is aiohttp.WSMsgType.TEXT, message
    data: dict[str, Any] = json.loads(message.data)
    return data


async def _until(ws: aiohttp.ClientWebSocketResponse, kind: str, thread_id: str) -> dict[str, Any]:
    while True:
        event = await _next(ws)
        if event["type"] == kind and event.get("thread_id") == thread_id:
            return event


async def test_new_messages_are_pushed_to_every_session_and_resumed(
    relay: RelayProcess, http: aiohttp.ClientSession
) -> None:
    nurse = await headers_for(http, NURSE.email)
    first = await headers_for(http, PHYSICIAN.email)
    second = await headers_for(http, PHYSICIAN.email)  # another browser, another session
    async with (
        http.ws_connect("/ws/events", headers=first) as page_one,
        http.ws_connect("/ws/events", headers=second) as page_two,
    ):
        assert (await _next(page_one))["type"] == "ready"
        assert (await _next(page_two))["type"] == "ready"
        created = await start_thread(http, nurse, recipients=[PHYSICIAN.email], subject="Push")
        thread_id = created["id"]
        pushed_one = await _until(page_one, "message", thread_id)
        pushed_two = await _until(page_two, "message", thread_id)
        assert pushed_one["message_id"] == pushed_two["message_id"] == created["message_id"]
        assert "subject" not in pushed_one and "text" not in pushed_one  # identifiers only
        # Reading in one page updates the other (unread counters).
        async with http.post(f"/api/threads/{thread_id}/read", headers=first) as response:
            await json_of(response)
        assert (await _until(page_two, "read", thread_id))["type"] == "read"
        last_offset = pushed_one["offset"]

    # Offline: two more messages. Reconnecting after the last offset gets exactly them.
    posted = []
    for text in ("Un", "Deux"):
        async with http.post(
            f"/api/threads/{thread_id}/messages", json={"text": text}, headers=nurse
        ) as response:
            posted.append((await json_of(response, 201))["id"])
    async with http.ws_connect(f"/ws/events?after={last_offset}", headers=first) as page:
        assert (await _next(page))["type"] == "ready"
        missed: list[str] = []
        while len(missed) < 2:
            event = await _next(page)
            if event["type"] == "message" and event["thread_id"] == thread_id:
                missed.append(event["message_id"])
        assert missed == posted
        # Nothing more is pending for this thread: no repeat of what was seen.
        try:
            extra = await _next(page, timeout=0.5)
        except TimeoutError:
            extra = {}
        assert not (extra.get("type") == "message" and extra.get("thread_id") == thread_id)


async def test_the_socket_needs_a_session(relay: RelayProcess, http: aiohttp.ClientSession) -> None:
    connector = aiohttp.TCPConnector(ssl=relay.ssl_context())
    async with aiohttp.ClientSession(base_url=relay.url, connector=connector) as anonymous:
        try:
            async with anonymous.ws_connect("/ws/events"):
                raise AssertionError("connected without a session")
        except aiohttp.WSServerHandshakeError as refused:
            assert refused.status == 401
    headers = await headers_for(http, NURSE.email)
    try:
        async with http.ws_connect("/ws/events?after=not-an-offset", headers=headers):
            raise AssertionError("a malformed offset was accepted")
    except aiohttp.WSServerHandshakeError as refused:
        assert refused.status == 400


async def test_logout_closes_open_push_sockets(
    relay: RelayProcess, http: aiohttp.ClientSession
) -> None:
    """Pushes stop with the session: a logout elsewhere closes the socket (4401)."""
    headers = await headers_for(http, NURSE.email)
    async with http.ws_connect("/ws/events", headers=headers) as page:
        assert (await _next(page))["type"] == "ready"
        async with http.post("/api/logout", headers=headers) as response:
            assert response.status == 204
        message = await page.receive(timeout=30)
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert page.close_code == 4401, (message, page.close_code)
