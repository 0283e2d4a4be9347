"""What storing one inbound mail writes to SQLite's WAL: time-ordered ids against random ids.

Every row of a message (thread, participants, message, attachment, delivery) is keyed by an
identifier. With random identifiers each insert lands on another leaf of every index, so a
commit writes one page per index per message, more as the tables grow; with identifiers that
start with their creation time (``storage.ids.new_id``) the inserts of a batch share the last
leaves. Both runs write the same messages (a 20 KB sealed content document, two participants,
one attachment, one delivery, as the SMTP bench's mails) in batches of 3 per transaction, as
the group commit does under load, into a fresh database, with automatic checkpoints off so
the WAL holds exactly what the commits wrote. The figure is from the last round, once the
tables hold ``ROUNDS * PER_ROUND`` messages.

Run: ``python -m bench.message_write``.
"""

from __future__ import annotations

import secrets
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from bench.run import Result, format_table
from relay.messaging.model import (
    AttachmentInfo,
    Delivery,
    DeliveryChannel,
    DeliveryState,
    Message,
    MessageSource,
    Participant,
    ParticipantKind,
    Thread,
)
from relay.messaging.store import NewMessageRecord, _write_message
from storage.blobs import BlobStore, new_blob_id
from storage.database import DEFAULT_MIGRATIONS, _connect, apply_migrations
from storage.ids import new_id
from storage.keys import Keyring
from storage.sealed import SealedDocuments

ROUNDS = 3
PER_ROUND = 1500
BATCH = 3
DOCUMENT = b"x" * 20_000
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def _record(make_id: Callable[[], str], professional: str) -> NewMessageRecord:
    thread_id, message_id, content_id = make_id(), make_id(), new_blob_id()
    author = Participant(
        make_id(), thread_id, ParticipantKind.EXTERNAL, None, None,
        "dr.expediteur@hopital.example", "Dr Expéditeur",
    )  # fmt: skip
    recipient = Participant(
        make_id(), thread_id, ParticipantKind.PROFESSIONAL, professional, None,
        "dr.bench@relais.localhost", "Dr Bench",
    )  # fmt: skip
    message = Message(
        message_id, thread_id, author.id, None, MessageSource.SMTP, content_id, None,
        f"<{secrets.token_hex(12)}@hopital.example>", len(DOCUMENT), NOW,
        attachments=(
            AttachmentInfo(make_id(), message_id, 0, content_id, "application/pdf", 4000, "0" * 64),
        ),
        deliveries=(
            Delivery(message_id, recipient.id, DeliveryChannel.INBOX, DeliveryState.DELIVERED,
                     None, NOW),
        ),
    )  # fmt: skip
    return NewMessageRecord(
        message=message,
        content=DOCUMENT,
        thread=Thread(thread_id, content_id, None, NOW, NOW, (author, recipient)),
        mail_ids=(message.rfc822_id or "",),
    )


def measure(make_id: Callable[[], str]) -> tuple[float, float]:
    """(WAL bytes, CPU seconds) per message in the last round."""
    with tempfile.TemporaryDirectory(prefix="bench-write-") as tmp:
        root = Path(tmp)
        conn = _connect(root / "relais.db")
        apply_migrations(conn, DEFAULT_MIGRATIONS)
        conn.execute("PRAGMA wal_autocheckpoint=0")
        professional = make_id()
        conn.execute(
            "INSERT INTO professionals (id, email, display_name, role, created_at)"
            " VALUES (?, 'dr.bench@relais.localhost', 'Dr Bench', 'physician', ?)",
            (professional, NOW.isoformat()),
        )
        documents = SealedDocuments(None, BlobStore(root / "blobs", Keyring.create(root / "keys")))  # type: ignore[arg-type]
        wal = root / "relais.db-wal"
        per_message = (0.0, 0.0)
        for _ in range(ROUNDS):
            records = [_record(make_id, professional) for _ in range(PER_ROUND)]
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            started = time.process_time()
            for start in range(0, PER_ROUND, BATCH):
                conn.execute("BEGIN IMMEDIATE")
                for record in records[start : start + BATCH]:
                    _write_message(conn, record, NOW, documents)
                conn.execute("COMMIT")
            cpu = time.process_time() - started
            per_message = (wal.stat().st_size / PER_ROUND, cpu / PER_ROUND)
        conn.close()
        return per_message


def main() -> list[Result]:
    """The run for ``python -m bench.run`` (about 10 s)."""
    random_wal, random_cpu = measure(lambda: secrets.token_hex(16))
    ordered_wal, ordered_cpu = measure(new_id)
    return [
        Result(
            "WAL per stored 20 KB mail, batches of 3",
            ordered_wal / 1024,
            random_wal / 1024,
            "KiB",
            "random ids",
            higher_is_better=False,
        ),
        Result(
            "writer CPU per stored 20 KB mail (commit included)",
            ordered_cpu * 1000,
            random_cpu * 1000,
            "ms",
            "random ids",
            higher_is_better=False,
        ),
    ]


if __name__ == "__main__":
    print(f"message_write: {ROUNDS} rounds of {PER_ROUND:,} messages, figures of the last")
    print(format_table([("message_write", r) for r in main()]))
