"""End to end (issue 5 items 5 and 6): a submitted case is mailed to the specialist without
health data; their reply from a mail client (swaks) becomes the answer, with a sanitized
photo; a reply from anyone else is refused and audited."""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import require_component
from tests.harness.accounts import ADMIN, PASSWORD, luhn_complete
from tests.harness.relay_process import RelayProcess, init_data_dir, relais, start_relay
from tests.relay.cases_api.helpers import case_body, create_case, session_of, upload
from tests.relay.imaging.images import assert_clean, phone_jpeg
from tests.relay.messaging.helpers import (
    audit_events,
    eventually,
    last_reply,
    mails_to,
    server_replies,
    swaks,
)

NURSE = "ide.blanc@msp.example"
SPECIALIST = "dr.leroy@cabinet.example"
SMIME_SPECIALIST = "dr.marchand@hopital.example"
TEAM = "plaies-cpts"
NEW_CASE = "[Relais Santé] Nouvelle demande de télé-expertise"
ANSWERED = "[Relais Santé] Réponse à votre demande de télé-expertise"


@pytest.fixture(scope="module")
def case_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    """A relay of its own whose nurse and specialist have outside mail addresses."""
    require_component("swaks", "swaks")
    root = tmp_path_factory.mktemp("case-mail")
    data_dir = init_data_dir(root)
    password_file = root / "user-password"
    password_file.write_text(PASSWORD)
    relais(data_dir, "team", "add", "--address", TEAM, "--name", "Plaies CPTS", "--kind",
           "specialty_pool", "--specialty", "Dermatologie")  # fmt: skip
    for email, role, name, rpps, extra in (
        (NURSE, "nurse", "Lucie Blanc", "1000000501", ()),
        (SMIME_SPECIALIST, "specialist", "Paul Marchand", "1000000503",
         ("--specialty", "Dermatologie", "--team", TEAM)),
        (SPECIALIST, "specialist", "Anne Leroy", "1000000502",
         ("--specialty", "Dermatologie", "--team", TEAM)),
    ):  # fmt: skip
        args = ["user", "add", "--email", email, "--role", role, "--name", name]
        args += ["--password-file", str(password_file), "--rpps", luhn_complete(rpps), *extra]
        relais(data_dir, *args)
    process = start_relay(root)
    yield process
    process.stop()


@pytest.fixture
async def client(case_relay: RelayProcess) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(ssl=case_relay.ssl_context())
    async with aiohttp.ClientSession(base_url=case_relay.url, connector=connector) as session:
        yield session


async def _mail_to(
    relay: RelayProcess, recipient: str, subject: str, case_id: str
) -> tuple[bytes, EmailMessage]:
    """The plain notification about ``case_id`` (its link names the case)."""

    async def found() -> tuple[bytes, EmailMessage] | None:
        mails = [
            m
            for m in mails_to(relay.data_dir, recipient)
            if str(m[1]["Subject"]) == subject and case_id in m[1].get_content()
        ]
        return mails[-1] if mails else None

    return await eventually(found)


def _reply(sender: str, reply_to: str, notification: EmailMessage, answer: str) -> bytes:
    """A reply as a mail client composes it: new text, signature, quoted notification, and a
    photo from the specialist's phone (with its EXIF)."""
    quoted = "\r\n".join(f"> {line}" for line in notification.get_content().splitlines()[:6])
    plain = (
        f"{answer}\r\n\r\nBien cordialement,\r\n-- \r\nDr Anne Leroy\r\n\r\n"
        f"Le 23/11/2026 à 10:02, Relais Santé a écrit :\r\n{quoted}\r\n"
    )
    jpeg = base64.encodebytes(phone_jpeg(orientation=6)).decode()
    return "\r\n".join(
        [
            f"From: Anne Leroy <{sender}>",
            f"To: {reply_to}",
            "Subject: Re: demande",
            "Date: Mon, 23 Nov 2026 10:15:00 +0100",
            f"Message-ID: <reply.{abs(hash(answer))}@cabinet.example>",
            f"In-Reply-To: {notification['Message-ID']}",
            "MIME-Version: 1.0",
            'Content-Type: multipart/mixed; boundary="mixed"',
            "",
            "--mixed",
            "Content-Type: text/plain; charset=UTF-8",
            "Content-Transfer-Encoding: 8bit",
            "",
            plain,
            "--mixed",
            'Content-Type: image/jpeg; name="IMG_2041.jpg"',
            'Content-Disposition: attachment; filename="IMG_2041.jpg"',
            "Content-Transfer-Encoding: base64",
            "",
            jpeg,
            "--mixed--",
            "",
        ]
    ).encode("utf-8")


def _send(relay: RelayProcess, tmp_path: Path, sender: str, to: str, raw: bytes) -> str:
    path = tmp_path / "reply.eml"
    path.write_bytes(raw)
    _, transcript = swaks(
        relay.smtp_port, "--tls", "--from", sender, "--to", to, "--data", str(path)
    )
    return transcript


async def test_case_answered_by_mail(
    case_relay: RelayProcess, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    nurse = await session_of(client, NURSE)
    status, created = await create_case(client, nurse, case_body(team=TEAM))
    assert status == 201, created
    case_id = created["id"]

    raw, notification = await _mail_to(case_relay, SPECIALIST, NEW_CASE, case_id)
    reply_to = str(notification["Reply-To"])
    assert re.fullmatch(r"r\+c[a-z2-7]{58}@relais\.localhost", reply_to), reply_to
    for health_data in (b"Durand", b"Jeanne", b"talon", b"heel", b"cicatrise", b"1950"):
        assert health_data not in raw, health_data
    assert case_id in notification.get_content()  # the link to the case (opaque id)

    # Someone else using the specialist's reply address: 550 at RCPT, audited on the case.
    intruder = "dr.faux@ailleurs.example"
    transcript = _send(
        case_relay, tmp_path, intruder, reply_to, _reply(intruder, reply_to, notification, "x")
    )
    assert any(r.startswith("550 5.7.1") for r in server_replies(transcript)), transcript
    refused = await audit_events(client, resource=case_id, action="mail_refused")
    assert refused, "the refused reply is not in the audit trail"

    answer = "Détersion puis hydrofibre ; revoir sous 8 jours."
    transcript = _send(
        case_relay,
        tmp_path,
        SPECIALIST,
        reply_to,
        _reply(SPECIALIST, reply_to, notification, answer),
    )
    assert last_reply(transcript).startswith("250"), server_replies(transcript)[-4:]

    async with client.get(f"/api/cases/{case_id}", headers=nurse) as response:
        assert response.status == 200
        view: dict[str, Any] = await response.json()
    assert view["state"] == "answered"
    assert [h["event"] for h in view["history"]] == ["submit", "accept", "answer"]
    assert view["messages"][-1]["kind"] == "answer"
    text = view["messages"][-1]["text"]
    assert text.startswith(answer), text
    for dropped in ("a écrit", ">", "Dr Anne Leroy", "Nouvelle demande"):  # quote, signature
        assert dropped not in text, text
    assert len(view["photos"]) == 1
    async with client.get(
        f"/api/cases/{case_id}/photos/{view['photos'][0]['id']}", headers=nurse
    ) as response:
        assert response.status == 200
        assert_clean(await response.read())

    raw, _ = await _mail_to(case_relay, NURSE, ANSWERED, case_id)
    assert b"hydrofibre" not in raw and b"Durand" not in raw
    received = await audit_events(client, resource=case_id, action="message_received")
    assert received
    transitions = await audit_events(client, resource=case_id, action="case_transition")
    assert len(transitions) >= 3

    # The case is answered: its reply address no longer takes mail.
    transcript = _send(
        case_relay, tmp_path, SPECIALIST, reply_to, _reply(SPECIALIST, reply_to, notification, "y")
    )
    assert any(r.startswith("550 5.7.1") for r in server_replies(transcript)), transcript


async def test_recipient_with_certificate_gets_question_and_photo_encrypted(
    case_relay: RelayProcess, client: aiohttp.ClientSession
) -> None:
    import email
    import email.policy
    from datetime import UTC, datetime

    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import Encoding

    from certs.ca import create_ca
    from certs.issue import issue_client_certificate
    from relay.mail.smime import decrypt_message

    now = datetime.now(UTC)
    holder = issue_client_certificate(
        create_ca("Autorité de test", now),
        email=SMIME_SPECIALIST,
        display_name="Dr Marchand",
        rpps=None,
        now=now,
        rsa_key_size=2048,
    )
    admin = await session_of(client, ADMIN.email)
    pem = holder.certificate.public_bytes(Encoding.PEM).decode()
    async with client.post(
        "/api/mail/certificates",
        json={"address": SMIME_SPECIALIST, "certificate": pem},
        headers=admin,
    ) as response:
        assert response.status == 201, await response.text()

    nurse = await session_of(client, NURSE)
    before = {raw for raw, _ in mails_to(case_relay.data_dir, SMIME_SPECIALIST)}
    status, uploaded = await upload(client, nurse, phone_jpeg())
    assert status == 200, uploaded
    body = {**case_body(team=TEAM), "photo_ids": [uploaded["photo_id"]]}
    status, created = await create_case(client, nurse, body)
    assert status == 201, created

    async def mailed() -> list[tuple[bytes, EmailMessage]] | None:
        found = mails_to(case_relay.data_dir, SMIME_SPECIALIST)
        return [m for m in found if m[0] not in before] or None  # names are random

    (raw, mail), *more = await eventually(mailed)
    assert not more
    assert str(mail["Subject"]) == NEW_CASE
    assert mail.get_content_type() == "application/pkcs7-mime"
    assert b"cicatrise" not in raw and b"Durand" not in raw
    assert re.fullmatch(r"r\+c[a-z2-7]{58}@relais\.localhost", str(mail["Reply-To"]))
    assert isinstance(holder.key, rsa.RSAPrivateKey)
    clear = decrypt_message(raw, holder.key, holder.certificate)
    inner = email.message_from_bytes(clear, policy=email.policy.default)
    assert isinstance(inner, EmailMessage)
    text = next(p for p in inner.walk() if p.get_content_type() == "text/plain").get_content()
    assert "ne cicatrise pas depuis 3 semaines" in text
    photos = [p for p in inner.walk() if p.get_content_type() == "image/jpeg"]
    assert len(photos) == 1
    payload = photos[0].get_payload(decode=True)
    assert isinstance(payload, bytes)
    assert_clean(payload)
