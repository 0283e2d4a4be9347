"""Second factor, client-certificate login, and login rate limits, end to end."""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import aiohttp

from certs.pkcs12 import load_pkcs12
from relay import totp
from tests.conftest import bearer, login
from tests.harness.accounts import COORDINATOR, PASSWORD, SPECIALIST
from tests.harness.relay_process import RelayProcess, relais, start_relay


async def test_totp_enrolment_then_login_requires_code(http: aiohttp.ClientSession) -> None:
    token = await login(http, COORDINATOR.email)
    async with http.post("/api/me/totp", headers=bearer(token), json={}) as response:
        assert response.status == 200
        setup = await response.json()
    assert setup["otpauth_uri"].startswith("otpauth://totp/")
    secret = setup["secret"]
    async with http.post(
        "/api/me/totp/confirm", headers=bearer(token), json={"code": "000000"}
    ) as response:
        assert response.status == 400
    code = totp.totp(secret, time.time())
    async with http.post(
        "/api/me/totp/confirm", headers=bearer(token), json={"code": code}
    ) as response:
        assert response.status == 200
    credentials = {"email": COORDINATOR.email, "password": PASSWORD}
    async with http.post("/api/login", json=credentials) as response:
        assert response.status == 401
        assert (await response.json())["error"]["code"] == "totp_required"
    async with http.post("/api/login", json={**credentials, "totp": "123456"}) as response:
        assert response.status == 401
        assert (await response.json())["error"]["code"] == "invalid_totp"
    fresh = totp.totp(secret, time.time())
    async with http.post("/api/login", json={**credentials, "totp": fresh}) as response:
        body = await response.json()
        assert response.status == 200, body
    async with http.get("/api/me", headers=bearer(body["token"])) as response:
        me = await response.json()
    assert me["login_method"] == "totp"
    assert me["totp_enabled"] is True


async def test_client_certificate_login(relay: RelayProcess, tmp_path: Path) -> None:
    p12 = tmp_path / "petit.p12"
    password_file = tmp_path / "p12-password"
    password_file.write_text("p12 secret")
    relais(
        relay.data_dir,
        "cert",
        "issue",
        "--email",
        SPECIALIST.email,
        "--out",
        str(p12),
        "--password-file",
        str(password_file),
    )
    assert p12.stat().st_mode & 0o077 == 0
    contents = load_pkcs12(p12.read_bytes(), b"p12 secret")
    cert_pem, key_pem = tmp_path / "client.pem", tmp_path / "client.key"
    from cryptography.hazmat.primitives import serialization

    cert_pem.write_bytes(contents.certified.certificate.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        contents.certified.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = relay.ssl_context()
    context.load_cert_chain(cert_pem, key_pem)
    connector = aiohttp.TCPConnector(ssl=context)
    async with aiohttp.ClientSession(base_url=relay.url, connector=connector) as http:
        async with http.post("/api/login/certificate") as response:
            body = await response.json()
            assert response.status == 200, body
        assert body["professional"]["email"] == SPECIALIST.email
        async with http.get("/api/me", headers=bearer(body["token"])) as response:
            assert (await response.json())["login_method"] == "client_certificate"
    # Without a certificate, the same endpoint refuses with a clear message.
    connector = aiohttp.TCPConnector(ssl=relay.ssl_context())
    async with (
        aiohttp.ClientSession(base_url=relay.url, connector=connector) as http,
        http.post("/api/login/certificate") as response,
    ):
        assert response.status == 401
        assert (await response.json())["error"]["code"] == "certificate_required"


async def test_certificate_from_another_ca_fails_the_handshake(
    relay: RelayProcess, tmp_path: Path
) -> None:
    from datetime import UTC, datetime

    from certs.ca import create_ca
    from certs.issue import issue_client_certificate

    now = datetime.now(UTC)
    rogue_ca = create_ca("Rogue CA", now)
    rogue = issue_client_certificate(
        rogue_ca, email=SPECIALIST.email, display_name="Hugo Petit", rpps=None, now=now
    )
    rogue.to_pem_files(tmp_path / "rogue.pem", tmp_path / "rogue.key")
    context = relay.ssl_context()
    context.load_cert_chain(tmp_path / "rogue.pem", tmp_path / "rogue.key")
    connector = aiohttp.TCPConnector(ssl=context)
    async with aiohttp.ClientSession(base_url=relay.url, connector=connector) as http:
        try:
            async with http.post("/api/login/certificate") as response:
                status = response.status
        except (aiohttp.ClientError, ssl.SSLError):
            status = 0
    assert status in (0, 401)


async def test_login_limits_per_account_and_per_address(tmp_path: Path) -> None:
    relay = start_relay(
        tmp_path,
        {
            "RELAIS_ACCOUNTS_LOGIN_MAX_FAILURES_PER_ACCOUNT": "3",
            "RELAIS_ACCOUNTS_LOGIN_MAX_FAILURES_PER_ADDRESS": "5",
        },
    )
    try:
        connector = aiohttp.TCPConnector(ssl=relay.ssl_context())
        async with aiohttp.ClientSession(base_url=relay.url, connector=connector) as http:
            wrong = {"email": "admin@relais.localhost", "password": "wrong password here"}
            for _ in range(3):
                async with http.post("/api/login", json=wrong) as response:
                    assert response.status == 401
            async with http.post("/api/login", json=wrong) as response:
                assert response.status == 429
                assert int(response.headers["Retry-After"]) > 0
                assert "Réessayez dans" in (await response.json())["error"]["message"]
            # Even the right password is refused while the account is limited.
            right = {"email": "admin@relais.localhost", "password": "admin-password-for-tests"}
            async with http.post("/api/login", json=right) as response:
                assert response.status == 429
            # Other accounts (existing or not) fail until the per-address limit (5) is hit.
            for email in ("x1@relais.localhost", "x2@relais.localhost"):
                async with http.post("/api/login", json={**wrong, "email": email}) as r:
                    assert r.status == 401
            async with http.post("/api/login", json={**wrong, "email": "x3@relais.localhost"}) as r:
                assert r.status == 429
    finally:
        relay.stop()


async def test_change_password(
    http: aiohttp.ClientSession, relay: RelayProcess, tmp_path: Path
) -> None:
    password_file = tmp_path / "pw"
    password_file.write_text("first password 123")
    relais(
        relay.data_dir,
        "user",
        "add",
        "--email",
        "changer@relais.localhost",
        "--role",
        "physician",
        "--password-file",
        str(password_file),
    )
    token = await login(http, "changer@relais.localhost", "first password 123")
    change = {"current_password": "wrong", "new_password": "second password 456"}
    async with http.post("/api/me/password", json=change, headers=bearer(token)) as response:
        assert response.status == 400
    change["current_password"] = "first password 123"
    change["new_password"] = "short"
    async with http.post("/api/me/password", json=change, headers=bearer(token)) as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "weak_password"
    change["new_password"] = "second password 456"
    async with http.post("/api/me/password", json=change, headers=bearer(token)) as response:
        assert response.status == 204
    await login(http, "changer@relais.localhost", "second password 456")
    old = {"email": "changer@relais.localhost", "password": "first password 123"}
    async with http.post("/api/login", json=old) as response:
        assert response.status == 401
