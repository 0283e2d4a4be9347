"""Fixtures shared by the storage tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import redis_server


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of one throw-away Redis serving the whole test run (free loopback port, tmp dir).

    Tests sharing it keep apart by using a unique key prefix each. Tests that kill or freeze
    Redis start their own server with :func:`tests.harness.redis_server` instead.
    """
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server.url
