"""kill -9 in the middle of an upload: it resumes after restart from the last acknowledged
offset, and the photo is byte-identical to the one of a clean upload."""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from PIL import Image

from tests.harness.accounts import PASSWORD
from tests.harness.relay_process import RelayProcess, init_data_dir, relais, start_relay
from tests.relay.cases_api.helpers import upload
from tests.relay.imaging.images import phone_jpeg

EMAIL = "ide.crash@relais.localhost"
CHUNK = 32 * 1024


@pytest.fixture
def crash_relay(tmp_path: Path) -> Iterator[RelayProcess]:
    data_dir = init_data_dir(tmp_path)
    (tmp_path / "pw").write_text(PASSWORD)
    relais(
        data_dir,
        *("user", "add", "--email", EMAIL, "--role", "nurse", "--name", "Ide Crash"),
        *("--password-file", str(tmp_path / "pw")),
    )
    process = start_relay(tmp_path)
    yield process
    process.stop()


async def _client(relay: RelayProcess) -> tuple[aiohttp.ClientSession, dict[str, str]]:
    http = aiohttp.ClientSession(
        base_url=relay.url, connector=aiohttp.TCPConnector(ssl=relay.ssl_context())
    )
    async with http.post("/api/login", json={"email": EMAIL, "password": PASSWORD}) as response:
        assert response.status == 200, await response.text()
        token = (await response.json())["token"]
    return http, {"Authorization": f"Bearer {token}"}


async def test_kill9_mid_upload_resumes_byte_identical(crash_relay: RelayProcess) -> None:
    noise = random.Random(5).randbytes(600 * 400 * 3)  # incompressible: a real-sized file
    data = phone_jpeg(Image.frombytes("RGB", (600, 400), noise), quality=95)
    assert len(data) > 4 * CHUNK
    http, auth = await _client(crash_relay)
    try:
        status, clean = await upload(http, auth, data, chunk=len(data))
        assert status == 200, clean
        async with http.post(
            "/api/uploads", json={"size": len(data), "content_type": "image/jpeg"}, headers=auth
        ) as response:
            upload_id = (await response.json())["id"]
        headers = {**auth, "Content-Type": "application/offset+octet-stream"}
        for offset in (0, CHUNK):
            async with http.patch(
                f"/api/uploads/{upload_id}",
                data=data[offset : offset + CHUNK],
                headers={**headers, "Upload-Offset": str(offset)},
            ) as response:
                assert response.status == 200

        # A third chunk is half sent when the relay dies.
        sent_half = asyncio.Event()

        async def body() -> AsyncIterator[bytes]:
            yield data[2 * CHUNK : 2 * CHUNK + CHUNK // 2]
            sent_half.set()
            await asyncio.sleep(30)
            yield data[2 * CHUNK + CHUNK // 2 : 3 * CHUNK]

        in_flight = asyncio.create_task(
            http.patch(
                f"/api/uploads/{upload_id}",
                data=body(),
                headers={**headers, "Upload-Offset": str(2 * CHUNK)},
            )
        )
        await asyncio.wait_for(sent_half.wait(), 10)
        await asyncio.sleep(0.3)
        crash_relay.kill9()
        with pytest.raises(aiohttp.ClientError):
            await asyncio.wait_for(in_flight, 10)
    finally:
        await http.close()

    crash_relay.start()
    http, auth = await _client(crash_relay)
    try:
        async with http.head(f"/api/uploads/{upload_id}", headers=auth) as response:
            assert response.status == 200
            offset = int(response.headers["Upload-Offset"])
        assert offset == 2 * CHUNK  # the half chunk was never acknowledged
        headers = {**auth, "Content-Type": "application/offset+octet-stream"}
        while offset < len(data):
            async with http.patch(
                f"/api/uploads/{upload_id}",
                data=data[offset : offset + CHUNK],
                headers={**headers, "Upload-Offset": str(offset)},
            ) as response:
                assert response.status == 200, await response.text()
                resumed = await response.json()
                offset = resumed["offset"]
    finally:
        await http.close()
    assert resumed["complete"]
    assert resumed["photo"]["sha256"] == clean["photo"]["sha256"]
    # The chunks (the original upload, encrypted) are gone once the photo is made.
    with contextlib.closing(sqlite3.connect(crash_relay.data_dir / "relais.db")) as db:
        assert db.execute("SELECT COUNT(*) FROM upload_chunks").fetchone() == (0,)
        photos = db.execute("SELECT jpeg_blob_id, thumbnail_blob_id FROM case_photos").fetchall()
    kept = {p.name for p in (crash_relay.data_dir / "blobs").rglob("*") if p.is_file()}
    assert {blob for pair in photos for blob in pair} <= kept
    assert len(kept) == 2 * len(photos)  # nothing else: no chunk, no original
