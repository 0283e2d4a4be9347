"""The messaging JSON API on the real relay: threads, attachments, read state, team inboxes,
delivery states, notifications without health data, audit of every read and send."""

from __future__ import annotations

import email.policy
import hashlib
import json
import os
from email.message import EmailMessage

import aiohttp

from relay.audit.log import Receipt
from tests.harness.accounts import ADMIN, NURSE, OTHER_NURSE, PHYSICIAN, SPECIALIST
from tests.harness.relay_process import RelayProcess
from tests.relay.messaging.helpers import (
    SUBJECT,
    audit_events,
    eventually,
    headers_for,
    json_of,
    mails_to,
    start_thread,
    thread,
    upload,
)

INS = "185057800608491"


async def test_thread_between_professionals_team_and_external(
    relay: RelayProcess, http: aiohttp.ClientSession
) -> None:
    nurse = await headers_for(http, NURSE.email)
    doctor = await headers_for(http, PHYSICIAN.email)
    photo = b"\xff\xd8\xff\xe0 wound photo bytes"
    file_id = await upload(http, nurse, photo, "image/jpeg")
    external = "confrere.api@cabinet.example"
    created = await start_thread(
        http,
        nurse,
        recipients=[PHYSICIAN.email, "dermato-cpts@relais.localhost", external],
        subject="Plaie talon Mme Lefèvre",
        text="Bonjour Docteur, la plaie s'aggrave.",
        patient_ins=INS,
        attachments=[{"file_id": file_id, "filename": "talon Lefèvre.jpg"}],
    )
    thread_id = created["id"]
    kinds = sorted(p["kind"] for p in created["participants"])
    assert kinds == ["external", "professional", "professional", "team"]

    # The physician's inbox: the thread, one unread message; the patient only as a flag.
    async with http.get("/api/threads", headers=doctor) as response:
        inbox = await json_of(response)
    line = next(t for t in inbox["threads"] if t["id"] == thread_id)
    assert line["unread_count"] == 1 and line["message_count"] == 1
    assert line["subject"] == "Plaie talon Mme Lefèvre" and line["patient"] is True

    shown = await thread(http, doctor, thread_id)
    assert shown["patient"] == {"ins": INS}
    (message,) = shown["messages"]
    assert message["text"] == "Bonjour Docteur, la plaie s'aggrave."
    assert message["author"]["professional_id"] is not None and message["read"] is False
    (attachment,) = message["attachments"]
    assert attachment["filename"] == "talon Lefèvre.jpg" and attachment["size"] == len(photo)

    # Download: the bytes, the name (RFC 6266), and a receipt of the audit entry.
    async with http.get(attachment["url"], headers=doctor) as response:
        assert response.status == 200
        assert await response.read() == photo
        assert (
            "filename*=UTF-8''talon%20Lef%C3%A8vre.jpg" in response.headers["Content-Disposition"]
        )
        receipt = Receipt.from_header(response.headers["X-Audit-Receipt"])
        assert receipt.index >= 0

    async with http.post(f"/api/threads/{thread_id}/read", headers=doctor) as response:
        assert (await json_of(response))["read"] == [message["id"]]
    async with http.get("/api/threads", headers=doctor) as response:
        inbox = await json_of(response)
    assert next(t for t in inbox["threads"] if t["id"] == thread_id)["unread_count"] == 0

    async with http.post(
        f"/api/threads/{thread_id}/messages", json={"text": "Je passe demain."}, headers=doctor
    ) as response:
        reply = await json_of(response, 201)
    shown = await thread(http, nurse, thread_id)
    assert [m["text"] for m in shown["messages"]] == [
        "Bonjour Docteur, la plaie s'aggrave.",
        "Je passe demain.",
    ]
    assert shown["messages"][1]["read"] is False  # not yet read by the nurse

    # The external recipient: queued, then delivered once the mail is written out.
    async def delivered() -> dict[str, str] | None:
        first = (await thread(http, nurse, thread_id))["messages"][0]
        ext = next(p for p in shown["participants"] if p["kind"] == "external")
        state = next(d for d in first["deliveries"] if d["participant_id"] == ext["id"])
        return state if state["state"] == "delivered" else None

    state = await eventually(delivered)
    assert state["channel"] == "notification"

    # One notification per message to the external address, and none carries health data.
    async def both_mailed() -> bool:
        return len(mails_to(relay.data_dir, external)) >= 2

    assert await eventually(both_mailed, timeout=10)
    for raw, mail in mails_to(relay.data_dir, external):
        assert mail["Subject"] == SUBJECT
        assert not mail.is_multipart()
        body = mail.get_content()
        for secret in ("Lefèvre", "Lefevre", INS, "plaie", "aggrave", "demain", "talon"):
            assert secret.lower() not in raw.decode("ascii", "replace").lower()
            assert secret.lower() not in body.lower()
        assert "/invite/" in body
        assert str(mail["Reply-To"]).startswith("r+")
        assert mail["Message-ID"] and mail["References"]

    # Every read and send is in the audit trail, about this thread.
    actions = [e["action"] for e in await audit_events(http, resource=thread_id)]
    for expected in ("message_sent", "message_read", "attachment_downloaded"):
        assert expected in actions, actions
    assert actions.count("message_sent") == 2
    assert reply["thread_id"] == thread_id


async def test_team_members_see_and_answer_team_threads(http: aiohttp.ClientSession) -> None:
    sender = await headers_for(http, OTHER_NURSE.email)
    nurse = await headers_for(http, NURSE.email)  # member of msp-belleville
    doctor = await headers_for(http, PHYSICIAN.email)  # member of msp-belleville too
    outsider = await headers_for(http, SPECIALIST.email)
    created = await start_thread(
        http, sender, recipients=["msp-belleville@relais.localhost"], subject="Pour l'équipe"
    )
    thread_id = created["id"]
    async with http.get("/api/me", headers=nurse) as response:
        team_id = next(t["id"] for t in (await json_of(response))["teams"])
    async with http.get("/api/threads", params={"team": team_id}, headers=nurse) as response:
        team_inbox = await json_of(response)
    assert thread_id in [t["id"] for t in team_inbox["threads"]]
    async with http.get("/api/threads", params={"team": team_id}, headers=outsider) as response:
        assert response.status == 403
    # A member answers for the team: they join the thread in their own name.
    async with http.post(
        f"/api/threads/{thread_id}/messages", json={"text": "Je m'en occupe."}, headers=nurse
    ) as response:
        await json_of(response, 201)
    shown = await thread(http, doctor, thread_id)
    assert shown["messages"][-1]["author"]["display_name"] == NURSE.name
    assert NURSE.email in [p["address"] for p in shown["participants"]]
    # Someone with no relation to the thread is refused, and the refusal is audited.
    async with http.get(f"/api/threads/{thread_id}", headers=outsider) as response:
        assert response.status == 403
    denied = await audit_events(http, resource=thread_id, action="access_denied")
    assert denied


async def test_refusals(relay: RelayProcess, http: aiohttp.ClientSession) -> None:
    nurse = await headers_for(http, NURSE.email)
    admin = await headers_for(http, ADMIN.email)
    async with http.post(
        "/api/threads",
        json={"recipients": ["personne@relais.localhost"], "subject": "x", "text": "y"},
        headers=nurse,
    ) as response:
        assert (await json_of(response, 400))["error"]["code"] == "unknown_recipient"
    # Someone else's upload cannot be attached.
    other = await headers_for(http, PHYSICIAN.email)
    foreign = await upload(http, other, b"secret", "text/plain")
    async with http.post(
        "/api/threads",
        json={
            "recipients": [PHYSICIAN.email],
            "subject": "x",
            "text": "y",
            "attachments": [{"file_id": foreign, "filename": "x.txt"}],
        },
        headers=nurse,
    ) as response:
        assert (await json_of(response, 400))["error"]["code"] == "unknown_attachment"
    # Administrators manage accounts; they read no clinical content.
    async with http.get("/api/threads", headers=admin) as response:
        assert response.status == 403
    async with http.post(
        "/api/threads", json={"recipients": [NURSE.email], "subject": "x"}, headers=admin
    ) as response:
        assert response.status == 403
    connector = aiohttp.TCPConnector(ssl=relay.ssl_context())
    async with (
        aiohttp.ClientSession(base_url=relay.url, connector=connector) as anonymous,
        anonymous.get("/api/threads") as response,
    ):
        assert response.status == 401


async def test_recipient_with_certificate_gets_the_message_smime_encrypted(
    relay: RelayProcess, http: aiohttp.ClientSession
) -> None:
    from datetime import UTC, datetime

    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import Encoding

    from certs.ca import CertifiedKey, create_ca
    from certs.issue import issue_client_certificate
    from relay.mail.smime import decrypt_message

    now = datetime.now(UTC)
    ca: CertifiedKey = create_ca("Autorité de test", now)
    address = "cardio.smime@hopital.example"
    recipient = issue_client_certificate(
        ca, email=address, display_name="Dr Cardio", rpps=None, now=now, rsa_key_size=2048
    )
    admin = await headers_for(http, ADMIN.email)
    pem = recipient.certificate.public_bytes(Encoding.PEM).decode()
    async with http.post(
        "/api/mail/certificates", json={"address": address, "certificate": pem}, headers=admin
    ) as response:
        await json_of(response, 201)
    async with http.post(
        "/api/mail/certificates",
        json={"address": "autre@hopital.example", "certificate": pem},
        headers=admin,
    ) as response:
        assert response.status == 400  # the certificate names another address

    nurse = await headers_for(http, NURSE.email)
    file_id = await upload(http, nurse, b"%PDF-1.7 compte rendu", "application/pdf")
    created = await start_thread(
        http,
        nurse,
        recipients=[address],
        subject="Bilan de Mme Girard",
        text="Voici le compte rendu de Mme Girard.",
        attachments=[{"file_id": file_id, "filename": "cr-girard.pdf"}],
    )

    async def mailed() -> list[tuple[bytes, EmailMessage]] | None:
        return mails_to(relay.data_dir, address) or None

    (raw, mail) = (await eventually(mailed))[0]
    # Outside: the generic subject, an S/MIME envelope, nothing readable.
    assert mail["Subject"] == SUBJECT
    assert mail.get_content_type() == "application/pkcs7-mime"
    assert b"Girard" not in raw and b"compte rendu" not in raw
    # Inside, for the holder of the key: the real subject, text and attachment.
    assert isinstance(recipient.key, rsa.RSAPrivateKey)
    clear = decrypt_message(raw, recipient.key, recipient.certificate)
    inner = email.message_from_bytes(clear, policy=email.policy.default)
    assert inner["Subject"] == "Bilan de Mme Girard"
    text = json.dumps([part.get_content() for part in inner.walk() if not part.is_multipart()][:1])
    assert "Girard" in text
    names = [part.get_filename() for part in inner.walk() if part.get_filename()]
    assert names == ["cr-girard.pdf"]

    async def smime_delivered() -> bool:
        first = (await thread(http, nurse, created["id"]))["messages"][0]
        return any(
            d["channel"] == "smime" and d["state"] == "delivered" for d in first["deliveries"]
        )

    assert await eventually(smime_delivered)


async def test_a_large_attachment_is_streamed_back_intact(http: aiohttp.ClientSession) -> None:
    nurse = await headers_for(http, NURSE.email)
    doctor = await headers_for(http, PHYSICIAN.email)
    scan = os.urandom(9 * 1024 * 1024)  # above the whole-verification threshold (8 MiB)
    file_id = await upload(http, nurse, scan, "application/pdf")
    created = await start_thread(
        http,
        nurse,
        recipients=[PHYSICIAN.email],
        subject="Compte rendu d'imagerie",
        text="Ci-joint le compte rendu.",
        attachments=[{"file_id": file_id, "filename": "imagerie.pdf"}],
    )
    (message,) = (await thread(http, doctor, created["id"]))["messages"]
    (attachment,) = message["attachments"]
    async with http.get(attachment["url"], headers=doctor) as response:
        assert response.status == 200
        assert response.headers.get("Transfer-Encoding") != "chunked"
        assert int(response.headers["Content-Length"]) == len(scan)
        body = await response.read()
        assert response.headers["X-Content-SHA256"] == hashlib.sha256(scan).hexdigest()
        assert response.headers["X-Audit-Receipt"]
    assert body == scan
