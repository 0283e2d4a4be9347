"""The gateway's own DATA reader on the wire: dot-stuffing undone (RFC 5321 §4.5.2), the
end-of-data line found whatever the TCP segmentation, bytes after it handed back to the
command loop, large bodies read whole."""

from __future__ import annotations

import base64
import os
import smtplib
import ssl
import time
from typing import Any

import aiohttp

from tests.harness.accounts import PHYSICIAN
from tests.harness.relay_process import RelayProcess
from tests.relay.messaging.helpers import headers_for, json_of, thread

SENDER = "dr.data@hopital.example"


def _session(relay: RelayProcess) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30)
    client.ehlo("client.hopital.example")
    client.starttls(context=ssl.create_default_context(cafile=str(relay.ca_file)))
    client.ehlo("client.hopital.example")
    client.mail(SENDER)
    code, _ = client.rcpt(PHYSICIAN.email)
    assert code == 250
    code, _ = client.docmd("DATA")
    assert code == 354
    return client


def _blob_files(relay: RelayProcess) -> set[str]:
    return {path.name for path in (relay.data_dir / "blobs").glob("*/*")}


async def _stored(http: aiohttp.ClientSession, subject: str) -> dict[str, Any]:
    doctor = await headers_for(http, PHYSICIAN.email)
    async with http.get("/api/threads", params={"limit": "200"}, headers=doctor) as response:
        (line,) = [t for t in (await json_of(response))["threads"] if t["subject"] == subject]
    message: dict[str, Any] = (await thread(http, doctor, line["id"]))["messages"][0]
    return message


async def test_dot_stuffing_and_a_terminator_split_across_segments(
    relay: RelayProcess, http: aiohttp.ClientSession
) -> None:
    blob_files = _blob_files(relay)
    client = _session(relay)
    body = (
        f"From: {SENDER}\r\nTo: {PHYSICIAN.email}\r\nSubject: dots\r\n\r\n"
        "..leading period\r\n...two periods\r\n..\r\nend.\r\n"  # stuffed as sent on the wire
        ".\r\n"
    ).encode()
    for byte in range(len(body)):  # one byte per segment: the worst segmentation
        assert client.sock is not None
        client.sock.sendall(body[byte : byte + 1])
        if byte > len(body) - 8:
            time.sleep(0.01)
    code, reply = client.getreply()
    assert code == 250, reply
    client.quit()
    message = await _stored(http, "dots")
    assert message["text"] == ".leading period\n..two periods\n.\nend.\n"
    # A small mail's content is sealed into its SQL row: no blob file was written for it.
    assert _blob_files(relay) == blob_files


async def test_pipelined_bytes_after_the_end_go_to_the_command_loop(
    relay: RelayProcess, http: aiohttp.ClientSession
) -> None:
    client = _session(relay)
    assert client.sock is not None
    client.sock.sendall(
        f"From: {SENDER}\r\nSubject: pipelined\r\n\r\ntexte\r\n.\r\nNOOP\r\nQUIT\r\n".encode()
    )
    assert client.getreply()[0] == 250  # end of data
    assert client.getreply()[0] == 250  # NOOP, read from the bytes handed back
    assert client.getreply()[0] == 221  # QUIT
    client.close()
    assert (await _stored(http, "pipelined"))["text"].strip() == "texte"


async def test_a_large_attachment_is_read_whole(
    relay: RelayProcess, http: aiohttp.ClientSession
) -> None:
    data = os.urandom(300_000)
    encoded = base64.encodebytes(data).decode().replace("\n", "\r\n")
    client = smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30)
    client.starttls(context=ssl.create_default_context(cafile=str(relay.ca_file)))
    raw = (
        f"From: {SENDER}\r\nTo: {PHYSICIAN.email}\r\nSubject: large\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n'
        "\r\ncorps\r\n--b\r\nContent-Type: application/octet-stream\r\n"
        'Content-Disposition: attachment; filename="scan.bin"\r\n'
        f"Content-Transfer-Encoding: base64\r\n\r\n{encoded}--b--\r\n"
    )
    client.sendmail(SENDER, [PHYSICIAN.email], raw.encode())
    client.quit()
    message = await _stored(http, "large")
    (attachment,) = message["attachments"]
    doctor = await headers_for(http, PHYSICIAN.email)
    async with http.get(attachment["url"], headers=doctor) as response:
        assert await response.read() == data
