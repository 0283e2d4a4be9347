"""The guest view on the real relay: an external recipient opens the link of their
notification, gets a one-time code at the same address, reads, downloads and answers."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import aiohttp
import pytest

from relay.audit.log import Receipt
from relay.mail.notifications import GUEST_CODE_SUBJECT
from tests.harness.accounts import NURSE, add_account
from tests.harness.relay_process import RelayProcess, init_data_dir, start_relay
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


# --- answering with files ------------------------------------------------------------------------


async def _guest_session(
    relay: RelayProcess, http: aiohttp.ClientSession, guest_address: str, **thread_fields: Any
) -> tuple[dict[str, str], str, aiohttp.ClientSession]:
    """A nurse's thread to ``guest_address`` and a guest session opened on it:
    (nurse headers, thread id, the guest's HTTP session — to close)."""
    nurse = await headers_for(http, NURSE.email)
    created = await start_thread(http, nurse, recipients=[guest_address], **thread_fields)
    notification = await _mail(relay, guest_address, "[Relais Santé] Nouveau message sécurisé")
    link = re.search(r"https://\S+/invite/([0-9a-f]{32})", notification.get_content())
    assert link is not None
    connector = aiohttp.TCPConnector(ssl=relay.ssl_context())
    guest = aiohttp.ClientSession(base_url=relay.url, connector=connector)
    async with guest.post(f"/api/guest/{link.group(1)}/code") as response:
        await json_of(response, 202)
    code_mail = await _mail(relay, guest_address, GUEST_CODE_SUBJECT)
    code = re.search(r"\b(\d{8})\b", code_mail.get_content())
    assert code is not None
    async with guest.post(
        f"/api/guest/{link.group(1)}/session", json={"code": code.group(1)}
    ) as response:
        await json_of(response)
    return nurse, created["id"], guest


def _form(text: str, *files: tuple[str, bytes, str]) -> aiohttp.FormData:
    form = aiohttp.FormData(quote_fields=False, default_to_multipart=True)  # as browsers send
    form.add_field("text", text)
    for name, data, kind in files:
        form.add_field("files", data, filename=name, content_type=kind)
    return form


GUEST_HEADER = {"X-Relais-Guest": "1"}


def _blob_count(relay: RelayProcess) -> int:
    return sum(1 for path in (relay.data_dir / "blobs").rglob("*") if path.is_file())


async def test_guest_answers_with_files(relay: RelayProcess, http: aiohttp.ClientSession) -> None:
    guest_address = "invite.fichiers@cabinet.example"
    nurse, thread_id, guest = await _guest_session(relay, http, guest_address)
    # The photo is larger than a JSON body may be (1 MiB): the form is streamed, not read whole.
    photo = b"\x89PNG\r\n\x1a\nphoto du pansement" + bytes(range(256)) * 6000
    report = b"%PDF-1.4 compte rendu"
    async with guest:
        form = _form(
            "Voici la photo et le compte rendu.",
            ("pansement.png", photo, "image/png"),
            ("../../CR\u202egpj.pdf", report, "application/pdf"),
        )
        async with guest.post("/api/guest/messages", data=form, headers=GUEST_HEADER) as r:
            posted = await json_of(r, 201)
        # Cookie alone is not enough for a form post (a cross-site form could send one).
        form = _form("sans en-tête", ("a.txt", b"a", "text/plain"))
        async with guest.post("/api/guest/messages", data=form) as response:
            assert response.status == 403
        async with guest.post(
            "/api/guest/messages", data=b"x", headers={**GUEST_HEADER, "Content-Type": "text/plain"}
        ) as response:
            assert response.status == 415  # JSON, or a form with files: nothing else
        async with guest.post(
            "/api/guest/messages", data=_form("   "), headers=GUEST_HEADER
        ) as response:
            assert response.status == 400  # nothing to send
        # The guest sees their own files in the thread and can download them back.
        async with guest.get("/api/guest/thread") as response:
            mine = (await json_of(response))["messages"][-1]
        assert mine["mine"] and [a["filename"] for a in mine["attachments"]] == [
            "pansement.png",
            "CRgpj.pdf",  # path and bidirectional override removed
        ]
        async with guest.get(mine["attachments"][0]["url"]) as response:
            assert await response.read() == photo

    answer = (await thread(http, nurse, thread_id))["messages"][-1]
    assert answer["id"] == posted["id"] and answer["source"] == "guest"
    assert answer["text"] == "Voici la photo et le compte rendu."
    got = {a["filename"]: a for a in answer["attachments"]}
    assert got["pansement.png"]["content_type"] == "image/png"
    assert got["CRgpj.pdf"]["size"] == len(report)
    for attachment, data in ((got["pansement.png"], photo), (got["CRgpj.pdf"], report)):
        async with http.get(attachment["url"], headers=nurse) as response:
            assert await response.read() == data
    # Stored encrypted: the bytes are nowhere in clear under the data directory.
    for path in (relay.data_dir / "blobs").rglob("*"):
        if path.is_file():
            assert b"photo du pansement" not in path.read_bytes()

    events = await audit_events(http, resource=thread_id)
    imports = [e for e in events if e["action"] == "import"]
    assert len(imports) == 2
    assert all('"external_guest"' in json.dumps(e["event"]) for e in imports)
    assert any(hashlib.sha256(photo).hexdigest() in json.dumps(e["event"]) for e in imports)
    sent = [e for e in events if e["action"] == "message_sent" and "guest_reply" in str(e)]
    assert len(sent) == 1 and '"count"' in json.dumps(sent[0]["event"])


@pytest.fixture(scope="module")
def small_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    """Files of 100 kB at most, messages of 150 kB at most."""
    root = tmp_path_factory.mktemp("guest-limits")
    data_dir = init_data_dir(root)
    add_account(data_dir, NURSE, teams=False)
    process = start_relay(
        root,
        {"RELAIS_HTTP_MAX_UPLOAD_BYTES": "100000", "RELAIS_MESSAGING_MAX_MESSAGE_BYTES": "150000"},
    )
    yield process
    process.stop()


async def test_guest_files_keep_the_size_limits_and_leave_nothing_when_refused(
    small_relay: RelayProcess,
) -> None:
    connector = aiohttp.TCPConnector(ssl=small_relay.ssl_context())
    async with aiohttp.ClientSession(base_url=small_relay.url, connector=connector) as http:
        nurse, thread_id, guest = await _guest_session(
            small_relay, http, "invite.taille@cabinet.example"
        )
        async with guest:
            before = _blob_count(small_relay)
            too_big = ("gros.bin", b"x" * 100_001, "application/octet-stream")
            two = [(f"{n}.bin", b"y" * 90_000, "application/octet-stream") for n in (1, 2)]
            for files in ([too_big], two):
                form = _form("trop lourd", *files)
                async with guest.post(
                    "/api/guest/messages", data=form, headers=GUEST_HEADER
                ) as response:
                    assert response.status == 413, await response.text()
            assert _blob_count(small_relay) == before  # refused: no blob left behind
            form = _form("juste", ("ok.bin", b"z" * 90_000, "application/octet-stream"))
            async with guest.post(
                "/api/guest/messages", data=form, headers=GUEST_HEADER
            ) as response:
                await json_of(response, 201)
        answer = (await thread(http, nurse, thread_id))["messages"][-1]
        assert [a["size"] for a in answer["attachments"]] == [90_000]
