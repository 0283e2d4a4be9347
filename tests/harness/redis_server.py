"""Start a real, throw-away ``redis-server`` for tests.

Each server listens on a free loopback port, keeps its (empty) working directory in a temp
dir, persists nothing (``--save ""``, ``--appendonly no``) and is stopped when its context
manager exits. Tests never touch a Redis on the standard port 6379.

Typical use::

    with redis_server() as server:
        bus = RedisBus(server.url)
        ...
        server.kill()  # simulate a crash mid-test
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
LOOPBACK = "127.0.0.1"


class RedisServerError(RuntimeError):
    """``redis-server`` could not be started (missing binary, port race lost too often)."""


def free_port() -> int:
    """Return a TCP port that was free on the loopback interface a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def ping(port: int, *, timeout: float = 0.5) -> bool:
    """Whether a Redis on ``port`` answers ``PING`` with ``+PONG`` within ``timeout``."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass(frozen=True)
class RedisServer:
    """A running ``redis-server`` child process."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        """``redis://`` URL of database 0 on this server."""
        return f"redis://{LOOPBACK}:{self.port}/0"

    @property
    def log(self) -> str:
        """The server's log so far (useful in assertion messages)."""
        return (self.directory / "redis.log").read_text(errors="replace")

    def kill(self) -> None:
        """Crash the server (SIGKILL): clients see their connections reset."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)

    def freeze(self) -> None:
        """Stop the process (SIGSTOP): the port still accepts connections, nothing answers."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """Resume a server stopped by :meth:`freeze`."""
        with contextlib.suppress(ProcessLookupError):  # it may have exited meanwhile
            os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        """Shut the server down (SIGTERM, then SIGKILL if it lingers)."""
        if self.process.poll() is not None:
            return
        self.thaw()  # a stopped process would never handle SIGTERM
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


def start_redis_server(
    directory: Path, *, port: int | None = None, timeout: float = 10.0, attempts: int = 5
) -> RedisServer:
    """Start ``redis-server`` in ``directory`` and wait until it answers ``PING``.

    Without ``port`` a free one is picked before the server binds it, so another process may
    take it in between; the start is then retried on a new port (up to ``attempts`` times).
    Give ``port`` to restart a server where its clients expect it (after :meth:`kill`).
    """
    if not Path(REDIS_SERVER).exists():
        raise RedisServerError(f"{REDIS_SERVER} not found: install the Debian package redis-server")
    for _ in range(attempts):
        listen = free_port() if port is None else port
        log = directory / "redis.log"
        argv = [
            REDIS_SERVER,
            "--port", str(listen),
            "--bind", LOOPBACK,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(directory),
            "--logfile", str(log),
            "--daemonize", "no",
        ]  # fmt: skip
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        server = RedisServer(port=listen, directory=directory, process=process)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process.poll() is None:
            if ping(listen):
                return server
            time.sleep(0.01)
        server.stop()
    raise RedisServerError(f"redis-server did not start after {attempts} attempts")


@contextlib.contextmanager
def redis_server(
    directory: Path | None = None, *, port: int | None = None, timeout: float = 10.0
) -> Iterator[RedisServer]:
    """Run a throw-away ``redis-server`` for the duration of the ``with`` block.

    Without ``directory`` a temporary directory is created and removed afterwards.
    """
    with contextlib.ExitStack() as stack:
        if directory is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="redis-")))
        server = start_redis_server(directory, port=port, timeout=timeout)
        stack.callback(server.stop)
        yield server
