"""``kill -9`` while 200 messages arrive over SMTP: after a restart, every message that got
``250`` is there, readable, in its thread (nothing is acknowledged before it is durable)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import aiosmtplib

from certs.tls import client_ssl_context
from tests.harness.accounts import PHYSICIAN, add_account
from tests.harness.relay_process import RelayProcess, init_data_dir, start_relay
from tests.relay.messaging.helpers import headers_for, json_of, simple_mail, thread

MESSAGES = 200
CONNECTIONS = 20
KILL_AFTER = 60  # acknowledged messages before the kill


async def test_kill_9_while_mail_arrives_loses_nothing_acknowledged(tmp_path: Path) -> None:
    data_dir = init_data_dir(tmp_path)
    add_account(data_dir, PHYSICIAN, teams=False)
    relay = start_relay(tmp_path)
    tls = client_ssl_context([relay.ca_file])
    acknowledged: list[int] = []
    killed = asyncio.Event()

    async def sender(worker: int) -> None:
        for n in range(worker, MESSAGES, CONNECTIONS):
            raw = simple_mail(
                "dr.crash@hopital.example", PHYSICIAN.email, f"crash-{n}", f"Texte {n}\n" * 100
            )
            try:
                await aiosmtplib.send(
                    raw,
                    sender="dr.crash@hopital.example",
                    recipients=[PHYSICIAN.email],
                    hostname="localhost",
                    port=relay.smtp_port,
                    start_tls=True,
                    tls_context=tls,
                    timeout=20,
                )
            except (aiosmtplib.SMTPException, OSError):
                if killed.is_set():
                    return
                raise
            acknowledged.append(n)
            if len(acknowledged) >= KILL_AFTER and not killed.is_set():
                killed.set()
                relay.kill9()

    await asyncio.gather(*(sender(w) for w in range(CONNECTIONS)))
    assert killed.is_set() and KILL_AFTER <= len(acknowledged) < MESSAGES

    restarted = RelayProcess(relay.data_dir, relay.port, smtp_port=relay.smtp_port)
    restarted.start()
    try:
        connector = aiohttp.TCPConnector(ssl=restarted.ssl_context())
        async with aiohttp.ClientSession(base_url=restarted.url, connector=connector) as http:
            doctor = await headers_for(http, PHYSICIAN.email)
            async with http.get("/api/threads", params={"limit": "200"}, headers=doctor) as r:
                threads = {t["subject"]: t["id"] for t in (await json_of(r))["threads"]}
            for n in acknowledged:
                assert f"crash-{n}" in threads, f"acknowledged message {n} lost"
            # Readable, whole: open a sample of them (every one is in the list above).
            for n in acknowledged[:: max(1, len(acknowledged) // 10)]:
                (message,) = (await thread(http, doctor, threads[f"crash-{n}"]))["messages"]
                assert message["text"].startswith(f"Texte {n}\n")
                assert message["text"].count(f"Texte {n}") == 100
    finally:
        restarted.stop()
