"""Fixtures shared by the whole run: one relay subprocess, one Chromium."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.harness.accounts import ADMIN, PASSWORD, seed
from tests.harness.relay_process import ADMIN_PASSWORD, RelayProcess, init_data_dir, start_relay

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run browser tests last.

    Playwright's sync API leaves its event loop marked as running on the main thread for
    as long as the shared browser lives, which would break every asyncio test after it;
    grouping browser tests at the end lets one Chromium serve them all.
    """
    items.sort(key=lambda item: item.get_closest_marker("browser") is not None)


def require_component(path: str, package: str) -> None:
    """Skip locally when a system component is missing; in CI, fail instead."""
    if shutil.which(path) is None and not Path(path).exists():
        message = f"{path} not found (Debian package {package}); run scripts/test.sh"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of one throw-away Redis serving the whole test run (free loopback port, tmp dir).

    Tests sharing it keep apart by using a unique key prefix each. Tests that kill or freeze
    Redis start their own server with :func:`tests.harness.redis_server` instead.
    """
    from tests.harness import redis_server

    require_component("/usr/bin/redis-server", "redis-server")
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture(scope="session")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    """The relay, started once for the run, with the standard accounts of harness.accounts."""
    root = tmp_path_factory.mktemp("relay")
    data_dir = init_data_dir(root)
    seed(data_dir, root)
    # Many tests fail logins on purpose from 127.0.0.1: the per-address limit is
    # tested on a relay of its own (test_login_limits).
    process = start_relay(root, {"RELAIS_ACCOUNTS_LOGIN_MAX_FAILURES_PER_ADDRESS": "100000"})
    yield process
    process.stop()


@pytest.fixture
async def http(relay: RelayProcess) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTPS client that trusts the relay's local CA (no session)."""
    connector = aiohttp.TCPConnector(ssl=relay.ssl_context())
    async with aiohttp.ClientSession(base_url=relay.url, connector=connector) as session:
        yield session


async def login(http: aiohttp.ClientSession, email: str, password: str | None = None) -> str:
    """Log in through the API and return the bearer token."""
    if password is None:
        password = ADMIN_PASSWORD if email == ADMIN.email else PASSWORD
    async with http.post("/api/login", json={"email": email, "password": password}) as response:
        body: dict[str, Any] = await response.json()
        assert response.status == 200, body
        token: str = body["token"]
        return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless Chromium for the whole run; each test opens its own context."""
    from tests.harness.browser import CHROMIUM, CHROMIUM_ARGS

    require_component(CHROMIUM, "chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield instance
        instance.close()


async def metric(http: aiohttp.ClientSession, sample: str) -> float:
    """One sample of the relay's /metrics (``name`` or ``name{labels}``), 0 when absent."""
    async with http.get("/metrics") as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0
