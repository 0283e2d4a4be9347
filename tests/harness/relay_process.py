"""Start the real relay (``relais serve``) as a subprocess for end-to-end tests.

Each relay gets its own data directory, a free loopback port, and cheap Argon2
parameters (the production cost is pointless in tests and would slow every login).
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness.redis_server import free_port

FAST_ENV = {
    "RELAIS_ACCOUNTS_ARGON2_MEMORY_KIB": "8192",
    "RELAIS_ACCOUNTS_ARGON2_TIME_COST": "1",
    "RELAIS_ACCOUNTS_ARGON2_PARALLELISM": "1",
}
ADMIN_PASSWORD = "admin-password-for-tests"


def relais(
    data_dir: Path, *args: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run one ``relais`` command to completion."""
    full_env = {**_base_env(), **(env or {})}
    result = subprocess.run(
        [sys.executable, "-m", "relay", "--data-dir", str(data_dir), *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"relais {' '.join(args)} failed ({result.returncode}):\n"
            f"{result.stdout}\n{result.stderr}"
        )
    return result


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAIS_")}
    env.update(FAST_ENV)
    return env


@dataclass
class RelayProcess:
    """A running ``relais serve``; ``url`` is its HTTPS base URL."""

    data_dir: Path
    port: int
    extra_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[str] | None = None
    log_path: Path | None = None
    # Every relay also listens for SMTP: a free port each, so that relays run side by side.
    smtp_port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    @property
    def ca_file(self) -> Path:
        return self.data_dir / "certs" / "ca.pem"

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    def start(self, timeout: float = 60.0) -> None:
        env = {
            **_base_env(),
            "RELAIS_SMTP_PORT": str(self.smtp_port),
            **self.extra_env,
            "RELAIS_HTTP_PORT": str(self.port),
        }
        self.log_path = self.data_dir.parent / f"relay-{self.port}.log"
        log = self.log_path.open("a")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "relay", "--data-dir", str(self.data_dir), "serve"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"relay exited with {self.process.returncode}:\n{self.log()}")
            if self._healthy():
                return
            time.sleep(0.1)
        raise AssertionError(f"relay did not become healthy in {timeout}s:\n{self.log()}")

    def _healthy(self) -> bool:
        import http.client

        try:
            conn = http.client.HTTPSConnection(
                "localhost", self.port, context=self.ssl_context(), timeout=2
            )
            conn.request("GET", "/healthz")
            ok = conn.getresponse().status == 200
            conn.close()
            return ok
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``sig`` and wait for the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)


def init_data_dir(root: Path, domain: str = "relais.localhost") -> Path:
    """``relais init`` into ``root/data`` with a known admin password."""
    data_dir = root / "data"
    password_file = root / "admin-password"
    password_file.write_text(ADMIN_PASSWORD)
    relais(data_dir, "init", "--domain", domain, "--admin-password-file", str(password_file))
    return data_dir


def start_relay(root: Path, extra_env: dict[str, str] | None = None) -> RelayProcess:
    data_dir = root / "data"
    if not data_dir.exists():
        init_data_dir(root)
    relay = RelayProcess(data_dir, free_port(), extra_env or {})
    relay.start()
    return relay
