"""Start and stop the mail gateway next to the HTTPS site: the inbound SMTP listener, its
parser processes and the outbound queue's worker. It wires; it decides nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from datetime import datetime
from pathlib import Path

from certs.ca import CertifiedKey
from certs.issue import issue_client_certificate
from certs.tls import client_ssl_context, server_ssl_context
from relay.datadir import DataDir
from relay.mail.limits import MailLimits
from relay.mail.outbox import (
    DeliveryFailure,
    DirectoryTransport,
    OutboxQueue,
    OutboxRow,
    OutboxWorker,
    SmarthostTransport,
    Transport,
)
from relay.mail.parser_pool import ParserPool
from relay.mail.smtp_server import InboundHandler, RelaySMTP
from relay.messaging.inbound import SenderPolicy
from relay.messaging.model import DeliveryState
from relay.runtime import Runtime

log = logging.getLogger("relais.mail")

SMIME_CERT = "smime.pem"
SMIME_KEY = "smime.key"
OUTBOX_DIR = "outbox"


def messaging_limits(max_message_bytes: int) -> MailLimits:
    """Limits for mail to the messaging: any file type (issue 4: "attachments of any type");
    the parser still refuses programs whose bytes say they are executables (PE, ELF)."""
    return MailLimits(
        max_message_bytes=max_message_bytes,
        forbidden_extensions=frozenset(),
        forbidden_content_types=frozenset(),
    )


def relay_smime_paths(data: DataDir, rt: Runtime) -> tuple[Path, Path]:
    """Where the relay's S/MIME certificate and key are (configured, or under certs/)."""
    smtp = rt.config.smtp
    cert = data.resolve(smtp.smime_cert_file) or data.certs / SMIME_CERT
    key = data.resolve(smtp.smime_key_file) or data.certs / SMIME_KEY
    return cert, key


def ensure_relay_smime(ca: CertifiedKey, cert: Path, key: Path, domain: str, now: datetime) -> None:
    """Issue the relay's S/MIME certificate (RSA, emailProtection) from the local CA at first
    start: mail encrypted to it is decrypted on arrival. Blocking: run it in a thread."""
    if cert.exists() and key.exists():
        return
    issued = issue_client_certificate(
        ca,
        email=f"postmaster@{domain}",
        display_name=f"Relais Santé {domain}"[:64],
        rpps=None,
        now=now,
    )
    issued.to_pem_files(cert, key)


class MailService:
    """The SMTP listener, parser pool and outbox worker of one relay."""

    def __init__(self, rt: Runtime, data: DataDir) -> None:
        self.rt = rt
        self.data = data
        self.port: int | None = None
        self._server: asyncio.Server | None = None
        self._parsers: ParserPool | None = None
        self._worker: OutboxWorker | None = None
        self._smime: asyncio.Future[None] | None = None

    async def start(self) -> None:
        """Listen for SMTP and start delivering the outbox; raises OSError if the port is taken."""
        rt, data, config = self.rt, self.data, self.rt.config
        smime_cert, smime_key = relay_smime_paths(data, rt)
        # An RSA-3072 key takes a while to generate: at first start it is issued in the
        # background (nobody can have encrypted mail to a certificate not yet published).
        self._smime = asyncio.ensure_future(
            asyncio.to_thread(
                ensure_relay_smime, rt.ca, smime_cert, smime_key, config.server.domain, rt.clock()
            )
        )
        limits = messaging_limits(config.smtp.max_message_bytes)
        workers = config.smtp.parser_workers or max(1, os.cpu_count() or 1)
        self._parsers = ParserPool(workers, smime_cert, smime_key, limits)
        client_cas = [data.ca_cert]
        anchors = data.trust_anchors(config)
        if anchors is not None:
            client_cas.append(anchors)
        tls = server_ssl_context(
            data.server_cert(config), data.server_key(config), client_ca_paths=client_cas
        )
        handler = InboundHandler(
            messaging=rt.messaging,
            audit=rt.audit,
            policy=SenderPolicy.from_lists(
                config.smtp.allowed_sender_domains,
                require_certificate=config.smtp.require_peer_certificate,
                fingerprints=config.smtp.peer_certificate_fingerprints,
            ),
            parse=self._parsers.parse,
            node=config.server.node_name,
            clock=rt.clock,
            max_recipients=config.smtp.max_recipients,
            on_reply=lambda command, code: rt.metrics.smtp_replies.labels(command, code).inc(),
            on_stage=lambda stage, seconds: rt.metrics.smtp_stage.labels(stage).observe(seconds),
            postmaster_reader=config.smtp.postmaster_reader,
        )
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: RelaySMTP(
                handler,
                data_size_limit=config.smtp.max_message_bytes,
                hostname=config.server.domain,
                ident="ESMTP Relais-Sante",
                tls_context=tls,
                require_starttls=False,  # enforced at MAIL with RFC 3207's exact reply
                timeout=config.smtp.timeout_seconds,
                loop=loop,
            ),
            config.smtp.host,
            config.smtp.port,
        )
        self.port = _bound_port(self._server, config.smtp.port)
        log.info("SMTP gateway listening on %s:%d (STARTTLS required)", config.smtp.host, self.port)
        self._worker = OutboxWorker(
            queue=OutboxQueue(rt.db),
            blobs=rt.blobs,
            transport=self._transport(),
            audit=rt.audit,
            settings=config.outbox,
            node=config.server.node_name,
            clock=rt.clock,
            wakeup=rt.messaging.outbox_wakeup,
            on_delivery=self._delivered,
            on_attempt=lambda result: rt.metrics.outbox_attempts.labels(result).inc(),
            on_backlog=self._backlog,
        )
        self._worker.start()

    def _transport(self) -> Transport:
        outbox = self.rt.config.outbox
        if not outbox.smarthost:
            directory = self.data.root / OUTBOX_DIR
            log.info("no smarthost configured: outbound mail is written to %s", directory)
            return DirectoryTransport(directory)
        ca_file = self.data.resolve(outbox.smarthost_ca_file)
        context = client_ssl_context(
            [ca_file] if ca_file is not None else [],
            cert_path=self.data.resolve(outbox.client_cert_file),
            key_path=self.data.resolve(outbox.client_key_file),
        )
        return SmarthostTransport(
            outbox.smarthost,
            outbox.smarthost_port,
            context,
            local_hostname=self.rt.config.server.domain,
            timeout=outbox.timeout_seconds,
        )

    def _backlog(self, waiting: int, oldest: datetime | None) -> None:
        metrics = self.rt.metrics
        metrics.outbox_pending.set(waiting)
        age = 0.0 if oldest is None else (self.rt.clock() - oldest).total_seconds()
        metrics.outbox_oldest_pending.set(max(0.0, age))

    async def _delivered(
        self, row: OutboxRow, state: DeliveryState, failure: DeliveryFailure | None
    ) -> None:
        """A delivery reached a final state: push it, and tell the thread about a failure."""
        if row.message_id is None or row.participant_id is None or row.thread_id is None:
            return
        messaging = self.rt.messaging
        if state is DeliveryState.FAILED and failure is not None:
            await messaging.delivery_failed(
                message_id=row.message_id,
                participant_id=row.participant_id,
                recipient=row.recipient,
                status=failure.status,
                diagnostic=failure.diagnostic,
                now=self.rt.clock(),
            )
        else:
            await messaging.publish_delivery(
                row.thread_id, row.message_id, row.participant_id, state.value
            )

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting mail, let transactions in progress end, stop the outbox worker.
        Calling it again does nothing."""
        server, self._server = self._server, None
        worker, self._worker = self._worker, None
        parsers, self._parsers = self._parsers, None
        if server is not None:
            server.close()
            try:
                await asyncio.wait_for(server.wait_closed(), grace)
            except TimeoutError:
                log.warning("SMTP sessions still open after %.0fs; closing", grace)
        if worker is not None:
            await worker.stop(grace)
        if parsers is not None:
            parsers.close()  # on the loop's thread (it owns the pipes); idle workers exit at once
        smime, self._smime = self._smime, None
        if smime is not None:
            try:
                await asyncio.wait_for(asyncio.shield(smime), grace)
            except Exception as exc:
                log.error("the relay's S/MIME certificate was not issued (%s)", type(exc).__name__)


def _bound_port(server: asyncio.Server, configured: int) -> int:
    for sock in server.sockets:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            return int(sock.getsockname()[1])
    return configured
