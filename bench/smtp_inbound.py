"""Inbound SMTP accept rate: the relay's gateway against a bare aiosmtpd handler.

Issue 4 target: 20 KB messages over 20 concurrent connections, each durably stored before
its ``250``, at >= 0.7 of the rate of a bare aiosmtpd handler that only writes and fsyncs the
raw bytes, measured in the same run with the same client.

* baseline: an aiosmtpd server (its own process, STARTTLS with the same kind of certificate)
  whose ``handle_DATA`` writes the message to a new file, fsyncs it and answers ``250``;
* measured: ``relais serve`` (its own process) — STARTTLS, recipient lookup, the parse under
  limits in the worker processes, the audit record, then one SQL transaction (group commit)
  holding the message and its encrypted content document (the 4 KB attachment travels
  inside it) — before each ``250``.

Both servers are driven by the same asyncio client here: 20 connections, each sending its
share of the messages one after the other over one SMTP session (as an MTA does), STARTTLS
once per connection. The files go to ``$TMPDIR``: point it at the data disk to measure it.

Run: ``python -m bench.smtp_inbound`` (``--messages N`` to change the count). On Linux the run
also prints where the CPU goes: per message, each server process (the relay's own, and its
parser worker processes) and the client, read from ``/proc`` around the measured sending.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path

import aiosmtplib

from bench.run import Result, format_table

CONNECTIONS = 20
MESSAGE_BYTES = 20 * 1024
RATIO_TARGET = 0.7
RECIPIENT = "dr.bench@relais.localhost"
SENDER = "dr.expediteur@hopital.example"
BASELINE = "bare aiosmtpd, write+fsync"
FAST_ENV = {
    "RELAIS_ACCOUNTS_ARGON2_MEMORY_KIB": "8192",
    "RELAIS_ACCOUNTS_ARGON2_TIME_COST": "1",
    "RELAIS_ACCOUNTS_ARGON2_PARALLELISM": "1",
}
PASSWORD = "bench password for relais"  # noqa: S105 - a throw-away test account
ADMIN_PASSWORD = "admin password for bench"  # noqa: S105 - a throw-away test account


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def relais(data_dir: Path, *args: str) -> None:
    """Run one ``relais`` command (``python -m relay``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAIS_")} | FAST_ENV
    subprocess.run(
        [sys.executable, "-m", "relay", "--data-dir", str(data_dir), *args],
        env=env,
        check=True,
        capture_output=True,
    )


@contextmanager
def running_relay(
    root: Path,
    env: dict[str, str] | None = None,
    *,
    admin_password: str = ADMIN_PASSWORD,
    started: list[int] | None = None,
) -> Iterator[tuple[Path, int, int]]:
    """``relais serve`` with one user (``RECIPIENT``); yields (data dir, https port, smtp port).
    The server's pid is appended to ``started`` when given."""
    data_dir = root / "data"
    (root / "admin-pw").write_text(admin_password)
    relais(data_dir, "init", "--admin-password-file", str(root / "admin-pw"))
    (root / "pw").write_text(PASSWORD)
    relais(
        data_dir, "user", "add", "--email", RECIPIENT, "--role", "physician",
        "--name", "Dr Bench", "--password-file", str(root / "pw"),
    )  # fmt: skip
    https, smtp = free_port(), free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("RELAIS_")}
    full_env |= FAST_ENV | (env or {})
    full_env |= {"RELAIS_HTTP_PORT": str(https), "RELAIS_SMTP_PORT": str(smtp)}
    process = subprocess.Popen(
        [sys.executable, "-m", "relay", "--data-dir", str(data_dir), "serve"],
        env=full_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if started is not None:
        started.append(process.pid)
    try:
        wait_for_port(https, process)
        wait_for_port(smtp, process)
        yield data_dir, https, smtp
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- the bare baseline server ------------------------------------------------------------------


def baseline_server(port: int, directory: Path, cert: Path, key: Path) -> None:
    """Serve SMTP with STARTTLS; each message written to its own file and fsynced."""
    from aiosmtpd.smtp import SMTP

    from certs.tls import server_ssl_context

    context = server_ssl_context(cert, key)
    counter = iter(range(1 << 62))

    class Handler:
        async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
            data: bytes = envelope.original_content  # type: ignore[attr-defined]
            path = directory / f"{next(counter)}.eml"
            await asyncio.to_thread(_write_fsync, path, data)
            return "250 OK"

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SMTP(Handler(), tls_context=context, require_starttls=True, loop=loop),
            "127.0.0.1",
            port,
        )
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


def _write_fsync(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def running_baseline(
    root: Path, cert: Path, key: Path, started: list[int] | None = None
) -> Iterator[int]:
    port = free_port()
    spool = root / "spool"
    spool.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.smtp_inbound", "--baseline-server", str(port),
         str(spool), str(cert), str(key)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    if started is not None:
        started.append(process.pid)
    try:
        wait_for_port(port, process)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


# --- the client --------------------------------------------------------------------------------


def make_messages(count: int) -> list[bytes]:
    """``count`` distinct messages of about 20 KB (text and a small attachment)."""
    messages = []
    line = "Compte rendu de consultation : évolution favorable, pansement à refaire.\n"
    text = line * ((MESSAGE_BYTES - 6000) // len(line))
    attachment = os.urandom(4000)
    for n in range(count):
        message = EmailMessage()
        message["From"] = SENDER
        message["To"] = RECIPIENT
        message["Subject"] = f"Bench {n}"
        message["Message-ID"] = f"<bench.{n}.{os.getpid()}@hopital.example>"
        message.set_content(text)
        message.add_attachment(attachment, maintype="application", subtype="pdf", filename="cr.pdf")
        messages.append(message.as_bytes(policy=SMTP_POLICY))
    return messages


async def drive(port: int, messages: Sequence[bytes], tls: ssl.SSLContext) -> float:
    """Messages/s acknowledged with 250 over ``CONNECTIONS`` sessions."""
    pending = iter(messages)

    async def connection() -> None:
        client = aiosmtplib.SMTP(
            hostname="localhost", port=port, start_tls=True, tls_context=tls, timeout=120
        )
        async with client:
            for raw in pending:
                await client.sendmail(SENDER, [RECIPIENT], raw)

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(CONNECTIONS)))
    return len(messages) / (time.perf_counter() - started)


# --- where the CPU goes (Linux) --------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of one process (all its threads), 0 when gone or not on Linux."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found += [child, *_descendants(child)]
    return found


def _thread_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process's main thread (the event loop), 0 when unknown."""
    try:
        fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_snapshot(server: int) -> tuple[float, float, float, float]:
    """CPU seconds so far of (the server process, its descendants, this client process, the
    server's event-loop thread)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    workers = sum(_cpu_seconds(pid) for pid in _descendants(server))
    return _cpu_seconds(server), workers, own.ru_utime + own.ru_stime, _thread_cpu_seconds(server)


def drive_measured(
    port: int, messages: Sequence[bytes], tls: ssl.SSLContext, server: int, name: str
) -> dict[str, float]:
    """``drive`` (after a warm-up of 50 messages), with the CPU per message of each side."""
    warm_up, measured = messages[:50], messages[50:]
    asyncio.run(drive(port, warm_up, tls))
    before = _cpu_snapshot(server)
    rate = asyncio.run(drive(port, measured, tls))
    after = _cpu_snapshot(server)
    per_message = [(b - a) * 1000 / len(measured) for a, b in zip(before, after, strict=True)]
    return {
        name: rate,
        f"{name}_server_ms": per_message[0],
        f"{name}_workers_ms": per_message[1],
        f"{name}_client_ms": per_message[2],
        f"{name}_loop_ms": per_message[3],
    }


def stage_means(https_port: int, tls: ssl.SSLContext) -> dict[str, float]:
    """Mean time per inbound mail in each step, from the relay's own histograms
    (``relais_smtp_stage_duration_seconds`` on /metrics), in ms."""
    import urllib.request

    from relay.mail.smtp_server import STAGES

    url = f"https://localhost:{https_port}/metrics"
    with urllib.request.urlopen(url, context=tls, timeout=10) as response:
        text = response.read().decode()
    totals: dict[str, float] = {}
    for line in text.splitlines():
        for part in ("sum", "count"):
            prefix = f"relais_smtp_stage_duration_seconds_{part}{{stage="
            if line.startswith(prefix):
                stage = line[len(prefix) :].split('"')[1]
                totals[f"{stage}_{part}"] = float(line.split()[-1])
    return {
        f"stage_{stage}_ms": 1000 * totals[f"{stage}_sum"] / totals[f"{stage}_count"]
        for stage in STAGES
        if totals.get(f"{stage}_count")
    }


def measure(count: int = 1000) -> dict[str, float]:
    """Baseline, relay, baseline again; the figures (rates, and CPU ms per message)."""
    from certs.ca import create_ca
    from certs.issue import issue_server_certificate
    from certs.tls import client_ssl_context

    messages = make_messages(count + 50)
    figures: dict[str, float] = {"messages": float(count), "bytes": float(len(messages[0]))}
    with tempfile.TemporaryDirectory(prefix="bench-smtp-") as tmp:
        root = Path(tmp)
        ca = create_ca("Bench CA", datetime.now(UTC))
        ca.to_pem_files(root / "ca.pem", root / "ca.key")
        issue_server_certificate(ca, ["localhost"], datetime.now(UTC)).to_pem_files(
            root / "server.pem", root / "server.key"
        )
        tls = client_ssl_context([root / "ca.pem"])
        baselines: list[dict[str, float]] = []
        for attempt in range(2):
            (root / f"b{attempt}").mkdir()
            started: list[int] = []
            with running_baseline(
                root / f"b{attempt}", root / "server.pem", root / "server.key", started
            ) as port:
                baselines.append(drive_measured(port, messages, tls, started[0], "baseline"))
            if attempt == 0:
                relay_root = root / "relay"
                relay_root.mkdir()
                started = []
                with running_relay(relay_root, started=started) as (data_dir, https, smtp):
                    relay_tls = client_ssl_context([data_dir / "certs" / "ca.pem"])
                    figures |= drive_measured(smtp, messages, relay_tls, started[0], "relay")
                    figures |= stage_means(https, relay_tls)
        for key in baselines[0]:
            figures[key] = sum(b[key] for b in baselines) / len(baselines)
    return figures


def results(figures: dict[str, float]) -> list[Result]:
    """The figures as :class:`bench.run.Result` rows."""
    return [
        Result(
            f"20 KB messages, {CONNECTIONS} connections, stored",
            figures["relay"],
            figures["baseline"],
            "msg/s",
            BASELINE,
            target=RATIO_TARGET,
        )
    ]


def main() -> list[Result]:
    """The run for ``python -m bench.run`` (about 20 s)."""
    return results(measure())


def cli(argv: Sequence[str]) -> None:
    """``python -m bench.smtp_inbound [--messages N]``."""
    if argv[:1] == ["--baseline-server"]:
        port, spool, cert, key = argv[1:5]
        baseline_server(int(port), Path(spool), Path(cert), Path(key))
        return
    parser = argparse.ArgumentParser(prog="python -m bench.smtp_inbound")
    parser.add_argument("--messages", type=int, default=1000, help="messages (default 1000)")
    args = parser.parse_args(list(argv))
    figures = measure(args.messages)
    print(f"smtp inbound: {figures['messages']:,.0f} messages of {figures['bytes']:,.0f} B")
    print(format_table([("smtp_inbound", r) for r in results(figures)]))
    print(
        "CPU per message (ms): server process (of which its event-loop thread),"
        " its worker processes, client"
    )
    for name in ("baseline", "relay"):
        print(
            f"  {name:8s}  server {figures[f'{name}_server_ms']:5.2f}"
            f" (loop {figures[f'{name}_loop_ms']:5.2f})"
            f"  workers {figures[f'{name}_workers_ms']:5.2f}"
            f"  client {figures[f'{name}_client_ms']:5.2f}"
        )
    from relay.mail.smtp_server import STAGES

    cycle = CONNECTIONS * 1000 / figures["relay"]
    steps = "  ".join(
        f"{stage} {figures[f'stage_{stage}_ms']:.1f}"
        for stage in STAGES
        if f"stage_{stage}_ms" in figures
    )
    print(f"relay, mean ms per mail and connection: whole cycle {cycle:.1f}; {steps}")
    print("  (audit is inside store; the rest of the cycle is the protocol, TLS and the client)")


if __name__ == "__main__":
    cli(sys.argv[1:])
