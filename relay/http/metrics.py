"""Prometheus metrics of one relay process: requests, latencies, event-loop lag, mail."""

from __future__ import annotations

import asyncio
import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LAG_INTERVAL = 0.25


class Metrics:
    """Counters and histograms, registered in a registry of our own (not the global one)."""

    def __init__(self, node: str) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "relais_http_requests",
            "HTTP requests handled, by route template (never the raw path) and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "relais_http_request_duration_seconds",
            "Time to produce the response, by route template.",
            ["method", "route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.loop_lag = Gauge(
            "relais_event_loop_lag_seconds",
            "Latest delay of a timer on the event loop beyond its due time.",
            registry=self.registry,
        )
        self.loop_lag_histogram = Histogram(
            "relais_event_loop_lag_distribution_seconds",
            "Event-loop lag samples (every 0.25 s).",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
            registry=self.registry,
        )
        self.logins = Counter(
            "relais_logins",
            "Login attempts by method and outcome.",
            ["method", "outcome"],
            registry=self.registry,
        )
        self.recording_participants = Gauge(
            "relais_recording_participants",
            "Participants whose media the recording peer is writing now.",
            registry=self.registry,
        )
        self.recordings_stored = Counter(
            "relais_recordings_stored",
            "Recordings sealed into encrypted blobs, by why they ended.",
            ["end_reason"],
            registry=self.registry,
        )
        self.smtp_replies = Counter(
            "relais_smtp_replies",
            "Replies of the SMTP gateway to MAIL, RCPT and DATA, by command and reply code.",
            ["command", "code"],
            registry=self.registry,
        )
        self.smtp_stage = Histogram(
            "relais_smtp_stage_duration_seconds",
            "Time an inbound mail spends in each step before its reply: rcpt (recipient "
            "lookup), parse (parser processes), audit (its trace made durable), store (the "
            "whole storing, audit included).",
            ["stage"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.outbox_attempts = Counter(
            "relais_outbox_attempts",
            "Outbound mail delivery attempts by result: sent, deferred (retried later), "
            "failed (for good).",
            ["result"],
            registry=self.registry,
        )
        self.outbox_pending = Gauge(
            "relais_outbox_pending",
            "Outbound mails waiting to be sent (first attempt or retry), at the last pass.",
            registry=self.registry,
        )
        self.outbox_oldest_pending = Gauge(
            "relais_outbox_oldest_pending_seconds",
            "How long the oldest waiting outbound mail has been queued (0: none), at the "
            "outbox's last pass: alert on it when the smarthost refuses or is down.",
            registry=self.registry,
        )
        info = Gauge("relais_node_info", "Node identity.", ["node"], registry=self.registry)
        info.labels(node=node).set(1)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    async def watch_loop_lag(self) -> None:
        """Sample the event loop's lag forever (cancel to stop).

        A sleep that wakes late measures how long other callbacks held the loop:
        CPU work that escaped the thread/process pools shows up here first.
        """
        loop = asyncio.get_running_loop()
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                started = loop.time()
                await asyncio.sleep(LAG_INTERVAL)
                lag = max(0.0, loop.time() - started - LAG_INTERVAL)
                self.loop_lag.set(lag)
                self.loop_lag_histogram.observe(lag)
