"""The standalone verifier: each kind of tampering is detected and named at its exact index."""

from __future__ import annotations

import ast
import base64
import hashlib
import secrets
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.audit import checkpoint as cp
from relay.audit import events as ev
from relay.audit import verify
from relay.audit.merkle import MemoryNodeStore, MerkleTree
from relay.audit.verify import Finding, FindingKind, LogEntry, verify_log

ORIGIN = "relais.test/audit"
SIZE = 300
EVERY = 50
KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"audit key").digest())
VKEY = cp.verifier_key(ORIGIN, KEY.public_key())
START = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Log:
    entries: list[LogEntry]
    checkpoints: list[str]  # one every EVERY entries, the last at SIZE
    tree: MerkleTree

    @property
    def latest(self) -> str:
        return self.checkpoints[-1]


def _record(index: int) -> ev.AuditRecord:
    actions = [
        ev.AuditAction.LOGIN_SUCCEEDED,
        ev.AuditAction.MESSAGE_READ,
        ev.AuditAction.ATTACHMENT_DOWNLOADED,
        ev.AuditAction.CASE_TRANSITION,
    ]
    return ev.AuditRecord(
        actions[index % len(actions)],
        ev.Outcome.SUCCESS,
        START + timedelta(seconds=index),
        ev.Actor.professional(f"acc-{index % 7}", "nurse"),
        "relais-1",
        entities=(ev.EntityRef(ev.ResourceKind.MESSAGE, f"msg-{index}"),),
        detail=(("method", "password"),),
    )


def build_log(size: int = SIZE) -> Log:
    tree = MerkleTree(MemoryNodeStore())
    entries: list[LogEntry] = []
    notes: list[str] = []
    for index in range(size):
        sealed = ev.seal(_record(index), index=index, salt=secrets.token_bytes(32))
        entries.append(LogEntry(index, sealed.commitment, sealed.salt, sealed.content))
        tree.append(sealed.leaf_hash)
        if tree.size % EVERY == 0:
            notes.append(cp.sign(cp.Checkpoint(ORIGIN, tree.size, tree.root()), ORIGIN, KEY))
    return Log(entries, notes, tree)


LOG = build_log()


def kinds(findings: tuple[Finding, ...]) -> list[tuple[FindingKind, int | None]]:
    return [(f.kind, f.index) for f in findings]


def run(
    entries: list[LogEntry],
    checkpoints: list[str] | None = None,
    external: str | None = None,
) -> verify.VerificationReport:
    return verify_log(
        entries,
        LOG.checkpoints if checkpoints is None else checkpoints,
        VKEY,
        external_checkpoint=external,
        origin=ORIGIN,
    )


def test_intact_log_verifies() -> None:
    report = run(LOG.entries, external=LOG.latest)
    assert report.ok and report.findings == ()
    assert report.entries == report.log_size == SIZE
    assert report.checkpoints_verified == SIZE // EVERY + 1  # the external one too
    assert report.covered_size == SIZE and report.uncovered == 0
    assert report.root == LOG.tree.root()


def test_erased_entries_still_verify() -> None:
    # Retention: salt and content gone, the commitment stays, every proof still holds.
    erased = [replace(e, salt=None, event=None) if e.index < 120 else e for e in LOG.entries]
    report = run(erased, external=LOG.latest)
    assert report.ok
    assert report.erased == 120
    assert erased[5].erased and not erased[200].erased


def test_flipped_byte_names_the_entry() -> None:
    entries = list(LOG.entries)
    event = entries[41].event
    assert event is not None
    entries[41] = replace(entries[41], event=event[:100] + bytes([event[100] ^ 1]) + event[101:])
    report = run(entries, external=LOG.latest)
    assert not report.ok
    # The stored commitments are untouched, so every checkpoint still matches: the finding
    # is exactly the altered entry.
    assert report.findings == (
        Finding(FindingKind.ALTERED, 41, "entry 41 altered: commitment does not match its content"),
    )


def test_rewritten_commitment_is_caught_by_the_checkpoints() -> None:
    # Content and commitment changed together: the entry looks self-consistent, the signed
    # checkpoints do not match any more and the divergence window contains entry 41.
    entries = list(LOG.entries)
    forged = b'{"id":"41","forged":true}'
    salt = bytes(32)
    entries[41] = LogEntry(41, hashlib.sha256(salt + forged).digest(), salt, forged)
    report = run(entries, external=LOG.latest)
    assert kinds(report.findings) == [(FindingKind.ROOT_MISMATCH, 0)]
    assert report.findings[0].message == (
        "checkpoint root at size 50 does not match the log (divergence within entries 0..49); "
        "6 later checkpoint(s) up to size 300 do not match either"
    )


def test_deleted_middle_event_is_named() -> None:
    entries = [e for e in LOG.entries if e.index != 42]
    report = run(entries, external=LOG.latest)
    assert kinds(report.findings)[0] == (FindingKind.MISSING, 42)
    assert report.findings[0].message == "entry 42 missing (index gap 41 -> 43)"
    assert (FindingKind.TRUNCATED, SIZE) not in kinds(report.findings)  # positions stay aligned
    assert kinds(report.findings)[1] == (FindingKind.ROOT_MISMATCH, 0)


def test_several_missing_and_missing_first() -> None:
    entries = [e for e in LOG.entries if not 100 <= e.index <= 104 and e.index != 0]
    report = run(entries)
    messages = [f.message for f in report.findings if f.kind is FindingKind.MISSING]
    assert messages == [
        "entry 0 missing (log starts at 1)",
        "entries 100..104 missing (index gap 99 -> 105)",
    ]


def test_swapped_events_are_named() -> None:
    entries = list(LOG.entries)
    a, b = entries[10], entries[11]
    entries[10] = replace(b, index=10)
    entries[11] = replace(a, index=11)
    report = run(entries, external=LOG.latest)
    assert report.findings[0] == Finding(
        FindingKind.OUT_OF_ORDER,
        10,
        "entries 10 and 11 out of order (each holds the other's content)",
    )
    assert kinds(report.findings)[1:] == [(FindingKind.ROOT_MISMATCH, 0)]


def test_deleted_then_renumbered_run_is_named() -> None:
    kept = [e for e in LOG.entries if e.index != 42]
    entries = [replace(e, index=position) for position, e in enumerate(kept)]
    report = run(entries, external=LOG.latest)
    found = kinds(report.findings)
    assert found[0] == (FindingKind.MISPLACED, 42)
    assert report.findings[0].message == (
        "entries at positions 42..298 carry indices 43..299 (renumbered by +1)"
    )
    assert (FindingKind.TRUNCATED, SIZE - 1) in found


def test_dropped_newest_ten_detected_by_external_checkpoint() -> None:
    entries = LOG.entries[: SIZE - 10]
    internal = [n for n in LOG.checkpoints if cp.parse_unverified(n).size <= SIZE - 10]
    # Without a checkpoint kept elsewhere the truncation is invisible...
    assert run(entries, internal).ok
    # ...with it, it is named.
    report = run(entries, internal, external=LOG.latest)
    assert report.findings == (
        Finding(
            FindingKind.TRUNCATED,
            290,
            "log truncated: external checkpoint has size 300 but log has 290 entries",
        ),
    )


def test_replaced_checkpoint_signature() -> None:
    notes = list(LOG.checkpoints)
    text, _, line = notes[1].partition("\n\n")
    raw = base64.b64decode(line.split(" ")[2])
    forged = raw[:4] + secrets.token_bytes(64)
    notes[1] = f"{text}\n\n\u2014 {ORIGIN} {base64.b64encode(forged).decode()}\n"
    report = run(LOG.entries, notes)
    assert report.findings == (
        Finding(FindingKind.SIGNATURE_INVALID, 100, "checkpoint at size 100 signature invalid"),
    )
    assert report.checkpoints_verified == len(notes) - 1


def test_checkpoint_signed_by_another_key() -> None:
    other = Ed25519PrivateKey.generate()
    notes = list(LOG.checkpoints)
    notes[2] = cp.sign(cp.parse_unverified(notes[2]), ORIGIN, other)
    report = run(LOG.entries, notes)
    assert report.findings == (
        Finding(
            FindingKind.UNSIGNED,
            150,
            f"checkpoint at size 150 is not signed by the audit key {ORIGIN}",
        ),
    )


def test_signed_wrong_root_is_a_single_mismatch() -> None:
    # A checkpoint the key really signed but for another history (a fork): only it mismatches.
    notes = list(LOG.checkpoints)
    notes.append(cp.sign(cp.Checkpoint(ORIGIN, 120, bytes(32)), ORIGIN, KEY))
    report = run(LOG.entries, notes)
    assert report.findings == (
        Finding(
            FindingKind.ROOT_MISMATCH,
            100,
            "checkpoint root at size 120 does not match the log "
            "(divergence within entries 100..119)",
        ),
    )


def test_malformed_and_foreign_checkpoints() -> None:
    foreign = cp.sign(cp.Checkpoint("other.log", 50, LOG.tree.root(50)), ORIGIN, KEY)
    report = run(LOG.entries, [*LOG.checkpoints, "garbage", foreign])
    assert kinds(report.findings) == [
        (FindingKind.CHECKPOINT_MALFORMED, None),
        (FindingKind.ORIGIN_MISMATCH, 50),
    ]
    assert report.findings[0].message.startswith("checkpoint #7 is malformed: ")


def test_malformed_entries() -> None:
    entries = list(LOG.entries)
    entries[3] = replace(entries[3], salt=None)
    entries[4] = replace(entries[4], commitment=None, salt=None, event=None)
    entries[5] = replace(entries[5], commitment=None)  # recomputed from content: fine
    event = entries[6].event
    assert event is not None
    no_index = event.replace(b'"id":"6"', b'"id":"x"')
    entries[6] = LogEntry(6, hashlib.sha256(bytes(32) + no_index).digest(), bytes(32), no_index)
    report = run(entries)
    found = kinds(report.findings)
    assert found[:2] == [(FindingKind.MALFORMED_ENTRY, 3), (FindingKind.MALFORMED_ENTRY, 4)]
    assert (FindingKind.MALFORMED_ENTRY, 6) in found
    assert (FindingKind.ALTERED, 5) not in found


def test_duplicate_listing() -> None:
    entries = [*LOG.entries[:20], LOG.entries[10], *LOG.entries[20:]]
    report = run(entries)
    assert report.findings == (
        Finding(FindingKind.DUPLICATE, 10, "entry 10 listed again after entry 19"),
    )


def test_empty_log() -> None:
    empty = cp.sign(cp.Checkpoint(ORIGIN, 0, hashlib.sha256(b"").digest()), ORIGIN, KEY)
    report = verify_log([], [empty], VKEY)
    assert report.ok and report.log_size == 0 and report.checkpoints_verified == 1


def test_bad_verifier_key_is_refused() -> None:
    with pytest.raises(ValueError):
        verify_log([], [], VKEY.replace("+", "-", 1))


def test_verifier_agrees_with_the_writer_modules() -> None:
    # Independent implementations, same answers: tree head and verifier key parsing.
    log = build_log(77)
    report = verify_log(log.entries, log.checkpoints, VKEY)
    assert report.root == log.tree.root()
    assert report.ok and report.covered_size == 50 and report.uncovered == 27


def test_verifier_is_standalone() -> None:
    # stdlib + cryptography only: nothing from the relay, so it can be audited alone.
    source = Path(verify.__file__).read_text(encoding="utf-8")
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= {
        "__future__",
        "base64",
        "binascii",
        "hashlib",
        "re",
        "collections",
        "dataclasses",
        "enum",
        "cryptography",
    }
    assert len(source.splitlines()) < 450


@settings(max_examples=40, deadline=None)
@given(st.integers(0, SIZE - 1), st.integers(0, 10_000), st.integers(0, 7))
def test_any_flipped_bit_is_named(index: int, position: int, bit: int) -> None:
    entries = list(LOG.entries)
    event = entries[index].event
    assert event is not None
    position %= len(event)
    entries[index] = replace(
        entries[index],
        event=event[:position] + bytes([event[position] ^ (1 << bit)]) + event[position + 1 :],
    )
    report = run(entries)
    assert kinds(report.findings) == [(FindingKind.ALTERED, index)]
