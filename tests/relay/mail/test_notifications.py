"""Notification mails: fixed French subjects, a link, how to reply — and no health data."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

import pytest

from relay.mail.limits import parse_message
from relay.mail.notifications import (
    GUEST_CODE_SUBJECT,
    SUBJECTS,
    Notification,
    NotificationKind,
    build_guest_code,
    build_notification,
    make_message_id,
    thread_root_id,
)
from relay.mail.reply_tokens import ReplyKind, issue, verify

NOW = datetime(2026, 11, 23, 13, 5, tzinfo=UTC)
DOMAIN = "relais.localhost"
SECRET = secrets.token_bytes(32)
CASE_ID = secrets.token_hex(16)
RECIPIENT = "jean.dubois@chu.example.fr"

# What the relay knows about the case when it notifies: none of it may leave in plain mail.
PATIENT_NAME = "Dupont"
PATIENT_FIRST_NAME = "Marcelle"
NIR = "2 84 05 75 116 012 34"
QUESTION = "Ulcère veineux de la jambe gauche qui ne cicatrise pas"
ATTACHMENT_NAME = "plaie-jambe.jpg"
SECRETS_OF_THE_CASE = [PATIENT_NAME, PATIENT_FIRST_NAME, NIR, NIR.replace(" ", ""), QUESTION,
                       "Ulc", "cicatrise", ATTACHMENT_NAME, "1984"]  # fmt: skip


def notification(kind: NotificationKind, **changes: object) -> Notification:
    token = issue(SECRET, ReplyKind.CASE, CASE_ID, RECIPIENT)
    values: dict[str, object] = {
        "kind": kind,
        "recipient": RECIPIENT,
        "sender_name": "Claire Martin",
        "link": f"https://relais.example.fr/cases/{CASE_ID}",
        "message_id": make_message_id(DOMAIN),
        "reply_token": token,
        "references": (thread_root_id("case", CASE_ID, DOMAIN),),
    }
    values.update(changes)
    return Notification(**values)  # type: ignore[arg-type]


def as_bytes(message: EmailMessage) -> bytes:
    return message.as_bytes(policy=policy.SMTP)


def decoded_text(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    assert body is not None
    content = body.get_content()
    assert isinstance(content, str)
    return content


@pytest.mark.parametrize("kind", list(NotificationKind))
def test_no_health_data_anywhere(kind: NotificationKind) -> None:
    message = build_notification(notification(kind), domain=DOMAIN, now=NOW)
    raw = as_bytes(message)
    everything = raw.decode("ascii") + decoded_text(message) + str(message["Subject"])
    for secret in SECRETS_OF_THE_CASE:
        assert secret not in everything
    assert f"https://relais.example.fr/cases/{CASE_ID}" in decoded_text(message)
    assert not message.is_multipart()  # no attachment can ride along


def test_subjects_exact() -> None:
    assert SUBJECTS[NotificationKind.NEW_MESSAGE] == "[Relais Santé] Nouveau message sécurisé"
    assert (
        SUBJECTS[NotificationKind.NEW_CASE] == "[Relais Santé] Nouvelle demande de télé-expertise"
    )
    assert (
        SUBJECTS[NotificationKind.CASE_ANSWER]
        == "[Relais Santé] Réponse à votre demande de télé-expertise"
    )
    for kind in NotificationKind:
        raw = as_bytes(build_notification(notification(kind), domain=DOMAIN, now=NOW))
        parsed = BytesParser(policy=policy.default).parsebytes(raw)
        assert parsed["Subject"] == SUBJECTS[kind]


def test_headers_for_threading_and_replies() -> None:
    note = notification(NotificationKind.NEW_CASE)
    message = build_notification(note, domain=DOMAIN, now=NOW)
    parsed = BytesParser(policy=policy.default).parsebytes(as_bytes(message))
    assert parsed["Message-ID"] == note.message_id
    root = f"<case.{CASE_ID}@relais.localhost>"
    assert parsed["In-Reply-To"] == root
    assert parsed["References"] == root
    assert parsed["To"] == RECIPIENT
    assert parsed["From"].addresses[0].addr_spec == "notifications@relais.localhost"
    assert parsed["From"].addresses[0].display_name == "Claire Martin via Relais Santé"
    assert parsed["Date"].datetime == NOW
    assert parsed["Auto-Submitted"] == "auto-generated"
    assert parsed["X-Auto-Response-Suppress"] == "OOF, AutoReply"
    assert parsed["Content-Language"] == "fr"
    reply_to = parsed["Reply-To"].addresses[0].addr_spec
    token = reply_to.removeprefix("r+").removesuffix("@relais.localhost")
    target = verify(SECRET, token, RECIPIENT)
    assert (target.kind, target.target_id) == (ReplyKind.CASE, CASE_ID)
    assert "répondre directement à ce courriel" in decoded_text(message)


def test_without_reply_token_no_reply_to() -> None:
    message = build_notification(
        notification(NotificationKind.NEW_MESSAGE, reply_token=None, references=()),
        domain=DOMAIN,
        now=NOW,
    )
    assert message["Reply-To"] is None and message["In-Reply-To"] is None
    assert "utilisez le lien ci-dessus" in decoded_text(message)


def test_successive_notifications_chain_references() -> None:
    first = make_message_id(DOMAIN)
    root = thread_root_id("thread", CASE_ID, DOMAIN)
    message = build_notification(
        notification(NotificationKind.NEW_MESSAGE, references=(root, first)),
        domain=DOMAIN,
        now=NOW,
    )
    assert message["In-Reply-To"] == first
    assert message["References"] == f"{root} {first}"


def test_our_own_parser_reads_it_back() -> None:
    raw = as_bytes(
        build_notification(notification(NotificationKind.NEW_CASE), domain=DOMAIN, now=NOW)
    )
    parsed = parse_message(raw)
    assert parsed.from_address == "notifications@relais.localhost"
    assert parsed.auto_submitted
    assert (
        "Claire Martin vous a adressé une nouvelle demande de télé-expertise." in parsed.text_body
    )


def test_display_name_cannot_inject_headers() -> None:
    message = build_notification(
        notification(NotificationKind.NEW_MESSAGE, sender_name='Eve\r\nBcc: x@evil.org "Dr"'),
        domain=DOMAIN,
        now=NOW,
    )
    raw = as_bytes(message)
    parsed = BytesParser(policy=policy.default).parsebytes(raw)
    assert parsed["Bcc"] is None
    assert parsed["From"].addresses[0].addr_spec == "notifications@relais.localhost"


@pytest.mark.parametrize(
    "link", ["javascript:alert(1)", "https://x.example/a b", "https://x.example/\r\nX: y", ""]
)
def test_bad_links_refused(link: str) -> None:
    with pytest.raises(ValueError):
        build_notification(
            notification(NotificationKind.NEW_MESSAGE, link=link), domain=DOMAIN, now=NOW
        )


def test_bad_message_id_and_naive_now_refused() -> None:
    with pytest.raises(ValueError):
        build_notification(
            notification(NotificationKind.NEW_MESSAGE, message_id="no-brackets"),
            domain=DOMAIN,
            now=NOW,
        )
    with pytest.raises(ValueError):
        build_notification(
            notification(NotificationKind.NEW_MESSAGE), domain=DOMAIN, now=datetime(2026, 1, 1)
        )


def test_make_message_id_unique_and_well_formed() -> None:
    ids = {make_message_id(DOMAIN) for _ in range(100)}
    assert len(ids) == 100
    assert all(value.startswith("<") and value.endswith("@relais.localhost>") for value in ids)


def test_guest_code_mail() -> None:
    message = build_guest_code(
        recipient="Externe@Example.org",
        code="482913",
        valid_for=timedelta(minutes=10),
        message_id=make_message_id(DOMAIN),
        domain=DOMAIN,
        now=NOW,
    )
    assert message["Subject"] == GUEST_CODE_SUBJECT
    assert "482913" not in str(message["Subject"])
    assert message["To"] == "externe@example.org"
    assert message["Reply-To"] is None
    text = decoded_text(message)
    assert "482913" in text and "valable 10 minutes" in text
    raw = as_bytes(message)
    for secret in SECRETS_OF_THE_CASE:
        assert secret.encode() not in raw


@pytest.mark.parametrize(("delta", "text"), [(timedelta(hours=1), "1 heure"),
                                             (timedelta(hours=24), "24 heures"),
                                             (timedelta(seconds=30), "1 minute")])  # fmt: skip
def test_guest_code_validity_wording(delta: timedelta, text: str) -> None:
    message = build_guest_code(
        recipient=RECIPIENT,
        code="ABCD12",
        valid_for=delta,
        message_id=make_message_id(DOMAIN),
        domain=DOMAIN,
        now=NOW,
    )
    assert f"valable {text} " in decoded_text(message)


def test_guest_code_format_checked() -> None:
    with pytest.raises(ValueError):
        build_guest_code(
            recipient=RECIPIENT,
            code="12\n34",
            valid_for=timedelta(minutes=5),
            message_id=make_message_id(DOMAIN),
            domain=DOMAIN,
            now=NOW,
        )


def test_thread_root_id_checks_input() -> None:
    with pytest.raises(ValueError):
        thread_root_id("thread", "a b", DOMAIN)
    with pytest.raises(ValueError):
        thread_root_id("patient", CASE_ID, DOMAIN)
