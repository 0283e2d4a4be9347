"""Asynchronous bounces against the real relay: a notification is handed over (outbox .eml),
then a remote MTA's DSN comes back over SMTP (swaks, STARTTLS, null reverse-path) to the
bounce address. Only a report naming our Message-ID and the very recipient of that mail
fails the delivery; the author is told in the thread, and the change is audited."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import require_component
from tests.harness.accounts import NURSE, add_account
from tests.harness.relay_process import RelayProcess, init_data_dir, start_relay
from tests.relay.mail import bounces
from tests.relay.messaging.helpers import (
    audit_events,
    eventually,
    headers_for,
    json_of,
    last_reply,
    mails_to,
    simple_mail,
    start_thread,
    swaks,
    thread,
)

BOUNCE_ADDRESS = "postmaster@relais.localhost"


@pytest.fixture(autouse=True)
def _swaks() -> None:
    require_component("swaks", "swaks")


def _recipient() -> str:
    return f"suivi.{secrets.token_hex(4)}@cabinet.example"


async def _delivered_thread(
    http: aiohttp.ClientSession, relay: RelayProcess, recipient: str
) -> tuple[dict[str, str], str, str]:
    """A nurse's thread to ``recipient``, its notification handed over (the outbox directory):
    (nurse headers, thread id, the notification's Message-ID)."""
    nurse = await headers_for(http, NURSE.email)
    created = await start_thread(http, nurse, recipients=[recipient], subject="Suivi de plaie")

    async def delivered() -> bool:
        first = (await thread(http, nurse, created["id"]))["messages"][0]
        return [d["state"] for d in first["deliveries"] if d["channel"] != "inbox"] == ["delivered"]

    await eventually(delivered)
    ((_, mail),) = mails_to(relay.data_dir, recipient)
    return nurse, created["id"], str(mail["Message-ID"])


def _send_report(relay: RelayProcess, tmp_path: Path, raw: bytes, *, sender: str = "<>") -> str:
    path = tmp_path / f"dsn-{secrets.token_hex(4)}.eml"
    path.write_bytes(raw)
    _code, transcript = swaks(
        relay.smtp_port, "--tls", "--from", sender, "--to", BOUNCE_ADDRESS, "--data", f"@{path}"
    )
    return transcript


async def _state(
    http: aiohttp.ClientSession, nurse: dict[str, str], thread_id: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the mailed delivery of the first message, the relay's notices in the thread)."""
    messages = (await thread(http, nurse, thread_id))["messages"]
    (mailed,) = [d for d in messages[0]["deliveries"] if d["channel"] != "inbox"]
    return mailed, [m for m in messages if m["source"] == "system"]


@pytest.mark.parametrize(
    ("shape", "status"),
    [
        (bounces.postfix, "5.1.1"),
        (bounces.exim, "5.2.1"),
        (bounces.exchange, "5.1.10"),
    ],
    ids=["postfix", "exim", "exchange"],
)
async def test_a_late_bounce_fails_the_delivery_and_tells_the_author(
    relay: RelayProcess,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    shape: Callable[[str, str], bytes],
    status: str,
) -> None:
    recipient = _recipient()
    nurse, thread_id, message_id = await _delivered_thread(http, relay, recipient)
    transcript = _send_report(relay, tmp_path, shape(message_id, recipient))
    assert "MAIL FROM:<>" in transcript  # the null reverse-path of a real report
    assert last_reply(transcript).startswith("250 2.0.0"), transcript[-600:]

    # Durable when 250 was answered: no waiting needed.
    mailed, notices = await _state(http, nurse, thread_id)
    assert mailed["state"] == "failed"
    assert mailed["reason"].startswith(f"{status} ")  # the code, then the remote's words
    (notice,) = notices
    assert recipient in notice["text"] and status in notice["text"]
    assert "renvoyé" in notice["text"] and "définitif" in notice["text"]

    relayed = await audit_events(http, resource=thread_id, action="message_relayed")
    failures = [e for e in relayed if e["outcome"] == "8"]
    assert len(failures) == 1, relayed
    event = json.dumps(failures[0]["event"])
    for expected in ('"bounced"', f'"{status}"', '"delivered"', '"failed"', "TLSv1"):
        assert expected in event

    # The same report again (a retry after a lost 250): nothing more happens.
    assert last_reply(_send_report(relay, tmp_path, shape(message_id, recipient))).startswith("250")
    assert len((await _state(http, nurse, thread_id))[1]) == 1
    relayed = await audit_events(http, resource=thread_id, action="message_relayed")
    assert len([e for e in relayed if e["outcome"] == "8"]) == 1
    # Nothing was ever sent because of the bounce (no report about a report).
    assert len(mails_to(relay.data_dir, recipient)) == 1


async def _unchanged(http: aiohttp.ClientSession, nurse: dict[str, str], thread_id: str) -> None:
    mailed, notices = await _state(http, nurse, thread_id)
    assert mailed["state"] == "delivered" and mailed["reason"] is None
    assert notices == []
    relayed = await audit_events(http, resource=thread_id, action="message_relayed")
    assert [e for e in relayed if e["outcome"] == "8"] == []


async def _threads(http: aiohttp.ClientSession, nurse: dict[str, str]) -> list[str]:
    async with http.get("/api/threads", params={"limit": "200"}, headers=nurse) as response:
        return [t["id"] for t in (await json_of(response))["threads"]]


async def test_a_delay_warning_changes_nothing(
    relay: RelayProcess, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    recipient = _recipient()
    nurse, thread_id, message_id = await _delivered_thread(http, relay, recipient)
    report = bounces.postfix(message_id, recipient, action="delayed", status="4.4.1")
    assert last_reply(_send_report(relay, tmp_path, report)).startswith("250 2.0.0")
    await _unchanged(http, nurse, thread_id)


async def test_a_report_for_an_unknown_message_is_only_kept_for_postmaster(
    relay: RelayProcess, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    recipient = _recipient()
    nurse, thread_id, _ = await _delivered_thread(http, relay, recipient)
    before = await _threads(http, nurse)
    since = datetime.now(UTC).isoformat()
    unknown = f"<{secrets.token_urlsafe(18)}@relais.localhost>"
    transcript = _send_report(relay, tmp_path, bounces.postfix(unknown, recipient))
    assert last_reply(transcript).startswith("250 2.0.0")
    await _unchanged(http, nurse, thread_id)
    assert await _threads(http, nurse) == before  # no thread for whoever sent it
    assert await _postmaster_copies(http, since) == 1  # today's behaviour: kept


async def _postmaster_copies(http: aiohttp.ClientSession, since: str) -> int:
    """Mail kept for postmaster, as traced (a message_received event about a raw mail)."""
    received = await audit_events(http, action="message_received", since=since)
    return sum("urn:relais-sante:mail" in json.dumps(e["event"]) for e in received)


async def test_a_report_naming_another_recipient_changes_nothing(
    relay: RelayProcess, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    recipient = _recipient()
    nurse, thread_id, message_id = await _delivered_thread(http, relay, recipient)
    # Our real Message-ID, but the failure claimed for another address (a forgery, or a
    # report about someone else): the mail to ``recipient`` stays delivered.
    forged = bounces.postfix(message_id, "autre@cabinet.example", original_to=recipient)
    assert last_reply(_send_report(relay, tmp_path, forged)).startswith("250 2.0.0")
    await _unchanged(http, nurse, thread_id)


# --- a relay that trusts one reporting MTA only ------------------------------------------------


@pytest.fixture(scope="module")
def strict_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    """Mail to mailboxes only from smtp.cabinet.example (or a trusted certificate)."""
    root = tmp_path_factory.mktemp("bounces-strict")
    data_dir = init_data_dir(root)
    add_account(data_dir, NURSE, teams=False)
    process = start_relay(root, {"RELAIS_SMTP_ALLOWED_SENDER_DOMAINS": "smtp.cabinet.example"})
    yield process
    process.stop()


async def test_only_reports_from_a_trusted_sender_change_states(
    strict_relay: RelayProcess, tmp_path: Path
) -> None:
    connector = aiohttp.TCPConnector(ssl=strict_relay.ssl_context())
    async with aiohttp.ClientSession(base_url=strict_relay.url, connector=connector) as http:
        recipient = _recipient()
        nurse, thread_id, message_id = await _delivered_thread(http, strict_relay, recipient)
        # Exim's report comes from mail.hopital.example, which this relay does not trust:
        # postmaster still takes it (RFC 5321 §4.5.1), but it fails nothing.
        untrusted = bounces.exim(message_id, recipient)
        assert last_reply(_send_report(strict_relay, tmp_path, untrusted)).startswith("250")
        mailed, notices = await _state(http, nurse, thread_id)
        assert mailed["state"] == "delivered" and notices == []
        # The same failure reported by the trusted MTA (MAILER-DAEMON@smtp.cabinet.example).
        trusted = bounces.postfix(message_id, recipient)
        assert last_reply(_send_report(strict_relay, tmp_path, trusted)).startswith("250")
        mailed, notices = await _state(http, nurse, thread_id)
        assert mailed["state"] == "failed" and len(notices) == 1


# --- a relay whose postmaster mail a professional reads ------------------------------------


@pytest.fixture(scope="module")
def read_postmaster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    root = tmp_path_factory.mktemp("postmaster-reader")
    data_dir = init_data_dir(root)
    add_account(data_dir, NURSE, teams=False)
    process = start_relay(root, {"RELAIS_SMTP_POSTMASTER_READER": NURSE.email})
    yield process
    process.stop()


async def test_postmaster_mail_reaches_its_reader_but_reports_the_relay_reads_do_not(
    read_postmaster: RelayProcess, tmp_path: Path
) -> None:
    relay = read_postmaster
    connector = aiohttp.TCPConnector(ssl=relay.ssl_context())
    async with aiohttp.ClientSession(base_url=relay.url, connector=connector) as http:
        nurse = await headers_for(http, NURSE.email)
        path = tmp_path / "question.eml"
        path.write_bytes(
            simple_mail("admin@cabinet.example", BOUNCE_ADDRESS, "Question au postmaster")
        )
        _code, transcript = swaks(
            relay.smtp_port, "--tls", "--from", "admin@cabinet.example", "--to", BOUNCE_ADDRESS,
            "--data", f"@{path}",
        )  # fmt: skip
        assert last_reply(transcript).startswith("250 2.0.0"), transcript[-400:]
        async with http.get("/api/threads", params={"limit": "200"}, headers=nurse) as response:
            listed = (await json_of(response))["threads"]
        lines = [t for t in listed if t["subject"] == "Question au postmaster"]
        assert len(lines) == 1
        (message,) = (await thread(http, nurse, lines[0]["id"]))["messages"]
        assert message["source"] == "smtp"
        assert message["author"]["address"] == "admin@cabinet.example"
        received = await audit_events(http, resource=lines[0]["id"], action="message_received")
        assert received  # traced like any mail

        # A delivery report the relay reads itself is not passed on.
        before = await _threads(http, nurse)
        report = bounces.postfix(f"<{secrets.token_urlsafe(12)}@relais.localhost>", _recipient())
        assert last_reply(_send_report(relay, tmp_path, report)).startswith("250 2.0.0")
        assert await _threads(http, nurse) == before
