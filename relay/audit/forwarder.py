"""Forward the audit log to a syslog collector over TLS (IHE ATNA, RFC 5424 + RFC 5425).

Each log entry becomes one DICOM PS3.15 ``AuditMessage`` (:mod:`relay.audit.atna`) inside an
RFC 5424 message (facility 10, severity from the outcome, TIMESTAMP = the event's recorded
time, HOSTNAME = our node), octet-counted per RFC 5425 §4.3 and written over TLS.

Delivery is **at least once, in log order**. The last entry known delivered is a durable
cursor kept by the audit log itself (:class:`AuditSource`), so the queue *is* the log: while
the collector is down nothing is dropped, and forwarding resumes from the cursor, in order,
when it returns.

RFC 5425 has no application-level acknowledgement, and a write into a connection whose peer
has just died still "succeeds" locally. So the cursor does not move when a batch is written
but once the batch has *settled*: ``commit_delay`` seconds later the connection is still open
and (on Linux) the collector's TCP stack has acknowledged every byte of it (``SIOCOUTQ``,
tcp(7)). When the connection breaks, everything after the cursor is sent again. Hence:

* duplicates only come from batches not yet settled when the connection broke or the relay
  crashed (a crash between send and ``set_cursor`` re-sends them);
* each message carries ``[meta sequenceId="index+1"]`` (RFC 5424 §7.3.1), so a collector can
  drop those duplicates and an auditor can match a message to its log index (and receipt);
* a collector that reads a message and then loses it (crash before writing it) after the
  batch settled cannot be detected by any RFC 5425 sender.

Formatting (:func:`format_entry`) and the retry schedule (:func:`backoff_delay`) are pure;
:class:`SyslogForwarder` only moves bytes and the cursor.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import random
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from relay.audit import atna

__all__ = ["AuditSource", "SyslogForwarder", "backoff_delay", "format_entry"]

log = logging.getLogger(__name__)

# RFC 5424 §7.3.1: sequenceId is 1..2147483647 and wraps to 1.
_SEQUENCE_MAX = 2147483647


class AuditSource(Protocol):
    """What the forwarder needs from the audit log (``relay.audit.log`` satisfies it)."""

    async def entries_after(self, index: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` ``(index, canonical AuditEvent JSON)`` after ``index``, in index
        order; erased entries are skipped."""
        ...

    async def get_cursor(self, name: str) -> int:
        """The durable cursor ``name``; -1 when it was never set."""
        ...

    async def set_cursor(self, name: str, index: int) -> None:
        """Durably store the cursor ``name``."""
        ...


def format_entry(index: int, content: bytes, *, hostname: str, app_name: str = "relais") -> bytes:
    """The RFC 5425 frame carrying log entry ``index`` (canonical AuditEvent ``content``):

    ``LEN <PRI>1 RECORDED HOSTNAME APP-NAME - IHE+RFC-3881 [meta sequenceId="index+1"] XML``.
    Raises ``ValueError``/``KeyError``/``TypeError`` when ``content`` is not an AuditEvent.
    """
    event = json.loads(content)
    header = atna.syslog_message(
        b"",
        now=datetime.fromisoformat(str(event["recorded"])),
        hostname=hostname,
        app_name=app_name,
        severity=atna.severity_for_outcome(str(event["outcome"])),
    )
    # atna.syslog_message writes NILVALUE ("-") as STRUCTURED-DATA: put the RFC 5424 §7.3
    # "meta" element there. An integer value needs no SD-escaping (§6.3.3).
    if not header.endswith(b" -"):
        raise ValueError("unexpected RFC 5424 header")
    sequence = index % _SEQUENCE_MAX + 1
    message = header[:-1] + b'[meta sequenceId="%d"] ' % sequence + atna.audit_message_xml(event)
    return atna.frame(message)


def backoff_delay(
    failures: int, *, initial: float, maximum: float, rng: random.Random | None = None
) -> float:
    """Seconds to wait after ``failures`` (>= 1) consecutive failures.

    Exponential (``initial * 2**(failures-1)``, capped at ``maximum``) with "equal jitter": a
    uniform draw in [delay/2, delay], so relays restarted together do not reconnect in step,
    while each still waits at least half the nominal delay.
    """
    if failures < 1:
        raise ValueError("failures must be >= 1")
    delay = min(maximum, initial * 2.0 ** min(failures - 1, 60))
    return (rng or random.Random()).uniform(delay / 2, delay)


class _ConnectionLost(ConnectionError):
    """The collector closed or reset the connection."""


@dataclass(frozen=True)
class _Batch:
    last_index: int
    count: int
    end_offset: int  # application bytes written on the connection up to this batch's end
    sent_at: float


@dataclass
class _Connection:
    writer: asyncio.StreamWriter
    closed: asyncio.Task[None]  # done when the collector closes or resets the connection
    opened_at: float
    written: int = 0


async def _read_until_closed(reader: asyncio.StreamReader) -> None:
    # RFC 5425: the receiver sends no application data; a read returns b"" or raises
    # (reset, TLS alert) when the collector goes away, which is all we listen for. Any error
    # means the connection is unusable, so none is worth more than ending this task.
    with contextlib.suppress(Exception):
        while await reader.read(4096):
            pass


def _pending_bytes(writer: asyncio.StreamWriter) -> int:
    """Bytes written to ``writer`` not yet acknowledged by the collector's TCP stack.

    Counts asyncio's TLS buffers, the raw socket transport's buffer under it (no public
    accessor, hence getattr) and, on Linux, SIOCOUTQ (= TIOCOUTQ): bytes in the kernel send
    queue not yet ACKed (tcp(7)). Elsewhere the kernel part is unknown and counted as 0.
    """
    pending = writer.transport.get_write_buffer_size()
    raw_transport: Any = getattr(
        getattr(writer.transport, "_ssl_protocol", None), "_transport", None
    )
    if raw_transport is not None:
        pending += int(raw_transport.get_write_buffer_size())
    sock = writer.get_extra_info("socket")
    if sys.platform == "linux" and sock is not None:
        import fcntl
        import termios

        with contextlib.suppress(OSError):
            raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
            pending += int.from_bytes(raw, sys.byteorder, signed=True)
    return pending


class SyslogForwarder:
    """Sends the audit log to one syslog collector over TLS, from a durable cursor.

    ``ssl_context`` must verify the collector (``certs.tls.client_ssl_context``); there is no
    clear-text fallback. ``hostname`` is our node name (RFC 5424 HOSTNAME). Call
    :meth:`notify` after appending events; a poll every ``poll_interval`` seconds catches the
    rest. Run :meth:`run` in a task and :meth:`stop` it, or call :meth:`forward_once` — not
    both at once. ``on_forwarded(n)`` is called with the number of entries each time the
    cursor moves (a metrics counter).
    """

    def __init__(
        self,
        source: AuditSource,
        *,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext,
        hostname: str,
        server_hostname: str | None = None,
        cursor_name: str = "syslog",
        app_name: str = "relais",
        batch: int = 200,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        commit_delay: float = 1.0,
        poll_interval: float = 1.0,
        connect_timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        on_forwarded: Callable[[int], None] | None = None,
    ) -> None:
        if batch < 1:
            raise ValueError("batch must be >= 1")
        # Refuse a bad node name now rather than at the first event.
        atna.syslog_message(b"", now=datetime.now(UTC), hostname=hostname, app_name=app_name)
        self._source = source
        self._host, self._port = host, port
        self._ssl_context = ssl_context
        self._server_hostname = server_hostname or host
        self._hostname, self._app_name = hostname, app_name
        self._cursor_name, self._batch = cursor_name, batch
        self._backoff_initial, self._backoff_max = backoff_initial, backoff_max
        self._commit_delay, self._poll_interval = commit_delay, poll_interval
        self._connect_timeout = connect_timeout
        self._clock, self._rng = clock, rng or random.Random()
        self._on_forwarded = on_forwarded
        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        self._connection: _Connection | None = None
        self._in_flight: collections.deque[_Batch] = collections.deque()
        self._committed = -1  # mirror of the durable cursor
        self._sent = -1  # last index written on the current connection
        self._forwarded = 0
        self._failures = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        """Whether a TLS connection to the collector is open."""
        return self._connection is not None and not self._connection.closed.done()

    @property
    def cursor(self) -> int:
        """Last log index known delivered, as last read or written (-1: none)."""
        return self._committed

    @property
    def failures(self) -> int:
        """Consecutive connection failures; back to 0 once a batch settles."""
        return self._failures

    def notify(self) -> None:
        """Wake the forwarder: entries were appended. Call it from the event loop's thread."""
        self._wakeup.set()

    async def run(self) -> None:
        """Forward until :meth:`stop` or cancellation, reconnecting with backoff."""
        self._task = asyncio.current_task()
        try:
            while not self._stopping.is_set():
                try:
                    await self._connect()
                    await self._pump()
                except Exception as exc:  # any failure (network, TLS, the log): back off, retry
                    await self._on_failure(exc)
                    delay = backoff_delay(
                        self._failures,
                        initial=self._backoff_initial,
                        maximum=self._backoff_max,
                        rng=self._rng,
                    )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), delay)
        finally:
            await self._close()
            self._task = None

    async def stop(self, *, grace: float | None = None) -> None:
        """Stop :meth:`run`. Nothing new is sent; batches already sent are committed once
        settled (a clean stop re-sends nothing next time) within ``grace`` seconds
        (default ``commit_delay + 5``), after which the task is cancelled. A stopped
        forwarder stays stopped: make a new one to start again."""
        self._stopping.set()
        task = self._task
        if task is None:  # forward_once was used: just close its connection
            await self._close()
            return
        if task is asyncio.current_task():
            return
        limit = self._commit_delay + 5.0 if grace is None else grace
        done, _ = await asyncio.wait({task}, timeout=limit)
        if not done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def forward_once(self) -> int:
        """Send every pending entry, wait until it settles and move the cursor past it.

        Returns the number of entries forwarded (an unreadable entry, logged and skipped,
        counts too). Raises ``OSError`` (``ConnectionError``,
        ``ssl.SSLError``, ``TimeoutError``) when the collector is unreachable or the
        connection breaks; the cursor then stays after the last settled batch. The
        connection is kept open for the next call.
        """
        before = self._forwarded
        try:
            if not self.connected:
                await self._close()
                await self._connect()
            while await self._send_batch():
                pass
            while self._in_flight:
                await self._wait(self._settle_timeout(), wake_on_notify=False)
                await self._commit_settled()
        except OSError:
            await self._close()
            raise
        return self._forwarded - before

    # --- connection -------------------------------------------------------------------------

    async def _connect(self) -> None:
        # Start over from the durable cursor: whatever was sent but not settled goes again.
        self._committed = await self._source.get_cursor(self._cursor_name)
        self._sent = self._committed
        self._in_flight.clear()
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                self._host,
                self._port,
                ssl=self._ssl_context,
                server_hostname=self._server_hostname,
                ssl_handshake_timeout=self._connect_timeout,
            ),
            self._connect_timeout,
        )
        closed = asyncio.create_task(_read_until_closed(reader))
        self._connection = _Connection(writer, closed, self._clock())
        log.info(
            "audit forwarding: connected to syslog collector %s:%d (%s), resuming after index %d",
            self._host,
            self._port,
            writer.get_extra_info("ssl_object").version(),
            self._committed,
        )

    async def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        connection.closed.cancel()
        connection.writer.close()
        # close_notify to a dead collector may hang or fail: bounded and ignored.
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(connection.writer.wait_closed(), 1.0)
        with contextlib.suppress(asyncio.CancelledError):
            await connection.closed

    async def _on_failure(self, exc: Exception) -> None:
        connection = self._connection
        if connection is not None and self._clock() - connection.opened_at >= self._commit_delay:
            self._failures = 0  # the connection had been healthy: start the backoff over
        await self._close()
        self._failures += 1
        expected = isinstance(exc, OSError)  # ssl.SSLError and TimeoutError are OSErrors
        # Log the state change once, retries quietly; only the error's type and text
        # (addresses, TLS reasons, never event content).
        level = logging.WARNING if self._failures == 1 else logging.DEBUG
        log.log(
            level if expected else logging.ERROR,
            "audit forwarding: syslog collector %s:%d unavailable (%s: %s); events stay queued "
            "in the audit log after index %d",
            self._host,
            self._port,
            type(exc).__name__,
            exc,
            self._committed,
            exc_info=not expected,
        )

    # --- sending ----------------------------------------------------------------------------

    async def _pump(self) -> None:
        while not self._stopping.is_set():
            self._wakeup.clear()  # before reading: a notify after the read is not lost
            full = await self._send_batch()
            await self._commit_settled()
            if not full:
                await self._wait(min(self._poll_interval, self._settle_timeout()))
                await self._commit_settled()
        while self._in_flight:  # stopping: let what was sent settle, send nothing new
            await self._wait(self._settle_timeout(), wake_on_notify=False)
            await self._commit_settled()

    async def _send_batch(self) -> bool:
        """Send the next batch; True when it was full (more may be pending)."""
        self._live()
        entries = await self._source.entries_after(self._sent, self._batch)
        if not entries:
            return False
        frames = []
        for index, content in entries:
            try:
                frames.append(
                    format_entry(index, content, hostname=self._hostname, app_name=self._app_name)
                )
            except (ValueError, KeyError, TypeError) as exc:
                # Not an AuditEvent (`audit verify` names it): skipping it beats blocking
                # every later event forever.
                log.error("audit forwarding: entry %d skipped (%s)", index, type(exc).__name__)
        payload = b"".join(frames)
        # Like rsyslog's omfwd, never write into a connection already seen closed.
        connection = self._live()
        connection.writer.write(payload)
        connection.written += len(payload)
        await connection.writer.drain()
        self._sent = entries[-1][0]
        self._in_flight.append(_Batch(self._sent, len(entries), connection.written, self._clock()))
        return len(entries) == self._batch

    async def _commit_settled(self) -> None:
        connection = self._live()
        # TCP delivers in order and TLS only adds bytes: when fewer bytes are pending than
        # were written after a batch, that whole batch has been acknowledged.
        acknowledged = connection.written - _pending_bytes(connection.writer)
        settled_before = self._clock() - self._commit_delay
        last, count = None, 0
        while self._in_flight:
            batch = self._in_flight[0]
            if batch.sent_at > settled_before or batch.end_offset > acknowledged:
                break
            self._in_flight.popleft()
            last, count = batch.last_index, count + batch.count
        if last is None:
            return
        await self._source.set_cursor(self._cursor_name, last)
        self._committed = last
        self._forwarded += count
        self._failures = 0
        if self._on_forwarded is not None:
            self._on_forwarded(count)

    def _live(self) -> _Connection:
        connection = self._connection
        if connection is None or connection.closed.done():
            raise _ConnectionLost("the syslog collector closed the connection")
        return connection

    def _settle_timeout(self) -> float:
        if not self._in_flight:
            return self._poll_interval
        remaining = self._in_flight[0].sent_at + self._commit_delay - self._clock()
        # Past the delay only the TCP ACKs are awaited: re-check often, not in a busy loop.
        return max(remaining, 0.05)

    async def _wait(self, seconds: float, *, wake_on_notify: bool = True) -> None:
        """Sleep ``seconds`` or until a notify or stop; raise if the connection drops."""
        connection = self._live()
        wakers = (
            [asyncio.create_task(self._wakeup.wait()), asyncio.create_task(self._stopping.wait())]
            if wake_on_notify
            else []
        )
        try:
            await asyncio.wait(
                [connection.closed, *wakers], timeout=seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waker in wakers:
                waker.cancel()
        self._live()
