"""Crash-test helper: appends a burst of audit events until done or killed.

``python -m tests.audit.crash_appender AUDIT_DIR COUNT`` opens the audit log and has 32
concurrent producers record COUNT attachment downloads (``att-<n>``). After ``record()``
returned for event ``n`` (it is acknowledged: durably committed) it prints ``<n> <index>``,
the index being known for the one event in 50 that asks for a receipt (``-1`` otherwise).
Prints ``done`` at the end. The test kills it with SIGKILL mid-burst.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path

from relay.audit import events as ev
from relay.audit.log import AuditLog, AuditLogSettings

ORIGIN = "relais.crash/audit"
NODE = "relais-crash"
PRODUCERS = 32


def download(n: int) -> ev.AuditRecord:
    """Event ``n``: a download of attachment ``att-<n>``."""
    return ev.AuditRecord(
        ev.AuditAction.ATTACHMENT_DOWNLOADED,
        ev.Outcome.SUCCESS,
        datetime.now(UTC),
        ev.Actor.professional(f"user-{n % 17}", "nurse"),
        NODE,
        entities=(ev.EntityRef(ev.ResourceKind.ATTACHMENT, f"att-{n:05d}"),),
    )


def settings() -> AuditLogSettings:
    """Settings shared by the helper and the test that reopens the log."""
    return AuditLogSettings(ORIGIN, checkpoint_every_events=500)


async def main(directory: Path, count: int) -> None:
    log = await AuditLog.open(directory, settings(), node=NODE, clock=lambda: datetime.now(UTC))
    numbers = iter(range(count))

    async def producer() -> None:
        for n in numbers:
            receipt = await log.record(download(n), receipt=n % 50 == 0)
            sys.stdout.write(f"{n} {receipt.index if receipt else -1}\n")
            sys.stdout.flush()

    await asyncio.gather(*(producer() for _ in range(PRODUCERS)))
    print("done", flush=True)
    await log.close()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
