"""SQL adapter of the messaging domain: rows in, values out; it decides nothing.

Every write that must be atomic (a message with its attachments, deliveries and the mails it
causes) is one transaction, so a crash leaves either all of it or none; the caller
acknowledges (HTTP 201, SMTP 250) only after :meth:`MessagingStore.insert` returned.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum

from relay.messaging.core import TRANSITIONS, DeliveryEvent, next_delivery_state
from relay.messaging.model import (
    AttachmentInfo,
    Delivery,
    DeliveryChannel,
    DeliveryState,
    MailedDelivery,
    Message,
    MessageSource,
    OutboxEntry,
    OutboxKind,
    Participant,
    ParticipantKind,
    Thread,
    ThreadSummary,
)
from storage.database import Database
from storage.sealed import SealedDocuments


@dataclass(frozen=True)
class NewMessageRecord:
    """Everything posting one message writes, in one transaction.

    ``thread`` is set when the message starts a new thread (created with its participants);
    ``new_participants`` joins an existing thread (e.g. a team member answering for the team);
    ``mail_ids`` are Message-IDs of mail the relay sends about the thread (for threading
    replies that come back to a mailbox address). ``content`` is the message's content
    document in clear: it is sealed into ``sealed_documents`` as ``message.content_blob_id``
    inside the transaction (None when that document is a blob file already).
    """

    message: Message
    content: bytes | None = field(default=None, repr=False)  # clear text: never in a repr
    thread: Thread | None = None
    new_participants: tuple[Participant, ...] = ()
    outbox: tuple[OutboxEntry, ...] = ()
    mail_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Professional:
    """What messaging needs of an account found by address."""

    id: str
    email: str
    display_name: str


def _ts(value: datetime) -> str:
    return value.isoformat()


def _dt(value: str) -> datetime:
    return datetime.fromisoformat(value)


def _participant(row: sqlite3.Row) -> Participant:
    return Participant(
        id=row["id"],
        thread_id=row["thread_id"],
        kind=ParticipantKind(row["kind"]),
        professional_id=row["professional_id"],
        team_id=row["team_id"],
        address=row["address"],
        display_name=row["display_name"],
    )


def _thread(row: sqlite3.Row, participants: Sequence[Participant]) -> Thread:
    return Thread(
        id=row["id"],
        content_blob_id=row["content_blob_id"],
        patient_ref=row["patient_ref"],
        created_at=_dt(row["created_at"]),
        last_message_at=_dt(row["last_message_at"]),
        participants=tuple(participants),
    )


def _attachment(row: sqlite3.Row) -> AttachmentInfo:
    return AttachmentInfo(
        id=row["id"],
        message_id=row["message_id"],
        position=row["position"],
        blob_id=row["blob_id"],
        content_type=row["content_type"],
        size=row["size"],
        sha256=row["sha256"],
    )


def _delivery(row: sqlite3.Row) -> Delivery:
    return Delivery(
        message_id=row["message_id"],
        participant_id=row["participant_id"],
        channel=DeliveryChannel(row["channel"]),
        state=DeliveryState(row["state"]),
        reason=row["reason"],
        updated_at=_dt(row["updated_at"]),
    )


def _message(
    row: sqlite3.Row, attachments: Sequence[AttachmentInfo], deliveries: Sequence[Delivery]
) -> Message:
    return Message(
        id=row["id"],
        thread_id=row["thread_id"],
        author_participant_id=row["author_participant_id"],
        author_professional_id=row["author_professional_id"],
        source=MessageSource(row["source"]),
        content_blob_id=row["content_blob_id"],
        raw_blob_id=row["raw_blob_id"],
        rfc822_id=row["rfc822_id"],
        size=row["size"],
        created_at=_dt(row["created_at"]),
        attachments=tuple(attachments),
        deliveries=tuple(deliveries),
    )


def _placeholders(count: int) -> str:
    return ", ".join("?" * count)


def _participants_of(
    conn: sqlite3.Connection, thread_ids: Sequence[str]
) -> dict[str, list[Participant]]:
    found: dict[str, list[Participant]] = {thread_id: [] for thread_id in thread_ids}
    if not thread_ids:
        return found
    rows = conn.execute(
        "SELECT * FROM thread_participants WHERE thread_id IN"  # noqa: S608 - placeholders only
        f" ({_placeholders(len(thread_ids))}) ORDER BY added_at, id",
        tuple(thread_ids),
    ).fetchall()
    for row in rows:
        found[row["thread_id"]].append(_participant(row))
    return found


def load_thread(conn: sqlite3.Connection, thread_id: str) -> Thread | None:
    """The thread with its participants (inside a caller's transaction)."""
    row = conn.execute("SELECT * FROM threads WHERE id = ?", (thread_id,)).fetchone()
    if row is None:
        return None
    return _thread(row, _participants_of(conn, [thread_id])[thread_id])


def insert_outbox(conn: sqlite3.Connection, entry: OutboxEntry, now: datetime) -> bool:
    """Queue one outbound mail; False when its Message-ID is already queued (sent once)."""
    cursor = conn.execute(
        "INSERT INTO outbox (id, rfc822_id, kind, envelope_from, recipient, blob_id, thread_id,"
        " message_id, participant_id, state, attempts, next_attempt_at, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?)"
        " ON CONFLICT (rfc822_id) DO NOTHING",
        (
            entry.id,
            entry.rfc822_id,
            entry.kind.value,
            entry.envelope_from,
            entry.recipient,
            entry.blob_id,
            entry.thread_id,
            entry.message_id,
            entry.participant_id,
            _ts(now),
            _ts(now),
            _ts(now),
        ),
    )
    return cursor.rowcount == 1


def apply_delivery_event(
    conn: sqlite3.Connection,
    message_id: str,
    participant_id: str,
    event: DeliveryEvent,
    reason: str | None,
    now: datetime,
) -> DeliveryState | None:
    """Move a mailed delivery along the state machine; None when there is no such delivery
    (inbox deliveries are final from the start and ignore mail events)."""
    row = conn.execute(
        "SELECT state FROM message_deliveries WHERE message_id = ? AND participant_id = ?"
        " AND channel IN ('notification', 'smime')",
        (message_id, participant_id),
    ).fetchone()
    if row is None:
        return None
    current = DeliveryState(row["state"])
    if (current, event) not in TRANSITIONS:
        return None  # already final: a replayed report changes nothing
    new = next_delivery_state(current, event)
    conn.execute(
        "UPDATE message_deliveries SET state = ?, reason = ?, updated_at = ?"
        " WHERE message_id = ? AND participant_id = ?",
        (new.value, reason, _ts(now), message_id, participant_id),
    )
    return new


def _insert_participant(conn: sqlite3.Connection, p: Participant, now: datetime) -> None:
    conn.execute(
        "INSERT INTO thread_participants (id, thread_id, kind, professional_id, team_id, address,"
        " display_name, added_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            p.id,
            p.thread_id,
            p.kind.value,
            p.professional_id,
            p.team_id,
            p.address,
            p.display_name,
            _ts(now),
        ),
    )


def _insert_message(conn: sqlite3.Connection, m: Message) -> None:
    conn.execute(
        "INSERT INTO messages (id, thread_id, author_participant_id, author_professional_id,"
        " source, content_blob_id, raw_blob_id, rfc822_id, size, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            m.id,
            m.thread_id,
            m.author_participant_id,
            m.author_professional_id,
            m.source.value,
            m.content_blob_id,
            m.raw_blob_id,
            m.rfc822_id,
            m.size,
            _ts(m.created_at),
        ),
    )
    for a in m.attachments:
        conn.execute(
            "INSERT INTO message_attachments (id, message_id, position, blob_id, content_type,"
            " size, sha256) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (a.id, m.id, a.position, a.blob_id, a.content_type, a.size, a.sha256),
        )
    for d in m.deliveries:
        conn.execute(
            "INSERT INTO message_deliveries (message_id, participant_id, channel, state, reason,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?)",
            (m.id, d.participant_id, d.channel.value, d.state.value, d.reason, _ts(d.updated_at)),
        )


_PendingInsert = tuple[NewMessageRecord, datetime, "asyncio.Future[tuple[str, set[str]]]"]


def _write_message(
    conn: sqlite3.Connection, record: NewMessageRecord, now: datetime, documents: SealedDocuments
) -> tuple[str, set[str]]:
    """The rows of one posted message (inside the batch's transaction)."""
    message = record.message
    if message.rfc822_id is not None and record.thread is None:
        found = conn.execute(
            "SELECT id FROM messages WHERE thread_id = ? AND rfc822_id = ?",
            (message.thread_id, message.rfc822_id),
        ).fetchone()
        if found is not None:
            return str(found["id"]), set()
    if record.thread is not None:
        t = record.thread
        conn.execute(
            "INSERT INTO threads (id, content_blob_id, patient_ref, created_at,"
            " last_message_at) VALUES (?, ?, ?, ?, ?)",
            (t.id, t.content_blob_id, t.patient_ref, _ts(t.created_at), _ts(now)),
        )
        for index, p in enumerate(t.participants):
            # Microsecond steps keep the given order (author first) in "ORDER BY added_at".
            _insert_participant(conn, p, now + timedelta(microseconds=index))
    else:
        conn.execute(
            "UPDATE threads SET last_message_at = ? WHERE id = ?", (_ts(now), message.thread_id)
        )
    for p in record.new_participants:
        _insert_participant(conn, p, now)
    if record.content is not None:
        documents.insert(conn, message.content_blob_id, record.content)
    _insert_message(conn, message)
    if message.author_professional_id is not None:
        conn.execute(
            "INSERT INTO message_reads (message_id, reader_id, read_at) VALUES (?, ?, ?)",
            (message.id, message.author_professional_id, _ts(now)),
        )
    for mail_id in record.mail_ids:
        conn.execute(
            "INSERT INTO thread_mail_ids (rfc822_id, thread_id) VALUES (?, ?)"
            " ON CONFLICT DO NOTHING",
            (mail_id, message.thread_id),
        )
    for entry in record.outbox:
        insert_outbox(conn, entry, now)
    if record.thread is not None and all(
        p.team_id is None for p in (*record.thread.participants, *record.new_participants)
    ):
        # A new thread without a team: its viewers are its own professionals, known here
        # (no query on the writer thread, issue 4).
        everyone = (*record.thread.participants, *record.new_participants)
        return message.id, {p.professional_id for p in everyone if p.professional_id}
    return message.id, _viewers(conn, message.thread_id)


def _professional_by_email(conn: sqlite3.Connection, address: str) -> Professional | None:
    row = conn.execute(
        "SELECT id, email, display_name FROM professionals WHERE email = ? AND active = 1",
        (address,),
    ).fetchone()
    return None if row is None else Professional(row["id"], row["email"], row["display_name"])


def _threads_by_mail_ids(conn: sqlite3.Connection, mail_ids: Sequence[str]) -> list[str]:
    marks = _placeholders(len(mail_ids))
    rows = conn.execute(
        "SELECT thread_id FROM thread_mail_ids WHERE rfc822_id IN"  # noqa: S608 - placeholders
        f" ({marks}) UNION SELECT thread_id FROM messages WHERE rfc822_id IN ({marks})",
        (*mail_ids, *mail_ids),
    ).fetchall()
    return [row["thread_id"] for row in rows]


def _inbound_copies(conn: sqlite3.Connection, rfc822_id: str) -> list[tuple[str, str]]:
    rows = conn.execute(
        "SELECT thread_id, id FROM messages WHERE rfc822_id = ? AND source = 'smtp'",
        (rfc822_id,),
    ).fetchall()
    return [(row["thread_id"], row["id"]) for row in rows]


def _viewers(conn: sqlite3.Connection, thread_id: str) -> set[str]:
    rows = conn.execute(
        "SELECT professional_id AS id FROM thread_participants"
        " WHERE thread_id = ? AND professional_id IS NOT NULL"
        " UNION SELECT m.professional_id AS id FROM team_members m"
        " JOIN thread_participants p ON p.team_id = m.team_id WHERE p.thread_id = ?",
        (thread_id, thread_id),
    ).fetchall()
    return {row["id"] for row in rows}


def code_digest(secret: str) -> str:
    """Guest codes and guest session tokens are stored by their SHA-256 only."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


class GuestCodeOutcome(Enum):
    """What a guest's one-time code gave (:meth:`MessagingStore.redeem_guest_code`)."""

    OPENED = "opened"  # the code was right: consumed, a session recorded
    INVALID = "invalid"  # wrong (counted), expired, or none pending
    TOO_MANY = "too_many"  # too many wrong codes: a new code must be asked for


@dataclass(frozen=True)
class GuestCode:
    """The pending one-time code of a guest (hashed)."""

    participant_id: str
    code_hash: str
    expires_at: datetime
    failures: int
    sent_at: datetime


@dataclass(frozen=True)
class InboundLookup:
    """See :meth:`MessagingStore.inbound_lookup`."""

    threads: list[str]  # named by the mail's In-Reply-To/References
    copies: list[tuple[str, str]]  # (thread_id, message_id) of copies already stored
    sender: Professional | None  # the active account with the sender's address


class MessagingStore:
    """SQL for threads, messages, reads, deliveries, guests and recipient certificates."""

    def __init__(self, db: Database, documents: SealedDocuments) -> None:
        self.db = db
        self.documents = documents
        self._pending: list[_PendingInsert] = []
        self._writer: asyncio.Future[None] | None = None

    # --- writing ----------------------------------------------------------------------------

    async def insert(self, record: NewMessageRecord, now: datetime) -> tuple[str, set[str]]:
        """Write the message and everything it causes in one transaction; return its id and
        the professionals who see the thread (to push the news to).

        When the message carries an ``rfc822_id`` already stored in the same thread (an
        SMTP client retrying after a lost reply), nothing is written and the existing
        message's id is returned: the delivery is acknowledged once, stored once.

        Concurrent calls share one commit (group commit, as the audit log does): each
        record is written in a savepoint of the batch's transaction, so one failing record
        fails alone. Once called, the write happens even if the caller is cancelled.
        """
        future: asyncio.Future[tuple[str, set[str]]] = asyncio.get_running_loop().create_future()
        self._pending.append((record, now, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write_batches())
        return await asyncio.shield(future)

    async def _write_batches(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []

            def write(
                conn: sqlite3.Connection,
                batch: list[_PendingInsert] = batch,
            ) -> list[tuple[str, set[str]] | BaseException]:
                outcomes: list[tuple[str, set[str]] | BaseException] = []
                for record, now, _ in batch:
                    conn.execute("SAVEPOINT message")
                    try:
                        outcomes.append(_write_message(conn, record, now, self.documents))
                    except Exception as exc:
                        conn.execute("ROLLBACK TO SAVEPOINT message")
                        outcomes.append(exc)
                    conn.execute("RELEASE SAVEPOINT message")
                return outcomes

            try:
                outcomes = await self.db.transaction(write)
            except BaseException as exc:
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            for (_, _, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)

    async def enqueue(self, entries: Iterable[OutboxEntry], now: datetime) -> int:
        """Queue mails that have no message of their own (guest codes, receipts)."""
        items = list(entries)

        def write(conn: sqlite3.Connection) -> int:
            return sum(insert_outbox(conn, entry, now) for entry in items)

        return await self.db.transaction(write)

    # --- threads ----------------------------------------------------------------------------

    async def thread(self, thread_id: str) -> Thread | None:
        """A thread with its participants, or None."""
        return await self.db.read(lambda conn: load_thread(conn, thread_id))

    async def threads_for(
        self, professional_id: str, team_ids: Sequence[str], *, limit: int, only_team: str | None
    ) -> list[ThreadSummary]:
        """Threads a professional sees (theirs and their teams'), most recent first, with the
        number of messages not yet read by them. ``only_team`` narrows to one team's inbox."""
        if only_team is not None:
            where, params = "team_id = ?", [only_team]
        else:
            where = "professional_id = ?"
            params = [professional_id]
            if team_ids:
                where += f" OR team_id IN ({_placeholders(len(team_ids))})"
                params += list(team_ids)
        sql = (
            "SELECT t.*, (SELECT count(*) FROM messages m WHERE m.thread_id = t.id) AS total,"  # noqa: S608 - placeholders only
            " (SELECT count(*) FROM messages m WHERE m.thread_id = t.id AND NOT EXISTS"
            "  (SELECT 1 FROM message_reads r WHERE r.message_id = m.id AND r.reader_id = ?))"
            " AS unread FROM threads t WHERE t.id IN"
            f" (SELECT thread_id FROM thread_participants WHERE {where})"
            " ORDER BY t.last_message_at DESC, t.id LIMIT ?"
        )

        def query(conn: sqlite3.Connection) -> list[ThreadSummary]:
            rows = conn.execute(sql, (professional_id, *params, limit)).fetchall()
            participants = _participants_of(conn, [row["id"] for row in rows])
            return [
                ThreadSummary(_thread(row, participants[row["id"]]), row["total"], row["unread"])
                for row in rows
            ]

        return await self.db.read(query)

    async def messages(self, thread_id: str) -> list[Message]:
        """The messages of a thread, oldest first, with attachments and deliveries."""

        def query(conn: sqlite3.Connection) -> list[Message]:
            rows = conn.execute(
                "SELECT * FROM messages WHERE thread_id = ? ORDER BY created_at, id", (thread_id,)
            ).fetchall()
            attachments: dict[str, list[AttachmentInfo]] = {row["id"]: [] for row in rows}
            deliveries: dict[str, list[Delivery]] = {row["id"]: [] for row in rows}
            for a in conn.execute(
                "SELECT a.* FROM message_attachments a JOIN messages m ON m.id = a.message_id"
                " WHERE m.thread_id = ? ORDER BY a.position",
                (thread_id,),
            ):
                attachments[a["message_id"]].append(_attachment(a))
            for d in conn.execute(
                "SELECT d.* FROM message_deliveries d JOIN messages m ON m.id = d.message_id"
                " WHERE m.thread_id = ?",
                (thread_id,),
            ):
                deliveries[d["message_id"]].append(_delivery(d))
            return [_message(r, attachments[r["id"]], deliveries[r["id"]]) for r in rows]

        return await self.db.read(query)

    async def message(self, message_id: str) -> Message | None:
        """One message with its attachments and deliveries."""
        row = await self.db.fetchone("SELECT thread_id FROM messages WHERE id = ?", (message_id,))
        if row is None:
            return None
        return next((m for m in await self.messages(row["thread_id"]) if m.id == message_id), None)

    async def attachment(self, attachment_id: str) -> tuple[AttachmentInfo, str] | None:
        """An attachment and the id of its thread."""
        row = await self.db.fetchone(
            "SELECT a.*, m.thread_id FROM message_attachments a"
            " JOIN messages m ON m.id = a.message_id WHERE a.id = ?",
            (attachment_id,),
        )
        return None if row is None else (_attachment(row), row["thread_id"])

    async def read_by(self, reader_id: str, thread_id: str) -> set[str]:
        """Ids of the thread's messages ``reader_id`` has read."""
        rows = await self.db.fetchall(
            "SELECT r.message_id FROM message_reads r JOIN messages m ON m.id = r.message_id"
            " WHERE r.reader_id = ? AND m.thread_id = ?",
            (reader_id, thread_id),
        )
        return {row["message_id"] for row in rows}

    async def mark_read(
        self, reader_id: str, thread_id: str, message_ids: Sequence[str] | None, now: datetime
    ) -> tuple[list[str], list[str]]:
        """Mark messages of a thread read by ``reader_id`` (all when ``message_ids`` is None);
        return the ids that were unread by them until now, and among those the ones nobody
        had read yet (their first reading: a read receipt may be due)."""

        def write(conn: sqlite3.Connection) -> tuple[list[str], list[str]]:
            rows = conn.execute(
                "SELECT id, (SELECT count(*) FROM message_reads r WHERE r.message_id = m.id)"
                " AS readers FROM messages m WHERE thread_id = ? AND NOT EXISTS (SELECT 1 FROM"
                " message_reads r WHERE r.message_id = m.id AND r.reader_id = ?)"
                " ORDER BY created_at, id",
                (thread_id, reader_id),
            ).fetchall()
            wanted = None if message_ids is None else set(message_ids)
            chosen = [row for row in rows if wanted is None or row["id"] in wanted]
            conn.executemany(
                "INSERT INTO message_reads (message_id, reader_id, read_at) VALUES (?, ?, ?)",
                [(row["id"], reader_id, _ts(now)) for row in chosen],
            )
            return [row["id"] for row in chosen], [
                row["id"] for row in chosen if not row["readers"]
            ]

        return await self.db.transaction(write)

    async def viewers(self, thread_id: str) -> set[str]:
        """Professionals who see the thread: participants and members of participant teams."""
        return await self.db.read(lambda conn: _viewers(conn, thread_id))

    # --- directory lookups (inbound mail, recipients) ---------------------------------------

    async def professional_by_email(self, address: str) -> Professional | None:
        """The active account whose e-mail is ``address`` (lower case)."""
        return await self.db.read(lambda conn: _professional_by_email(conn, address))

    async def mailbox(self, address: str) -> tuple[str, str, str] | None:
        """What ``local@domain`` of the relay names, in one query: ``("team", id, name)``
        or ``("professional", id, display name)``; teams first (the directory's rule)."""
        local = address.rpartition("@")[0]
        row = await self.db.fetchone(
            "SELECT 'team' AS kind, id, name FROM teams WHERE address = ?"
            " UNION ALL SELECT 'professional' AS kind, id, display_name AS name"
            " FROM professionals WHERE email = ? AND active = 1 ORDER BY kind DESC",
            (local, address),
        )
        return None if row is None else (row["kind"], row["id"], row["name"])

    async def team_by_local_part(self, local: str) -> tuple[str, str] | None:
        """``(id, name)`` of the team addressed ``local@domain``."""
        row = await self.db.fetchone("SELECT id, name FROM teams WHERE address = ?", (local,))
        return None if row is None else (row["id"], row["name"])

    async def threads_by_mail_ids(self, mail_ids: Sequence[str]) -> list[str]:
        """Threads that sent or received a mail with one of these Message-IDs."""
        if not mail_ids:
            return []
        return await self.db.read(lambda conn: _threads_by_mail_ids(conn, mail_ids))

    async def mailed_deliveries(self, rfc822_ids: Sequence[str]) -> list[MailedDelivery]:
        """The message mails (notification, S/MIME) sent with one of these Message-IDs, with
        the state of the delivery each carried. Guest codes, receipts and bounces of ours
        carry no delivery: a report about them changes nothing."""
        if not rfc822_ids:
            return []
        marks = _placeholders(len(rfc822_ids))
        rows = await self.db.fetchall(
            "SELECT o.id, o.rfc822_id, o.kind, o.recipient, o.thread_id, o.message_id,"  # noqa: S608
            " o.participant_id, d.state FROM outbox o JOIN message_deliveries d"
            " ON d.message_id = o.message_id AND d.participant_id = o.participant_id"
            f" WHERE o.rfc822_id IN ({marks}) AND o.kind IN ('notification', 'smime')",
            tuple(rfc822_ids),
        )
        return [
            MailedDelivery(
                outbox_id=row["id"],
                rfc822_id=row["rfc822_id"],
                kind=OutboxKind(row["kind"]),
                recipient=row["recipient"],
                thread_id=row["thread_id"],
                message_id=row["message_id"],
                participant_id=row["participant_id"],
                state=DeliveryState(row["state"]),
            )
            for row in rows
        ]

    async def apply_bounce(
        self, delivery: MailedDelivery, reason: str, now: datetime
    ) -> DeliveryState | None:
        """A remote MTA reported the mail undeliverable: the delivery fails (one commit); the
        outbox row keeps its 'sent' state (it was handed over) and records the reason.
        None when nothing changed (already failed: a replayed report)."""

        def write(conn: sqlite3.Connection) -> DeliveryState | None:
            state = apply_delivery_event(
                conn,
                delivery.message_id,
                delivery.participant_id,
                DeliveryEvent.BOUNCED,
                reason,
                now,
            )
            if state is not None:
                conn.execute(
                    "UPDATE outbox SET last_error = ?, updated_at = ? WHERE id = ?",
                    (f"bounced: {reason}"[:400], _ts(now), delivery.outbox_id),
                )
            return state

        return await self.db.transaction(write)

    async def inbound_lookup(
        self, mail_ids: Sequence[str], rfc822_id: str | None, sender: str
    ) -> InboundLookup:
        """What storing an inbound mail needs to know first, in one read (one trip to the
        database thread instead of three, issue 4): the threads its In-Reply-To/References
        name, copies of it already received, and the account of its sender."""

        def query(conn: sqlite3.Connection) -> InboundLookup:
            return InboundLookup(
                _threads_by_mail_ids(conn, mail_ids) if mail_ids else [],
                _inbound_copies(conn, rfc822_id) if rfc822_id is not None else [],
                _professional_by_email(conn, sender),
            )

        return await self.db.read(query)

    # --- recipients' S/MIME certificates ----------------------------------------------------

    async def put_certificate(
        self,
        address: str,
        pem: str,
        fingerprint: str,
        not_after: datetime,
        added_by: str,
        now: datetime,
    ) -> None:
        """Register (or replace) the S/MIME certificate mail to ``address`` is encrypted for."""
        await self.db.execute(
            "INSERT INTO smime_certificates (address, certificate_pem, fingerprint_sha256,"
            " not_after, added_by, added_at) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (address) DO UPDATE SET certificate_pem = excluded.certificate_pem,"
            " fingerprint_sha256 = excluded.fingerprint_sha256, not_after = excluded.not_after,"
            " added_by = excluded.added_by, added_at = excluded.added_at",
            (address, pem, fingerprint, _ts(not_after), added_by, _ts(now)),
        )

    async def certificates_for(self, addresses: Sequence[str], now: datetime) -> dict[str, str]:
        """PEM certificates registered for these addresses and still valid at ``now``."""
        if not addresses:
            return {}
        rows = await self.db.fetchall(
            "SELECT address, certificate_pem, not_after FROM smime_certificates"  # noqa: S608
            f" WHERE address IN ({_placeholders(len(addresses))})",
            tuple(addresses),
        )
        return {
            row["address"]: row["certificate_pem"] for row in rows if _dt(row["not_after"]) > now
        }

    # --- guests -----------------------------------------------------------------------------

    async def external_participant(self, participant_id: str) -> Participant | None:
        """An external participant (the only kind with a guest view)."""
        row = await self.db.fetchone(
            "SELECT * FROM thread_participants WHERE id = ? AND kind = 'external'",
            (participant_id,),
        )
        return None if row is None else _participant(row)

    async def guest_code(self, participant_id: str) -> GuestCode | None:
        """The participant's pending one-time code, if any."""
        row = await self.db.fetchone(
            "SELECT * FROM guest_codes WHERE participant_id = ?", (participant_id,)
        )
        if row is None:
            return None
        return GuestCode(
            row["participant_id"],
            row["code_hash"],
            _dt(row["expires_at"]),
            row["failures"],
            _dt(row["sent_at"]),
        )

    async def set_guest_code(
        self,
        participant_id: str,
        code: str,
        expires_at: datetime,
        entry: OutboxEntry,
        now: datetime,
    ) -> None:
        """Replace the participant's code and queue the mail carrying it, atomically."""

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO guest_codes (participant_id, code_hash, expires_at, failures,"
                " sent_at) VALUES (?, ?, ?, 0, ?) ON CONFLICT (participant_id) DO UPDATE SET"
                " code_hash = excluded.code_hash, expires_at = excluded.expires_at,"
                " failures = 0, sent_at = excluded.sent_at",
                (participant_id, code_digest(code), _ts(expires_at), _ts(now)),
            )
            insert_outbox(conn, entry, now)

        await self.db.transaction(write)

    async def redeem_guest_code(
        self,
        participant_id: str,
        code_hash: str,
        *,
        token: str,
        expires_at: datetime,
        max_failures: int,
        now: datetime,
    ) -> GuestCodeOutcome:
        """Check a one-time code and, when it is right, consume it and record a guest
        session for ``token`` — in one transaction, so concurrent guesses are counted one by
        one against ``max_failures`` and a code opens one session only."""

        def write(conn: sqlite3.Connection) -> GuestCodeOutcome:
            row = conn.execute(
                "SELECT code_hash, expires_at, failures FROM guest_codes WHERE participant_id = ?",
                (participant_id,),
            ).fetchone()
            if row is None or _dt(row["expires_at"]) <= now:
                return GuestCodeOutcome.INVALID
            if row["failures"] >= max_failures:
                return GuestCodeOutcome.TOO_MANY
            if not hmac.compare_digest(code_hash, row["code_hash"]):
                conn.execute(
                    "UPDATE guest_codes SET failures = failures + 1 WHERE participant_id = ?",
                    (participant_id,),
                )
                return GuestCodeOutcome.INVALID
            conn.execute("DELETE FROM guest_codes WHERE participant_id = ?", (participant_id,))
            conn.execute(
                "INSERT INTO guest_sessions (token_hash, participant_id, created_at, expires_at)"
                " VALUES (?, ?, ?, ?)",
                (code_digest(token), participant_id, _ts(now), _ts(expires_at)),
            )
            return GuestCodeOutcome.OPENED

        return await self.db.transaction(write)

    async def guest_session(self, token: str, now: datetime) -> Participant | None:
        """The external participant a live guest session token belongs to."""
        row = await self.db.fetchone(
            "SELECT p.*, s.expires_at AS session_expires FROM guest_sessions s"
            " JOIN thread_participants p ON p.id = s.participant_id WHERE s.token_hash = ?",
            (code_digest(token),),
        )
        if row is None or _dt(row["session_expires"]) <= now:
            return None
        return _participant(row)
