"""A real SMTP server for outbound tests: aiosmtpd with STARTTLS required, on a loopback port,
recording what it receives; it can refuse chosen recipients with a permanent error."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from certs.ca import create_ca
from certs.issue import issue_server_certificate
from certs.tls import server_ssl_context


@dataclass(frozen=True)
class Received:
    """One mail as the sink got it."""

    sender: str
    recipients: tuple[str, ...]
    content: bytes


@dataclass
class SinkHandler:
    """Stores every accepted mail; answers 550 5.1.1 for the addresses in ``refuse``."""

    refuse: set[str] = field(default_factory=set)
    received: list[Received] = field(default_factory=list)
    tls_seen: list[bool] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(  # aiosmtpd hook
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address.lower() in self.refuse:
            return "550 5.1.1 <" + address + ">: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # aiosmtpd hook
        with self.lock:
            self.tls_seen.append(session.ssl is not None)
            self.received.append(
                Received(envelope.mail_from, tuple(envelope.rcpt_tos), envelope.original_content)
            )
        return "250 2.0.0 Queued"

    def snapshot(self) -> list[Received]:
        with self.lock:
            return list(self.received)


class SmtpSink:
    """The sink server; :meth:`start`/:meth:`stop` can be called repeatedly (down, then up)."""

    def __init__(self, directory: Path, port: int) -> None:
        now = datetime.now(UTC)
        ca = create_ca("AC du smarthost de test", now)
        server = issue_server_certificate(ca, ["localhost"], now)
        self.ca_file = directory / "sink-ca.pem"
        ca.to_pem_files(self.ca_file, directory / "sink-ca.key")
        server.to_pem_files(directory / "sink.pem", directory / "sink.key")
        self._tls = server_ssl_context(directory / "sink.pem", directory / "sink.key")
        self.port = port
        self.handler = SinkHandler()
        self._controller: Controller | None = None

    def start(self) -> None:
        self._controller = Controller(
            self.handler,
            hostname="127.0.0.1",
            port=self.port,
            tls_context=self._tls,
            require_starttls=True,
            ready_timeout=10,
        )
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
