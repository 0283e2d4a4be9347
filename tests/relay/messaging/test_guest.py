"""The guest view on the real relay: an external recipient opens the link of their
notification, gets a one-time code at the same address, reads, downloads and answers."""

from __future__ import annotations

import re
from email.message import EmailMessage

import aiohttp

from relay.audit.log import Receipt
from relay.mail.notifications import GUEST_CODE_SUBJECT
from tests.harness.accounts import NURSE
from tests.harness.relay_process import RelayProcess
from tests.relay.messaging.helpers import (
    audit_events,
    eventually,
    headers_for,
    json_of,
    mails_to,
    start_thread,
    thread,
    upload,
)


async def _mail(relay: RelayProcess, recipient: str, subject: str, count: int = 1) -> EmailMessage:
    async def mailed() -> EmailMessage | None:
        found = [m for _, m in mails_to(relay.data_dir, recipient) if m["Subject"] == subject]
        return found[-1] if len(found) >= count else None

    return await eventually(mailed)


async def test_guest_reads_downloads_and_answers_with_a_one_time_code(
    relay: RelayProcess, http: aiohttp.ClientSession
) -> None:
    guest_address = "invite.guest@cabinet.example"
    nurse = await headers_for(http, NURSE.email)
    file_id = await upload(http, nurse, b"\x89PNG photo plaie", "image/png")
    created = await start_thread(
        http,
        nurse,
        recipients=[guest_address],
        subject="Plaie pied diabétique",
        text="Voici la photo du jour.",
        attachments=[{"file_id": file_id, "filename": "pied.png"}],
    )
    notification = await _mail(relay, guest_address, "[Relais Santé] Nouveau message sécurisé")
    link = re.search(r"https://\S+/invite/([0-9a-f]{32})", notification.get_content())
    assert link is not None
    participant_id = link.group(1)

    connector = aiohttp.TCPConnector(ssl=relay.ssl_context())
    async with aiohttp.ClientSession(base_url=relay.url, connector=connector) as guest:
        async with guest.get(f"/invite/{participant_id}") as response:
            assert response.status == 200 and "text/html" in response.headers["Content-Type"]
        async with guest.get("/api/guest/thread") as response:
            assert response.status == 401
        async with guest.post(f"/api/guest/{'0' * 32}/code") as response:
            assert response.status == 404
        async with guest.post(f"/api/guest/{participant_id}/code") as response:
            sent = await json_of(response, 202)
        assert sent["sent_to"].endswith("@cabinet.example") and guest_address not in str(sent)
        async with guest.post(f"/api/guest/{participant_id}/code") as response:
            assert response.status == 429  # one code a minute
        code_mail = await _mail(relay, guest_address, GUEST_CODE_SUBJECT)
        code_match = re.search(r"\b(\d{8})\b", code_mail.get_content())
        assert code_match is not None
        code = code_match.group(1)
        assert code not in str(code_mail["Subject"])  # never in the subject
        wrong = "00000000" if code != "00000000" else "11111111"
        async with guest.post(
            f"/api/guest/{participant_id}/session", json={"code": wrong}
        ) as response:
            assert response.status == 401
        async with guest.post(
            f"/api/guest/{participant_id}/session", json={"code": code}
        ) as response:
            await json_of(response)
            assert "HttpOnly" in response.headers["Set-Cookie"]
        async with guest.get("/api/guest/thread") as response:
            shown = await json_of(response)
        assert shown["subject"] == "Plaie pied diabétique"
        (message,) = shown["messages"]
        assert message["text"] == "Voici la photo du jour."
        (attachment,) = message["attachments"]
        async with guest.get(attachment["url"]) as response:
            assert response.status == 200
            assert await response.read() == b"\x89PNG photo plaie"
            Receipt.from_header(response.headers["X-Audit-Receipt"])
        async with guest.post("/api/guest/messages", json={"text": "Bien reçu, je passe."}) as r:
            await json_of(r, 201)
        # The code served once.
        async with guest.post(
            f"/api/guest/{participant_id}/session", json={"code": code}
        ) as response:
            assert response.status == 401

    answer = (await thread(http, nurse, created["id"]))["messages"][-1]
    assert answer["source"] == "guest" and answer["text"] == "Bien reçu, je passe."
    assert answer["author"]["address"] == guest_address
    actions = [e["action"] for e in await audit_events(http, resource=created["id"])]
    for expected in ("login_failed", "login_succeeded", "attachment_downloaded", "message_read"):
        assert expected in actions, actions
    assert actions.count("message_sent") >= 2
