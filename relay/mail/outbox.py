"""The durable outbound mail queue and the worker that empties it (issue 4 item 5).

A mail is queued as an ``outbox`` row plus an encrypted blob, in the same transaction as the
message that causes it; the row's Message-ID is unique, so a cause replayed after a crash
queues it once. The worker takes due rows, hands each to a transport and records the
outcome; rows survive restarts, so a crash loses nothing (a mail handed over just before a
crash, whose row was not yet marked, is the only one that can go twice: the window is one
transaction).

Transports: :class:`SmarthostTransport` (aiosmtplib, STARTTLS required, certificate checked)
and, when no smarthost is configured, :class:`DirectoryTransport` (``DATA_DIR/outbox/*.eml``
for inspection). Temporary failures (4xx, connection refused, timeouts) are retried with
exponential backoff (:func:`retry_delay`); a 5xx reply, or retries past ``give_up_hours``,
fail the recipient for good (RFC 5321 §4.5.4.1 asks senders to give up after some days).

Every hand-over is audited before it happens (``message_relayed``, the relay as actor); a
refused or failed attempt is audited again with its reply code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import sqlite3
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

import aiosmtplib

from relay.audit.errors import AuditUnavailable
from relay.audit.events import Actor, AuditAction, AuditRecord, EntityRef, Outcome, ResourceKind
from relay.audit.log import AuditLog
from relay.config import OutboxSettings
from relay.messaging.core import DeliveryEvent
from relay.messaging.model import DeliveryState, OutboxKind
from relay.messaging.store import apply_delivery_event
from storage.blobs import BlobStore
from storage.database import Database
from storage.errors import StorageError

log = logging.getLogger("relais.outbox")

BATCH = 16
"""Rows taken per round; delivered concurrently."""
IDLE_POLL_SECONDS = 30.0
"""Longest sleep when nothing is due (new mail wakes the worker at once)."""
MAX_MAIL_BYTES = 64 << 20
_ENHANCED = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")


# --- pure policy -----------------------------------------------------------------------------


def retry_delay(attempts: int, initial: float, maximum: float) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt: ``initial`` doubled each time,
    capped at ``maximum`` (exponential backoff)."""
    if attempts < 1:
        return 0.0
    return float(min(maximum, initial * 2 ** min(attempts - 1, 62)))


class DeliveryFailure(Exception):
    """A failed hand-over: ``permanent`` for 5xx replies, with the RFC 3463 status and the
    remote reply (no health data: remote replies name addresses and codes)."""

    def __init__(self, permanent: bool, status: str, diagnostic: str) -> None:
        super().__init__(f"{status} {diagnostic}")
        self.permanent = permanent
        self.status = status
        self.diagnostic = diagnostic


def failure_from_reply(code: int, text: str) -> DeliveryFailure:
    """Classify an SMTP reply (RFC 5321 §4.2.1: 4yz transient, 5yz permanent)."""
    found = _ENHANCED.search(text)
    status = found.group(1) if found else f"{code // 100}.0.0"
    if code >= 500 and not status.startswith("5"):
        status = "5" + status[1:]
    if 400 <= code < 500 and not status.startswith("4"):
        status = "4" + status[1:]
    diagnostic = " ".join(f"{code} {text}".split())[:300]
    return DeliveryFailure(permanent=code >= 500, status=status, diagnostic=diagnostic)


# --- transports ------------------------------------------------------------------------------


class Transport(Protocol):
    """Hands one mail over; raises :class:`DeliveryFailure`."""

    name: str

    async def send(self, raw: bytes, sender: str, recipient: str, file_id: str) -> None: ...


class SmarthostTransport:
    """SMTP to the configured smarthost, STARTTLS required, its certificate checked."""

    def __init__(
        self,
        host: str,
        port: int,
        tls_context: ssl.SSLContext,
        *,
        local_hostname: str,
        timeout: float,
    ) -> None:
        self.name = host
        self._host = host
        self._port = port
        self._tls = tls_context
        self._local_hostname = local_hostname
        self._timeout = timeout

    async def send(self, raw: bytes, sender: str, recipient: str, file_id: str) -> None:
        client = aiosmtplib.SMTP(
            hostname=self._host,
            port=self._port,
            start_tls=True,  # refuses to go on in clear when the server lacks it
            tls_context=self._tls,
            local_hostname=self._local_hostname,
            timeout=self._timeout,
        )
        try:
            async with client:
                # sendmail, not send: receipts and bounces need the null sender "<>".
                await client.sendmail(sender, [recipient], raw)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            first = exc.recipients[0]
            raise failure_from_reply(first.code, first.message) from None
        except aiosmtplib.SMTPResponseException as exc:
            raise failure_from_reply(exc.code, exc.message) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            reason = f"no answer from the smarthost ({type(exc).__name__})"
            raise DeliveryFailure(False, "4.4.1", reason) from None


class DirectoryTransport:
    """No smarthost: each mail becomes ``<directory>/<id>.eml`` (fsynced) for inspection."""

    name = "outbox-directory"

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def send(self, raw: bytes, sender: str, recipient: str, file_id: str) -> None:
        await asyncio.to_thread(self._write, raw, file_id)

    def _write(self, raw: bytes, file_id: str) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.directory / f"{file_id}.eml"
        tmp = self.directory / f".{file_id}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, raw)
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(path)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


# --- the queue (SQL) -------------------------------------------------------------------------


@dataclass(frozen=True)
class OutboxRow:
    """A queued mail as the worker sees it."""

    id: str
    rfc822_id: str
    kind: OutboxKind
    envelope_from: str
    recipient: str
    blob_id: str
    thread_id: str | None
    message_id: str | None
    participant_id: str | None
    attempts: int
    created_at: datetime


def _row(row: sqlite3.Row) -> OutboxRow:
    return OutboxRow(
        id=row["id"],
        rfc822_id=row["rfc822_id"],
        kind=OutboxKind(row["kind"]),
        envelope_from=row["envelope_from"],
        recipient=row["recipient"],
        blob_id=row["blob_id"],
        thread_id=row["thread_id"],
        message_id=row["message_id"],
        participant_id=row["participant_id"],
        attempts=row["attempts"],
        created_at=datetime.fromisoformat(row["created_at"]),
    )


class OutboxQueue:
    """SQL of the ``outbox`` table, seen from the worker."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def due(self, now: datetime, limit: int) -> list[OutboxRow]:
        """Pending rows whose next attempt is due, oldest first."""
        rows = await self.db.fetchall(
            "SELECT * FROM outbox WHERE state = 'pending' AND next_attempt_at <= ?"
            " ORDER BY next_attempt_at, created_at LIMIT ?",
            (now.isoformat(), limit),
        )
        return [_row(row) for row in rows]

    async def backlog(self) -> tuple[int, datetime | None]:
        """How many mails wait to be sent, and when the oldest of them was queued."""
        row = await self.db.fetchone(
            "SELECT count(*) AS n, min(created_at) AS oldest FROM outbox WHERE state = 'pending'"
        )
        if row is None or not row["n"]:
            return 0, None
        return int(row["n"]), datetime.fromisoformat(row["oldest"])

    async def next_due(self) -> datetime | None:
        """When the earliest pending row is due, if any."""
        row = await self.db.fetchone(
            "SELECT min(next_attempt_at) AS due FROM outbox WHERE state = 'pending'"
        )
        return None if row is None or row["due"] is None else datetime.fromisoformat(row["due"])

    async def mark_sent(self, row: OutboxRow, now: datetime) -> DeliveryState | None:
        """The mail was handed over: the row is done, the delivery delivered (one commit)."""
        return await self._finish(row, "sent", None, DeliveryEvent.HANDED_OVER, now)

    async def mark_failed(
        self, row: OutboxRow, failure: DeliveryFailure, now: datetime
    ) -> DeliveryState | None:
        """Permanent failure: the row is done, the delivery failed with the reason."""
        return await self._finish(
            row,
            "failed",
            f"{failure.status} {failure.diagnostic}",
            DeliveryEvent.PERMANENT_FAILURE,
            now,
        )

    async def mark_retry(
        self, row: OutboxRow, failure: DeliveryFailure, next_at: datetime, now: datetime
    ) -> None:
        """Temporary failure: try again at ``next_at``."""
        await self.db.execute(
            "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?, last_error = ?,"
            " updated_at = ? WHERE id = ? AND state = 'pending'",
            (next_at.isoformat(), str(failure)[:400], now.isoformat(), row.id),
        )

    async def _finish(
        self,
        row: OutboxRow,
        state: str,
        error: str | None,
        event: DeliveryEvent,
        now: datetime,
    ) -> DeliveryState | None:
        def write(conn: sqlite3.Connection) -> DeliveryState | None:
            updated = conn.execute(
                "UPDATE outbox SET state = ?, attempts = attempts + 1, last_error = ?,"
                " updated_at = ? WHERE id = ? AND state = 'pending'",
                (state, error, now.isoformat(), row.id),
            ).rowcount
            if not updated or row.message_id is None or row.participant_id is None:
                return None
            return apply_delivery_event(conn, row.message_id, row.participant_id, event, error, now)

        return await self.db.transaction(write)


# --- the worker ------------------------------------------------------------------------------

DeliveryCallback = Callable[[OutboxRow, DeliveryState, DeliveryFailure | None], Awaitable[None]]


class OutboxWorker:
    """Takes due mails, hands them over, records outcomes; runs until :meth:`stop`."""

    def __init__(
        self,
        *,
        queue: OutboxQueue,
        blobs: BlobStore,
        transport: Transport,
        audit: AuditLog,
        settings: OutboxSettings,
        node: str,
        clock: Callable[[], datetime],
        wakeup: asyncio.Event,
        on_delivery: DeliveryCallback,
        on_attempt: Callable[[str], None] | None = None,
        on_backlog: Callable[[int, datetime | None], None] | None = None,
    ) -> None:
        self.queue = queue
        self.blobs = blobs
        self.transport = transport
        self.audit = audit
        self.settings = settings
        self.node = node
        self.clock = clock
        self.wakeup = wakeup
        self.on_delivery = on_delivery
        self.on_attempt = on_attempt  # "sent" | "deferred" | "failed": the relay's metrics
        self.on_backlog = on_backlog  # (waiting, oldest queued at), at each pass: metrics
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Run the worker in a task of the current loop."""
        self._task = asyncio.create_task(self.run(), name="outbox-worker")

    async def stop(self, grace: float = 5.0) -> None:
        """Finish the attempts in progress (up to ``grace`` seconds), then stop."""
        self._stopping = True
        self.wakeup.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def run(self) -> None:
        """The loop: deliver what is due, then sleep until the next due row or new mail."""
        while not self._stopping:
            self.wakeup.clear()
            try:
                if self.on_backlog is not None:
                    self.on_backlog(*await self.queue.backlog())
                rows = await self.queue.due(self.clock(), BATCH)
                if rows:
                    await asyncio.gather(*(self._guarded(row) for row in rows))
                    continue
                delay = IDLE_POLL_SECONDS
                next_due = await self.queue.next_due()
                if next_due is not None:
                    delay = min(delay, max(0.05, (next_due - self.clock()).total_seconds()))
            except StorageError as exc:
                log.error("outbox: database unavailable (%s); retrying", type(exc).__name__)
                delay = 5.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), delay)

    async def _guarded(self, row: OutboxRow) -> None:
        """One delivery; an unexpected error defers that mail, never stops the worker."""
        try:
            await self._deliver(row)
        except StorageError:
            raise
        except Exception as exc:
            log.error("outbox: unexpected %s delivering mail %s", type(exc).__name__, row.id)
            now = self.clock()
            failure = DeliveryFailure(False, "4.3.0", f"local error ({type(exc).__name__})")
            delay = retry_delay(
                row.attempts + 1,
                self.settings.retry_initial_seconds,
                self.settings.retry_max_seconds,
            )
            with contextlib.suppress(Exception):
                await self.queue.mark_retry(row, failure, now + timedelta(seconds=delay), now)
            self._attempted("deferred")

    async def _deliver(self, row: OutboxRow) -> None:
        now = self.clock()
        try:
            raw = await self.blobs.read_all_verified(row.blob_id, max_bytes=MAX_MAIL_BYTES)
            await self._audit(row, Outcome.SUCCESS, "queued")
        except AuditUnavailable:
            # Not traced, not sent: try again shortly (the attempt does not count).
            await self.queue.mark_retry(
                row,
                DeliveryFailure(False, "4.3.0", "audit log unavailable"),
                now + timedelta(seconds=5),
                now,
            )
            return
        except Exception as exc:
            log.error("outbox: mail %s unreadable (%s)", row.id, type(exc).__name__)
            await self._finish_failed(
                row, DeliveryFailure(True, "5.3.0", "stored mail unreadable"), now
            )
            return
        try:
            await self.transport.send(raw, row.envelope_from, row.recipient, row.id)
        except DeliveryFailure as failure:
            now = self.clock()
            expired = now - row.created_at >= timedelta(hours=self.settings.give_up_hours)
            if failure.permanent or expired:
                if not failure.permanent:
                    # RFC 3463 X.4.7: delivery time expired.
                    failure = DeliveryFailure(
                        True,
                        "5.4.7",
                        f"gave up after {row.attempts + 1} attempts: {failure.diagnostic}",
                    )
                await self._finish_failed(row, failure, now)
                return
            delay = retry_delay(
                row.attempts + 1,
                self.settings.retry_initial_seconds,
                self.settings.retry_max_seconds,
            )
            await self.queue.mark_retry(row, failure, now + timedelta(seconds=delay), now)
            self._attempted("deferred")
            with contextlib.suppress(AuditUnavailable):
                await self._audit(row, Outcome.MINOR_FAILURE, failure.status)
            log.info("outbox: mail %s deferred %.1fs (%s)", row.id, delay, failure.status)
            return
        state = await self.queue.mark_sent(row, self.clock())
        self._attempted("sent")
        if state is not None:
            await self._callback(row, state, None)

    async def _finish_failed(self, row: OutboxRow, failure: DeliveryFailure, now: datetime) -> None:
        state = await self.queue.mark_failed(row, failure, now)
        self._attempted("failed")
        with contextlib.suppress(AuditUnavailable):
            await self._audit(row, Outcome.SERIOUS_FAILURE, failure.status)
        log.warning("outbox: mail %s failed for good (%s)", row.id, failure.status)
        if state is not None:
            await self._callback(row, state, failure)

    def _attempted(self, result: str) -> None:
        if self.on_attempt is not None:
            self.on_attempt(result)

    async def _callback(
        self, row: OutboxRow, state: DeliveryState, failure: DeliveryFailure | None
    ) -> None:
        try:
            await self.on_delivery(row, state, failure)
        except Exception as exc:  # the outcome is recorded; only its announcement failed
            log.error("outbox: delivery follow-up failed (%s)", type(exc).__name__)

    async def _audit(self, row: OutboxRow, outcome: Outcome, status: str) -> None:
        entities = [EntityRef(ResourceKind.MAIL, row.id)]
        if row.message_id is not None:
            entities.insert(0, EntityRef(ResourceKind.MESSAGE, row.message_id))
        if row.thread_id is not None:
            entities.insert(0, EntityRef(ResourceKind.THREAD, row.thread_id))
        await self.audit.record(
            AuditRecord(
                action=AuditAction.MESSAGE_RELAYED,
                outcome=outcome,
                now=self.clock(),
                actor=Actor.system(self.node),
                observer=self.node,
                entities=tuple(entities),
                detail=(
                    ("reason", row.kind.value),
                    ("remote_peer", _peer(self.transport.name)),
                    ("smtp_reply", status),
                ),
            )
        )


def _peer(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._:\-]", "", name)[:100]
    return cleaned or "unknown"
