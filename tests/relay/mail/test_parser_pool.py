"""The mail parser pool with real worker processes: answers reach their own caller, refusals
cross with their type and text, a dead worker fails only its call (451 on the wire), a
cancelled call leaves the pipes in step, a large message never stalls the event loop, and
close() leaves no process behind."""

from __future__ import annotations

import asyncio
import os
import signal
import smtplib
import ssl
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.mail.errors import MimeTooDeep
from relay.mail.limits import MailLimits
from relay.mail.parser_pool import ParserPool, ParserUnavailable, parse_inbound
from tests.harness.accounts import PHYSICIAN, add_account
from tests.harness.relay_process import init_data_dir, start_relay
from tests.relay.messaging.helpers import nested_mime

LIMITS = MailLimits(max_depth=4)
NO_CERT = Path("/nonexistent/smime.pem")
NO_KEY = Path("/nonexistent/smime.key")
SENDER = "dr.pool@hopital.example"
BIG_LINES = 130_000  # about 8 MB


def mail(subject: str, lines: int = 20) -> bytes:
    head = (
        f"From: Dr Claire Martin <{SENDER}>\r\nTo: {PHYSICIAN.email}\r\n"
        f"Subject: {subject}\r\nMessage-ID: <{subject.replace(' ', '.')}@hopital.example>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    )
    line = f"Compte rendu {subject} : pansement a refaire, evolution favorable.\r\n"
    return head.encode() + line.encode() * lines


def subject_of(parsed: tuple[object, ...]) -> str:
    message = parsed[0]
    return str(getattr(message, "subject", ""))


@pytest.fixture
async def one_worker() -> AsyncIterator[ParserPool]:
    pool = ParserPool(1, NO_CERT, NO_KEY, LIMITS)
    await pool.parse(mail("warm-up"))  # the worker has imported everything
    yield pool
    pool.close()


async def test_a_message_is_parsed_as_in_process(one_worker: ParserPool) -> None:
    raw = mail("Plaie de la jambe")
    assert await one_worker.parse(raw) == parse_inbound(raw, LIMITS)


async def test_a_refusal_crosses_with_its_type_and_text(one_worker: ParserPool) -> None:
    raw = nested_mime(10, SENDER, PHYSICIAN.email)
    with pytest.raises(MimeTooDeep) as local:
        parse_inbound(raw, LIMITS)
    with pytest.raises(MimeTooDeep) as remote:
        await one_worker.parse(raw)
    assert type(remote.value) is type(local.value)
    assert str(remote.value) == str(local.value)
    assert remote.value.smtp_reply == local.value.smtp_reply
    assert subject_of(await one_worker.parse(mail("after"))) == "after"


async def test_a_worker_killed_mid_parse_fails_that_call_only(one_worker: ParserPool) -> None:
    (pid,) = one_worker.pids
    big = asyncio.create_task(one_worker.parse(mail("big", BIG_LINES)))
    waiting = [asyncio.create_task(one_worker.parse(mail(f"next {n}"))) for n in range(3)]
    await asyncio.sleep(0)  # sent: the first MB is in the pipe, the rest not yet
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(ParserUnavailable):
        await asyncio.wait_for(big, 30)
    results = await asyncio.wait_for(asyncio.gather(*waiting), 30)
    assert [subject_of(r) for r in results] == ["next 0", "next 1", "next 2"]
    (replacement,) = one_worker.pids
    assert replacement != pid
    assert subject_of(await one_worker.parse(mail("later"))) == "later"


async def test_cancelled_calls_leave_the_pipes_in_step(one_worker: ParserPool) -> None:
    in_flight = asyncio.create_task(one_worker.parse(mail("cancelled big", BIG_LINES)))
    queued = asyncio.create_task(one_worker.parse(mail("cancelled queued")))
    kept = asyncio.create_task(one_worker.parse(mail("kept")))
    await asyncio.sleep(0)
    in_flight.cancel()
    queued.cancel()
    await asyncio.sleep(0)
    assert one_worker.waiting == 1  # the cancelled one left the queue at once, with its bytes
    after = asyncio.create_task(one_worker.parse(mail("after")))
    assert subject_of(await asyncio.wait_for(kept, 30)) == "kept"
    assert subject_of(await asyncio.wait_for(after, 30)) == "after"
    assert in_flight.cancelled() and queued.cancelled()
    results = await asyncio.gather(*(one_worker.parse(mail(f"then {n}")) for n in range(5)))
    assert [subject_of(r) for r in results] == [f"then {n}" for n in range(5)]


async def _max_lag(stop: asyncio.Event, period: float = 0.005) -> float:
    """The largest delay of a ``period`` sleep until ``stop`` is set: the loop's lag."""
    worst = 0.0
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.sleep(period)
        worst = max(worst, time.perf_counter() - started - period)
    return worst


async def test_a_large_message_never_blocks_the_loop(one_worker: ParserPool) -> None:
    (pid,) = one_worker.pids
    raw = mail("large", BIG_LINES)
    # A stopped worker reads nothing: a blocking write would hang the loop until the safety
    # timer resumes the worker, two seconds later.
    os.kill(pid, signal.SIGSTOP)
    safety = threading.Timer(2.0, os.kill, (pid, signal.SIGCONT))
    safety.start()
    try:
        stop = asyncio.Event()
        ticker = asyncio.create_task(_max_lag(stop))
        parse = asyncio.create_task(one_worker.parse(raw))
        await asyncio.sleep(0.3)
        os.kill(pid, signal.SIGCONT)
        parsed = await asyncio.wait_for(parse, 30)
        stop.set()
        lag = await ticker
    finally:
        safety.cancel()
        os.kill(pid, signal.SIGCONT)
    assert subject_of(parsed) == "large"
    assert parsed[0].size == len(raw)
    assert lag < 0.2, f"the event loop stalled {lag * 1000:.0f} ms"


async def test_concurrent_calls_each_get_their_own_answer() -> None:
    pool = ParserPool(2, NO_CERT, NO_KEY, LIMITS)
    try:
        raws = [mail(f"message {n}", lines=1 + n * 7) for n in range(40)]
        results = await asyncio.wait_for(asyncio.gather(*(pool.parse(r) for r in raws)), 60)
        for raw, parsed in zip(raws, results, strict=True):
            assert parsed == parse_inbound(raw, LIMITS)
    finally:
        pool.close()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_close_ends_every_worker_and_fails_what_was_pending() -> None:
    pool = ParserPool(2, NO_CERT, NO_KEY, LIMITS)
    await asyncio.gather(pool.parse(mail("one")), pool.parse(mail("two")))
    pids = pool.pids
    assert len(pids) == 2 and not any(_gone(pid) for pid in pids)
    busy = asyncio.create_task(pool.parse(mail("busy", BIG_LINES)))
    await asyncio.sleep(0)
    pool.close()
    with pytest.raises(ParserUnavailable):
        await busy
    assert all(_gone(pid) for pid in pids)
    assert pool.pids == ()
    with pytest.raises(ParserUnavailable):
        await pool.parse(mail("too late"))


# --- on the wire: the gateway answers 451, then goes on --------------------------------------


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _grandchildren(pid: int) -> list[int]:
    found = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        found += Path(f"/proc/{child}/task/{child}/children").read_text().split()
    return [int(p) for p in found]


def _kill_when_busy(pid: int, done: threading.Event) -> None:
    """SIGKILL ``pid`` as soon as it uses CPU (it parses): a 16 MB message keeps it busy for
    far longer than the 10 ms of one tick."""
    idle = _cpu_ticks(pid)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not done.is_set():
        if _cpu_ticks(pid) > idle:
            os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.001)


def test_a_worker_killed_mid_parse_is_answered_451_then_mail_flows(tmp_path: Path) -> None:
    data_dir = init_data_dir(tmp_path)
    add_account(data_dir, PHYSICIAN, teams=False)
    relay = start_relay(tmp_path, {"RELAIS_SMTP_PARSER_WORKERS": "1"})
    try:
        context = ssl.create_default_context(cafile=str(relay.ca_file))
        with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=60) as client:
            client.starttls(context=context)
            client.sendmail(SENDER, [PHYSICIAN.email], mail("warm-up"))
            # The relay's only forkserver child's children: the one parser worker (the
            # imaging pool starts its processes at the first photo).
            assert relay.process is not None
            (worker,) = _grandchildren(relay.process.pid)
            done = threading.Event()
            killer = threading.Thread(target=_kill_when_busy, args=(worker, done))
            killer.start()
            try:
                with pytest.raises(smtplib.SMTPDataError) as refused:
                    client.sendmail(SENDER, [PHYSICIAN.email], mail("killed", 2 * BIG_LINES))
            finally:
                done.set()
                killer.join()
            assert refused.value.smtp_code == 451
            deadline = time.monotonic() + 10  # the forkserver reaps it in its own time
            while not _gone(worker) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert _gone(worker)
            client.sendmail(SENDER, [PHYSICIAN.email], mail("after the crash"))
    finally:
        relay.stop()
