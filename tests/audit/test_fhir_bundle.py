"""FHIR Bundle export of audit events, validated by fhir.resources."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle

from relay.audit import events as ev
from relay.audit.canonical import canonicalize
from relay.audit.fhir_bundle import BundleType, build_bundle, iter_bundle_json

NOW = datetime(2024, 5, 1, 8, 30, tzinfo=UTC)
BASE = "https://relais.localhost/fhir"


def _events(count: int) -> list[dict[str, Any]]:
    actions = list(ev.AuditAction)
    out = []
    for index in range(count):
        action = actions[index % len(actions)]
        outcome = (
            ev.Outcome.SERIOUS_FAILURE
            if ev.ACTIONS[action].outcomes is ev.OutcomeRule.FAILURE
            else ev.Outcome.SUCCESS
        )
        record = ev.AuditRecord(
            action,
            outcome,
            NOW,
            ev.Actor.professional(f"user-{index}", "physician"),
            "relais-1",
            entities=(ev.EntityRef(ev.ResourceKind.MESSAGE, f"msg-{index}"),),
        )
        out.append(ev.build_audit_event(record, index=index))
    return out


@pytest.mark.parametrize("bundle_type", list(BundleType))
def test_bundle_validates_with_fhir_resources(bundle_type: BundleType) -> None:
    events = _events(len(ev.AuditAction))
    bundle = build_bundle(
        events, bundle_type=bundle_type, timestamp=NOW, base_url=BASE, bundle_id="export-1"
    )
    parsed = Bundle.model_validate(bundle)
    assert parsed.type == bundle_type.value
    entries = parsed.entry
    assert entries is not None and len(entries) == len(events)
    assert entries[3].fullUrl == f"{BASE}/AuditEvent/3"
    resource = entries[3].resource
    assert resource is not None and resource.get_resource_type() == "AuditEvent"
    if bundle_type is BundleType.SEARCHSET:
        assert parsed.total == len(events)
        search = entries[0].search
        assert search is not None and search.mode == "match"
    else:
        assert parsed.total is None and "search" not in bundle["entry"][0]


def test_empty_bundle_has_no_entry_array() -> None:
    bundle = build_bundle([], bundle_type=BundleType.SEARCHSET, timestamp=NOW, base_url=BASE)
    assert "entry" not in bundle and bundle["total"] == 0
    Bundle.model_validate(bundle)


@pytest.mark.parametrize("count", [0, 1, 5])
@pytest.mark.parametrize("bundle_type", list(BundleType))
def test_streamed_json_equals_canonical_bundle(count: int, bundle_type: BundleType) -> None:
    events = _events(count)
    expected = canonicalize(
        build_bundle(events, bundle_type=bundle_type, timestamp=NOW, base_url=BASE)
    )
    streamed = b"".join(
        iter_bundle_json(
            (canonicalize(e) for e in events),  # stored canonical bytes work too
            bundle_type=bundle_type,
            timestamp=NOW,
            base_url=BASE,
        )
    )
    assert streamed == expected
    Bundle.model_validate(json.loads(streamed))


def test_only_audit_events_with_ids() -> None:
    with pytest.raises(ValueError, match="AuditEvent"):
        build_bundle(
            [{"resourceType": "Patient", "id": "1"}],
            bundle_type=BundleType.COLLECTION,
            timestamp=NOW,
            base_url=BASE,
        )
