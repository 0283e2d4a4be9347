"""Audit log benchmarks: full verification of N entries, and proof generation at N leaves.

Targets (issue 3): full verification of 1,000,000 events at >= 100,000 events/s; inclusion
and consistency proof generation p99 < 5 ms at 1,000,000 leaves.

The synthetic log is realistic in shape: every entry is a real RFC 8785 canonical FHIR
AuditEvent (an attachment download with a patient hash, TLS details; ~2 KB) with its own
32-byte salt, commitment and log index, and a signed C2SP checkpoint every
``--checkpoint-every`` entries. Event bytes are produced on the fly from a template while the
verifier consumes them (as rows streamed from a database would be), so the timed figure
includes producing each entry; the time to produce them alone is reported for comparison.

Run: ``python -m bench.audit_verify`` (``--size 100000`` for a quick run); ``main()`` is the
full 1M run that ``python -m bench.run`` calls.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.run import Result, format_table
from relay.audit import checkpoint, events, merkle
from relay.audit.canonical import canonicalize
from relay.audit.verify import LogEntry, verify_log

ORIGIN = "relais.bench/audit"
VERIFY_TARGET = 100_000.0  # events/s (issue 3)
PROOF_TARGET_MS = 5.0  # p99 at 1M leaves (issue 3)
_SENTINEL = "987654321987654321"


@dataclass(frozen=True)
class SyntheticLog:
    """Everything needed to feed the verifier and the proof generator."""

    size: int
    parts: tuple[bytes, ...]
    salts: bytes
    commitments: list[bytes]
    tree: merkle.MerkleTree
    notes: list[str]
    verifier_key: str

    def event(self, index: int) -> bytes:
        """Canonical event bytes of entry ``index`` (the template with the index filled in)."""
        return str(index).encode().join(self.parts)

    def entries(self) -> Iterator[LogEntry]:
        """All entries in index order, as a storage scan would yield them."""
        parts, salts, commitments = self.parts, self.salts, self.commitments
        for index in range(self.size):
            yield LogEntry(
                index,
                commitments[index],
                salts[index * 32 : index * 32 + 32],
                str(index).encode().join(parts),
            )


def _template_parts() -> tuple[bytes, ...]:
    key = b"k" * 32
    record = events.AuditRecord(
        action=events.AuditAction.ATTACHMENT_DOWNLOADED,
        outcome=events.Outcome.SUCCESS,
        now=datetime(2024, 5, 1, 8, 30, tzinfo=UTC),
        actor=events.Actor.professional("0b5f2c1e-7d1a-4f7e-9a55-3c2d1b0a9e8f", "nurse"),
        observer="relais-1",
        network_address="192.0.2.10",
        purpose=events.Purpose.TREATMENT,
        entities=(events.EntityRef(events.ResourceKind.ATTACHMENT, "att-5d41402abc4b2a76"),),
        patient=events.patient_reference("255082A12345678", key),
        detail=(("tls_version", "TLSv1.3"), ("tls_cipher", "TLS_AES_256_GCM_SHA384")),
    )
    # The sentinel index is replaced by each entry's index, wherever the event carries it.
    content = canonicalize(events.build_audit_event(record, index=int(_SENTINEL)))
    return tuple(content.split(_SENTINEL.encode()))


def build_log(size: int, checkpoint_every: int) -> SyntheticLog:
    """Generate ``size`` entries, their Merkle tree and signed checkpoints."""
    parts = _template_parts()
    salts = os.urandom(32 * size)
    sha256 = hashlib.sha256
    commitments = [
        sha256(salts[i * 32 : i * 32 + 32] + str(i).encode().join(parts)).digest()
        for i in range(size)
    ]
    tree = merkle.MerkleTree(merkle.MemoryNodeStore())
    batch = 65536
    for start in range(0, size, batch):
        tree.extend(sha256(b"\x00" + c).digest() for c in commitments[start : start + batch])
    key = Ed25519PrivateKey.generate()
    sizes = list(range(checkpoint_every, size + 1, checkpoint_every))
    if not sizes or sizes[-1] != size:
        sizes.append(size)
    notes = [
        checkpoint.sign(checkpoint.Checkpoint(ORIGIN, n, tree.root(n)), ORIGIN, key) for n in sizes
    ]
    return SyntheticLog(
        size,
        parts,
        salts,
        commitments,
        tree,
        notes,
        checkpoint.verifier_key(ORIGIN, key.public_key()),
    )


def _percentile(samples: Sequence[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def measure_proofs(log: SyntheticLog, count: int, seed: int = 7) -> dict[str, float]:
    """Time ``count`` inclusion and ``count`` consistency proofs at the full tree size."""
    rng = random.Random(seed)
    tree, size = log.tree, log.size
    root = tree.root()
    inclusion: list[float] = []
    consistency: list[float] = []
    for _ in range(count):
        index = rng.randrange(size)
        started = time.perf_counter()
        proof = tree.inclusion_proof(index, size)
        inclusion.append(time.perf_counter() - started)
        merkle.verify_inclusion(index, size, tree.leaf(index), proof, root)
    for _ in range(count):
        old = rng.randrange(1, size)
        started = time.perf_counter()
        proof = tree.consistency_proof(old, size)
        consistency.append(time.perf_counter() - started)
        merkle.verify_consistency(old, size, tree.root(old), root, proof)
    return {
        "inclusion_p50_ms": statistics.median(inclusion) * 1e3,
        "inclusion_p99_ms": _percentile(inclusion, 0.99) * 1e3,
        "consistency_p50_ms": statistics.median(consistency) * 1e3,
        "consistency_p99_ms": _percentile(consistency, 0.99) * 1e3,
    }


def measure(
    size: int = 1_000_000, checkpoint_every: int = 1000, proofs: int = 2000
) -> dict[str, float]:
    """Build a synthetic log of ``size`` entries, verify it, time proofs; return the figures."""
    started = time.perf_counter()
    log = build_log(size, checkpoint_every)
    setup = time.perf_counter() - started

    started = time.perf_counter()
    for _ in log.entries():
        pass
    produce = time.perf_counter() - started

    # Baseline measured in the same run: the one hash verification cannot avoid, the
    # commitment SHA-256(salt || event) of every entry, over the same entry stream.
    sha256 = hashlib.sha256
    started = time.perf_counter()
    for entry in log.entries():
        sha256(entry.salt + entry.event).digest()  # type: ignore[operator]
    hash_only = time.perf_counter() - started

    started = time.perf_counter()
    report = verify_log(log.entries(), log.notes, log.verifier_key, origin=ORIGIN)
    verify = time.perf_counter() - started
    if not report.ok or report.log_size != size:
        raise SystemExit(f"verification failed on an intact log: {report.findings[:3]}")

    return {
        "entries": float(size),
        "event_bytes": float(len(log.event(0))),
        "checkpoints": float(len(log.notes)),
        "checkpoint_every": float(checkpoint_every),
        "setup_s": setup,
        "produce_entries_s": produce,
        "hash_only_s": hash_only,
        "verify_s": verify,
        "verify_events_per_s": size / verify,
        "hash_only_events_per_s": size / hash_only,
        **measure_proofs(log, proofs),
    }


def results(figures: dict[str, float]) -> list[Result]:
    """The figures as :class:`bench.run.Result` rows.

    The issue's targets are absolute (events/s, milliseconds): those rows use the target as
    their reference and a target ratio of 1.0. The row against bare hashing, measured in the
    same run, shows how much of the verification time is the unavoidable hashing.
    """
    entries = f"{figures['entries']:,.0f}"
    return [
        Result(
            f"full verification, {entries} events",
            figures["verify_events_per_s"],
            VERIFY_TARGET,
            "ev/s",
            "issue 3 target (absolute)",
            target=1.0,
        ),
        Result(
            f"full verification, {entries} events",
            figures["verify_events_per_s"],
            figures["hash_only_events_per_s"],
            "ev/s",
            "commitment SHA-256 alone",
        ),
        Result(
            f"inclusion proof p99 at {entries} leaves",
            figures["inclusion_p99_ms"],
            PROOF_TARGET_MS,
            "ms",
            "issue 3 target (absolute)",
            target=1.0,
            higher_is_better=False,
        ),
        Result(
            f"consistency proof p99 at {entries} leaves",
            figures["consistency_p99_ms"],
            PROOF_TARGET_MS,
            "ms",
            "issue 3 target (absolute)",
            target=1.0,
            higher_is_better=False,
        ),
    ]


def main() -> list[Result]:
    """The full run for ``python -m bench.run``: 1,000,000 entries (about 25 s)."""
    return results(measure())


def _print_details(figures: dict[str, float]) -> None:
    rows = [
        ("entries verified", f"{figures['entries']:,.0f}", ""),
        ("event size", f"{figures['event_bytes']:.0f} B", "canonical FHIR AuditEvent"),
        (
            "signed checkpoints",
            f"{figures['checkpoints']:,.0f}",
            f"every {figures['checkpoint_every']:,.0f}",
        ),
        ("full verification", f"{figures['verify_s']:.2f} s", "incl. producing entries"),
        (
            "  of which producing entries",
            f"{figures['produce_entries_s']:.2f} s",
            "template fill + LogEntry",
        ),
        ("verification rate", f"{figures['verify_events_per_s']:,.0f} ev/s", "target >= 100,000"),
        (
            "commitment hashing alone",
            f"{figures['hash_only_events_per_s']:,.0f} ev/s",
            "same entry stream",
        ),
        ("inclusion proof p50", f"{figures['inclusion_p50_ms']:.3f} ms", ""),
        ("inclusion proof p99", f"{figures['inclusion_p99_ms']:.3f} ms", "target < 5 ms"),
        ("consistency proof p50", f"{figures['consistency_p50_ms']:.3f} ms", ""),
        ("consistency proof p99", f"{figures['consistency_p99_ms']:.3f} ms", "target < 5 ms"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"audit log benchmark (setup {figures['setup_s']:.1f} s)")
    for name, value, note in rows:
        print(f"  {name:<{width}}  {value:>18}  {note}")


def cli(argv: Sequence[str]) -> None:
    """``python -m bench.audit_verify [--size N] [--checkpoint-every K] [--proofs P]``."""
    parser = argparse.ArgumentParser(prog="python -m bench.audit_verify")
    parser.add_argument("--size", type=int, default=1_000_000, help="entries (default 1M)")
    parser.add_argument("--checkpoint-every", type=int, default=1000)
    parser.add_argument("--proofs", type=int, default=2000, help="proofs of each kind")
    args = parser.parse_args(list(argv))
    if args.size < 2 or args.checkpoint_every < 1 or args.proofs < 1:
        parser.error("--size must be >= 2, --checkpoint-every and --proofs >= 1")
    figures = measure(args.size, args.checkpoint_every, args.proofs)
    _print_details(figures)
    print()
    print(format_table([("audit_verify", r) for r in results(figures)]))


if __name__ == "__main__":
    cli(sys.argv[1:])
