"""Helpers for the messaging and mail gateway tests: sessions, the outbox directory, swaks,
mail builders, the audit trail, polling."""

from __future__ import annotations

import asyncio
import base64
import email
import subprocess
import time
from collections.abc import Awaitable, Callable
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from tests.conftest import bearer, login
from tests.harness.accounts import ADMIN

T = TypeVar("T")
SUBJECT = "[Relais Santé] Nouveau message sécurisé"


async def headers_for(http: aiohttp.ClientSession, email_address: str) -> dict[str, str]:
    """Bearer headers of a fresh session of ``email_address``."""
    return bearer(await login(http, email_address))


async def json_of(response: aiohttp.ClientResponse, status: int = 200) -> Any:
    body = await response.json()
    assert response.status == status, body
    return body


async def upload(
    http: aiohttp.ClientSession, headers: dict[str, str], data: bytes, kind: str
) -> str:
    async with http.post("/api/files", data=data, headers={**headers, "Content-Type": kind}) as r:
        file_id: str = (await json_of(r, 201))["id"]
        return file_id


async def start_thread(
    http: aiohttp.ClientSession, headers: dict[str, str], **body: Any
) -> dict[str, Any]:
    body.setdefault("subject", "Avis sur une plaie")
    body.setdefault("text", "Bonjour, pouvez-vous regarder ?")
    async with http.post("/api/threads", json=body, headers=headers) as response:
        created: dict[str, Any] = await json_of(response, 201)
        return created


async def thread(
    http: aiohttp.ClientSession, headers: dict[str, str], thread_id: str
) -> dict[str, Any]:
    async with http.get(f"/api/threads/{thread_id}", headers=headers) as response:
        shown: dict[str, Any] = await json_of(response)
        return shown


async def audit_events(http: aiohttp.ClientSession, **criteria: str) -> list[dict[str, Any]]:
    """Audit events matching ``criteria`` (admin search)."""
    token = await login(http, ADMIN.email)
    params = {"limit": "200", **criteria}
    async with http.get("/api/audit/events", params=params, headers=bearer(token)) as response:
        events: list[dict[str, Any]] = (await json_of(response))["events"]
        return events


async def eventually(
    check: Callable[[], Awaitable[T | None]], timeout: float = 15.0, interval: float = 0.1
) -> T:
    """Poll ``check`` until it returns something other than None/False."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(interval)


def outbox_mails(data_dir: Path) -> list[tuple[bytes, EmailMessage]]:
    """Every mail the relay wrote to DATA_DIR/outbox (no smarthost configured)."""
    found = []
    for path in sorted((data_dir / "outbox").glob("*.eml")):
        raw = path.read_bytes()
        parsed = email.message_from_bytes(raw, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        found.append((raw, parsed))
    return found


def mails_to(data_dir: Path, recipient: str) -> list[tuple[bytes, EmailMessage]]:
    return [(raw, m) for raw, m in outbox_mails(data_dir) if str(m["To"]) == recipient]


def swaks(port: int, *args: str, timeout: float = 60.0) -> tuple[int, str]:
    """Run swaks against the relay on loopback; returns (exit code, transcript)."""
    result = subprocess.run(
        ["swaks", "--server", "127.0.0.1", "--port", str(port), "--timeout", "30", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return result.returncode, result.stdout + result.stderr


def server_replies(transcript: str) -> list[str]:
    """The server's reply lines of a swaks transcript (``<-``, ``<~``, ``<**``, ``<~*``)."""
    return [
        line.split(" ", 1)[1].strip()
        for line in transcript.splitlines()
        if line.startswith("<") and " " in line
    ]


def last_reply(transcript: str) -> str:
    """The last reply before QUIT's 221."""
    replies = [r for r in server_replies(transcript) if not r.startswith("221")]
    return replies[-1] if replies else ""


def write_eml(directory: Path, name: str, message: EmailMessage | bytes) -> Path:
    path = directory / name
    path.write_bytes(
        message if isinstance(message, bytes) else message.as_bytes(policy=policy.SMTP)
    )
    return path


def nested_mime(depth: int, sender: str, recipient: str) -> bytes:
    """A message whose multiparts are nested ``depth`` levels deep (tiny, ~60 bytes a level)."""
    head = f"From: {sender}\r\nTo: {recipient}\r\nSubject: deep\r\nMIME-Version: 1.0\r\n"
    lines = [head.encode()]
    for level in range(depth):
        lines.append(
            f'Content-Type: multipart/mixed; boundary="b{level}"\r\n\r\n--b{level}\r\n'.encode()
        )
    lines.append(b"Content-Type: text/plain\r\n\r\nfond\r\n")
    for level in reversed(range(depth)):
        lines.append(f"--b{level}--\r\n".encode())
    return b"".join(lines)


def many_parts(count: int, sender: str, recipient: str) -> bytes:
    head = (
        f"From: {sender}\r\nTo: {recipient}\r\nSubject: parts\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="p"\r\n\r\n'
    )
    part = b"--p\r\nContent-Type: text/plain\r\n\r\nx\r\n"
    return head.encode() + part * count + b"--p--\r\n"


def simple_mail(
    sender: str, recipient: str, subject: str = "Bonjour", text: str = "Texte"
) -> bytes:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = subject
    message["Message-ID"] = email.utils.make_msgid(domain="test.example")
    message.set_content(text)
    return message.as_bytes(policy=policy.SMTP)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
