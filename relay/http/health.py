"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
import os
import tempfile

from aiohttp import web

from relay.http.context import runtime
from relay.http.jsonio import json_response
from relay.http.route import Route
from relay.policy import Action

WRITER_PROBE_SECONDS = 5.0


async def healthz(request: web.Request) -> web.StreamResponse:
    """The process answers: nothing more is checked (for liveness probes)."""
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.StreamResponse:
    """Ready when the database answers (its reader, and its writer within a few seconds: a
    writer stuck on a lock or an fsync fails every write while reads still work) and the
    blob directory accepts writes."""
    rt = runtime(request)
    checks: dict[str, str] = {}
    try:
        await rt.db.fetchone("SELECT 1")
        await asyncio.wait_for(
            rt.db.run(lambda conn: conn.execute("SELECT 1").fetchone()), WRITER_PROBE_SECONDS
        )
        checks["database"] = "ok"
    except Exception as exc:  # any failure means not ready; the type says which
        checks["database"] = type(exc).__name__
    try:
        await rt.bus.read_from("relais.health", None, limit=1)
        checks["event_bus"] = "ok"
    except Exception as exc:  # Redis down or unreachable: not ready
        checks["event_bus"] = type(exc).__name__
    try:
        with tempfile.NamedTemporaryFile(dir=rt.data.blobs, prefix=".ready-") as probe:
            probe.write(b"ok")
            os.fsync(probe.fileno())
        checks["blobs"] = "ok"
    except OSError as exc:
        checks["blobs"] = exc.strerror or type(exc).__name__
    ready = all(value == "ok" for value in checks.values())
    return json_response(
        {"status": "ok" if ready else "unavailable", "checks": checks}, status=200 if ready else 503
    )


async def metrics(request: web.Request) -> web.StreamResponse:
    rt = runtime(request)
    return web.Response(
        body=rt.metrics.exposition(),
        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
    )


ROUTES = [
    Route("GET", "/healthz", healthz, Action.PUBLIC, "Liveness probe", "operations"),
    Route(
        "GET",
        "/readyz",
        readyz,
        Action.PUBLIC,
        "Readiness probe (database, event bus, blob store)",
        "operations",
        errors=(503,),
    ),
    Route(
        "GET",
        "/metrics",
        metrics,
        Action.PUBLIC,
        "Prometheus metrics (text format)",
        "operations",
        response_content_type="text/plain",
    ),
]
