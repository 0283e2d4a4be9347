"""Helpers that start real components (Redis, ...) for tests on free loopback ports."""

from tests.harness.redis_server import (
    RedisServer,
    RedisServerError,
    free_port,
    ping,
    redis_server,
    start_redis_server,
)

__all__ = [
    "RedisServer",
    "RedisServerError",
    "free_port",
    "ping",
    "redis_server",
    "start_redis_server",
]
