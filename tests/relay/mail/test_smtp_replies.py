"""Replies from ordinary mail clients (sent with swaks) land in the right thread, as the right
author; a reply address used by anyone else is refused and audited."""

from __future__ import annotations

import base64
import re
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import require_component
from tests.harness.accounts import ADMIN, NURSE, PASSWORD, luhn_complete
from tests.harness.relay_process import RelayProcess
from tests.relay.messaging.helpers import (
    audit_events,
    eventually,
    headers_for,
    json_of,
    last_reply,
    mails_to,
    server_replies,
    start_thread,
    swaks,
    thread,
)


@pytest.fixture(autouse=True)
def _swaks() -> None:
    require_component("swaks", "swaks")


async def _notification(relay: RelayProcess, recipient: str) -> EmailMessage:
    async def mailed() -> EmailMessage | None:
        found = mails_to(relay.data_dir, recipient)
        return found[-1][1] if found else None

    return await eventually(mailed)


def client_reply(
    *, sender: str, name: str, reply_to: str, notification: EmailMessage, answer: str
) -> bytes:
    """A reply as Thunderbird/Gmail compose it: multipart/mixed of multipart/alternative
    (text with the quoted history and a signature, and HTML) and an attachment."""
    quoted = "\r\n".join(f"> {line}" for line in notification.get_content().splitlines()[:6])
    plain = (
        f"{answer}\r\n\r\nBien cordialement,\r\n{name}\r\n-- \r\nCabinet de cardiologie\r\n"
        "01 23 45 67 89\r\n\r\n"
        f"Le 23/11/2026 à 10:02, Claire Martin via Relais Santé a écrit :\r\n{quoted}\r\n"
    )
    html = (
        f"<html><body><p>{answer}</p><p>Bien cordialement,<br>{name}</p>"
        "<div class=moz-signature>-- <br>Cabinet de cardiologie</div>"
        "<blockquote type=cite>Bonjour, Claire Martin vous a adressé...</blockquote>"
        "</body></html>"
    )
    pdf = base64.encodebytes(b"%PDF-1.4 ordonnance du cardiologue").decode()
    root = str(notification["References"]).split()[0]
    return "\r\n".join(
        [
            f"From: {name} <{sender}>",
            f"To: {reply_to}",
            "Subject: Re: [Relais =?utf-8?q?Sant=C3=A9=5D_Nouveau_message_s=C3=A9curis=C3=A9?=",
            "Date: Mon, 23 Nov 2026 10:15:00 +0100",
            f"Message-ID: <reply.{abs(hash(answer))}@cabinet.example>",
            f"In-Reply-To: {notification['Message-ID']}",
            f"References: {root} {notification['Message-ID']}",
            "User-Agent: Mozilla Thunderbird",
            "MIME-Version: 1.0",
            'Content-Type: multipart/mixed; boundary="------------mixed"',
            "",
            "This is a multi-part message in MIME format.",
            "--------------mixed",
            'Content-Type: multipart/alternative; boundary="------------alt"',
            "",
            "--------------alt",
            "Content-Type: text/plain; charset=UTF-8; format=flowed",
            "Content-Transfer-Encoding: 8bit",
            "",
            plain,
            "--------------alt",
            "Content-Type: text/html; charset=UTF-8",
            "Content-Transfer-Encoding: 8bit",
            "",
            html,
            "--------------alt--",
            "",
            "--------------mixed",
            'Content-Type: application/pdf; name="ordonnance.pdf"',
            'Content-Disposition: attachment; filename="ordonnance.pdf"',
            "Content-Transfer-Encoding: base64",
            "",
            pdf,
            "--------------mixed--",
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


async def test_external_reply_from_a_mail_client_lands_in_the_thread(
    relay: RelayProcess, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    external = "dr.roux@cabinet.example"
    nurse = await headers_for(http, NURSE.email)
    created = await start_thread(
        http, nurse, recipients=[external], subject="Suivi Mme Roux", text="Pouvez-vous la voir ?"
    )
    notification = await _notification(relay, external)
    reply_to = str(notification["Reply-To"])
    assert re.fullmatch(r"r\+[a-z2-7]{59}@relais\.localhost", reply_to)
    raw = client_reply(
        sender=external,
        name="Dr Roux",
        reply_to=reply_to,
        notification=notification,
        answer="Je la vois jeudi à 14 h.",
    )
    transcript = _send(relay, tmp_path, external, reply_to, raw)
    assert last_reply(transcript).startswith("250"), server_replies(transcript)[-4:]
    shown = await thread(http, nurse, created["id"])
    assert len(shown["messages"]) == 2
    answer = shown["messages"][1]
    assert answer["source"] == "smtp"
    assert answer["author"]["kind"] == "external" and answer["author"]["address"] == external
    # The quoted history and the signature are gone; the attachment is kept.
    assert answer["text"].startswith("Je la vois jeudi à 14 h.")
    for dropped in ("a écrit", "Cabinet de cardiologie", "Pouvez-vous", ">"):
        assert dropped not in answer["text"], answer["text"]
    assert [a["filename"] for a in answer["attachments"]] == ["ordonnance.pdf"]

    # The same mail delivered twice (a client retrying after a lost reply) is stored once.
    transcript = _send(relay, tmp_path, external, reply_to, raw)
    assert last_reply(transcript).startswith("250")
    assert len((await thread(http, nurse, created["id"]))["messages"]) == 2

    # A reply sent to the nurse's own address, threaded by In-Reply-To, also finds the thread.
    raw = client_reply(
        sender=external,
        name="Dr Roux",
        reply_to=NURSE.email,
        notification=notification,
        answer="Précision : jeudi 15 h finalement.",
    )
    transcript = _send(relay, tmp_path, external, NURSE.email, raw)
    assert last_reply(transcript).startswith("250")
    texts = [m["text"] for m in (await thread(http, nurse, created["id"]))["messages"]]
    assert texts[-1].startswith("Précision : jeudi 15 h finalement.")


async def test_professional_replying_from_their_mail_client(
    relay: RelayProcess, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    address = "dr.vidal@clinique.example"
    admin = await headers_for(http, ADMIN.email)
    async with http.post(
        "/api/admin/professionals",
        json={
            "email": address,
            "display_name": "Marc Vidal",
            "role": "specialist",
            "specialty": "Cardiologie",
            "rpps": luhn_complete("1000000777"),
            "password": PASSWORD,
        },
        headers=admin,
    ) as response:
        specialist: dict[str, Any] = await json_of(response, 201)
    nurse = await headers_for(http, NURSE.email)
    created = await start_thread(
        http, nurse, recipients=[address], subject="ECG de M. Petit", text="Avis sur l'ECG ?"
    )
    notification = await _notification(relay, address)
    assert "/messagerie/" in notification.get_content()  # a link to the thread, to log in
    raw = client_reply(
        sender=address,
        name="Dr Vidal",
        reply_to=str(notification["Reply-To"]),
        notification=notification,
        answer="ECG normal, pas de contre-indication.",
    )
    transcript = _send(relay, tmp_path, address, str(notification["Reply-To"]), raw)
    assert last_reply(transcript).startswith("250"), server_replies(transcript)[-4:]
    answer = (await thread(http, nurse, created["id"]))["messages"][-1]
    assert answer["author"]["professional_id"] == specialist["id"]
    assert answer["author"]["display_name"] == "Marc Vidal"
    assert answer["text"].startswith("ECG normal, pas de contre-indication.")


async def test_reply_address_refuses_anyone_else_and_the_refusal_is_audited(
    relay: RelayProcess, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    external = "dr.bound@cabinet.example"
    nurse = await headers_for(http, NURSE.email)
    created = await start_thread(http, nurse, recipients=[external], subject="Lie a une adresse")
    notification = await _notification(relay, external)
    reply_to = str(notification["Reply-To"])
    intruder = "intrus@ailleurs.example"
    _, transcript = swaks(relay.smtp_port, "--tls", "--from", intruder, "--to", reply_to)
    assert "550 5.7.1 This reply address does not accept mail from this sender" in (
        server_replies(transcript)
    )
    # Right envelope, wrong author in the message: refused after DATA.
    raw = client_reply(
        sender=intruder,
        name="Intrus",
        reply_to=reply_to,
        notification=notification,
        answer="Message glissé.",
    )
    transcript = _send(relay, tmp_path, external, reply_to, raw)
    assert last_reply(transcript).startswith("550 5.7.1"), server_replies(transcript)[-3:]
    # A forged token: the same answer, so a prober learns nothing.
    forged = "r+t" + "a" * 58 + "@relais.localhost"
    _, transcript = swaks(relay.smtp_port, "--tls", "--from", external, "--to", forged)
    assert any(r.startswith("550 5.7.1") for r in server_replies(transcript))
    assert len((await thread(http, nurse, created["id"]))["messages"]) == 1
    refused = await audit_events(http, resource=created["id"], action="mail_refused")
    assert len(refused) >= 2, refused
