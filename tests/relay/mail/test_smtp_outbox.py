"""The durable outbox against a real SMTP smarthost (aiosmtpd, STARTTLS) started by the test:
retries while it is down, delivery when it comes back, permanent failures told in the thread
and by DSN, and no loss nor duplicate across ``kill -9``."""

from __future__ import annotations

import email
import email.policy
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import metric, require_component
from tests.harness.accounts import NURSE, add_account
from tests.harness.redis_server import free_port
from tests.harness.relay_process import RelayProcess, init_data_dir, start_relay
from tests.relay.messaging.helpers import (
    SUBJECT,
    eventually,
    headers_for,
    last_reply,
    start_thread,
    swaks,
    thread,
)
from tests.relay.messaging.sink import Received, SmtpSink


@dataclass
class Setup:
    root: Path
    relay: RelayProcess
    sink: SmtpSink
    env: dict[str, str]

    def restart(self) -> None:
        self.relay = RelayProcess(
            self.relay.data_dir, self.relay.port, self.env, smtp_port=self.relay.smtp_port
        )
        self.relay.start()


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    """A relay whose smarthost (the sink) is down until the test starts it."""
    sink = SmtpSink(tmp_path, free_port())
    data_dir = init_data_dir(tmp_path)
    add_account(data_dir, NURSE, teams=False)
    env = {
        "RELAIS_OUTBOX_SMARTHOST": "localhost",
        "RELAIS_OUTBOX_SMARTHOST_PORT": str(sink.port),
        "RELAIS_OUTBOX_SMARTHOST_CA_FILE": str(sink.ca_file),
        "RELAIS_OUTBOX_RETRY_INITIAL_SECONDS": "0.2",
        "RELAIS_OUTBOX_RETRY_MAX_SECONDS": "0.5",
        "RELAIS_OUTBOX_TIMEOUT_SECONDS": "5",
    }
    state = Setup(tmp_path, start_relay(tmp_path, env), sink, env)
    yield state
    state.sink.stop()
    if state.relay.process is not None and state.relay.process.poll() is None:
        state.relay.stop()


def _attempts(relay: RelayProcess) -> list[tuple[str, int]]:
    with sqlite3.connect(f"file:{relay.data_dir / 'relais.db'}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT state, attempts FROM outbox").fetchall()


def _message_ids(received: list[Received]) -> list[str]:
    ids = []
    for mail in received:
        parsed = email.message_from_bytes(mail.content, policy=email.policy.default)
        ids.append(str(parsed["Message-ID"]))
    return ids


async def _http(relay: RelayProcess) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(ssl=relay.ssl_context())
    return aiohttp.ClientSession(base_url=relay.url, connector=connector)


async def test_delivers_once_the_smarthost_comes_back(setup: Setup) -> None:
    recipients = ["a.suivi@cabinet.example", "b.suivi@cabinet.example"]
    async with await _http(setup.relay) as http:
        nurse = await headers_for(http, NURSE.email)
        created = await start_thread(http, nurse, recipients=recipients, subject="Suivi")

        async def retried() -> bool:
            rows = _attempts(setup.relay)
            return len(rows) == 2 and all(s == "pending" and n >= 2 for s, n in rows)

        await eventually(retried)  # down: retried with backoff, nothing lost

        async def backlog_shown() -> bool:
            # /metrics shows the backlog while the smarthost is down, and its age.
            waiting = await metric(http, "relais_outbox_pending")
            return waiting >= 2 and await metric(http, "relais_outbox_oldest_pending_seconds") > 0

        assert await eventually(backlog_shown)
        shown = await thread(http, nurse, created["id"])
        assert {d["state"] for d in shown["messages"][0]["deliveries"]} == {"queued"}

        setup.sink.start()  # back up

        async def both() -> list[Received] | None:
            got = setup.sink.handler.snapshot()
            return got if len(got) >= 2 else None

        received = await eventually(both)
        assert sorted(r.recipients[0] for r in received) == recipients
        assert all(setup.sink.handler.tls_seen)  # STARTTLS every time
        assert all(r.sender == "postmaster@relais.localhost" for r in received)
        for mail in received:
            parsed = email.message_from_bytes(mail.content, policy=email.policy.default)
            assert parsed["Subject"] == SUBJECT and b"Suivi" not in mail.content

        async def delivered() -> bool:
            first = (await thread(http, nurse, created["id"]))["messages"][0]
            return {d["state"] for d in first["deliveries"]} == {"delivered"}

        assert await eventually(delivered)
        # In /metrics: each attempt while down deferred, then each mail sent.
        assert await metric(http, 'relais_outbox_attempts_total{result="deferred"}') >= 4
        assert await metric(http, 'relais_outbox_attempts_total{result="sent"}') >= 2

        async def drained() -> bool:
            return await metric(http, "relais_outbox_pending") == 0

        assert await eventually(drained)
    assert len(set(_message_ids(setup.sink.handler.snapshot()))) == 2


async def test_permanent_failure_is_told_in_the_thread_and_by_dsn(setup: Setup) -> None:
    require_component("swaks", "swaks")
    setup.sink.handler.refuse.add("inconnu@cabinet.example")
    setup.sink.start()
    external = "dr.source@cabinet.example"
    async with await _http(setup.relay) as http:
        nurse = await headers_for(http, NURSE.email)
        created = await start_thread(
            http, nurse, recipients=[external, "inconnu@cabinet.example"], subject="Echec"
        )

        async def notice() -> dict[str, Any] | None:
            messages = (await thread(http, nurse, created["id"]))["messages"]
            system = [m for m in messages if m["source"] == "system"]
            return system[0] if system else None

        told = await eventually(notice)
        assert "inconnu@cabinet.example" in told["text"] and "5.1.1" in told["text"]
        first = (await thread(http, nurse, created["id"]))["messages"][0]
        failed = [d for d in first["deliveries"] if d["state"] == "failed"]
        assert len(failed) == 1 and "5.1.1" in (failed[0]["reason"] or "")
        assert await metric(http, 'relais_outbox_attempts_total{result="failed"}') >= 1

        # An external author whose message cannot be forwarded gets a DSN (RFC 3464).
        notification = next(r for r in setup.sink.handler.snapshot() if r.recipients == (external,))
        parsed = email.message_from_bytes(notification.content, policy=email.policy.default)
        reply_to = str(parsed["Reply-To"])
        path = setup.root / "reply.eml"
        path.write_text(
            f"From: {external}\r\nTo: {reply_to}\r\nSubject: Re: notification\r\n"
            "Message-ID: <dsn-cause@cabinet.example>\r\n\r\nMa reponse.\r\n"
        )
        _, transcript = swaks(
            setup.relay.smtp_port, "--tls", "--from", external, "--to", reply_to,
            "--data", str(path),
        )  # fmt: skip
        assert last_reply(transcript).startswith("250"), transcript[-600:]

        async def dsn() -> Received | None:
            for mail in setup.sink.handler.snapshot():
                report = email.message_from_bytes(mail.content, policy=email.policy.default)
                if mail.recipients == (external,) and report.get_content_type() == (
                    "multipart/report"
                ):
                    return mail
            return None

        bounce = await eventually(dsn)
        assert bounce.sender == "<>"  # null reverse-path: a bounce never causes another
        report = email.message_from_bytes(bounce.content, policy=email.policy.default)
        assert report.get_param("report-type") == "delivery-status"
        assert b"inconnu@cabinet.example" in bounce.content and b"5.1.1" in bounce.content


async def test_outbox_survives_kill_9_and_sends_each_mail_once(setup: Setup) -> None:
    recipients = [f"k{n}@cabinet.example" for n in range(5)]
    async with await _http(setup.relay) as http:
        nurse = await headers_for(http, NURSE.email)
        for address in recipients:
            await start_thread(http, nurse, recipients=[address], subject="Avant crash")

    async def queued() -> bool:
        rows = _attempts(setup.relay)
        return len(rows) == 5 and all(n >= 1 for _, n in rows)

    await eventually(queued)
    setup.relay.kill9()
    setup.sink.start()
    setup.restart()

    async def all_sent() -> list[Received] | None:
        got = setup.sink.handler.snapshot()
        return got if len(got) >= 5 else None

    await eventually(all_sent)
    # A further restart sends nothing again.
    setup.relay.stop()
    setup.restart()
    async with await _http(setup.relay) as http:
        await headers_for(http, NURSE.email)
    received = setup.sink.handler.snapshot()
    ids = _message_ids(received)
    assert len(ids) == len(set(ids)) == 5
    assert sorted(r.recipients[0] for r in received) == recipients
    assert {state for state, _ in _attempts(setup.relay)} == {"sent"}
