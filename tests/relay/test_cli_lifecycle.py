"""The command line and the server's life cycle: init, serve, stop, keys, bad start-up."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from tests.conftest import bearer, login
from tests.harness.accounts import NURSE, PASSWORD, PHYSICIAN, seed
from tests.harness.redis_server import free_port
from tests.harness.relay_process import FAST_ENV, RelayProcess, init_data_dir, relais
from tests.relay.messaging.helpers import start_thread, thread


def test_serve_on_empty_dir_initialises_and_prints_how_to_log_in(tmp_path: Path) -> None:
    data_dir = tmp_path / "fresh"
    relay = RelayProcess(data_dir, free_port())
    relay.start()
    try:
        log = relay.log()
        assert "Compte administrateur : admin@relais.localhost" in log
        assert "Mot de passe à usage unique : " in log
        assert f"https://localhost:{relay.port}/" in log
        assert (data_dir / "keys").stat().st_mode & 0o077 == 0
        for key_file in (data_dir / "keys").glob("master-*.key"):
            assert key_file.stat().st_mode & 0o777 == 0o600
        assert (data_dir / "certs" / "ca.key").stat().st_mode & 0o777 == 0o600
    finally:
        assert relay.stop() == 0


def test_init_refuses_an_initialised_dir_and_bad_identifiers(tmp_path: Path) -> None:
    data_dir = init_data_dir(tmp_path)
    again = relais(data_dir, "init", check=False)
    assert again.returncode == 1
    assert "already initialised" in again.stderr
    bad = relais(
        data_dir,
        "user",
        "add",
        "--email",
        "a@b.fr",
        "--role",
        "nurse",
        "--rpps",
        "12345678901",
        check=False,
    )
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [
        "relais: Le numéro RPPS est invalide : la clé de contrôle ne correspond pas."
    ]
    spec = relais(data_dir, "user", "add", "--email", "s@b.fr", "--role", "specialist", check=False)
    assert "spécialité" in spec.stderr


def _serve(data_dir: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", "--data-dir", str(data_dir), "serve"],
        env={**FAST_ENV, "PATH": "/usr/bin:/bin", **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_missing_or_unreadable_master_key_stops_with_one_line(tmp_path: Path) -> None:
    data_dir = init_data_dir(tmp_path)
    key_file = next((data_dir / "keys").glob("master-*.key"))
    key_file.chmod(0o644)
    result = _serve(data_dir, {"RELAIS_HTTP_PORT": str(free_port())})
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert str(key_file) in result.stderr
    key_file.unlink()
    result = _serve(data_dir, {"RELAIS_HTTP_PORT": str(free_port())})
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "master key" in lines[0], result.stderr


def test_invalid_configuration_stops_with_one_line_naming_the_key(tmp_path: Path) -> None:
    data_dir = init_data_dir(tmp_path)
    result = _serve(data_dir, {"RELAIS_HTTP_PORT": "https"})
    assert result.returncode == 2
    assert result.stderr.strip() == "relais: http.port: expected an integer, got 'https'"
    config = data_dir / "relais.toml"
    config.write_text(config.read_text() + "\n[server]\nnode = 'x'\n")
    result = _serve(data_dir)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "relais.toml" in result.stderr


async def test_sigterm_lets_in_flight_upload_finish(tmp_path: Path) -> None:
    data_dir = init_data_dir(tmp_path)
    seed(data_dir, tmp_path)
    relay = RelayProcess(data_dir, free_port())
    relay.start()
    chunks = [hashlib.sha256(bytes([i])).digest() * 8192 for i in range(10)]
    terminated = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        for index, chunk in enumerate(chunks):
            if index == 3:
                relay.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
                terminated.set()
            await asyncio.sleep(0.1)
            yield chunk

    connector = aiohttp.TCPConnector(ssl=relay.ssl_context())
    async with aiohttp.ClientSession(base_url=relay.url, connector=connector) as http:
        token = await login(http, NURSE.email, PASSWORD)
        async with http.post(
            "/api/files", data=slow_body(), headers={**bearer(token), "Content-Type": "image/png"}
        ) as response:
            body = await response.json()
            assert response.status == 201, body
    assert terminated.is_set()
    assert body["sha256"] == hashlib.sha256(b"".join(chunks)).hexdigest()
    assert await asyncio.to_thread(relay.process.wait, 30) == 0  # type: ignore[union-attr]
    # New connections are refused once stopped; the file is there after a restart.
    relay.start()
    try:
        connector = aiohttp.TCPConnector(ssl=relay.ssl_context())
        async with aiohttp.ClientSession(base_url=relay.url, connector=connector) as http:
            token = await login(http, NURSE.email, PASSWORD)
            async with http.get(f"/api/files/{body['id']}", headers=bearer(token)) as r:
                assert hashlib.sha256(await r.read()).hexdigest() == body["sha256"]
    finally:
        relay.stop()


async def test_keys_rotate_rewraps_and_old_key_can_be_destroyed(tmp_path: Path) -> None:
    data_dir = init_data_dir(tmp_path)
    seed(data_dir, tmp_path)
    relay = RelayProcess(data_dir, free_port())
    relay.start()
    connector = aiohttp.TCPConnector(ssl=relay.ssl_context())
    async with aiohttp.ClientSession(base_url=relay.url, connector=connector) as http:
        token = await login(http, NURSE.email, PASSWORD)
        async with http.post(
            "/api/files",
            data=b"before rotation" * 999,
            headers={**bearer(token), "Content-Type": "image/png"},
        ) as r:
            stored = await r.json()
            assert r.status == 201, stored
        # A message's content is sealed in an SQL row, not a blob file: re-wrapped too.
        posted = await start_thread(
            http, bearer(token), recipients=[PHYSICIAN.email], text="Plaie propre, à revoir."
        )
    relay.stop()
    old_keys = sorted(p.name for p in (data_dir / "keys").glob("master-*.key"))
    result = relais(data_dir, "keys", "rotate", "--destroy-old")
    assert "2 clés de données re-chiffrées" in result.stdout, result.stdout
    new_keys = sorted(p.name for p in (data_dir / "keys").glob("master-*.key"))
    assert len(new_keys) == 1 and new_keys != old_keys
    relay.start()
    try:
        connector = aiohttp.TCPConnector(ssl=relay.ssl_context())
        async with aiohttp.ClientSession(base_url=relay.url, connector=connector) as http:
            token = await login(http, NURSE.email, PASSWORD)
            async with http.get(f"/api/files/{stored['id']}", headers=bearer(token)) as r:
                assert await r.read() == b"before rotation" * 999
            shown = await thread(http, bearer(token), posted["id"])
            assert shown["subject"] == "Avis sur une plaie"
            assert shown["messages"][0]["text"] == "Plaie propre, à revoir."
    finally:
        relay.stop()


def test_bad_trust_anchor_file_stops_start_up(tmp_path: Path) -> None:
    data_dir = init_data_dir(tmp_path)
    anchors = tmp_path / "anchors"
    anchors.mkdir()
    (anchors / "igc-sante.pem").write_text("not a certificate")
    result = _serve(
        data_dir,
        {"RELAIS_HTTP_PORT": str(free_port()), "RELAIS_TLS_TRUST_ANCHORS_DIR": str(anchors)},
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "igc-sante.pem" in lines[0], result.stderr


async def test_client_certificate_from_a_trust_anchor_logs_in(tmp_path: Path) -> None:
    """A certificate issued by an external CA placed in trust_anchors_dir (as IGC-Santé)."""
    import hashlib as _hashlib
    from datetime import UTC, datetime

    from cryptography.hazmat.primitives import serialization

    from certs.ca import create_ca
    from certs.issue import issue_client_certificate

    data_dir = init_data_dir(tmp_path)
    seed(data_dir, tmp_path)
    now = datetime.now(UTC)
    external_ca = create_ca("IGC-Santé de test", now)
    anchors = tmp_path / "anchors"
    anchors.mkdir()
    external_ca.to_pem_files(anchors / "igc.pem", tmp_path / "igc.key")
    leaf = issue_client_certificate(
        external_ca, email=NURSE.email, display_name=NURSE.name, rpps=NURSE.rpps, now=now
    )
    leaf.to_pem_files(tmp_path / "leaf.pem", tmp_path / "leaf.key")
    # Register the certificate's fingerprint for the nurse, as an admin would.
    import sqlite3

    der = leaf.certificate.public_bytes(serialization.Encoding.DER)
    with sqlite3.connect(data_dir / "relais.db") as conn:
        (pro_id,) = conn.execute(
            "SELECT id FROM professionals WHERE email = ?", (NURSE.email,)
        ).fetchone()
        conn.execute(
            "INSERT INTO client_certificates VALUES (?, ?, ?, ?, ?, NULL)",
            ("1", pro_id, _hashlib.sha256(der).hexdigest(), "2099-01-01", now.isoformat()),
        )
    relay = RelayProcess(data_dir, free_port(), {"RELAIS_TLS_TRUST_ANCHORS_DIR": str(anchors)})
    relay.start()
    try:
        context = relay.ssl_context()
        context.load_cert_chain(tmp_path / "leaf.pem", tmp_path / "leaf.key")
        connector = aiohttp.TCPConnector(ssl=context)
        async with (
            aiohttp.ClientSession(base_url=relay.url, connector=connector) as http,
            http.post("/api/login/certificate") as response,
        ):
            body = await response.json()
            assert response.status == 200, body
            assert body["professional"]["email"] == NURSE.email
    finally:
        relay.stop()


async def test_relay_on_redis_bus_reports_its_readiness(tmp_path: Path) -> None:
    """With bus.backend = redis the relay uses a real Redis, and /readyz follows it."""
    from tests.harness import redis_server

    (tmp_path / "redis").mkdir()
    with redis_server(tmp_path / "redis") as server:
        data_dir = init_data_dir(tmp_path)
        relay = RelayProcess(
            data_dir,
            free_port(),
            {"RELAIS_BUS_BACKEND": "redis", "RELAIS_BUS_REDIS_URL": server.url},
        )
        relay.start()
        try:
            connector = aiohttp.TCPConnector(ssl=relay.ssl_context())
            async with aiohttp.ClientSession(base_url=relay.url, connector=connector) as http:
                async with http.get("/readyz") as response:
                    assert response.status == 200, await response.text()
                server.kill()
                async with http.get("/readyz") as response:
                    body = await response.json()
                    assert response.status == 503
                    assert body["checks"]["event_bus"] != "ok"
                    assert body["checks"]["database"] == "ok"
        finally:
            relay.stop()
