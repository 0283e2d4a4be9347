"""The messaging SQL adapter on a real SQLite database: group commit where one bad record
fails alone, deduplication of retried mail and of queued mail by Message-ID, first reads."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from relay.accounts import new_id
from relay.messaging.model import (
    Message,
    MessageSource,
    OutboxEntry,
    OutboxKind,
    Participant,
    ParticipantKind,
    Thread,
)
from relay.messaging.service import Messaging, MessagingConfig
from relay.messaging.store import MessagingStore, NewMessageRecord
from storage.blobs import BlobStore
from storage.bus import InMemoryBus
from storage.database import Database
from storage.keys import Keyring
from storage.sealed import SealedDocuments

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


async def _store(tmp_path: Path) -> tuple[Database, MessagingStore, str]:
    db = await Database.open(tmp_path / "relais.db")
    pro = new_id()
    await db.execute(
        "INSERT INTO professionals (id, email, display_name, role, created_at)"
        " VALUES (?, 'ide@relais.localhost', 'IDE', 'nurse', ?)",
        (pro, NOW.isoformat()),
    )
    blobs = BlobStore(tmp_path / "blobs", Keyring.create(tmp_path / "keys"))
    return db, MessagingStore(db, SealedDocuments(db, blobs)), pro


def _messaging(store: MessagingStore) -> Messaging:
    return Messaging(
        store=store,
        blobs=store.documents.blobs,
        bus=InMemoryBus(),
        config=MessagingConfig("relais.localhost", "https://relais.example"),
        reply_secret=b"s" * 32,
        patient_reference=lambda ins: ins,
    )


def _new_thread(pro: str, rfc822_id: str | None = None) -> NewMessageRecord:
    thread_id = new_id()
    author = Participant(
        new_id(), thread_id, ParticipantKind.PROFESSIONAL, pro, None, "ide@relais.localhost", "IDE"
    )
    external = Participant(
        new_id(), thread_id, ParticipantKind.EXTERNAL, None, None, "x@cabinet.example", "X"
    )
    message = Message(
        new_id(), thread_id, author.id, pro, MessageSource.WEB, "blob", None, rfc822_id, 1, NOW
    )
    return NewMessageRecord(
        message=message,
        thread=Thread(thread_id, "blob", None, NOW, NOW, (author, external)),
    )


async def test_concurrent_inserts_share_commits_and_a_bad_one_fails_alone(tmp_path: Path) -> None:
    db, store, pro = await _store(tmp_path)
    try:
        good = [_new_thread(pro) for _ in range(30)]
        bad = _new_thread(pro)
        clash = NewMessageRecord(  # the same thread inserted twice: a constraint violation
            message=Message(
                new_id(),
                good[0].message.thread_id,
                None,
                None,
                MessageSource.WEB,
                "blob",
                None,
                None,
                1,
                NOW,
            ),
            thread=good[0].thread,
        )
        results = await asyncio.gather(
            *(store.insert(r, NOW) for r in [*good, clash, bad]), return_exceptions=True
        )
        assert isinstance(results[30], sqlite3.IntegrityError)
        for record, result in zip([*good, bad], [*results[:30], results[31]], strict=True):
            assert not isinstance(result, BaseException), result
            message_id, viewers = result
            assert message_id == record.message.id and viewers == {pro}
        rows = await db.fetchone("SELECT count(*) AS n FROM messages")
        assert rows is not None and rows["n"] == 31
    finally:
        await db.close()


async def test_contents_from_before_sealed_documents_are_read_from_their_blob_files(
    tmp_path: Path,
) -> None:
    """A relay upgraded past migration 0007 keeps the blob files of its older messages."""
    from relay.messaging.content import MessageContent, ThreadContent

    db, store, pro = await _store(tmp_path)
    messaging = _messaging(store)
    try:
        old = await store.documents.blobs.put(
            bytes(MessageContent("Écrit avant", thread=ThreadContent("Ancien sujet", None)))
        )
        record = _new_thread(pro)
        message = dataclasses.replace(record.message, content_blob_id=old.blob_id)
        assert record.thread is not None
        thread = dataclasses.replace(record.thread, content_blob_id=old.blob_id)
        await store.insert(NewMessageRecord(message, thread=thread), NOW)  # no content: a file
        assert (await messaging.message_content(message)).text == "Écrit avant"
        assert (await messaging.thread_content(thread)).subject == "Ancien sujet"
        count = await db.fetchone("SELECT count(*) AS n FROM sealed_documents")
        assert count is not None and count["n"] == 0
    finally:
        await db.close()


async def test_retried_mail_and_queued_mail_are_stored_once(tmp_path: Path) -> None:
    db, store, pro = await _store(tmp_path)
    try:
        first = _new_thread(pro)
        await store.insert(first, NOW)
        thread_id = first.message.thread_id
        inbound = Message(
            new_id(), thread_id, None, None, MessageSource.SMTP, "b", None, "<m@x>", 1, NOW
        )
        retried = Message(
            new_id(), thread_id, None, None, MessageSource.SMTP, "b", None, "<m@x>", 1, NOW
        )
        assert (await store.insert(NewMessageRecord(inbound), NOW))[0] == inbound.id
        assert (await store.insert(NewMessageRecord(retried), NOW))[0] == inbound.id
        entry = OutboxEntry(new_id(), "<n@relais.localhost>", OutboxKind.MDN, "", "a@b.fr", "b")
        again = OutboxEntry(new_id(), "<n@relais.localhost>", OutboxKind.MDN, "", "a@b.fr", "c")
        assert await store.enqueue([entry, again], NOW) == 1
    finally:
        await db.close()


async def test_first_reading_is_reported_once(tmp_path: Path) -> None:
    db, store, pro = await _store(tmp_path)
    try:
        record = _new_thread(pro)
        await store.insert(record, NOW)
        thread_id = record.message.thread_id
        inbound = Message(
            new_id(), thread_id, None, None, MessageSource.SMTP, "b", None, "<r@x>", 1, NOW
        )
        await store.insert(NewMessageRecord(inbound), NOW)
        newly, first = await store.mark_read("reader-1", thread_id, None, NOW)
        assert set(newly) == {record.message.id, inbound.id}
        assert first == [inbound.id]  # the author had read their own message already
        newly, first = await store.mark_read("reader-2", thread_id, None, NOW)
        assert first == [] and len(newly) == 2
        assert await store.mark_read("reader-2", thread_id, None, NOW) == ([], [])
    finally:
        await db.close()


@pytest.mark.parametrize("address", ["msp@relais.localhost", "ide@relais.localhost", "x@y.fr"])
async def test_mailbox_lookup(tmp_path: Path, address: str) -> None:
    db, store, pro = await _store(tmp_path)
    try:
        await db.execute(
            "INSERT INTO teams (id, address, name, kind, created_at)"
            " VALUES ('t1', 'msp', 'MSP', 'msp', ?)",
            (NOW.isoformat(),),
        )
        found = await store.mailbox(address)
        expected = {
            "msp@relais.localhost": ("team", "t1", "MSP"),
            "ide@relais.localhost": ("professional", pro, "IDE"),
            "x@y.fr": None,
        }[address]
        assert found == expected
    finally:
        await db.close()


async def test_other_parts_queue_mail_once(tmp_path: Path) -> None:
    from relay.mail.notifications import Notification, NotificationKind, build_notification
    from relay.messaging.model import OutboxKind

    db, store, _ = await _store(tmp_path)
    messaging = _messaging(store)
    try:
        mail = build_notification(
            Notification(
                NotificationKind.NEW_CASE,
                "dr@hopital.example",
                "Claire Martin",
                "https://relais.example/cases/x",
                "<case.1@relais.localhost>",
            ),
            domain="relais.localhost",
            now=NOW,
        )
        assert await messaging.queue_mail(OutboxKind.NOTIFICATION, mail, NOW)
        assert not await messaging.queue_mail(OutboxKind.NOTIFICATION, mail, NOW)
        assert messaging.outbox_wakeup.is_set()
        row = await db.fetchone("SELECT recipient, envelope_from, blob_id FROM outbox")
        assert row is not None and row["recipient"] == "dr@hopital.example"
        assert row["envelope_from"] == "postmaster@relais.localhost"
        # The duplicate's blob was removed.
        assert len(list(store.documents.blobs.iter_blob_ids())) == 1
    finally:
        await db.close()


def test_a_record_never_shows_its_clear_content() -> None:
    record = dataclasses.replace(_new_thread("pro"), content=b'{"patient_ins": "185057800608436"}')
    assert b"185057800608436" in (record.content or b"")
    assert "185057800608436" not in repr(record)


async def test_concurrent_guesses_of_a_guest_code_are_counted_one_by_one(tmp_path: Path) -> None:
    from relay.messaging.store import GuestCodeOutcome, code_digest

    db, store, pro = await _store(tmp_path)
    try:
        record = _new_thread(pro)
        await store.insert(record, NOW)
        assert record.thread is not None
        guest = record.thread.participants[1].id  # the external participant
        entry = OutboxEntry(new_id(), "<g@relais.localhost>", OutboxKind.GUEST_CODE, "", "x@c", "b")
        await store.set_guest_code(guest, "123456", NOW + timedelta(minutes=15), entry, NOW)

        def redeem(code: str) -> Awaitable[GuestCodeOutcome]:
            return store.redeem_guest_code(
                guest,
                code_digest(code),
                token=new_id(),
                expires_at=NOW + timedelta(hours=1),
                max_failures=5,
                now=NOW,
            )

        wrong = await asyncio.gather(*(redeem(f"{n:06d}") for n in range(20)))
        assert wrong.count(GuestCodeOutcome.INVALID) == 5  # each counted, then refused
        assert wrong.count(GuestCodeOutcome.TOO_MANY) == 15
        pending = await store.guest_code(guest)
        assert pending is not None and pending.failures == 5
        assert await redeem("123456") is GuestCodeOutcome.TOO_MANY  # even the right one now

        # A fresh code is consumed by one of two simultaneous right answers only.
        await store.set_guest_code(guest, "654321", NOW + timedelta(minutes=15), entry, NOW)
        both = await asyncio.gather(redeem("654321"), redeem("654321"))
        assert sorted(o.value for o in both) == ["invalid", "opened"]
        sessions = await db.fetchone("SELECT count(*) AS n FROM guest_sessions")
        assert sessions is not None and sessions["n"] == 1
    finally:
        await db.close()


async def test_two_copies_of_one_mail_arriving_together_make_one_message(tmp_path: Path) -> None:
    """A client retrying while the first copy is still being stored: one thread, one message,
    the second copy acknowledged as a duplicate."""
    from relay.mail.limits import parse_message
    from relay.messaging.inbound import InboundMail, InboundTarget, TargetKind

    db, store, pro = await _store(tmp_path)
    messaging = _messaging(store)
    raw = (
        b"From: dr.x@hopital.example\r\nTo: ide@relais.localhost\r\nSubject: Retry\r\n"
        b"Message-ID: <retry-1@hopital.example>\r\n\r\nBonjour.\r\n"
    )
    target = InboundTarget(TargetKind.PROFESSIONAL, "ide@relais.localhost", professional_id=pro)
    mail = InboundMail(parse_message(raw), raw, "dr.x@hopital.example", (target,))
    try:
        first, second = await asyncio.gather(
            messaging.receive_mail(mail, NOW), messaging.receive_mail(mail, NOW)
        )
        posted = [*first.posted, *second.posted]
        assert sorted(p.duplicate for p in posted) == [False, True]
        assert len({p.message_id for p in posted}) == 1
        count = await db.fetchone("SELECT count(*) AS n FROM messages")
        assert count is not None and count["n"] == 1
    finally:
        await db.close()


@pytest.mark.parametrize("with_team", [False, True])
async def test_the_viewers_of_a_new_thread_are_those_the_database_finds(
    tmp_path: Path, with_team: bool
) -> None:
    """Without a team the viewers of a new thread are computed, not queried: the same set."""
    from relay.messaging.store import _viewers

    db, store, pro = await _store(tmp_path)
    try:
        member = new_id()
        await db.execute(
            "INSERT INTO professionals (id, email, display_name, role, created_at)"
            " VALUES (?, 'msp.member@relais.localhost', 'Membre', 'nurse', ?)",
            (member, NOW.isoformat()),
        )
        await db.execute(
            "INSERT INTO teams (id, address, name, kind, created_at)"
            " VALUES ('t1', 'msp', 'MSP', 'msp', ?)",
            (NOW.isoformat(),),
        )
        await db.execute(
            "INSERT INTO team_members (team_id, professional_id, added_at) VALUES ('t1', ?, ?)",
            (member, NOW.isoformat()),
        )
        record = _new_thread(pro)
        assert record.thread is not None
        if with_team:
            team = Participant(
                new_id(), record.thread.id, ParticipantKind.TEAM, None, "t1",
                "msp@relais.localhost", "MSP",
            )  # fmt: skip
            thread = dataclasses.replace(
                record.thread, participants=(*record.thread.participants, team)
            )
            record = dataclasses.replace(record, thread=thread)
        _, viewers = await store.insert(record, NOW)
        queried = await db.read(lambda conn: _viewers(conn, record.message.thread_id))
        assert viewers == queried == ({pro, member} if with_team else {pro})
    finally:
        await db.close()
