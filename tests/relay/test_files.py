"""Encrypted file upload/download through the real relay, including crashes."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import threading
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import bearer, login
from tests.harness.accounts import ADMIN, NURSE, PASSWORD, PHYSICIAN, seed
from tests.harness.relay_process import RelayProcess, init_data_dir, start_relay


async def _upload(http: aiohttp.ClientSession, token: str, data: bytes) -> dict[str, object]:
    async with http.post(
        "/api/files",
        data=data,
        headers={**bearer(token), "Content-Type": "image/jpeg"},
    ) as response:
        body: dict[str, object] = await response.json()
        assert response.status == 201, body
        return body


async def test_upload_then_download_by_owner_only(http: aiohttp.ClientSession) -> None:
    data = os.urandom(300_000)
    nurse = await login(http, NURSE.email)
    stored = await _upload(http, nurse, data)
    assert stored["sha256"] == hashlib.sha256(data).hexdigest()
    async with http.get(f"/api/files/{stored['id']}", headers=bearer(nurse)) as response:
        assert response.status == 200
        assert await response.read() == data
        assert response.headers["Content-Type"] == "image/jpeg"
    physician = await login(http, PHYSICIAN.email)
    async with http.get(f"/api/files/{stored['id']}", headers=bearer(physician)) as response:
        assert response.status == 403
    admin = await login(http, ADMIN.email)
    async with http.post("/api/files", data=b"x", headers=bearer(admin)) as response:
        assert response.status == 403  # administrators do not handle clinical files
    async with http.get("/api/files/does-not-exist", headers=bearer(nurse)) as response:
        assert response.status == 404


async def test_large_file_streams_back_intact(http: aiohttp.ClientSession) -> None:
    data = os.urandom(9 * 1024 * 1024 + 17)  # above the verify-whole threshold
    nurse = await login(http, NURSE.email)
    stored = await _upload(http, nurse, data)
    async with http.get(f"/api/files/{stored['id']}", headers=bearer(nurse)) as response:
        assert response.status == 200
        assert hashlib.sha256(await response.read()).hexdigest() == stored["sha256"]


async def test_upload_over_limit_is_refused(http: aiohttp.ClientSession) -> None:
    nurse = await login(http, NURSE.email)
    async with http.post(
        "/api/files",
        data=b"\0" * (31_457_280 + 1),
        headers={**bearer(nurse), "Content-Type": "application/pdf"},
    ) as response:
        assert response.status == 413
        assert (await response.json())["error"]["code"] == "payload_too_large"


async def test_altered_ciphertext_is_never_returned(
    http: aiohttp.ClientSession, relay: RelayProcess
) -> None:
    nurse = await login(http, NURSE.email)
    stored = await _upload(http, nurse, b"wound photo bytes " * 1000)
    with sqlite3.connect(relay.data_dir / "relais.db") as conn:
        (blob_id,) = conn.execute(
            "SELECT blob_id FROM files WHERE id = ?", (stored["id"],)
        ).fetchone()
    blob_files = [p for p in (relay.data_dir / "blobs").rglob(f"{blob_id}*") if p.is_file()]
    assert blob_files
    target = max(blob_files, key=lambda p: p.stat().st_size)
    raw = bytearray(target.read_bytes())
    raw[-40] ^= 0x01
    target.write_bytes(bytes(raw))
    async with http.get(f"/api/files/{stored['id']}", headers=bearer(nurse)) as response:
        assert response.status == 500
        body = await response.json()
    assert body["error"]["code"] == "integrity_error"
    assert "wound photo" not in str(body)


@pytest.mark.slow
async def test_kill_9_during_uploads_loses_no_acknowledged_file(tmp_path: Path) -> None:
    """Uploads run concurrently; the relay is SIGKILLed mid-way; every 201 survives."""
    data_dir = init_data_dir(tmp_path)
    seed(data_dir, tmp_path)
    relay = start_relay(tmp_path)
    acknowledged: dict[str, str] = {}
    connector = aiohttp.TCPConnector(ssl=relay.ssl_context())
    async with aiohttp.ClientSession(base_url=relay.url, connector=connector) as http:
        token = await login(http, NURSE.email, PASSWORD)
        killer = threading.Timer(1.5, lambda: relay.stop(signal.SIGKILL))
        killer.start()

        async def uploader(worker: int) -> None:
            for i in range(1000):
                payload = hashlib.sha256(f"{worker}-{i}".encode()).digest() * 20_000
                try:
                    async with http.post(
                        "/api/files",
                        data=payload,
                        headers={**bearer(token), "Content-Type": "image/png"},
                    ) as response:
                        if response.status != 201:
                            return
                        body = await response.json()
                except aiohttp.ClientError:
                    return
                acknowledged[body["id"]] = hashlib.sha256(payload).hexdigest()

        import asyncio

        await asyncio.gather(*(uploader(w) for w in range(4)))
        killer.join()
    assert acknowledged, "no upload was acknowledged before the kill"
    assert len(acknowledged) < 4000, "the relay was killed only after every upload finished"
    restarted = RelayProcess(relay.data_dir, relay.port)
    restarted.start()
    try:
        connector = aiohttp.TCPConnector(ssl=restarted.ssl_context())
        async with aiohttp.ClientSession(base_url=restarted.url, connector=connector) as http:
            token = await login(http, NURSE.email, PASSWORD)
            for file_id, digest in acknowledged.items():
                async with http.get(f"/api/files/{file_id}", headers=bearer(token)) as response:
                    assert response.status == 200, file_id
                    assert hashlib.sha256(await response.read()).hexdigest() == digest
            # Unacknowledged uploads left either nothing or a complete, listed file.
            with sqlite3.connect(relay.data_dir / "relais.db") as conn:
                rows = conn.execute("SELECT id, sha256 FROM files").fetchall()
            for file_id, digest in rows:
                async with http.get(f"/api/files/{file_id}", headers=bearer(token)) as response:
                    assert response.status == 200
                    assert hashlib.sha256(await response.read()).hexdigest() == digest
            with sqlite3.connect(relay.data_dir / "relais.db") as conn:
                assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        restarted.stop()
