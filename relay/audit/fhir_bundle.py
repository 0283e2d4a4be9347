"""FHIR R4 Bundle of AuditEvents, for ``relais audit export --format fhir`` and search answers.

Two forms of the same bytes: :func:`build_bundle` returns the Bundle as a dict;
:func:`iter_bundle_json` streams its RFC 8785 canonical JSON so an export of millions of
events never holds them all in memory. Canonical member order helps streaming: ``"entry"``
sorts first, and ``"total"`` (known only at the end) sorts after it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any

from relay.audit.canonical import canonicalize
from relay.audit.events import format_instant

__all__ = ["BundleType", "build_bundle", "iter_bundle_json"]


class BundleType(StrEnum):
    """Bundle.type values we produce."""

    COLLECTION = "collection"  # an export
    SEARCHSET = "searchset"  # the answer to an audit search


def _entry(event: Mapping[str, Any], base_url: str, bundle_type: BundleType) -> dict[str, Any]:
    if event.get("resourceType") != "AuditEvent" or not isinstance(event.get("id"), str):
        raise ValueError("bundle entries must be AuditEvent resources with an id")
    entry: dict[str, Any] = {
        # bdl-7: fullUrl must be unique; the AuditEvent id is the log index, unique per log.
        "fullUrl": f"{base_url.rstrip('/')}/AuditEvent/{event['id']}",
        "resource": event,
    }
    if bundle_type is BundleType.SEARCHSET:
        entry["search"] = {"mode": "match"}
    return entry


def _tail(
    bundle_type: BundleType, timestamp: datetime, bundle_id: str | None, count: int
) -> dict[str, Any]:
    tail: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": bundle_type.value,
        "timestamp": format_instant(timestamp),
    }
    if bundle_id is not None:
        tail["id"] = bundle_id
    if bundle_type is BundleType.SEARCHSET:
        # bdl-1: total only when a search or history.
        tail["total"] = count
    return tail


def build_bundle(
    events: Iterable[Mapping[str, Any]],
    *,
    bundle_type: BundleType,
    timestamp: datetime,
    base_url: str,
    bundle_id: str | None = None,
) -> dict[str, Any]:
    """A Bundle of AuditEvent dicts. ``base_url`` prefixes each ``fullUrl``
    (``<base_url>/AuditEvent/<index>``); ``timestamp`` is when the bundle was assembled."""
    entries = [_entry(event, base_url, bundle_type) for event in events]
    bundle = _tail(bundle_type, timestamp, bundle_id, len(entries))
    if entries:  # FHIR: no empty arrays
        bundle["entry"] = entries
    return bundle


def iter_bundle_json(
    events: Iterable[Mapping[str, Any] | bytes],
    *,
    bundle_type: BundleType,
    timestamp: datetime,
    base_url: str,
    bundle_id: str | None = None,
) -> Iterator[bytes]:
    """Stream the canonical JSON of :func:`build_bundle` (same bytes as
    ``canonicalize(build_bundle(...))``). Events may be dicts or stored canonical bytes."""
    count = 0
    for item in events:
        event = json.loads(item) if isinstance(item, bytes) else item
        yield b'{"entry":[' if count == 0 else b","
        yield canonicalize(_entry(event, base_url, bundle_type))
        count += 1
    tail = canonicalize(_tail(bundle_type, timestamp, bundle_id, count))
    # Splice the remaining members after the entry array: '{...}' -> '],...}'.
    yield (b"]," + tail[1:]) if count else tail
