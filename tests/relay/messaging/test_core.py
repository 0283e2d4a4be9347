"""Pure rules of messaging: validation, relations, delivery planning and state machine,
content and event formats (round trips), the trusted-sender policy, outbox retry policy."""

from __future__ import annotations

import pytest

from relay.errors import BadRequest, InvalidIdentifier
from relay.mail.errors import SenderNotAllowed, StartTlsRequired
from relay.mail.outbox import failure_from_reply, retry_delay
from relay.messaging.content import ContentError, MessageContent, ThreadContent
from relay.messaging.core import (
    TRANSITIONS,
    DeliveryEvent,
    InvalidTransition,
    acting_participant,
    next_delivery_state,
    plan_deliveries,
    relation_of,
    validate_new_message,
    validate_new_thread,
)
from relay.messaging.events import EventFormatError, EventKind, InboxEvent, user_channel
from relay.messaging.inbound import PeerTls, SenderPolicy
from relay.messaging.model import (
    DeliveryChannel,
    DeliveryState,
    Participant,
    ParticipantKind,
    Thread,
)
from relay.policy import Relation

DOMAIN = "relais.localhost"
FILE_ID = "0123456789abcdef0123456789abcdef"
T = "f" * 32


def _participant(n: int, kind: ParticipantKind, address: str, **ids: str) -> Participant:
    return Participant(
        id=f"{n:032x}",
        thread_id=T,
        kind=kind,
        professional_id=ids.get("professional_id"),
        team_id=ids.get("team_id"),
        address=address,
        display_name=address,
    )


NURSE = _participant(1, ParticipantKind.PROFESSIONAL, "ide@relais.localhost", professional_id="n")
TEAM = _participant(2, ParticipantKind.TEAM, "msp@relais.localhost", team_id="team-msp")
EXTERNAL = _participant(3, ParticipantKind.EXTERNAL, "confrere@cabinet.example")
FAR_PRO = _participant(4, ParticipantKind.PROFESSIONAL, "dr@hopital.example", professional_id="far")


def _thread(*participants: Participant) -> Thread:
    from datetime import UTC, datetime

    now = datetime(2026, 1, 1, tzinfo=UTC)
    return Thread(T, "blob", None, now, now, participants)


# --- validation -----------------------------------------------------------------------------


def test_new_thread_is_normalised() -> None:
    request = validate_new_thread(
        {
            "recipients": [
                " Dr.Bernard@Relais.Localhost ",
                "dr.bernard@relais.localhost",
                "a@b.fr",
            ],
            "subject": "  Plaie   du talon ",
            "text": "Bonjour\r\nAvis ?",
            "patient_ins": "1 85 05 78 006 084 91",
            "attachments": [{"file_id": FILE_ID, "filename": "../../cr\u202eexe.pdf"}],
        }
    )
    assert request.recipients == ("dr.bernard@relais.localhost", "a@b.fr")
    assert request.subject == "Plaie du talon"
    assert request.first.text == "Bonjour\nAvis ?"
    assert request.patient_ins == "185057800608491"
    assert request.first.attachments[0].filename == "crexe.pdf"  # no path, no bidi override


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"subject": "x", "text": "y"}, "au moins un destinataire"),
        ({"recipients": ["pas une adresse"], "subject": "x", "text": "y"}, "pas une adresse"),
        ({"recipients": ["a@b.fr"], "subject": "   ", "text": "y"}, "objet"),
        ({"recipients": ["a@b.fr"], "subject": "x", "text": "  "}, "vide"),
        ({"recipients": ["a@b.fr"], "subject": "x" * 201, "text": "y"}, "200"),
        (
            {"recipients": ["a@b.fr"], "subject": "x", "attachments": [{"file_id": "../x"}]},
            "file_id",
        ),
        ({"recipients": ["a@b.fr"] * 51, "subject": "x", "text": "y"}, "50"),
    ],
)
def test_invalid_thread_requests_name_the_problem(body: dict[str, object], message: str) -> None:
    with pytest.raises(BadRequest) as caught:
        validate_new_thread(body)
    assert message in caught.value.message


def test_invalid_ins_is_refused_with_its_reason() -> None:
    with pytest.raises(InvalidIdentifier, match="clé"):
        validate_new_thread(
            {
                "recipients": ["a@b.fr"],
                "subject": "x",
                "text": "y",
                "patient_ins": "185057800608400",
            }
        )


def test_a_message_with_only_an_attachment_is_valid() -> None:
    request = validate_new_message({"attachments": [{"file_id": FILE_ID, "filename": ""}]})
    assert request.text == ""
    assert request.attachments[0].filename.startswith("piece-jointe-1")


# --- relations -------------------------------------------------------------------------------


def test_relation_owner_team_none() -> None:
    thread = _thread(NURSE, TEAM, EXTERNAL)
    assert relation_of(thread, "n", []) is Relation.OWNER
    assert relation_of(thread, "someone", ["team-msp"]) is Relation.TEAM
    assert relation_of(thread, "someone", ["other-team"]) is Relation.NONE
    assert acting_participant(thread, "someone", ["team-msp"]) == TEAM
    assert acting_participant(thread, "n", ["team-msp"]) == NURSE
    assert acting_participant(thread, "x", []) is None


# --- deliveries -------------------------------------------------------------------------------


def test_delivery_plan_by_kind_of_participant() -> None:
    plans = {
        p.participant.id: p
        for p in plan_deliveries(
            [NURSE, TEAM, EXTERNAL, FAR_PRO],
            NURSE.id,
            domain=DOMAIN,
            smime_addresses=frozenset({"dr@hopital.example"}),
        )
    }
    assert NURSE.id not in plans  # the author gets nothing
    assert (plans[TEAM.id].channel, plans[TEAM.id].state, plans[TEAM.id].mail) == (
        DeliveryChannel.INBOX,
        DeliveryState.DELIVERED,
        False,
    )
    external = plans[EXTERNAL.id]
    assert (external.channel, external.state, external.mail) == (
        DeliveryChannel.NOTIFICATION,
        DeliveryState.QUEUED,
        True,
    )
    far = plans[FAR_PRO.id]  # in the inbox at once, and told by mail at their own address
    assert (far.channel, far.state, far.mail) == (
        DeliveryChannel.INBOX,
        DeliveryState.DELIVERED,
        True,
    )


def test_external_with_certificate_gets_smime() -> None:
    (plan,) = plan_deliveries(
        [NURSE, EXTERNAL],
        NURSE.id,
        domain=DOMAIN,
        smime_addresses=frozenset({EXTERNAL.address}),
    )
    assert plan.channel is DeliveryChannel.SMIME and plan.state is DeliveryState.QUEUED


def test_delivery_state_machine_is_the_table() -> None:
    assert next_delivery_state(DeliveryState.QUEUED, DeliveryEvent.HANDED_OVER) is (
        DeliveryState.DELIVERED
    )
    assert next_delivery_state(DeliveryState.QUEUED, DeliveryEvent.TEMPORARY_FAILURE) is (
        DeliveryState.QUEUED
    )
    assert next_delivery_state(DeliveryState.QUEUED, DeliveryEvent.PERMANENT_FAILURE) is (
        DeliveryState.FAILED
    )
    # A bounce fails a delivered mail (RFC 3464: reported after the hand-over), or a queued
    # one whose hand-over it overtook; nothing else leaves "delivered", nothing leaves "failed".
    for state in (DeliveryState.QUEUED, DeliveryState.DELIVERED):
        assert next_delivery_state(state, DeliveryEvent.BOUNCED) is DeliveryState.FAILED
    for event in DeliveryEvent:
        assert (DeliveryState.FAILED, event) not in TRANSITIONS
        with pytest.raises(InvalidTransition):
            next_delivery_state(DeliveryState.FAILED, event)
        if event is not DeliveryEvent.BOUNCED:
            with pytest.raises(InvalidTransition):
                next_delivery_state(DeliveryState.DELIVERED, event)


# --- formats ----------------------------------------------------------------------------------


def test_content_round_trips_and_hides_health_data_from_repr() -> None:
    thread = ThreadContent("Plaie de Mme Dupont", "185057800608491")
    assert ThreadContent.parse(bytes(thread)) == thread
    message = MessageContent("Texte", ("photo.jpg", "cr.pdf"), "Dr X")
    assert MessageContent.parse(bytes(message)) == message
    first = MessageContent(
        "Premier message",
        ("a.bin",),
        None,
        inline=(b"\x00\xffbinary",),
        raw_headers=b"From: a@b.fr\r\nSubject: Mme Dupont\r\n",
        thread=thread,
        receipt_to="a@b.fr",
    )
    assert MessageContent.parse(bytes(first)) == first
    # The thread's subject and patient are read from its first message's document.
    assert ThreadContent.parse(bytes(first)) == thread
    with pytest.raises(ContentError):
        ThreadContent.parse(bytes(message))  # not a first message: no thread section
    assert "Dupont" not in repr(first) and "binary" not in repr(first)
    assert "Dupont" not in repr(thread) and "photo" not in repr(message)
    with pytest.raises(ContentError):
        MessageContent.parse(bytes(thread))
    with pytest.raises(ContentError):
        ThreadContent.parse(b"\xff")


def test_events_round_trip_and_refuse_garbage() -> None:
    event = InboxEvent(EventKind.DELIVERY, T, "a" * 32, "b" * 32, "failed")
    assert InboxEvent.parse(bytes(event)) == event
    assert event.to_json()["type"] == "delivery"
    assert user_channel("abc") == "user:abc"
    for raw in (b"{}", b"not json", b'{"type":"message","thread_id":"x","message_id":"../"}'):
        with pytest.raises(EventFormatError):
            InboxEvent.parse(raw)


# --- trusted senders ---------------------------------------------------------------------------


def test_sender_policy() -> None:
    tls = PeerTls("TLSv1.3", "TLS_AES_256_GCM_SHA384")
    tls_cert = PeerTls("TLSv1.3", "TLS_AES_256_GCM_SHA384", "ab" * 32)
    open_policy = SenderPolicy()
    with pytest.raises(StartTlsRequired):
        open_policy.check_mail_from(None)
    open_policy.check_mail_from(tls)
    open_policy.check_sender_for_mailbox("x@anywhere.example", tls)

    listed = SenderPolicy.from_lists(
        "hopital.example, MSSANTE.fr", require_certificate=False, fingerprints=""
    )
    listed.check_sender_for_mailbox("dr@hopital.example", tls)
    listed.check_sender_for_mailbox("dr@mssante.fr", tls)
    with pytest.raises(SenderNotAllowed):
        listed.check_sender_for_mailbox("spam@elsewhere.example", tls)
    listed.check_sender_for_mailbox("x@elsewhere.example", tls_cert)  # mutual TLS peer

    # Delivery reports: the same rule, on the envelope sender or, for the null reverse-path,
    # on the report's From.
    assert open_policy.accepts_report("", "mailer-daemon@anywhere.example", tls)
    assert listed.accepts_report("", "mailer-daemon@hopital.example", tls)
    assert listed.accepts_report("bounces@hopital.example", "x@elsewhere.example", tls)
    assert not listed.accepts_report("", "mailer-daemon@elsewhere.example", tls)
    assert not listed.accepts_report("bounces@elsewhere.example", "x@hopital.example", tls)
    assert listed.accepts_report("", "mailer-daemon@elsewhere.example", tls_cert)

    pinned = SenderPolicy.from_lists("", require_certificate=True, fingerprints="AB:" + "ab" * 31)
    with pytest.raises(SenderNotAllowed):
        pinned.check_mail_from(tls)
    pinned.check_mail_from(tls_cert)
    with pytest.raises(SenderNotAllowed):
        pinned.check_mail_from(PeerTls("TLSv1.3", "x", "cd" * 32))


# --- outbox policy ------------------------------------------------------------------------------


def test_retry_delay_doubles_and_caps() -> None:
    assert [retry_delay(n, 60, 3600) for n in range(0, 9)] == [
        0, 60, 120, 240, 480, 960, 1920, 3600, 3600,
    ]  # fmt: skip
    assert retry_delay(10_000, 1, 50) == 50


@pytest.mark.parametrize(
    ("code", "text", "permanent", "status"),
    [
        (550, "5.1.1 <x@y.fr>: Recipient address rejected", True, "5.1.1"),
        (552, "Message too big", True, "5.0.0"),
        (451, "4.3.0 Try again later", False, "4.3.0"),
        (421, "Service not available", False, "4.0.0"),
        (554, "4.7.1 inconsistent", True, "5.7.1"),
    ],
)
def test_smtp_replies_are_classified(code: int, text: str, permanent: bool, status: str) -> None:
    failure = failure_from_reply(code, text)
    assert failure.permanent is permanent
    assert failure.status == status
    assert failure.diagnostic.startswith(str(code))
