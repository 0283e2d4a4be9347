"""``/ws/events``: push of new messages and state changes to the signed-in user's pages.

Authenticated at the upgrade by the session (cookie for pages, ``Authorization: Bearer`` for
API clients; never a token in the URL). It forwards the events of the user's bus channel
(``user:<id>``, see :mod:`relay.messaging.events`) as JSON text frames, each with its bus
``offset``. A page that reconnects passes ``?after=<last offset>`` and gets what it missed,
without gap or repeat (:func:`storage.bus.resume`); when that offset is too old it gets
``{"type": "resync"}`` and reloads. Without ``after`` it gets ``{"type": "ready"}`` once
subscribed, then live events: load the state after ``ready`` and nothing is missed.

Events carry identifiers only; pages fetch what changed through the audited API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Final

from aiohttp import WSMsgType, web

from relay.errors import BadRequest, Unauthenticated
from relay.http.context import runtime, session_token
from relay.http.route import Route
from relay.messaging.events import EventFormatError, parse_push_event, user_channel
from relay.policy import Action
from relay.runtime import Runtime
from storage.bus import BusEvent, EventBus, OffsetExpired, offset_order, resume
from storage.errors import BusError, InvalidOffset, SubscriptionOverflow

log = logging.getLogger("relais.events")

HEARTBEAT_SECONDS: Final = 20.0
TRY_AGAIN_LATER: Final = 1013  # RFC 6455 §7.4.1 (IANA registry): reconnect with ?after=
SESSION_CHECK_SECONDS: Final = 10.0
SESSION_ENDED: Final = 4401  # application range (RFC 6455 §7.4.2); mirrors HTTP 401


async def events_socket(request: web.Request) -> web.StreamResponse:
    rt = runtime(request)
    token = session_token(request)
    idle = rt.config.accounts.session_idle_minutes * 60
    session = await rt.accounts.session(token, rt.clock(), idle) if token else None
    if session is None:
        raise Unauthenticated("Session absente ou expirée.", code="session_expired")
    after = request.query.get("after") or None
    if after is not None:
        try:
            offset_order(after)
        except InvalidOffset:
            raise BadRequest("« after » n'est pas une position d'événement.") from None
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_SECONDS, max_msg_size=4096)
    await ws.prepare(request)
    channel = user_channel(session.professional.id)
    forwarder = asyncio.create_task(_forward(ws, rt.bus, channel, after))
    assert token is not None
    try:
        # Pages send nothing: reading notices the close, and every SESSION_CHECK_SECONDS of
        # silence the session is checked again, so pushes stop soon after a logout or expiry.
        # (Closing from this task, the only reader, keeps the close handshake clean.)
        while not ws.closed:
            try:
                message = await ws.receive(timeout=SESSION_CHECK_SECONDS)
            except TimeoutError:
                if not await _session_alive(rt, token):
                    await ws.close(code=SESSION_ENDED, message=b"session_expired")
                continue
            if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                break
            if message.type is WSMsgType.ERROR:
                break
    finally:
        forwarder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await forwarder
    return ws


async def _session_alive(rt: Runtime, token: str) -> bool:
    idle = rt.config.accounts.session_idle_minutes * 60
    try:
        # touch=False: an open page is not activity; the idle timeout still applies.
        return await rt.accounts.session(token, rt.clock(), idle, touch=False) is not None
    except Exception as exc:  # database briefly unavailable: keep the socket, check later
        log.warning("push socket session check failed: %s", type(exc).__name__)
        return True


async def _forward(
    ws: web.WebSocketResponse, bus: EventBus, channel: str, after: str | None
) -> None:
    try:
        if after is None:
            async with bus.subscribe(channel) as live:
                await ws.send_str(json.dumps({"type": "ready"}))
                await _send_all(ws, live)
        else:
            try:
                async with contextlib.aclosing(resume(bus, channel, after)) as events:
                    await ws.send_str(json.dumps({"type": "ready"}))
                    await _send_all(ws, events)
            except OffsetExpired:
                await ws.send_str(json.dumps({"type": "resync"}))
                async with bus.subscribe(channel) as live:
                    await _send_all(ws, live)
    except SubscriptionOverflow:
        await ws.close(code=TRY_AGAIN_LATER, message=b"slow_consumer")
    except BusError as exc:
        log.warning("event bus unavailable for a push socket: %s", type(exc).__name__)
        await ws.close(code=TRY_AGAIN_LATER, message=b"bus_unavailable")
    except ConnectionError:
        return


async def _send_all(ws: web.WebSocketResponse, events: AsyncIterator[BusEvent]) -> None:
    async for event in events:
        try:
            data = parse_push_event(event.payload).to_json()
        except EventFormatError:
            continue
        data["offset"] = event.offset
        await ws.send_str(json.dumps(data))


ROUTES = [
    Route(
        "GET",
        "/ws/events",
        events_socket,
        Action.PUBLIC,  # authenticated by the session at the upgrade
        "Push of new messages and state changes (WebSocket)",
        "messages",
        in_api_document=False,
    ),
]
