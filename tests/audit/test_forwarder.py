"""Audit forwarding to a real syslog collector (rsyslogd + ossl driver) over TLS."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import re
import secrets
import sqlite3
import ssl
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from certs.ca import create_ca
from certs.issue import issue_server_certificate
from certs.tls import client_ssl_context
from relay.audit import atna
from relay.audit import events as ev
from relay.audit.forwarder import AuditSource, SyslogForwarder, backoff_delay, format_entry
from tests.audit.rsyslog_collector import (
    OSSL_DRIVER,
    RSYSLOGD,
    ReceivedMessage,
    RsyslogCollector,
    start_rsyslog_collector,
)
from tests.conftest import require_component

RECORDED = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
_SEQUENCE = re.compile(r'\[meta sequenceId="([0-9]+)"\]')
_hostnames = itertools.count()


# --- fixtures ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """PEM files: our CA, a collector certificate it issued, one from an unknown CA."""

    ca: Path
    cert: Path
    key: Path
    untrusted_cert: Path
    untrusted_key: Path

    def client_context(self) -> ssl.SSLContext:
        return client_ssl_context([self.ca])


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("syslog-pki")
    now = datetime.now(UTC)  # the forwarder checks validity against the real clock
    ca, other_ca = create_ca("CA de test", now), create_ca("CA inconnue", now)
    files = Pki(*(directory / name for name in ("ca.pem", "c.pem", "c.key", "u.pem", "u.key")))
    ca.to_pem_files(files.ca, directory / "ca.key")
    issue_server_certificate(ca, ["collector.localhost"], now).to_pem_files(files.cert, files.key)
    issue_server_certificate(other_ca, ["collector.localhost"], now).to_pem_files(
        files.untrusted_cert, files.untrusted_key
    )
    return files


def _start(directory: Path, pki: Pki, *, trusted: bool = True) -> RsyslogCollector:
    require_component(RSYSLOGD, "rsyslog")
    require_component(OSSL_DRIVER, "rsyslog-openssl")
    cert, key = (pki.cert, pki.key) if trusted else (pki.untrusted_cert, pki.untrusted_key)
    return start_rsyslog_collector(directory, cert, key, ca_path=pki.ca)


@pytest.fixture(scope="session")
def collector(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[RsyslogCollector]:
    """One collector for the tests that never stop it; they keep apart by HOSTNAME."""
    server = _start(tmp_path_factory.mktemp("rsyslog"), pki)
    yield server
    server.stop()


@pytest.fixture
def own_collector(tmp_path: Path, pki: Pki) -> Iterator[list[RsyslogCollector]]:
    """A collector the test may kill and restart (a one-item list: restart replaces it)."""
    servers = [_start(tmp_path, pki)]
    yield servers
    servers[0].stop()


# --- audit log stand-ins ----------------------------------------------------------------------


def make_event(index: int) -> bytes:
    """Canonical AuditEvent for ``index``: every 5th one a failed login, the rest reads."""
    now = RECORDED + timedelta(seconds=index, milliseconds=index % 1000)
    if index % 5 == 4:
        record = ev.AuditRecord(
            ev.AuditAction.LOGIN_FAILED,
            ev.Outcome.MINOR_FAILURE,
            now,
            ev.Actor.professional(f"acc-{index}", "nurse"),
            "relais-1",
            detail=(("method", "password"),),
        )
    else:
        record = ev.AuditRecord(
            ev.AuditAction.MESSAGE_READ,
            ev.Outcome.SUCCESS,
            now,
            ev.Actor.professional(f"acc-{index}", "physician", "10003461033"),
            "relais-1",
            entities=(ev.EntityRef(ev.ResourceKind.MESSAGE, f"msg-{index}"),),
        )
    return ev.seal(record, index=index, salt=secrets.token_bytes(32)).content


class MemoryLog:
    """In-memory AuditSource: entries in a list, cursors in a dict."""

    def __init__(self) -> None:
        self.entries: list[tuple[int, bytes]] = []
        self.cursors: dict[str, int] = {}

    def append(self, count: int = 1) -> None:
        for _ in range(count):
            index = len(self.entries)
            self.entries.append((index, make_event(index)))

    async def entries_after(self, index: int, limit: int) -> list[tuple[int, bytes]]:
        return self.entries[index + 1 : index + 1 + limit]

    async def get_cursor(self, name: str) -> int:
        return self.cursors.get(name, -1)

    async def set_cursor(self, name: str, index: int) -> None:
        self.cursors[name] = index


class SqliteLog:
    """AuditSource persisted in SQLite (entries and cursors), reopened as a restart would."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE IF NOT EXISTS entry (idx INTEGER PRIMARY KEY, body BLOB)")
        self.db.execute("CREATE TABLE IF NOT EXISTS cursor (name TEXT PRIMARY KEY, idx INTEGER)")

    def append(self, count: int = 1) -> None:
        (size,) = self.db.execute("SELECT count(*) FROM entry").fetchone()
        for index in range(size, size + count):
            self.db.execute("INSERT INTO entry VALUES (?, ?)", (index, make_event(index)))

    async def entries_after(self, index: int, limit: int) -> list[tuple[int, bytes]]:
        query = "SELECT idx, body FROM entry WHERE idx > ? ORDER BY idx LIMIT ?"
        return [(int(i), bytes(body)) for i, body in self.db.execute(query, (index, limit))]

    async def get_cursor(self, name: str) -> int:
        row = self.db.execute("SELECT idx FROM cursor WHERE name = ?", (name,)).fetchone()
        return -1 if row is None else int(row[0])

    async def set_cursor(self, name: str, index: int) -> None:
        self.db.execute("INSERT OR REPLACE INTO cursor VALUES (?, ?)", (name, index))

    def close(self) -> None:
        self.db.close()


def new_hostname() -> str:
    """A HOSTNAME of its own per test, to pick its messages out of a shared collector."""
    return f"relais-{next(_hostnames)}"


def forwarder(
    source: AuditSource, port: int, pki: Pki, hostname: str, **options: Any
) -> SyslogForwarder:
    settings: dict[str, Any] = {
        "batch": 7,
        "commit_delay": 0.2,
        "poll_interval": 0.2,
        "backoff_initial": 0.05,
        "backoff_max": 0.3,
        "rng": random.Random(5425),
    } | options
    return SyslogForwarder(
        source,
        host="127.0.0.1",
        port=port,
        ssl_context=pki.client_context(),
        hostname=hostname,
        **settings,
    )


@contextlib.asynccontextmanager
async def running(sender: SyslogForwarder) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(sender.run())
    try:
        yield task
    finally:
        await sender.stop()
        await task


def index_of(message: ReceivedMessage) -> int:
    match = _SEQUENCE.fullmatch(message.structured_data)
    assert match is not None, message.structured_data
    return int(match[1]) - 1


def received_indices(collector: RsyslogCollector, hostname: str) -> list[int]:
    return [index_of(m) for m in collector.received() if m.hostname == hostname]


async def wait_until_received(
    collector: RsyslogCollector, hostname: str, wanted: set[int], timeout: float = 10.0
) -> list[int]:
    """Indices received from ``hostname`` once they include ``wanted`` (in arrival order)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        indices = await asyncio.to_thread(received_indices, collector, hostname)
        if wanted <= set(indices):
            return indices
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"missing {sorted(wanted - set(indices))}; log:\n{collector.log}")
        await asyncio.sleep(0.03)


async def until(condition: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


# --- pure parts -------------------------------------------------------------------------------


def test_format_entry_round_trip() -> None:
    frames, rest = atna.parse_frames(
        format_entry(7, make_event(7), hostname="relais-1")
        + format_entry(9, make_event(9), hostname="relais-1")
    )
    assert rest == b""
    read, failed = (atna.parse_syslog_message(frame) for frame in frames)
    assert (read.facility, read.severity, failed.severity) == (10, 5, 4)
    assert (read.hostname, read.app_name, read.procid, read.msgid) == (
        "relais-1",
        "relais",
        "-",
        "IHE+RFC-3881",
    )
    assert read.timestamp == "2026-03-02T09:30:07.007Z"  # the event's recorded time
    assert (read.structured_data, failed.structured_data) == (
        '[meta sequenceId="8"]',
        '[meta sequenceId="10"]',
    )
    message = ET.fromstring(read.msg)  # noqa: S314 (our own output)
    assert message.find("EventIdentification/EventID") is not None
    entity = message.find("ParticipantObjectIdentification")
    assert entity is not None and entity.get("ParticipantObjectID") == "msg-7"


def test_format_entry_sequence_wraps_and_refuses_non_events() -> None:
    # RFC 5424 §7.3.1: sequenceId 1..2147483647, then wraps to 1.
    assert b'sequenceId="2147483647"' in format_entry(2147483646, make_event(1), hostname="h")
    assert b'sequenceId="1"]' in format_entry(2147483647, make_event(1), hostname="h")
    with pytest.raises(KeyError):
        format_entry(0, b'{"resourceType":"Patient"}', hostname="h")
    with pytest.raises(ValueError, match="HOSTNAME"):
        format_entry(0, make_event(0), hostname="relais 1")


def test_backoff_delay_grows_with_jitter_and_caps() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(n, initial=0.5, maximum=30.0, rng=rng) for n in range(1, 12)]
    for failures, delay in enumerate(delays, start=1):
        nominal = min(30.0, 0.5 * 2 ** (failures - 1))
        assert nominal / 2 <= delay <= nominal
    assert len(set(delays)) == len(delays)  # jittered
    assert backoff_delay(10_000, initial=0.5, maximum=30.0) <= 30.0
    with pytest.raises(ValueError, match="failures"):
        backoff_delay(0, initial=0.5, maximum=30.0)


# --- against rsyslogd -------------------------------------------------------------------------


async def test_events_arrive_over_tls_in_order_as_rfc5424(
    collector: RsyslogCollector, pki: Pki
) -> None:
    log = MemoryLog()
    log.append(25)
    forwarded: list[int] = []
    hostname = new_hostname()
    sender = forwarder(log, collector.port, pki, hostname, on_forwarded=forwarded.append)

    assert await sender.forward_once() == 25
    assert log.cursors == {"syslog": 24} and sender.cursor == 24 and sum(forwarded) == 25
    await wait_until_received(collector, hostname, set(range(25)))
    assert await sender.forward_once() == 0
    await sender.stop()

    messages = [m for m in collector.received() if m.hostname == hostname]
    assert [index_of(m) for m in messages] == list(range(25))  # in order, exactly once
    for message, (index, content) in zip(messages, log.entries, strict=True):
        # What rsyslog's own RFC 5424 parser understood.
        failed = index % 5 == 4
        assert message.pri == 10 * 8 + (4 if failed else 5)
        assert (message.version, message.app_name, message.msgid) == ("1", "relais", "IHE+RFC-3881")
        assert message.timestamp == ev.format_instant(
            RECORDED + timedelta(seconds=index, milliseconds=index)
        )
        # Byte for byte what was framed: octet counting kept the XML's newline inside.
        assert atna.frame(message.raw) == format_entry(index, content, hostname=hostname)
        assert b"\n" in message.msg
        xml = ET.fromstring(message.msg)  # noqa: S314 (our own output)
        event_id = xml.find("EventIdentification/EventID")
        assert event_id is not None
        assert event_id.get("csd-code") == ("110114" if failed else "110110")
        outcome = xml.find("EventIdentification")
        assert outcome is not None and outcome.get("EventOutcomeIndicator") == (
            "4" if failed else "0"
        )


def large_event(index: int) -> bytes:
    """An event near the size limits (16 entities, 16 details): its XML exceeds 8 KiB."""
    record = ev.AuditRecord(
        ev.AuditAction.EXPORT,
        ev.Outcome.SUCCESS,
        RECORDED,
        ev.Actor.professional("acc-1", "admin"),
        "relais-1",
        entities=tuple(ev.EntityRef(ev.ResourceKind.MESSAGE, f"msg-{n:0>100}") for n in range(15)),
        patient="ab" * 32,
        detail=tuple((key.value, "x" * 200) for key in list(ev.DetailKey)[1:]),
    )
    return ev.seal(record, index=index, salt=secrets.token_bytes(32)).content


async def test_large_events_arrive_whole_and_unreadable_entries_are_skipped(
    collector: RsyslogCollector, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    log = MemoryLog()
    log.entries = [(0, large_event(0)), (1, b'{"resourceType": "AuditEvent"'), (2, make_event(2))]
    hostname = new_hostname()
    sender = forwarder(log, collector.port, pki, hostname)
    assert await sender.forward_once() == 3  # the unreadable entry does not block the rest
    await sender.stop()
    await wait_until_received(collector, hostname, {0, 2})
    messages = [m for m in collector.received() if m.hostname == hostname]
    assert [index_of(m) for m in messages] == [0, 2]
    assert len(messages[0].raw) > 8192  # rsyslog's default limit; the harness allows 64 KiB
    assert atna.frame(messages[0].raw) == format_entry(0, log.entries[0][1], hostname=hostname)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == ["audit forwarding: entry 1 skipped (JSONDecodeError)"]


async def test_collector_down_events_stay_queued_and_arrive_in_order(
    own_collector: list[RsyslogCollector], pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="relay.audit.forwarder")
    log = MemoryLog()
    hostname = new_hostname()
    sender = forwarder(log, own_collector[0].port, pki, hostname, commit_delay=1.0)
    appending = True

    async def keep_appending() -> None:
        while appending:
            log.append()
            sender.notify()
            await asyncio.sleep(0.01)

    async with running(sender):
        producer = asyncio.create_task(keep_appending())
        await wait_until_received(own_collector[0], hostname, set(range(20)))
        await until(lambda: log.cursors.get("syslog", -1) >= 10)
        # The collector hangs, then crashes: what its kernel accepted (and ACKed) meanwhile
        # is lost with it, although every write "succeeded" on our side.
        own_collector[0].freeze()
        before_kill = received_indices(own_collector[0], hostname)
        await asyncio.sleep(0.25)  # events keep coming and are written into the hung socket
        own_collector[0].kill()
        await until(lambda: sender.failures >= 2)
        assert not sender.connected
        # Nothing the collector may have missed is marked delivered.
        cursor_while_down = log.cursors.get("syslog", -1)
        assert cursor_while_down <= max(before_kill)
        await asyncio.sleep(0.3)
        assert log.cursors.get("syslog", -1) == cursor_while_down
        queued = len(log.entries)
        assert queued > max(before_kill) + 10  # events kept being appended

        own_collector[0] = own_collector[0].restart()
        await until(lambda: sender.connected)
        appending = False
        await producer
        total = len(log.entries)
        indices = await wait_until_received(own_collector[0], hostname, set(range(total)))
        await until(lambda: log.cursors.get("syslog") == total - 1)

    # All events, first arrivals in log order, never a gap (each index at most one past the
    # highest seen so far).
    assert list(dict.fromkeys(indices)) == list(range(total))
    highest, restarts = -1, []
    for position, index in enumerate(indices):
        assert index <= highest + 1, indices
        if index <= highest and indices[position - 1] != index - 1:
            restarts.append(index)
        highest = max(highest, index)
    # Duplicates: exactly what had arrived before the crash but was not yet settled, sent
    # once more when forwarding restarted from the durable cursor.
    replayed = {index for index in indices if indices.count(index) > 1}
    assert all(indices.count(index) == 2 for index in replayed)
    assert replayed == {index for index in before_kill if index > cursor_while_down}
    assert restarts == ([cursor_while_down + 1] if replayed else [])
    assert [m.levelno for m in caplog.records].count(logging.WARNING) == 1  # logged once
    assert all("AuditMessage" not in m.getMessage() for m in caplog.records)


async def test_restart_resumes_from_durable_cursor(
    collector: RsyslogCollector, pki: Pki, tmp_path: Path
) -> None:
    path = tmp_path / "audit.sqlite"
    log = SqliteLog(path)
    log.append(10)
    hostname = new_hostname()
    first = forwarder(log, collector.port, pki, hostname)
    assert await first.forward_once() == 10
    await first.stop()

    # A crash after sending 10..14 but before they settled (commit_delay never reached).
    log.append(5)
    crashing = forwarder(log, collector.port, pki, hostname, commit_delay=60.0)
    task = asyncio.create_task(crashing.run())
    await wait_until_received(collector, hostname, set(range(15)))
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    log.close()

    reopened = SqliteLog(path)  # as after a process restart
    assert await reopened.get_cursor("syslog") == 9
    reopened.append(5)
    second = forwarder(reopened, collector.port, pki, hostname)
    async with running(second):
        second.notify()
        await until(lambda: second.cursor == 19)
        reopened.append(5)
        second.notify()
        await wait_until_received(collector, hostname, set(range(25)))
    # A clean stop commits what was sent: nothing is sent twice afterwards.
    assert await reopened.get_cursor("syslog") == 24
    third = forwarder(reopened, collector.port, pki, hostname)
    assert await third.forward_once() == 0
    await third.stop()
    reopened.close()

    # The unsettled batch (10..14) is the only thing sent twice.
    assert received_indices(collector, hostname) == [*range(15), *range(10, 25)]


async def test_untrusted_collector_is_never_sent_anything_and_is_retried(
    tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    collectors = [_start(tmp_path, pki, trusted=False)]
    try:
        log = MemoryLog()
        log.append(3)
        hostname = new_hostname()
        sender = forwarder(log, collectors[0].port, pki, hostname)
        with pytest.raises(ssl.SSLCertVerificationError):
            await sender.forward_once()
        async with running(sender):
            await until(lambda: sender.failures >= 3)  # retried, with backoff
            assert not sender.connected
            assert log.cursors == {}
            assert collectors[0].received() == []  # nothing sent, in clear or otherwise
            warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
            assert len(warnings) == 1
            assert "SSLCertVerificationError" in warnings[0].getMessage()

            # The same port now presents a certificate from our CA: the retries get through.
            collectors[0] = collectors[0].restart(cert_path=pki.cert, key_path=pki.key)
            indices = await wait_until_received(collectors[0], hostname, {0, 1, 2})
        assert indices == [0, 1, 2]
    finally:
        collectors[0].stop()
