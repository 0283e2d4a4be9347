"""Start a real coturn ``turnserver`` (Debian package ``coturn``) for tests.

It listens on a free loopback port (UDP and TCP), authenticates with the TURN REST scheme
(``--use-auth-secret``), keeps its SQLite file and log in a temporary directory, reads no
configuration file (``-n``) and opens no CLI/TLS/DTLS listener. Readiness is checked with a
STUN Binding request (RFC 8489 §6), not by parsing the log.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REALM = "relais.test"
_MAGIC_COOKIE = 0x2112A442


@dataclass(frozen=True)
class CoturnServer:
    """A running turnserver."""

    host: str
    port: int
    secret: str
    realm: str
    log_path: Path
    process: subprocess.Popen[bytes]

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def turn_urls(self) -> tuple[str, ...]:
        return (
            f"turn:{self.host}:{self.port}?transport=udp",
            f"turn:{self.host}:{self.port}?transport=tcp",
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _free_port(host: str) -> int:
    """A port free for both UDP and TCP on ``host`` (TURN listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port: int = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free UDP+TCP port")


def _stun_binding_answers(host: str, port: int, timeout: float) -> bool:
    transaction_id = os.urandom(12)
    request = struct.pack("!HHI", 0x0001, 0, _MAGIC_COOKIE) + transaction_id
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(request, (host, port))
        try:
            data = sock.recv(2048)
        except OSError:
            return False
    # Binding success response (0x0101) echoing our transaction id.
    return len(data) >= 20 and data[:2] == b"\x01\x01" and data[8:20] == transaction_id


def turnserver_path() -> str:
    """Path of ``turnserver``; a clear failure when the package is missing."""
    path = shutil.which("turnserver") or (
        "/usr/bin/turnserver" if Path("/usr/bin/turnserver").exists() else None
    )
    if path is None:
        raise RuntimeError("turnserver not found: install the Debian package 'coturn'")
    return path


def start_coturn(workdir: Path, secret: str, *, ready_timeout: float = 10.0) -> CoturnServer:
    """Start turnserver in ``workdir`` and wait until it answers STUN."""
    host = "127.0.0.1"
    port = _free_port(host)
    log_path = workdir / "turnserver.log"
    argv = [
        turnserver_path(),
        "-n",  # no configuration file: /etc/turnserver.conf must not leak in
        f"--listening-ip={host}",
        f"--listening-port={port}",
        f"--relay-ip={host}",
        "--use-auth-secret",
        f"--static-auth-secret={secret}",
        f"--realm={REALM}",
        f"--userdb={workdir / 'turndb'}",
        f"--pidfile={workdir / 'turnserver.pid'}",
        "--no-cli",
        "--no-tls",
        "--no-dtls",
        "--log-file=stdout",
        "--simple-log",
        "--allow-loopback-peers",  # the test's echo peer lives on 127.0.0.1
        "--no-software-attribute",
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = CoturnServer(host, port, secret, REALM, log_path, process)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"turnserver exited with {process.returncode}:\n{server.log()}")
        if _stun_binding_answers(host, port, timeout=0.2):
            return server
    stop_coturn(server)
    raise RuntimeError(f"turnserver did not answer STUN within {ready_timeout}s:\n{server.log()}")


def stop_coturn(server: CoturnServer) -> None:
    """Stop the server we started (by its own pid, never by name)."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=5)


@contextlib.contextmanager
def running_coturn(workdir: Path, secret: str) -> Iterator[CoturnServer]:
    """``with running_coturn(tmp, secret) as server: ...``"""
    server = start_coturn(workdir, secret)
    try:
        yield server
    finally:
        stop_coturn(server)
