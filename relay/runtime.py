"""Everything one running relay holds: configuration, stores, limiters, metrics.

Opened once by ``serve`` (and by CLI commands that need the database); handlers
reach it through the aiohttp application. Nothing here decides anything.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography import x509

from certs.ca import CertifiedKey
from certs.trust import load_trust_anchors
from relay.accounts import AccountStore
from relay.audit.log import AuditLog, AuditLogSettings
from relay.config import Config
from relay.datadir import DataDir
from relay.http.metrics import Metrics
from relay.messaging.service import Messaging, load_reply_secret, open_messaging
from relay.passwords import Passwords
from relay.ratelimit import FailureLimiter
from storage.blobs import BlobStore
from storage.bus import EventBus, InMemoryBus
from storage.database import Database
from storage.keys import Keyring

log = logging.getLogger("relais")


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Runtime:
    config: Config
    data: DataDir
    db: Database
    accounts: AccountStore
    passwords: Passwords
    keyring: Keyring
    blobs: BlobStore
    bus: EventBus
    ca: CertifiedKey
    trust_anchors: list[x509.Certificate]
    audit: AuditLog
    messaging: Messaging
    metrics: Metrics
    account_failures: FailureLimiter
    address_failures: FailureLimiter
    clock: Callable[[], datetime] = field(default=utcnow)

    @classmethod
    async def open(cls, data: DataDir, config: Config) -> Runtime:
        """Open every store of ``data``; raises MasterKeyError/StorageError/CertificateError."""
        keyring = Keyring.load(data.keys)
        ca = CertifiedKey.load(data.ca_cert, data.ca_key)
        anchors_dir = data.trust_anchors(config)
        # Client certificates are trusted when issued by our CA or by a configured anchor
        # (e.g. IGC-Santé); a broken anchor file stops start-up rather than vanish silently.
        anchors = [ca.certificate]
        if anchors_dir is not None:
            anchors += await asyncio.to_thread(load_trust_anchors, anchors_dir)
        db = await Database.open(data.database(config))
        blobs = BlobStore(data.blobs, keyring, chunk_size=config.storage.blob_chunk_kib * 1024)
        await asyncio.to_thread(blobs.recover)
        bus = await open_bus(config)
        audit = await open_audit(data, config)
        acc = config.accounts
        window = acc.login_window_minutes * 60
        messaging = open_messaging(
            config=config,
            reply_secret=await asyncio.to_thread(load_reply_secret, data.keys),
            db=db,
            blobs=blobs,
            bus=bus,
            patient_reference=audit.patient_reference,
            public_url=public_url_of(config),
        )
        return cls(
            config=config,
            data=data,
            db=db,
            accounts=AccountStore(db),
            passwords=Passwords(
                time_cost=acc.argon2_time_cost,
                memory_kib=acc.argon2_memory_kib,
                parallelism=acc.argon2_parallelism,
                min_length=acc.password_min_length,
            ),
            keyring=keyring,
            blobs=blobs,
            bus=bus,
            ca=ca,
            trust_anchors=anchors,
            audit=audit,
            messaging=messaging,
            metrics=Metrics(config.server.node_name),
            account_failures=FailureLimiter(window, acc.login_max_failures_per_account),
            address_failures=FailureLimiter(window, acc.login_max_failures_per_address),
        )

    @property
    def public_url(self) -> str:
        return public_url_of(self.config)

    async def close(self) -> None:
        await self.audit.close()
        await self.bus.close()
        await self.db.close()


def public_url_of(config: Config) -> str:
    """The base URL put in links sent by mail."""
    if config.server.public_url:
        return config.server.public_url.rstrip("/")
    return f"https://localhost:{config.http.port}"


async def open_audit(data: DataDir, config: Config) -> AuditLog:
    """The audit log, in its own database under the data dir (CNIL: traces stored apart)."""
    audit = config.audit
    settings = AuditLogSettings(
        origin=f"{config.server.domain}/audit",
        checkpoint_every_events=audit.checkpoint_every_events,
        checkpoint_every_seconds=audit.checkpoint_every_seconds,
        witness_dir=data.resolve(audit.witness_dir),
        retention_access_days=audit.retention_access_days,
        retention_security_days=audit.retention_security_days,
    )
    return await AuditLog.open(data.audit, settings, node=config.server.node_name, clock=utcnow)


async def open_bus(config: Config) -> EventBus:
    if config.bus.backend == "redis":
        from storage.redis_bus import RedisBus

        return RedisBus(config.bus.redis_url, max_len=config.bus.stream_max_len)
    return InMemoryBus(max_len=config.bus.stream_max_len)
