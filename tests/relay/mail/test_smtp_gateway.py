"""The inbound SMTP gateway driven by swaks (a real SMTP client) against the real relay:
STARTTLS, mutual TLS, the trusted-sender policy, never an open relay, limits, hostile MIME,
S/MIME on arrival, and refusals that store nothing half."""

from __future__ import annotations

import email.policy
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from certs.ca import CertifiedKey, create_ca
from certs.issue import issue_client_certificate
from relay.mail.smime import encrypt_message
from relay.mail.smtp_server import STAGES
from tests.conftest import metric, require_component
from tests.harness.accounts import PHYSICIAN, add_account
from tests.harness.relay_process import RelayProcess, start_relay
from tests.relay.messaging.helpers import (
    audit_events,
    eventually,
    headers_for,
    json_of,
    last_reply,
    many_parts,
    nested_mime,
    outbox_mails,
    server_replies,
    simple_mail,
    swaks,
    thread,
)

SENDER = "dr.lambert@hopital.example"


@pytest.fixture(autouse=True)
def _swaks() -> None:
    require_component("swaks", "swaks")


async def _threads_with_subject(
    http: aiohttp.ClientSession, headers: dict[str, str], subject: str
) -> list[dict[str, Any]]:
    async with http.get("/api/threads", params={"limit": "200"}, headers=headers) as response:
        return [t for t in (await json_of(response))["threads"] if t["subject"] == subject]


def _send(relay: RelayProcess, tmp_path: Path, raw: bytes, *args: str, to: str = "") -> str:
    path = tmp_path / "mail.eml"
    path.write_bytes(raw)
    _code, transcript = swaks(
        relay.smtp_port, "--tls", "--from", SENDER, "--to", to or PHYSICIAN.email,
        "--data", str(path), *args,
    )  # fmt: skip
    return transcript


async def test_starttls_then_delivery_to_a_professional(
    relay: RelayProcess, http: aiohttp.ClientSession
) -> None:
    refused_before = await metric(http, 'relais_smtp_replies_total{code="530",command="mail"}')
    stored_before = await metric(http, 'relais_smtp_replies_total{code="250",command="data"}')
    stages = [f'relais_smtp_stage_duration_seconds_count{{stage="{s}"}}' for s in STAGES]
    stages_before = [await metric(http, sample) for sample in stages]
    code, transcript = swaks(relay.smtp_port, "--from", SENDER, "--to", PHYSICIAN.email)
    assert "530 5.7.0 Must issue a STARTTLS command first" in server_replies(transcript)
    code, transcript = swaks(
        relay.smtp_port, "--tls", "--from", SENDER, "--to", PHYSICIAN.email,
        "--header", "Subject: Resultats biologie", "--body", "Bonjour, les resultats sont la.",
    )  # fmt: skip
    assert code == 0, transcript
    assert "SIZE 44040192" in transcript  # RFC 1870: the limit is announced
    assert not any("AUTH" in line for line in server_replies(transcript))  # no submission
    assert last_reply(transcript).startswith("250 2.0.0")
    doctor = await headers_for(http, PHYSICIAN.email)
    (line,) = await _threads_with_subject(http, doctor, "Resultats biologie")
    shown = await thread(http, doctor, line["id"])
    (message,) = shown["messages"]
    assert message["source"] == "smtp"
    assert message["text"].strip() == "Bonjour, les resultats sont la."
    assert message["author"]["kind"] == "external" and message["author"]["address"] == SENDER
    received = await audit_events(http, resource=line["id"], action="message_received")
    assert received
    assert "TLSv1" in json.dumps(received[0]["event"])  # how it came is in the trace
    # Operators see both in /metrics, by command and reply code.
    assert (
        await metric(http, 'relais_smtp_replies_total{code="530",command="mail"}')
        == refused_before + 1
    )
    assert (
        await metric(http, 'relais_smtp_replies_total{code="250",command="data"}')
        == stored_before + 1
    )
    # ... and how long each step of that mail took (rcpt, parse, audit, store).
    assert [await metric(http, sample) for sample in stages] == [n + 1 for n in stages_before]


async def test_the_same_mail_to_a_mailbox_twice_is_stored_once(
    relay: RelayProcess, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    # A client retrying after a lost 250 sends the same Message-ID again: one thread, one
    # message; another Message-ID with the same subject is a new thread.
    raw = simple_mail(SENDER, PHYSICIAN.email, subject="Compte rendu en double")
    for _ in range(2):
        assert last_reply(_send(relay, tmp_path, raw)).startswith("250 2.0.0")
    doctor = await headers_for(http, PHYSICIAN.email)
    (line,) = await _threads_with_subject(http, doctor, "Compte rendu en double")
    assert len((await thread(http, doctor, line["id"]))["messages"]) == 1
    other = simple_mail(SENDER, PHYSICIAN.email, subject="Compte rendu en double")
    assert last_reply(_send(relay, tmp_path, other)).startswith("250 2.0.0")
    assert len(await _threads_with_subject(http, doctor, "Compte rendu en double")) == 2


async def test_never_an_open_relay_and_unknown_recipients_refused_at_rcpt(
    relay: RelayProcess, http: aiohttp.ClientSession
) -> None:
    before = len(outbox_mails(relay.data_dir))
    refusals = await metric(http, 'relais_smtp_replies_total{code="550",command="rcpt"}')
    _, transcript = swaks(relay.smtp_port, "--tls", "--from", SENDER, "--to", "x@gmail.com")
    assert "550 5.7.1 Relaying denied" in server_replies(transcript)
    _, transcript = swaks(
        relay.smtp_port, "--tls", "--from", SENDER, "--to", "personne@relais.localhost"
    )
    assert "550 5.1.1 No such mailbox here" in server_replies(transcript)
    for trick in ('"a@gmail.com"@relais.localhost', "a%gmail.com@relais.localhost"):
        _code, transcript = swaks(relay.smtp_port, "--tls", "--from", SENDER, "--to", trick)
        assert any(r.startswith(("553", "501", "550")) for r in server_replies(transcript)), trick
    # Refused in the session: no bounce is ever sent for them (no backscatter).
    assert len(outbox_mails(relay.data_dir)) == before
    refused = await audit_events(http, action="mail_refused")
    assert any("relay_denied" in json.dumps(e["event"]) for e in refused)
    assert (
        await metric(http, 'relais_smtp_replies_total{code="550",command="rcpt"}') >= refusals + 2
    )


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("deep", "554 5.6.0"),
        ("parts", "554 5.6.0"),
        ("long_header", "554 5.6.0"),
        ("header_block", "554 5.6.0"),
        ("base64", "554 5.6.0"),
    ],
)
async def test_hostile_mime_is_refused_and_nothing_is_stored(
    relay: RelayProcess, http: aiohttp.ClientSession, tmp_path: Path, case: str, expected: str
) -> None:
    subject = f"hostile-{case}"
    named = f"Subject: {subject}".encode()
    if case == "deep":
        raw = nested_mime(1000, SENDER, PHYSICIAN.email).replace(b"Subject: deep", named)
    elif case == "parts":
        raw = many_parts(10_000, SENDER, PHYSICIAN.email).replace(b"Subject: parts", named)
    elif case == "long_header":
        raw = simple_mail(SENDER, PHYSICIAN.email, subject).replace(
            b"Subject:", b"X-Long: " + b"a" * 2000 + b"\r\nSubject:", 1
        )
    elif case == "header_block":
        folded = b"X-Folded: start\r\n" + b" continued line of header text\r\n" * 3000
        raw = simple_mail(SENDER, PHYSICIAN.email, subject)
        raw = raw.replace(b"Subject:", folded + b"Subject:", 1)
    else:
        raw = "\r\n".join(
            [
                f"From: {SENDER}",
                f"To: {PHYSICIAN.email}",
                f"Subject: {subject}",
                "MIME-Version: 1.0",
                'Content-Type: multipart/mixed; boundary="b"',
                "",
                "--b",
                "Content-Type: text/plain",
                "",
                "texte",
                "--b",
                "Content-Type: application/pdf",
                "Content-Transfer-Encoding: base64",
                'Content-Disposition: attachment; filename="cr.pdf"',
                "",
                "JVBER!!i0xLjQK====",
                "--b--",
                "",
            ]
        ).encode()
    transcript = _send(relay, tmp_path, raw)
    assert last_reply(transcript).startswith(expected), server_replies(transcript)[-3:]
    doctor = await headers_for(http, PHYSICIAN.email)
    assert await _threads_with_subject(http, doctor, subject) == []


async def test_zip_attachment_is_accepted_whole(
    relay: RelayProcess, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("photos/plaie.jpg", b"\xff\xd8\xff jpeg")
    data = buffer.getvalue()
    (tmp_path / "photos.zip").write_bytes(data)
    _code, transcript = swaks(
        relay.smtp_port, "--tls", "--from", SENDER, "--to", PHYSICIAN.email,
        "--header", "Subject: Archive photos", "--body", "Ci-joint.",
        "--attach-type", "application/zip", "--attach-name", "photos.zip",
        "--attach", f"@{tmp_path / 'photos.zip'}",
    )  # fmt: skip
    assert last_reply(transcript).startswith("250"), transcript[-800:]
    doctor = await headers_for(http, PHYSICIAN.email)
    (line,) = await _threads_with_subject(http, doctor, "Archive photos")
    (attachment,) = (await thread(http, doctor, line["id"]))["messages"][0]["attachments"]
    assert attachment["filename"] == "photos.zip"
    async with http.get(attachment["url"], headers=doctor) as response:
        assert await response.read() == data


async def _relay_smime(http: aiohttp.ClientSession) -> Any:
    """The relay's S/MIME certificate as any sender gets it (issued at first start)."""
    from cryptography import x509

    async def published() -> bytes | None:
        async with http.get("/api/mail/certificate") as response:
            return await response.read() if response.status == 200 else None

    return x509.load_pem_x509_certificate(await eventually(published))


def _encrypted(to_cert: Any, subject: str, text: str) -> bytes:
    message = EmailMessage()
    message["From"] = SENDER
    message["To"] = PHYSICIAN.email
    message["Subject"] = "Message chiffre"
    message["Message-ID"] = f"<{subject}@hopital.example>"
    message.set_content(text)
    message.add_attachment(
        b"%PDF-1.4 ordonnance", maintype="application", subtype="pdf", filename="ordonnance.pdf"
    )
    encrypted = encrypt_message(message, [to_cert], now=datetime.now(UTC))
    encrypted.replace_header("Subject", subject)
    return encrypted.as_bytes(policy=email.policy.SMTP)


async def test_smime_for_the_relay_is_decrypted_on_arrival(
    relay: RelayProcess, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    raw = _encrypted(await _relay_smime(http), "smime-ok", "Texte confidentiel du cardiologue.")
    assert b"confidentiel" not in raw
    transcript = _send(relay, tmp_path, raw)
    assert last_reply(transcript).startswith("250"), server_replies(transcript)[-3:]
    doctor = await headers_for(http, PHYSICIAN.email)
    (line,) = await _threads_with_subject(http, doctor, "smime-ok")
    (message,) = (await thread(http, doctor, line["id"]))["messages"]
    assert "Texte confidentiel du cardiologue." in message["text"]
    assert [a["filename"] for a in message["attachments"]] == ["ordonnance.pdf"]

    # Encrypted for someone else: a clear 554 5.7.5, and nothing stored.
    other = issue_client_certificate(
        create_ca("Autre AC", datetime.now(UTC)),
        email="x@autre.example", display_name="X", rpps=None, now=datetime.now(UTC),
        rsa_key_size=2048,
    )  # fmt: skip
    raw = _encrypted(other.certificate, "smime-other", "Illisible ici.")
    transcript = _send(relay, tmp_path, raw)
    assert last_reply(transcript).startswith("554 5.7.5"), server_replies(transcript)[-3:]
    assert await _threads_with_subject(http, doctor, "smime-other") == []


async def test_mdn_on_request(
    relay: RelayProcess, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    raw = simple_mail(SENDER, PHYSICIAN.email, "Avec accuse").replace(
        b"Subject:", f"Disposition-Notification-To: {SENDER}\r\nSubject:".encode(), 1
    )
    transcript = _send(relay, tmp_path, raw)
    assert last_reply(transcript).startswith("250")

    def receipts(kind: str) -> list[EmailMessage]:
        return [
            mail
            for _, mail in outbox_mails(relay.data_dir)
            if mail.get_content_type() == "multipart/report"
            and str(mail["To"]) == SENDER
            and kind in mail.as_string()
        ]

    async def processed() -> list[EmailMessage]:
        return receipts("; processed")

    (mdn,) = await eventually(processed)
    assert mdn.get_param("report-type") == "disposition-notification"
    parts = [p.get_content_type() for p in mdn.iter_parts()]
    assert parts == ["text/plain", "message/disposition-notification", "text/rfc822-headers"]
    assert "Avec accuse" not in mdn.as_string()  # the original subject is not copied
    assert mdn["Subject"] == "Accusé de traitement"
    assert receipts("; displayed") == []
    # Opened by the physician: a "displayed" receipt, once.
    doctor = await headers_for(http, PHYSICIAN.email)
    (line,) = await _threads_with_subject(http, doctor, "Avec accuse")
    for _ in range(2):
        async with http.post(f"/api/threads/{line['id']}/read", headers=doctor) as response:
            await json_of(response)

    async def displayed() -> list[EmailMessage]:
        return receipts("; displayed")

    (read_receipt,) = await eventually(displayed)
    assert read_receipt["Subject"] == "Accusé de lecture"
    assert "manual-action/MDN-sent-automatically" in read_receipt.as_string()


# --- a relay with a strict policy ---------------------------------------------------------------


@pytest.fixture(scope="module")
def strict_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    """Only hopital.example may write without a certificate; messages over 200 KB refused."""
    root = tmp_path_factory.mktemp("strict")
    from tests.harness.relay_process import init_data_dir

    data_dir = init_data_dir(root)
    add_account(data_dir, PHYSICIAN, teams=False)
    process = start_relay(
        root,
        {
            "RELAIS_SMTP_ALLOWED_SENDER_DOMAINS": "hopital.example",
            "RELAIS_SMTP_MAX_MESSAGE_BYTES": "200000",
        },
    )
    yield process
    process.stop()


def test_trusted_senders_by_domain_or_client_certificate(
    strict_relay: RelayProcess, tmp_path: Path
) -> None:
    port = strict_relay.smtp_port
    code, transcript = swaks(port, "--tls", "--from", SENDER, "--to", PHYSICIAN.email)
    assert last_reply(transcript).startswith("250"), transcript[-500:]
    outsider = "someone@ailleurs.example"
    code, transcript = swaks(port, "--tls", "--from", outsider, "--to", PHYSICIAN.email)
    assert "550 5.7.1 Sender not allowed to send to this relay" in server_replies(transcript)
    # The same sender with a client certificate of a trusted operator (mutual TLS).
    certs = strict_relay.data_dir / "certs"
    ca = CertifiedKey.load(certs / "ca.pem", certs / "ca.key")
    peer = issue_client_certificate(
        ca, email="postmaster@ailleurs.example", display_name="MTA ailleurs", rpps=None,
        now=datetime.now(UTC), rsa_key_size=2048,
    )  # fmt: skip
    peer.to_pem_files(tmp_path / "peer.pem", tmp_path / "peer.key")
    code, transcript = swaks(
        port, "--tls", "--tls-cert", str(tmp_path / "peer.pem"), "--tls-key",
        str(tmp_path / "peer.key"), "--from", outsider, "--to", PHYSICIAN.email,
    )  # fmt: skip
    assert last_reply(transcript).startswith("250"), transcript[-800:]
    # A certificate from an unknown CA does not even complete the handshake.
    rogue = issue_client_certificate(
        create_ca("AC pirate", datetime.now(UTC)), email="x@ailleurs.example",
        display_name="X", rpps=None, now=datetime.now(UTC), rsa_key_size=2048,
    )  # fmt: skip
    rogue.to_pem_files(tmp_path / "rogue.pem", tmp_path / "rogue.key")
    code, transcript = swaks(
        port, "--tls", "--tls-cert", str(tmp_path / "rogue.pem"), "--tls-key",
        str(tmp_path / "rogue.key"), "--from", outsider, "--to", PHYSICIAN.email,
    )  # fmt: skip
    assert code != 0 and "250 2.0.0" not in transcript


def test_oversized_message_gets_552(strict_relay: RelayProcess, tmp_path: Path) -> None:
    port = strict_relay.smtp_port
    big = simple_mail(SENDER, PHYSICIAN.email, "gros", "x" * 60 + "\n") * 1
    body = big + (b"y" * 998 + b"\r\n") * 250  # ~250 KB > 200 KB
    path = tmp_path / "big.eml"
    path.write_bytes(body)
    _code, transcript = swaks(
        port, "--tls", "--from", SENDER, "--to", PHYSICIAN.email, "--data", str(path)
    )
    assert last_reply(transcript).startswith("552"), server_replies(transcript)[-3:]


def test_a_parser_process_killed_costs_one_retry(strict_relay: RelayProcess) -> None:
    import os
    import signal
    import subprocess

    port = strict_relay.smtp_port
    _, transcript = swaks(port, "--tls", "--from", SENDER, "--to", PHYSICIAN.email)
    assert last_reply(transcript).startswith("250")  # the parser processes are running now
    assert strict_relay.process is not None

    def descendants(pid: int) -> list[int]:
        found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
        children = [int(c) for c in found.stdout.split()]
        return children + [g for c in children for g in descendants(c)]

    workers = [
        pid
        for pid in descendants(strict_relay.process.pid)
        if "forkserver" in open(f"/proc/{pid}/cmdline").read()  # noqa: PTH123, SIM115
        and int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])  # noqa: PTH123, SIM115
        != strict_relay.process.pid
    ]
    assert workers, "no parser worker found"
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    replies = []
    for _ in range(3):
        _, transcript = swaks(port, "--tls", "--from", SENDER, "--to", PHYSICIAN.email)
        replies.append(last_reply(transcript))
    # At most the mail in flight is deferred (451: the client retries); then back to normal.
    assert all(r.startswith(("250", "451 4.3.0")) for r in replies), replies
    assert replies[-1].startswith("250"), replies
    assert strict_relay.process.poll() is None
