"""Standalone verifier of the audit log — small enough to audit by reading.

Depends on the Python standard library and ``cryptography`` (Ed25519) only, on purpose: it
re-implements the few rules it checks instead of importing the code that wrote the log, so a
bug (or a tampered copy) of the writer cannot hide itself.

What the log is (issue 3):

* entry ``i`` stores ``commitment = SHA-256(salt || event)``; after retention erasure only the
  commitment is left. ``event`` is the RFC 8785 canonical JSON of a FHIR AuditEvent whose top
  level ``"id"`` member is the decimal log index ``i`` (no nested element carries ``"id"``);
* leaf ``i`` is ``SHA-256(0x00 || commitment)``, interior nodes ``SHA-256(0x01 || l || r)``,
  the tree head is the RFC 6962 / RFC 9162 §2.1.1 Merkle tree hash of the leaves in index
  order;
* checkpoints are C2SP signed notes ``origin\\nsize\\nbase64(root)\\n`` signed with Ed25519
  (c2sp.org/signed-note, c2sp.org/tlog-checkpoint).

What is checked, and how each finding names its place:

1. every stored commitment against its salt and event → "entry 41 altered";
2. stored indices are contiguous → "entry 42 missing (index gap 41 -> 43)";
3. the index inside each authentic event equals its position → "entries 10 and 11 out of
   order", or a renumbered run;
4. every checkpoint signature → "checkpoint at size 1000 signature invalid";
5. every checkpoint root against the root recomputed over the log prefix of its size. One
   recomputation checks them all, which also proves each checkpoint consistent with every
   other (they all describe prefixes of the same sequence of leaves);
6. a checkpoint held elsewhere that is larger than the log → "log truncated".
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = ["Finding", "FindingKind", "LogEntry", "VerificationReport", "verify_log"]

_EMPTY_ROOT = hashlib.sha256(b"").digest()
_PLACEHOLDER = bytes(32)  # stands in for a leaf we do not have, so later positions stay aligned
_ID_MARK = b'"id":"'
_SIZE_RE = re.compile(r"0|[1-9][0-9]*")
_EM_DASH = "\u2014 "


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One stored entry. An erased entry has ``salt`` and ``event`` set to ``None``."""

    index: int
    commitment: bytes | None = None
    salt: bytes | None = None
    event: bytes | None = None

    @property
    def erased(self) -> bool:
        """True when retention has removed the content, leaving the commitment."""
        return self.salt is None and self.event is None


class FindingKind(StrEnum):
    """What kind of problem a finding reports."""

    ALTERED = "altered"
    MISSING = "missing"
    OUT_OF_ORDER = "out_of_order"
    MISPLACED = "misplaced"
    DUPLICATE = "duplicate"
    MALFORMED_ENTRY = "malformed_entry"
    CHECKPOINT_MALFORMED = "checkpoint_malformed"
    SIGNATURE_INVALID = "signature_invalid"
    UNSIGNED = "unsigned"
    ORIGIN_MISMATCH = "origin_mismatch"
    ROOT_MISMATCH = "root_mismatch"
    TRUNCATED = "truncated"


@dataclass(frozen=True)
class Finding:
    """One problem: its kind, the log index it concerns (if any) and a precise message."""

    kind: FindingKind
    index: int | None
    message: str


@dataclass(frozen=True)
class VerificationReport:
    """Outcome of :func:`verify_log`. ``ok`` is true when there is no finding."""

    ok: bool
    entries: int
    erased: int
    log_size: int
    root: bytes
    checkpoints_verified: int
    covered_size: int
    findings: tuple[Finding, ...]

    @property
    def uncovered(self) -> int:
        """Entries appended after the largest verified checkpoint (not yet signed)."""
        return max(0, self.log_size - self.covered_size)


@dataclass(frozen=True)
class _Verifier:
    name: str
    key_id: bytes
    public_key: Ed25519PublicKey


@dataclass(frozen=True)
class _Target:
    label: str
    size: int
    root: bytes


def _parse_verifier_key(text: str) -> _Verifier:
    # <name>+<8 hex key ID>+<base64(0x01 || 32-byte Ed25519 key)>
    parts = text.split("+", 2)
    if len(parts) != 3 or not parts[0] or not re.fullmatch(r"[0-9a-f]{8}", parts[1]):
        raise ValueError("verifier key must be name+8-hex-key-id+base64-key")
    name, hex_id, encoded = parts
    raw = base64.b64decode(encoded, validate=True)
    if len(raw) != 33 or raw[0] != 0x01:
        raise ValueError("verifier key is not an Ed25519 key")
    key_id = hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4]
    if key_id.hex() != hex_id:
        raise ValueError("verifier key ID does not match its name and key")
    return _Verifier(name, key_id, Ed25519PublicKey.from_public_bytes(raw[1:]))


def _check_note(
    note: str, label: str, position: str, verifier: _Verifier, origin: str | None
) -> _Target | Finding:
    # Signed note: text, blank line, "— name base64(keyID || sig)" lines (c2sp.org/signed-note).
    split = note.rfind("\n\n")
    try:
        if split < 0 or not note.endswith("\n"):
            raise ValueError("not a signed note")
        text, signature_lines = note[: split + 1], note[split + 2 : -1].split("\n")
        origin_line, size_line, root_line, *_ = [*text[:-1].split("\n"), "", "", ""]
        if not origin_line or not _SIZE_RE.fullmatch(size_line):
            raise ValueError("checkpoint body needs origin and size lines")
        root = base64.b64decode(root_line, validate=True)
        if len(root) != 32:
            raise ValueError("checkpoint root is not a 32-byte hash")
        size = int(size_line)
    except (ValueError, binascii.Error) as exc:
        return Finding(
            FindingKind.CHECKPOINT_MALFORMED, None, f"{label}{position} is malformed: {exc}"
        )
    known = False
    for line in signature_lines:
        name, _, blob = line.removeprefix(_EM_DASH).partition(" ")
        if not line.startswith(_EM_DASH) or name != verifier.name:
            continue
        try:
            raw = base64.b64decode(blob, validate=True)
        except binascii.Error:
            raw = b""
        if raw[:4] != verifier.key_id:
            continue  # same name, other key: ignored as C2SP requires
        known = True
        try:
            verifier.public_key.verify(raw[4:], text.encode("utf-8"))
        except InvalidSignature:
            return Finding(
                FindingKind.SIGNATURE_INVALID, size, f"{label} at size {size} signature invalid"
            )
    if not known:
        return Finding(
            FindingKind.UNSIGNED,
            size,
            f"{label} at size {size} is not signed by the audit key {verifier.name}",
        )
    if origin is not None and origin_line != origin:
        return Finding(
            FindingKind.ORIGIN_MISMATCH,
            size,
            f"{label} at size {size} is for log {origin_line!r}, not {origin!r}",
        )
    return _Target(label, size, root)


def _fold(stack: list[bytes]) -> bytes:
    # RFC 6962: the root of n leaves is the right fold of its perfect subtrees.
    if not stack:
        return _EMPTY_ROOT
    node = stack[-1]
    for left in reversed(stack[:-1]):
        node = hashlib.sha256(b"\x01" + left + node).digest()
    return node


class _StreamingTree:
    """RFC 6962 tree head over a stream of leaves, O(log n) memory; remembers the roots at
    the sizes of the checkpoints to check."""

    __slots__ = ("_next", "_wanted", "roots_at", "size", "stack")

    def __init__(self, wanted: list[int]) -> None:
        self.size = 0
        self.stack: list[bytes] = []
        self.roots_at: dict[int, bytes] = {0: _EMPTY_ROOT}
        self._wanted = iter(n for n in wanted if n > 0)
        self._next = next(self._wanted, -1)

    def push(self, leaf: bytes) -> None:
        self.size += 1
        carry, node, stack = self.size, leaf, self.stack
        # Leaf number n completes one perfect subtree per trailing zero bit of n.
        while not carry & 1:
            node = hashlib.sha256(b"\x01" + stack.pop() + node).digest()
            carry >>= 1
        stack.append(node)
        if self.size == self._next:
            self.roots_at[self.size] = _fold(stack)
            self._next = next(self._wanted, -1)


def verify_log(
    entries: Iterable[LogEntry],
    checkpoints: Iterable[str],
    verifier_key: str,
    *,
    external_checkpoint: str | None = None,
    origin: str | None = None,
) -> VerificationReport:
    """Verify a copy of the log against its signed checkpoints and the public key.

    ``entries`` must come in stored index order (a storage ``ORDER BY index``).
    ``external_checkpoint`` is the latest checkpoint kept outside the log's storage (a witness
    directory, the DPO's mailbox): it is what reveals a truncation of the newest entries.
    """
    verifier = _parse_verifier_key(verifier_key)
    findings: list[Finding] = []
    targets: list[_Target] = []
    labelled = [(note, "checkpoint", f" #{n}") for n, note in enumerate(checkpoints, 1)]
    if external_checkpoint is not None:
        labelled.append((external_checkpoint, "external checkpoint", ""))
    for note, label, position in labelled:
        result = _check_note(note, label, position, verifier, origin)
        if isinstance(result, Finding):
            findings.append(result)
        else:
            targets.append(result)
    wanted = sorted({t.size for t in targets})

    sha256 = hashlib.sha256
    tree = _StreamingTree(wanted)
    push = tree.push
    entries_seen = erased = 0
    misplaced: list[tuple[int, int | None]] = []

    for entry in entries:
        index = entry.index
        entries_seen += 1
        if index != tree.size:
            expected = tree.size
            if index < expected:
                findings.append(
                    Finding(
                        FindingKind.DUPLICATE,
                        index,
                        f"entry {index} listed again after entry {expected - 1}",
                    )
                )
                continue
            gap = (
                f"entry {expected}" if index - expected == 1 else f"entries {expected}..{index - 1}"
            )
            where = f"index gap {expected - 1} -> {index}" if expected else f"log starts at {index}"
            findings.append(Finding(FindingKind.MISSING, expected, f"{gap} missing ({where})"))
            for _ in range(index - expected):
                push(_PLACEHOLDER)  # keep later leaves at their own positions
        salt, event, commitment = entry.salt, entry.event, entry.commitment
        if salt is not None and event is not None:
            computed = sha256(salt + event).digest()
            if commitment is None:
                commitment = computed
            if computed != commitment:
                findings.append(
                    Finding(
                        FindingKind.ALTERED,
                        index,
                        f"entry {index} altered: commitment does not match its content",
                    )
                )
            else:
                # Authentic content must say where it belongs. The top-level "id" is the
                # last '"id":"' of the canonical event (sorted members; nothing nested has one).
                mark = event.rfind(_ID_MARK)
                try:
                    claimed: int | None = (
                        int(event[mark + 6 : event.index(b'"', mark + 6)]) if mark >= 0 else None
                    )
                except ValueError:
                    claimed = None
                if claimed != index:
                    misplaced.append((index, claimed))
        elif salt is None and event is None:
            erased += 1
        else:
            findings.append(
                Finding(
                    FindingKind.MALFORMED_ENTRY,
                    index,
                    f"entry {index} has a salt or an event but not both",
                )
            )
        if commitment is None or len(commitment) != 32:
            findings.append(
                Finding(
                    FindingKind.MALFORMED_ENTRY, index, f"entry {index} has no usable commitment"
                )
            )
            push(_PLACEHOLDER)
        else:
            push(sha256(b"\x00" + commitment).digest())
    size = tree.size
    roots_at = tree.roots_at

    findings.extend(_explain_misplaced(misplaced))
    # Every root at size N covers all leaves below N: once a prefix diverges, every later
    # checkpoint differs too. Report each run of consecutive mismatches once, at its start.
    matched: list[int] = []
    run: list[_Target] = []

    def flush_run() -> None:
        if run:
            good = matched[-1] if matched else 0
            message = (
                f"{run[0].label} root at size {run[0].size} does not match the log "
                f"(divergence within entries {good}..{run[0].size - 1})"
            )
            if len(run) > 1:
                message += (
                    f"; {len(run) - 1} later checkpoint(s) up to size {run[-1].size} "
                    "do not match either"
                )
            findings.append(Finding(FindingKind.ROOT_MISMATCH, good, message))
            run.clear()

    for target in sorted(targets, key=lambda t: t.size):
        if target.size > size:
            findings.append(
                Finding(
                    FindingKind.TRUNCATED,
                    size,
                    f"log truncated: {target.label} has size {target.size} "
                    f"but log has {size} entries",
                )
            )
        elif roots_at[target.size] == target.root:
            flush_run()
            matched.append(target.size)
        else:
            run.append(target)
    flush_run()
    return VerificationReport(
        ok=not findings,
        entries=entries_seen,
        erased=erased,
        log_size=size,
        root=_fold(tree.stack),
        checkpoints_verified=len(matched),
        covered_size=max(matched, default=0),
        findings=tuple(findings),
    )


def _explain_misplaced(misplaced: list[tuple[int, int | None]]) -> list[Finding]:
    # A swap shows as two positions holding each other's entry; a deletion followed by
    # renumbering shows as a run of positions all off by the same amount.
    claims = dict(misplaced)
    findings: list[Finding] = []
    done: set[int] = set()
    run: list[tuple[int, int]] = []

    def flush() -> None:
        if not run:
            return
        (first, claim), (last, _) = run[0], run[-1]
        if first == last:
            message = f"entry at position {first} carries index {claim} (misplaced)"
        else:
            shift = claim - first
            message = (
                f"entries at positions {first}..{last} carry indices "
                f"{claim}..{claim + last - first} (renumbered by {shift:+d})"
            )
        findings.append(Finding(FindingKind.MISPLACED, first, message))
        run.clear()

    for position, claim in misplaced:
        if position in done:
            continue
        if claim is None:
            flush()
            findings.append(
                Finding(
                    FindingKind.MALFORMED_ENTRY,
                    position,
                    f"entry {position} content carries no log index",
                )
            )
        elif claims.get(claim) == position:
            flush()
            done.update((position, claim))
            low, high = sorted((position, claim))
            findings.append(
                Finding(
                    FindingKind.OUT_OF_ORDER,
                    low,
                    f"entries {low} and {high} out of order (each holds the other's content)",
                )
            )
        else:
            if run and (run[-1][0] + 1 != position or run[-1][1] + 1 != claim):
                flush()
            run.append((position, claim))
    flush()
    return findings
