"""Message send → ``/ws/events`` push latency with 200 connected users.

Issue 4 target: p99 below 50 ms on this machine.

A relay (``relais serve``, its own process) has 200 professionals, all members of one team,
each with an open ``/ws/events`` socket (one session each). A member posts messages to the
team's thread one after the other; for every message, the latency of each of the 199 other
members is the time from the start of the ``POST`` (so it includes storing the message,
auditing it and its commit) to the arrival of that member's push event. The baseline row
compares the p99 with the 50 ms target; the p50 is informative.

Run: ``python -m bench.push_latency`` (``--users N --messages M`` to change the load).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from bench.run import Result, format_table
from bench.smtp_inbound import ADMIN_PASSWORD, PASSWORD, running_relay

TARGET_MS = 50.0
USERS = 200
MESSAGES = 50


async def _json(response: aiohttp.ClientResponse, status: int) -> Any:
    body = await response.json()
    if response.status != status:
        raise RuntimeError(f"HTTP {response.status}: {body}")
    return body


async def run(url: str, tls: ssl.SSLContext, users: int, messages: int) -> list[float]:
    """Latencies (ms) of every push of every message."""
    connector = aiohttp.TCPConnector(ssl=tls, limit=0)
    async with aiohttp.ClientSession(base_url=url, connector=connector) as http:

        async def login(email: str, password: str) -> dict[str, str]:
            async with http.post("/api/login", json={"email": email, "password": password}) as r:
                return {"Authorization": "Bearer " + (await _json(r, 200))["token"]}

        admin = await login("admin@relais.localhost", ADMIN_PASSWORD)
        async with http.post(
            "/api/admin/teams",
            json={"address": "bench-team", "name": "Équipe bench", "kind": "msp"},
            headers=admin,
        ) as r:
            team = await _json(r, 201)
        sessions = []
        for n in range(users):
            email = f"pro{n}@relais.localhost"
            async with http.post(
                "/api/admin/professionals",
                json={
                    "email": email,
                    "display_name": f"Pro {n}",
                    "role": "nurse",
                    "password": PASSWORD,
                },
                headers=admin,
            ) as r:
                pro = await _json(r, 201)
            async with http.post(
                f"/api/admin/teams/{team['id']}/members",
                json={"professional_id": pro["id"]},
                headers=admin,
            ) as r:
                if r.status != 204:
                    raise RuntimeError(f"member not added: {r.status}")
            sessions.append(await login(email, PASSWORD))
        sender = sessions[0]
        async with http.post(
            "/api/threads",
            json={"recipients": ["bench-team@relais.localhost"], "subject": "Bench", "text": "0"},
            headers=sender,
        ) as r:
            thread_id = (await _json(r, 201))["id"]

        sockets = [await http.ws_connect("/ws/events", headers=h) for h in sessions[1:]]
        for ws in sockets:
            ready = json.loads((await ws.receive(timeout=30)).data)
            if ready["type"] != "ready":
                raise RuntimeError(f"unexpected first event {ready}")
        latencies: list[float] = []

        async def wait_push(
            ws: aiohttp.ClientWebSocketResponse, message_id: asyncio.Future[str]
        ) -> float:
            while True:
                event = json.loads((await ws.receive(timeout=30)).data)
                arrived = time.perf_counter()
                if event.get("type") == "message" and event.get("message_id") == await message_id:
                    return arrived

        for n in range(messages):
            posted: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            waiters = [asyncio.ensure_future(wait_push(ws, posted)) for ws in sockets]
            started = time.perf_counter()
            async with http.post(
                f"/api/threads/{thread_id}/messages", json={"text": f"n°{n}"}, headers=sender
            ) as r:
                posted.set_result((await _json(r, 201))["id"])
            arrivals = await asyncio.gather(*waiters)
            latencies += [(arrival - started) * 1000 for arrival in arrivals]
        for ws in sockets:
            await ws.close()
        return latencies


def measure(users: int = USERS, messages: int = MESSAGES) -> dict[str, float]:
    """p50/p99 (ms) of send → push."""
    with tempfile.TemporaryDirectory(prefix="bench-push-") as tmp:
        root = Path(tmp)
        with running_relay(root, admin_password=ADMIN_PASSWORD) as (data_dir, https, _smtp):
            tls = ssl.create_default_context(cafile=str(data_dir / "certs" / "ca.pem"))
            latencies = asyncio.run(run(f"https://localhost:{https}", tls, users, messages))
    ordered = sorted(latencies)
    return {
        "pushes": float(len(ordered)),
        "p50": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "users": float(users),
    }


def results(figures: dict[str, float]) -> list[Result]:
    """The figures as :class:`bench.run.Result` rows."""
    users = int(figures["users"])
    return [
        Result(
            f"send → push p99, {users} users",
            figures["p99"],
            TARGET_MS,
            "ms",
            "issue 4 target (absolute)",
            target=1.0,
            higher_is_better=False,
        ),
        Result(
            f"send → push p50, {users} users",
            figures["p50"],
            TARGET_MS,
            "ms",
            "issue 4 target (absolute)",
            higher_is_better=False,
        ),
    ]


def main() -> list[Result]:
    """The run for ``python -m bench.run`` (about 30 s)."""
    return results(measure())


def cli(argv: Sequence[str]) -> None:
    """``python -m bench.push_latency [--users N] [--messages M]``."""
    parser = argparse.ArgumentParser(prog="python -m bench.push_latency")
    parser.add_argument("--users", type=int, default=USERS)
    parser.add_argument("--messages", type=int, default=MESSAGES)
    args = parser.parse_args(list(argv))
    figures = measure(args.users, args.messages)
    print(f"push latency: {figures['pushes']:,.0f} pushes to {args.users - 1} sockets")
    print(format_table([("push_latency", r) for r in results(figures)]))


if __name__ == "__main__":
    cli(sys.argv[1:])
