"""Run the HTTPS server until SIGTERM/SIGINT, then stop gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import hashlib
import json
import logging
import signal
import socket
import sys
from datetime import timedelta

from aiohttp import web

from certs.ca import write_file_atomically
from certs.expiry import expiry_warnings
from certs.tls import client_ssl_context, server_ssl_context
from relay.audit.events import Actor, AuditAction, AuditRecord, EntityRef, Outcome, ResourceKind
from relay.audit.forwarder import SyslogForwarder
from relay.case_mail import attach as attach_case_mail
from relay.config import Config
from relay.datadir import DataDir
from relay.http.app import IN_FLIGHT, build_app
from relay.http.cases import run_scheduler as run_case_scheduler
from relay.mail.service import MailService
from relay.recordings import erase_expired_recordings
from relay.runtime import Runtime

log = logging.getLogger("relais")


async def serve(data: DataDir, config: Config) -> None:
    """Open the runtime, listen on HTTPS, and return after a graceful shutdown."""
    rt = await Runtime.open(data, config)
    try:
        await _serve(rt, data, config)
    finally:
        await rt.close()


async def _serve(rt: Runtime, data: DataDir, config: Config) -> None:
    cert_path, key_path = data.server_cert(config), data.server_key(config)
    client_cas = [data.ca_cert]
    anchors = data.trust_anchors(config)
    if anchors is not None:
        client_cas.append(anchors)
    ssl_context = server_ssl_context(
        cert_path, key_path, client_ca_paths=client_cas if config.http.client_certificates else []
    )
    _warn_expiring(rt, data, config)
    await _trace_configuration(rt, data, config)
    app = build_app(rt)
    runner = web.AppRunner(
        app,
        access_log=None,  # request paths and queries stay out of logs; /metrics counts them
        shutdown_timeout=config.server.shutdown_timeout_seconds,
        handle_signals=False,
    )
    await runner.setup()
    # SMTP first: once HTTPS answers (health checks), the whole relay is up.
    attach_case_mail(rt)  # case reply addresses r+c… answer cases (issue 5 item 6)
    mail = MailService(rt, data)
    try:
        await mail.start()
    except BaseException:
        await mail.stop(grace=0)
        await runner.cleanup()
        raise
    site = web.TCPSite(runner, config.http.host, config.http.port, ssl_context=ssl_context)
    try:
        await site.start()
    except BaseException:
        await mail.stop(grace=0)
        await runner.cleanup()
        raise
    port = _bound_port(site, config.http.port)
    lag_task = asyncio.create_task(rt.metrics.watch_loop_lag())
    retention_task = asyncio.create_task(_erase_expired_daily(rt))
    case_scheduler_task = asyncio.create_task(run_case_scheduler(rt))
    forwarder = _syslog_forwarder(rt, data, config)
    forwarder_task = asyncio.create_task(forwarder.run()) if forwarder is not None else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    url = rt.config.server.public_url or f"https://localhost:{port}"
    tune_gc()
    tune_thread_switching()
    log.info("listening on https://%s:%d", config.http.host, port)
    print(f"Relais Santé écoute sur {url}/ (HTTPS, port {port})", flush=True)
    print(f"  Certificat de l'autorité locale : {data.ca_cert}", flush=True)
    print(f"  Passerelle SMTP (STARTTLS) : port {mail.port}", flush=True)
    try:
        await stop.wait()
        log.info("stopping: no new connections; waiting for in-flight requests")
        await site.stop()
        await mail.stop(grace=config.server.shutdown_timeout_seconds)
        if not await app[IN_FLIGHT].drained(config.server.shutdown_timeout_seconds):
            log.warning("in-flight requests still running after the shutdown timeout")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await mail.stop(grace=config.server.shutdown_timeout_seconds)  # no-op when stopped
        # cleanup() stops accepting, lets in-flight requests finish (shutdown_timeout),
        # then closes connections; only then are the stores closed by the caller.
        await runner.cleanup()
        if forwarder is not None and forwarder_task is not None:
            await forwarder.stop(grace=5.0)
            forwarder_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await forwarder_task
        lag_task.cancel()
        retention_task.cancel()
        case_scheduler_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await case_scheduler_task
        with contextlib.suppress(asyncio.CancelledError):
            await retention_task
        with contextlib.suppress(asyncio.CancelledError):
            await lag_task
    log.info("stopped")


GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """Keep the cyclic garbage collector's pauses out of live traffic (call once started).

    With CPython's defaults (700, 10, 10), a relay holding 1,000 signaling sockets paused up to
    11 ms in generation-1 and 122 ms in full collections during the signaling bench, and spent
    ~1 s of CPU per minute in them — each pause delays every frame in flight (p99). What exists
    after start-up (modules, configuration, routes) is frozen out of collections for good, and
    collections run about 70 times less often: measured, the worst full pause fell to 37 ms and
    the time spent to ~0.1 s. Almost everything is freed by reference counting anyway; only
    cyclic garbage waits longer, which the memory figures of the benches do not show.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


SWITCH_INTERVAL_SECONDS = 0.001


def tune_thread_switching() -> None:
    """Hand the GIL over after 1 ms instead of CPython's 5 ms.

    The database, blob and parser-pool threads each finish a short blocking call (an fsync, a
    SQLite step) and then need the GIL for a few microseconds to hand their result back; with
    the event loop busy, each of them waited up to the full interval, several times per
    inbound mail. Measured with the SMTP bench (three alternating pairs of runs, loaded
    machine): 241/281/244 msg/s against 235/269/223 with the default, at the same CPU.
    """
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)


RETENTION_PERIOD_SECONDS = 24 * 3600
CONFIG_DIGEST_FILE = "configuration.sha256"


async def _trace_configuration(rt: Runtime, data: DataDir, config: Config) -> None:
    """Record CONFIG_CHANGED when the effective configuration (file + environment) differs
    from the one of the previous start; the digest names it without copying it."""
    effective = json.dumps(dataclasses.asdict(config), sort_keys=True).encode()
    digest = hashlib.sha256(effective).hexdigest()
    marker = data.audit / CONFIG_DIGEST_FILE
    previous = marker.read_text().strip() if marker.exists() else None
    if previous == digest:
        return
    await rt.audit.record(
        AuditRecord(
            action=AuditAction.CONFIG_CHANGED,
            outcome=Outcome.SUCCESS,
            now=rt.clock(),
            actor=Actor.system(config.server.node_name),
            observer=config.server.node_name,
            entities=(EntityRef(ResourceKind.CONFIGURATION, "relais.toml"),),
            detail=(("sha256", digest),),
        )
    )
    write_file_atomically(marker, f"{digest}\n".encode(), mode=0o600)


async def _erase_expired_daily(rt: Runtime) -> None:
    """Apply the retention periods at start and then once a day: the audit log's (CNIL: 6
    months to 3 years; contents erased, commitments kept so that every proof still holds)
    and the recordings' (``[teleconsultation] recording_retention_days``, when set)."""
    while True:
        try:
            erased = await rt.audit.erase_expired(rt.clock())
            if erased:
                log.info("audit retention: %d event(s) erased", erased)
        except Exception as exc:  # retried tomorrow; the log itself stays usable
            log.error("audit retention pass failed: %s", type(exc).__name__)
        try:
            await erase_expired_recordings(
                db=rt.db,
                blobs=rt.blobs,
                audit=rt.audit,
                retention_days=rt.config.teleconsultation.recording_retention_days,
                now=rt.clock(),
                node=rt.config.server.node_name,
            )
        except Exception as exc:  # retried tomorrow
            log.error("recording retention pass failed: %s", type(exc).__name__)
        await asyncio.sleep(RETENTION_PERIOD_SECONDS)


def _syslog_forwarder(rt: Runtime, data: DataDir, config: Config) -> SyslogForwarder | None:
    """Forward every audit event to the configured collector (RFC 5424 over TLS, RFC 5425)."""
    audit = config.audit
    if not audit.syslog_host:
        return None
    ca_file = data.resolve(audit.syslog_ca_file)
    context = client_ssl_context([ca_file] if ca_file is not None else [])
    log.info("forwarding audit events to %s:%d over TLS", audit.syslog_host, audit.syslog_port)
    return SyslogForwarder(
        rt.audit,
        host=audit.syslog_host,
        port=audit.syslog_port,
        ssl_context=context,
        hostname=config.server.node_name,
    )


def _bound_port(site: web.TCPSite, configured: int) -> int:
    server = site._server  # aiohttp exposes the listening sockets only here
    sockets = getattr(server, "sockets", None) or []
    for sock in sockets:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            return int(sock.getsockname()[1])
    return configured


def _warn_expiring(rt: Runtime, data: DataDir, config: Config) -> None:
    from certs.trust import load_certificates_file

    named = [("local CA", rt.ca.certificate)]
    named += [
        ("server certificate", cert)
        for cert in load_certificates_file(data.server_cert(config))[:1]
    ]
    for line in expiry_warnings(
        named, rt.clock(), warn_within=timedelta(days=config.tls.expiry_warning_days)
    ):
        log.warning("%s", line)
