"""The hub's per-socket writer on a loopback server (port 0), the relay hot path's last step:
each receiver gets its frames complete and in order, and one that stops reading is closed
with 1013 once ``MAX_OUTBOX`` frames wait behind the transport's flow control."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re

import aiohttp

from relay.http.signaling_ws import MAX_OUTBOX, SignalingHub
from signaling.messages import MAX_SDP_CHARS
from signaling.room import RoomSettings
from tests.signaling.test_ws_hub import Recorder, serving, two_professionals

_SEQ = re.compile(r"o=- (\d+) ")


def _hub(recorder: Recorder) -> SignalingHub:
    # The per-socket rate limit is a policy, not what is tested here.
    settings = RoomSettings(rate_per_second=1e9, rate_burst=1_000_000)
    return SignalingHub(settings, audit=recorder.audit, on_ended=recorder.on_ended)


def _offer(seq: int, to: str, size: int) -> str:
    sdp = f"v=0\r\no=- {seq} 2 IN IP4 127.0.0.1\r\n"
    return json.dumps({"type": "offer", "to": to, "sdp": sdp + "a" * (size - len(sdp))})


async def _drain(ws: aiohttp.ClientWebSocketResponse) -> None:
    async for _message in ws:
        pass


async def test_a_burst_arrives_complete_and_in_order() -> None:
    async with serving(_hub(Recorder())) as open_socket:
        doctor, nurse = await two_professionals(open_socket)
        for seq in range(500):
            if seq % 10:
                candidate = f"candidate:{seq} 1 udp 2122260223 192.0.2.7 5000 typ host"
                frame = {"type": "candidate", "to": "dr2", "candidate": candidate}
                await doctor.send({**frame, "sdpMid": "0", "sdpMLineIndex": 0})
            else:
                await doctor.ws.send_str(_offer(seq, "dr2", 3000))
        received: list[int] = []
        while len(received) < 500:
            message = await nurse.expect_any(("offer", "candidate"))
            assert message["from"] == "dr1"
            if message["type"] == "offer":
                found = _SEQ.search(message["sdp"])
                assert found is not None
                received.append(int(found.group(1)))
            else:
                received.append(int(message["candidate"].split(":")[1].split()[0]))
        assert received == list(range(500))
        # The sender's socket kept working throughout.
        await doctor.send({"type": "ping", "ref": 7})
        assert (await doctor.expect("pong"))["ref"] == 7


async def test_a_receiver_that_stops_reading_gets_an_ordered_prefix_then_1013() -> None:
    async with serving(_hub(Recorder())) as open_socket:
        doctor, nurse = await two_professionals(open_socket)
        # The doctor's own replies (errors once the nurse is gone) must not back up too.
        draining = asyncio.create_task(_drain(doctor.ws))
        try:
            # The nurse reads nothing: the kernel buffers fill, aiohttp waits for the
            # transport to drain, then the outbox fills past MAX_OUTBOX.
            size = MAX_SDP_CHARS - 100
            total = 0
            for seq in range(4 * MAX_OUTBOX):
                await doctor.ws.send_str(_offer(seq, "dr2", size))
                total += 1
                if nurse.ws.closed:
                    break
            received: list[int] = []
            while True:
                message = await nurse.ws.receive(timeout=10)
                if message.type is not aiohttp.WSMsgType.TEXT:
                    break
                data = json.loads(message.data)
                if data["type"] != "offer":
                    continue  # waiting_list, sent after joined
                found = _SEQ.search(data["sdp"])
                assert found is not None
                received.append(int(found.group(1)))
            assert message.type is aiohttp.WSMsgType.CLOSE, message
            assert message.data == 1013 and message.extra == "slow_consumer"
            # Every frame up to the cut, none twice, none reordered; the cut came only after
            # MAX_OUTBOX frames were queued behind the kernel buffers.
            assert received == list(range(len(received)))
            assert len(received) + MAX_OUTBOX <= total
        finally:
            draining.cancel()


async def test_a_send_wakes_an_idle_writer_and_a_dead_writer_is_never_woken() -> None:
    hub = _hub(Recorder())
    async with serving(hub) as open_socket:
        doctor, nurse = await two_professionals(open_socket)
        runner = hub._rooms["room1"]
        peer = runner.peers["s2"]  # the second socket of this fresh hub: the nurse's
        await asyncio.sleep(0.05)
        # Idle: waiting on a Future of its own, which the next send completes.
        assert peer._idle is not None and not peer._idle.done()
        await doctor.send({"type": "candidate", "to": "dr2", "candidate": "candidate:1"})
        assert (await nurse.expect("candidate"))["from"] == "dr1"
        # A writer cancelled while idle (the hub's grace timeout) leaves a cancelled Future:
        # sends and closes that come later must not try to complete it.
        await asyncio.sleep(0.05)
        waiting = peer._idle
        assert waiting is not None
        peer.writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await peer.writer
        assert waiting.cancelled()
        peer.send("{}")
        peer.close(1000, "")
        assert peer.close_code == 1000
