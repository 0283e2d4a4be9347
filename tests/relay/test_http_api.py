"""End-to-end tests of the HTTPS API against the real relay subprocess."""

from __future__ import annotations

import asyncio
import gc
import socket
import ssl
import sys

import aiohttp
import pytest

from tests.conftest import bearer, login
from tests.harness.accounts import NURSE, OTHER_NURSE, PHYSICIAN, SPECIALIST
from tests.harness.relay_process import RelayProcess


async def _error(response: aiohttp.ClientResponse) -> dict[str, str]:
    body = await response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}
    error: dict[str, str] = body["error"]
    return error


async def test_health_and_readiness(http: aiohttp.ClientSession) -> None:
    async with http.get("/healthz") as response:
        assert response.status == 200
    async with http.get("/readyz") as response:
        body = await response.json()
        assert response.status == 200, body
        assert body["checks"] == {"database": "ok", "event_bus": "ok", "blobs": "ok"}


async def test_login_me_and_logout_with_bearer(http: aiohttp.ClientSession) -> None:
    token = await login(http, NURSE.email)
    async with http.get("/api/me", headers=bearer(token)) as response:
        me = await response.json()
        assert response.status == 200
    assert me["email"] == NURSE.email
    assert me["role"] == "nurse"
    assert me["rpps"] == NURSE.rpps
    assert [t["address"] for t in me["teams"]] == ["msp-belleville@relais.localhost"]
    async with http.post("/api/logout", headers=bearer(token)) as response:
        assert response.status == 204
    async with http.get("/api/me", headers=bearer(token)) as response:
        assert response.status == 401
        assert (await _error(response))["code"] == "session_expired"


async def test_login_sets_secure_httponly_strict_cookie(http: aiohttp.ClientSession) -> None:
    payload = {"email": PHYSICIAN.email, "password": "correct horse battery staple"}
    async with http.post("/api/login", json=payload) as response:
        assert response.status == 200
        cookie = response.cookies["relais_session"]
    assert cookie["secure"] and cookie["httponly"]
    assert cookie["samesite"] == "Strict"
    # The cookie alone authenticates the web pages' API calls.
    async with http.get("/api/me") as response:
        assert response.status == 200
        assert (await response.json())["email"] == PHYSICIAN.email


async def test_wrong_password_and_unknown_user_look_the_same(http: aiohttp.ClientSession) -> None:
    answers = []
    for email, password in (
        (OTHER_NURSE.email, "not the password at all"),
        ("nobody@relais.localhost", "not the password at all"),
    ):
        async with http.post("/api/login", json={"email": email, "password": password}) as r:
            assert r.status == 401
            answers.append(await _error(r))
    assert (
        answers[0]
        == answers[1]
        == {
            "code": "invalid_credentials",
            "message": "Adresse e-mail ou mot de passe incorrect.",
        }
    )


async def test_forged_token_is_refused(http: aiohttp.ClientSession) -> None:
    for headers in (bearer("forged-token"), bearer(""), {"Cookie": "relais_session=abc"}):
        async with http.get("/api/me", headers=headers) as response:
            assert response.status == 401
            assert (await _error(response))["code"] == "session_expired"


async def test_malformed_json_wrong_type_and_oversized_body(http: aiohttp.ClientSession) -> None:
    async with http.post(
        "/api/login", data=b'{"email": ', headers={"Content-Type": "application/json"}
    ) as response:
        assert response.status == 400
        error = await _error(response)
        assert error["code"] == "malformed_json"
        assert "ligne 1" in error["message"]
    async with http.post(
        "/api/login", data=b"email=a", headers={"Content-Type": "application/x-www-form-urlencoded"}
    ) as response:
        assert response.status == 415
    async with http.post("/api/login", json=["not", "an", "object"]) as response:
        assert response.status == 400
    async with http.post("/api/login", json={"email": "a@b.fr"}) as response:
        assert response.status == 400
        assert "password" in (await _error(response))["message"]
    huge = b'{"email": "' + b"a" * 2_000_000 + b'"}'
    async with http.post(
        "/api/login", data=huge, headers={"Content-Type": "application/json"}
    ) as response:
        assert response.status == 413
        assert (await _error(response))["code"] == "payload_too_large"


async def test_unknown_route_and_method_are_json_errors(http: aiohttp.ClientSession) -> None:
    async with http.get("/api/nothing-here") as response:
        assert response.status == 404
        assert (await _error(response))["code"] == "not_found"
    async with http.delete("/api/me") as response:
        assert response.status == 405


async def test_directory_search(http: aiohttp.ClientSession) -> None:
    token = await login(http, NURSE.email)
    async with http.get("/api/directory", params={"q": "dermato"}, headers=bearer(token)) as r:
        body = await r.json()
        assert r.status == 200
    assert [p["address"] for p in body["professionals"]] == [SPECIALIST.email]
    assert [t["address"] for t in body["teams"]] == ["dermato-cpts@relais.localhost"]
    assert body["teams"][0]["members"] == 1
    async with http.get("/api/directory", params={"q": "%"}, headers=bearer(token)) as r:
        assert r.status == 400  # too short: one character
    async with http.get("/api/directory", params={"q": "%%"}, headers=bearer(token)) as r:
        assert (await r.json()) == {"professionals": [], "teams": []}  # wildcards are literal
    http.cookie_jar.clear()  # login() set the session cookie too
    async with http.get("/api/directory", params={"q": "dermato"}) as r:
        assert r.status == 401


async def test_security_headers(http: aiohttp.ClientSession) -> None:
    async with http.get("/") as response:
        assert response.status == 200
        assert "default-src 'self'" in response.headers["Content-Security-Policy"]
        assert response.headers["Strict-Transport-Security"].startswith("max-age=")
        assert response.headers["X-Frame-Options"] == "DENY"


async def test_metrics_count_requests_by_route_template(http: aiohttp.ClientSession) -> None:
    async with http.get("/api/files/some-file-id") as response:
        assert response.status == 401
    async with http.get("/metrics") as response:
        text = await response.text()
    assert 'relais_http_requests_total{method="GET",route="/api/files/{id}",status="401"}' in text
    assert "some-file-id" not in text
    assert "relais_event_loop_lag_seconds" in text
    assert "relais_http_request_duration_seconds_bucket" in text


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
async def test_tls_below_1_2_is_refused(relay: RelayProcess) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("ALL:@SECLEVEL=0")
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", relay.port, ssl=context), 10
        )
    except (ssl.SSLError, ConnectionResetError, OSError):
        pass
    else:
        writer.close()
        raise AssertionError("a TLS 1.1 handshake succeeded")
    # TLS 1.2 exactly is accepted.
    context12 = relay.ssl_context()
    context12.maximum_version = ssl.TLSVersion.TLSv1_2
    _, writer = await asyncio.open_connection("localhost", relay.port, ssl=context12)
    assert writer.get_extra_info("ssl_object").version() == "TLSv1.2"
    writer.close()


def test_plain_http_to_https_port_gets_no_http_answer(relay: RelayProcess) -> None:
    with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        try:
            data = sock.recv(1024)
        except ConnectionResetError:
            data = b""
    assert not data.startswith(b"HTTP/")


def test_the_server_tunes_the_collector_and_thread_switching() -> None:
    from relay.http.server import (
        GC_THRESHOLDS,
        SWITCH_INTERVAL_SECONDS,
        tune_gc,
        tune_thread_switching,
    )

    interval, thresholds = sys.getswitchinterval(), gc.get_threshold()
    try:
        tune_gc()
        tune_thread_switching()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL_SECONDS)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        sys.setswitchinterval(interval)
