"""If the audit log cannot write, nothing is handed out (503), in-process with the real stores."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from relay.accounts import validate_new_professional
from relay.commands import initialise
from relay.config import load_config
from relay.datadir import DataDir
from relay.http.app import build_app
from relay.runtime import Runtime
from tests.harness.relay_process import FAST_ENV

PASSWORD = "a long enough password"


@pytest.fixture
async def relay_in_process(tmp_path: Path) -> AsyncIterator[tuple[Runtime, TestClient]]:  # type: ignore[type-arg]
    data = DataDir(tmp_path / "data")
    await initialise(data, domain="relais.localhost", admin_email=None, admin_password=PASSWORD)
    runtime = await Runtime.open(data, load_config(data.config, FAST_ENV))
    new = validate_new_professional(
        email="ide@relais.localhost", display_name="IDE", role="nurse", rpps=None, specialty=None
    )
    await runtime.accounts.create_professional(
        new, await runtime.passwords.hash(PASSWORD), runtime.clock()
    )
    client = TestClient(TestServer(build_app(runtime)))
    await client.start_server()
    try:
        yield runtime, client
    finally:
        await client.close()
        await runtime.close()


async def _setup(client: TestClient) -> tuple[dict[str, str], str]:  # type: ignore[type-arg]
    response = await client.post(
        "/api/login", json={"email": "ide@relais.localhost", "password": PASSWORD}
    )
    token = (await response.json())["token"]
    headers = {"Authorization": f"Bearer {token}"}
    response = await client.post(
        "/api/files", data=b"wound-photo-bytes", headers={**headers, "Content-Type": "image/jpeg"}
    )
    assert response.status == 201
    return headers, (await response.json())["id"]


async def test_read_only_audit_database_refuses_download(
    relay_in_process: tuple[Runtime, TestClient],  # type: ignore[type-arg]
) -> None:
    runtime, client = relay_in_process
    headers, file_id = await _setup(client)
    await runtime.audit.database.run(lambda conn: conn.execute("PRAGMA query_only=ON"))
    response = await client.get(f"/api/files/{file_id}", headers=headers)
    body = await response.read()
    assert response.status == 503
    assert b"wound-photo-bytes" not in body
    assert (await response.json())["error"]["code"] == "audit_unavailable"
    assert "X-Audit-Receipt" not in response.headers
    # Once the log can write again, the same download works and is traced.
    await runtime.audit.database.run(lambda conn: conn.execute("PRAGMA query_only=OFF"))
    response = await client.get(f"/api/files/{file_id}", headers=headers)
    assert response.status == 200
    assert await response.read() == b"wound-photo-bytes"


async def test_full_audit_disk_refuses_download(
    relay_in_process: tuple[Runtime, TestClient],  # type: ignore[type-arg]
) -> None:
    runtime, client = relay_in_process
    headers, file_id = await _setup(client)

    def fill_disk(conn: sqlite3.Connection) -> None:
        # SQLITE_FULL, exactly as a full disk reports it: no page may be added.
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
        conn.execute(f"PRAGMA max_page_count={pages}")

    await runtime.audit.database.run(fill_disk)
    statuses = []
    for _ in range(200):  # the first writes may still fit in the last page's free space
        response = await client.get(f"/api/files/{file_id}", headers=headers)
        statuses.append(response.status)
        body = await response.read()
        if response.status == 503:
            assert b"wound-photo-bytes" not in body
            assert "X-Audit-Receipt" not in response.headers
            break
        assert response.status == 200
    assert statuses[-1] == 503, statuses
