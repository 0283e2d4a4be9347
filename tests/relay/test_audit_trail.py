"""The audit trail through the real relay: what is recorded, receipts, proofs, search."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from relay.audit.checkpoint import parse_and_verify
from relay.audit.log import Receipt
from relay.audit.merkle import verify_consistency, verify_inclusion
from tests.conftest import bearer, login
from tests.harness.accounts import ADMIN, NURSE, PHYSICIAN
from tests.harness.relay_process import RelayProcess, relais


async def _json(response: aiohttp.ClientResponse) -> Any:
    body = await response.json()
    assert response.status == 200, body
    return body


async def _own_trail(http: aiohttp.ClientSession, token: str) -> list[dict[str, Any]]:
    async with http.get("/api/audit/me", params={"limit": "200"}, headers=bearer(token)) as r:
        events: list[dict[str, Any]] = (await _json(r))["events"]
        return events


async def test_logins_logout_and_own_trail_are_recorded(http: aiohttp.ClientSession) -> None:
    async with http.post("/api/login", json={"email": PHYSICIAN.email, "password": "nope nope"}):
        pass
    token = await login(http, PHYSICIAN.email)
    async with http.post("/api/logout", headers=bearer(token)) as response:
        assert response.status == 204
    token = await login(http, PHYSICIAN.email)
    events = await _own_trail(http, token)
    actions = [e["action"] for e in events]
    assert "login_failed" in actions and "logout" in actions
    assert actions.count("login_succeeded") >= 2
    failed = next(e for e in events if e["action"] == "login_failed")
    assert failed["outcome"] == "4"
    event = failed["event"]
    assert event["resourceType"] == "AuditEvent"
    assert event["type"]["code"] == "110114"
    assert event["subtype"][0]["code"] == "110122"
    # No names, no passwords: only opaque identifiers and codes.
    text = json.dumps(events, ensure_ascii=False)
    assert PHYSICIAN.name not in text and "nope nope" not in text
    # Reading one's own trail is itself recorded (next read shows it).
    again = [e["action"] for e in await _own_trail(http, token)]
    assert "audit_read" in again


async def test_download_gives_a_verifiable_receipt(http: aiohttp.ClientSession) -> None:
    token = await login(http, NURSE.email)
    async with http.post(
        "/api/files", data=b"photo", headers={**bearer(token), "Content-Type": "image/jpeg"}
    ) as response:
        stored = await response.json()
    async with http.get(f"/api/files/{stored['id']}", headers=bearer(token)) as response:
        assert await response.read() == b"photo"
        receipt = Receipt.from_header(response.headers["X-Audit-Receipt"])
    async with http.get("/api/audit/checkpoint", headers=bearer(token)) as response:
        verifier_key = (await _json(response))["verifier_key"]
    checkpoint = parse_and_verify(receipt.checkpoint, verifier_key)
    assert checkpoint.size > receipt.index
    async with http.get(
        "/api/audit/proof/inclusion",
        headers=bearer(token),
        params={"index": str(receipt.index), "size": str(checkpoint.size)},
    ) as response:
        proof = await _json(response)
    assert proof["leaf_hash"] == receipt.leaf_hash
    verify_inclusion(
        receipt.index,
        checkpoint.size,
        bytes.fromhex(receipt.leaf_hash),
        [bytes.fromhex(p) for p in proof["proof"]],
        checkpoint.root_hash,
    )
    # The trail names the download with the file id and digest, never its content.
    events = await _own_trail(http, token)
    download = next(e for e in events if e["index"] == receipt.index)
    assert download["action"] == "attachment_downloaded"
    assert stored["id"] in json.dumps(download["event"])


async def test_consistency_proof_between_checkpoints(http: aiohttp.ClientSession) -> None:
    token = await login(http, NURSE.email)
    async with http.get("/api/audit/checkpoint", headers=bearer(token)) as response:
        first = await _json(response)
    old = parse_and_verify(first["checkpoint"], first["verifier_key"])
    # A download signs a fresh checkpoint (its receipt must prove inclusion at once).
    async with http.post(
        "/api/files", data=b"x", headers={**bearer(token), "Content-Type": "image/jpeg"}
    ) as response:
        stored = await response.json()
    async with http.get(f"/api/files/{stored['id']}", headers=bearer(token)) as response:
        new = parse_and_verify(
            Receipt.from_header(response.headers["X-Audit-Receipt"]).checkpoint,
            first["verifier_key"],
        )
    assert new.size > old.size
    async with http.get(
        "/api/audit/proof/consistency",
        headers=bearer(token),
        params={"first": str(old.size), "second": str(new.size)},
    ) as response:
        proof = await _json(response)
    verify_consistency(
        old.size, new.size, old.root_hash, new.root_hash, [bytes.fromhex(p) for p in proof["proof"]]
    )
    async with http.get(
        "/api/audit/proof/inclusion",
        headers=bearer(token),
        params={"index": "999999999", "size": "1"},
    ) as response:
        assert response.status == 400


async def test_admin_search_is_audited_and_others_are_refused(
    http: aiohttp.ClientSession,
) -> None:
    nurse = await login(http, NURSE.email)
    async with http.get("/api/me", headers=bearer(nurse)) as response:
        nurse_id = (await response.json())["id"]
    async with http.get("/api/audit/events", headers=bearer(nurse)) as response:
        assert response.status == 403
    admin = await login(http, ADMIN.email)
    async with http.get(
        "/api/audit/events",
        headers=bearer(admin),
        params={"actor": nurse_id, "action": "access_denied"},
    ) as response:
        denials = (await _json(response))["events"]
    assert denials and all(e["action"] == "access_denied" for e in denials)
    async with http.get(
        "/api/audit/events",
        headers=bearer(admin),
        params={"action": "audit_searched", "outcome": "0"},
    ) as response:
        searches = (await _json(response))["events"]
    assert searches  # the previous search was itself recorded
    async with http.get(
        "/api/audit/events", headers=bearer(admin), params={"patient": "123"}
    ) as response:
        assert response.status == 400  # invalid NIR
    async with http.get(
        "/api/audit/events", headers=bearer(admin), params={"since": "yesterday"}
    ) as response:
        assert response.status == 400


def test_cli_verify_and_exports(relay: RelayProcess, tmp_path: Any) -> None:
    result = relais(relay.data_dir, "audit", "verify", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    out = tmp_path / "bundle.json"
    relais(relay.data_dir, "audit", "export", "--format", "fhir", "--out", str(out))
    from fhir.resources.R4B.bundle import Bundle

    bundle = Bundle.model_validate_json(out.read_text())
    assert bundle.entry
    resource = bundle.entry[0].resource
    assert resource is not None and resource.__resource_type__ == "AuditEvent"
    atna = relais(relay.data_dir, "audit", "export", "--format", "atna")
    first = atna.stdout.split("<?xml")[1] if "<?xml" in atna.stdout else atna.stdout
    assert "AuditMessage" in atna.stdout
    assert first


def test_unauthenticated_user_cannot_read_audit(relay: RelayProcess) -> None:
    import ssl
    import urllib.request

    context = ssl.create_default_context(cafile=str(relay.ca_file))
    try:
        urllib.request.urlopen(f"{relay.url}/api/audit/me", context=context)  # noqa: S310
    except urllib.error.HTTPError as error:
        assert error.code == 401
    else:
        raise AssertionError("audit trail readable without a session")


async def test_command_line_admin_actions_reach_the_running_log(
    http: aiohttp.ClientSession, relay: RelayProcess
) -> None:
    """`relais team add` while the server holds the log: handed over, then appended."""
    import asyncio
    import getpass

    relais(
        relay.data_dir,
        "team",
        "add",
        "--address",
        "ssiad-est",
        "--name",
        "SSIAD Est",
        "--kind",
        "service",
    )
    admin = await login(http, ADMIN.email)
    found: list[dict[str, Any]] = []
    for _ in range(50):
        async with http.get(
            "/api/audit/events",
            headers=bearer(admin),
            params={"actor": f"cli:{getpass.getuser()}", "action": "team_changed"},
        ) as response:
            found = (await _json(response))["events"]
        if found:
            break
        await asyncio.sleep(0.2)
    assert found, "the CLI's audit event never reached the log"
    event = found[-1]["event"]
    assert f"cli:{getpass.getuser()}" in json.dumps(event["agent"])
    result = relais(relay.data_dir, "audit", "verify", check=False)
    assert result.returncode == 0, result.stdout
