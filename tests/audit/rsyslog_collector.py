"""Start a real, throw-away ``rsyslogd`` as an RFC 5425 (syslog over TLS) collector for tests.

Debian packages: ``rsyslog`` and ``rsyslog-openssl`` (the ``ossl`` network stream driver).

The daemon runs in the foreground (``-n``) with only the configuration written here (``-f``),
its own pid file (``-i``) and work directory, so it never meets the system's rsyslog: no
imuxsock (no ``/dev/log``), no imklog, nothing under ``/var``. It listens with imtcp on a free
loopback port, TLS only (``StreamDriver.Mode="1"``, ``AuthMode="anon"``: it presents its
certificate and asks none of the client), accepts octet-counted framing (RFC 5425 §4.3, imtcp's
default) and messages up to 64 KiB (an AuditMessage can exceed rsyslog's 8 KiB default).

Every message received is written as one JSON line: the raw message as received plus the
fields rsyslog's own RFC 5424 parser found, so tests can check both what was sent and how a
real collector understood it. Typical use::

    collector = start_rsyslog_collector(tmp_path, cert_path, key_path)
    ...
    collector.freeze()                        # SIGSTOP: connected, reads nothing
    collector.kill()                          # collector crash
    collector = collector.restart()           # same port, same output file
    messages = collector.received()
    collector.stop()
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
# The ossl stream driver (package rsyslog-openssl), under the multiarch library directory.
OSSL_DRIVER = next(
    (str(path) for path in sorted(Path("/usr/lib").glob("*/rsyslog/lmnsd_ossl.so"))),
    "/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_ossl.so",
)
LOOPBACK = "127.0.0.1"
LOOPBACK_HEX = "0100007F"  # 127.0.0.1 as /proc/net/tcp prints it (little-endian)
DEBIAN_PACKAGES = ("rsyslog", "rsyslog-openssl")


class RsyslogError(RuntimeError):
    """``rsyslogd`` could not be started."""


@dataclass(frozen=True)
class ReceivedMessage:
    """One message as the collector stored it."""

    raw: bytes  # the RFC 5424 message as received (framing removed by imtcp)
    pri: int
    version: str
    hostname: str
    app_name: str
    msgid: str
    structured_data: str
    timestamp: str  # TIMESTAMP as rsyslog parsed it, RFC 3339
    msg: bytes


def free_port() -> int:
    """A TCP port that was free on the loopback interface a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _listening(process: subprocess.Popen[bytes], port: int) -> bool:
    """Whether ``process`` itself listens on ``port`` (not another program that took it).

    Reads /proc instead of connecting: a probe connection would make rsyslog log a failed
    TLS handshake.
    """
    wanted = f"{LOOPBACK_HEX}:{port:04X}"
    rows = (line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:])
    inodes = {f"socket:[{row[9]}]" for row in rows if row[1] == wanted and row[3] == "0A"}
    if not inodes:
        return False
    try:
        descriptors = list(Path(f"/proc/{process.pid}/fd").iterdir())
        return any(str(fd.readlink()) in inodes for fd in descriptors)
    except OSError:  # the process exited meanwhile
        return False


def _thread_states(pid: int) -> list[str]:
    """proc(5) state letter of each thread of ``pid`` ("T": stopped by a signal)."""
    states = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread may exit meanwhile
            # The state follows the parenthesised command name, which may contain spaces.
            states.append(task.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0])
    return states


def _config(directory: Path, port: int, cert_path: Path, key_path: Path, ca_path: Path) -> str:
    return f"""
global(
  workDirectory="{directory / "work"}"
  maxMessageSize="64k"
  net.enableDNS="off"
  processInternalMessages="on"
  parser.escapeControlCharactersOnReceive="off"
  defaultNetstreamDriverCAFile="{ca_path}"
  defaultNetstreamDriverCertFile="{cert_path}"
  defaultNetstreamDriverKeyFile="{key_path}"
)
module(load="imtcp"
  streamDriver.name="ossl"
  streamDriver.mode="1"
  streamDriver.authMode="anon"
)
template(name="received" type="list" option.jsonf="on") {{
  property(outname="raw" name="rawmsg" format="jsonf")
  property(outname="pri" name="pri" format="jsonf")
  property(outname="version" name="protocol-version" format="jsonf")
  property(outname="hostname" name="hostname" format="jsonf")
  property(outname="app_name" name="app-name" format="jsonf")
  property(outname="msgid" name="msgid" format="jsonf")
  property(outname="structured_data" name="structured-data" format="jsonf")
  property(outname="timestamp" name="timereported" dateFormat="rfc3339" format="jsonf")
  property(outname="msg" name="msg" format="jsonf")
}}
ruleset(name="collect") {{
  action(type="omfile" file="{directory / "received.jsonl"}" template="received"
         flushOnTXEnd="on" asyncWriting="off")
}}
input(type="imtcp" port="{port}" address="{LOOPBACK}" ruleset="collect")
"""


@dataclass(frozen=True)
class RsyslogCollector:
    """A running ``rsyslogd`` child process."""

    port: int
    directory: Path
    cert_path: Path
    key_path: Path
    ca_path: Path
    process: subprocess.Popen[bytes]

    @property
    def output(self) -> Path:
        """The JSON-lines file of received messages (kept across restarts)."""
        return self.directory / "received.jsonl"

    @property
    def log(self) -> str:
        """rsyslogd's own messages (stderr), for assertion messages."""
        path = self.directory / "rsyslogd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def received(self) -> list[ReceivedMessage]:
        """Every message written so far, in arrival order (a partial last line is ignored)."""
        if not self.output.exists():
            return []
        messages = []
        for line in self.output.read_bytes().split(b"\n"):
            try:
                record: dict[str, Any] = json.loads(line)
            except ValueError:
                continue
            messages.append(
                ReceivedMessage(
                    raw=str(record["raw"]).encode("utf-8"),
                    pri=int(record["pri"]),
                    version=str(record["version"]),
                    hostname=str(record["hostname"]),
                    app_name=str(record["app_name"]),
                    msgid=str(record["msgid"]),
                    structured_data=str(record["structured_data"]),
                    timestamp=str(record["timestamp"]),
                    msg=str(record["msg"]).encode("utf-8"),
                )
            )
        return messages

    def freeze(self) -> None:
        """Stop the process (SIGSTOP): its kernel still accepts and ACKs data, nobody reads.

        Returns once every thread is stopped (signal delivery is asynchronous), so nothing
        is written to :attr:`output` after this returns.
        """
        os.kill(self.process.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 5.0
        while not all(state in "tT" for state in _thread_states(self.process.pid)):
            if time.monotonic() > deadline:
                raise RsyslogError("rsyslogd did not stop on SIGSTOP")
            time.sleep(0.005)

    def thaw(self) -> None:
        """Resume a collector stopped by :meth:`freeze`."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGCONT)

    def kill(self) -> None:
        """Crash the collector (SIGKILL): the kernel resets its connections."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> None:
        """Shut the collector down (SIGTERM, then SIGKILL if it lingers)."""
        if self.process.poll() is not None:
            return
        self.thaw()  # a stopped process would never handle SIGTERM
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)

    def restart(
        self, *, cert_path: Path | None = None, key_path: Path | None = None
    ) -> RsyslogCollector:
        """Stop if running, then start again on the same port and output file (optionally
        with another certificate)."""
        self.stop()
        return start_rsyslog_collector(
            self.directory,
            cert_path or self.cert_path,
            key_path or self.key_path,
            ca_path=self.ca_path,
            port=self.port,
        )


def start_rsyslog_collector(
    directory: Path,
    cert_path: Path,
    key_path: Path,
    *,
    ca_path: Path | None = None,
    port: int | None = None,
    timeout: float = 10.0,
    attempts: int = 5,
) -> RsyslogCollector:
    """Start ``rsyslogd`` in ``directory`` and wait until it listens.

    ``ca_path`` defaults to ``cert_path`` (the ossl driver wants a CA file even when it does
    not check clients). Without ``port`` a free one is picked and the start retried on another
    port if it was taken meanwhile; give ``port`` to restart where the forwarder expects it.
    """
    if not Path(RSYSLOGD).exists():
        raise RsyslogError(f"{RSYSLOGD} not found: install {' and '.join(DEBIAN_PACKAGES)}")
    (directory / "work").mkdir(parents=True, exist_ok=True)
    ca = ca_path or cert_path
    for _ in range(attempts if port is None else 1):
        listen = free_port() if port is None else port
        config = directory / "rsyslog.conf"
        config.write_text(_config(directory, listen, cert_path, key_path, ca))
        argv = [RSYSLOGD, "-n", "-f", str(config), "-i", str(directory / "rsyslogd.pid")]
        with (directory / "rsyslogd.log").open("ab") as stderr:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, cwd=directory
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process.poll() is None:
            if _listening(process, listen):
                return RsyslogCollector(listen, directory, cert_path, key_path, ca, process)
            time.sleep(0.02)
        process.kill()
        process.wait(timeout=5)
    log = (directory / "rsyslogd.log").read_text(errors="replace")
    raise RsyslogError(f"rsyslogd did not listen on {LOOPBACK}:{port or 'a free port'}:\n{log}")
