"""C2SP signed notes and tlog checkpoints with Ed25519 — pure, no I/O.

A checkpoint (c2sp.org/tlog-checkpoint) is a signed note (c2sp.org/signed-note) whose text is::

    <origin>\\n<tree size>\\n<base64 root hash>\\n[<extension line>\\n ...]

followed by a blank line and signature lines ``— <key name> <base64(key ID || signature)>``
(U+2014 EM DASH, space). For Ed25519 (signature type 0x01) the signature covers the note
text including its final newline, and the 4-byte key ID is
``SHA-256(key name || 0x0A || 0x01 || 32-byte public key)[:4]``.

Keys travel as the strings of golang.org/x/mod/sumdb/note, so Go tooling (witnesses, the
``note`` package) reads ours: verifier key ``<name>+<hex key ID>+<base64(0x01 || public key)>``
and signer key ``PRIVATE+KEY+<name>+<hex key ID>+<base64(0x01 || 32-byte seed)>``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from relay.audit.errors import (
    BadSignature,
    MalformedCheckpoint,
    MalformedNote,
    MalformedVerifierKey,
    OriginMismatch,
    UnknownKey,
)

__all__ = [
    "ALG_ED25519",
    "SIGNATURE_PREFIX",
    "Checkpoint",
    "Note",
    "NoteSignature",
    "NoteVerifier",
    "format_body",
    "key_id",
    "open_note",
    "parse_and_verify",
    "parse_body",
    "parse_signer_key",
    "parse_unverified",
    "parse_verifier_key",
    "sign",
    "sign_note",
    "signer_key",
    "verifier_key",
]

ALG_ED25519 = 0x01
"""Signature type byte for Ed25519 (C2SP signed-note, "Signature types")."""

SIGNATURE_PREFIX = "\u2014 "
"""Every signature line starts with EM DASH and a space."""

# C2SP: verifiers "MUST accept at least up to 16 signatures"; golang.org/x/mod/sumdb/note
# stops at 100. Bounding the count bounds the work an attacker can make us do.
MAX_SIGNATURES = 100

_SIZE_RE = re.compile(r"0|[1-9][0-9]*")
_HEX8_RE = re.compile(r"[0-9a-f]{8}")


def _valid_name(name: str) -> bool:
    # C2SP signed-note: "Key names MUST be non-empty and MUST NOT contain any Unicode spaces
    # or plus (U+002B) characters."
    return bool(name) and "+" not in name and not any(ch.isspace() for ch in name)


def _public_bytes(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(name: str, public_key: Ed25519PublicKey | bytes) -> bytes:
    """4-byte key ID: ``SHA-256(name || 0x0A || 0x01 || public key)[:4]`` (C2SP signed-note)."""
    raw = public_key if isinstance(public_key, bytes) else _public_bytes(public_key)
    return hashlib.sha256(name.encode() + b"\n" + bytes([ALG_ED25519]) + raw).digest()[:4]


@dataclass(frozen=True)
class NoteVerifier:
    """A trusted Ed25519 note key: name, key ID and public key."""

    name: str
    key_id: bytes
    public_key: Ed25519PublicKey

    def __str__(self) -> str:
        return verifier_key(self.name, self.public_key)

    def verify(self, text: bytes, signature: bytes) -> bool:
        """True when ``signature`` is this key's Ed25519 signature of ``text``."""
        try:
            self.public_key.verify(signature, text)
        except InvalidSignature:
            return False
        return True


def verifier_key(name: str, public_key: Ed25519PublicKey) -> str:
    """Encode ``<name>+<hex key ID>+<base64(0x01 || public key)>``."""
    if not _valid_name(name):
        raise MalformedVerifierKey("key name must be non-empty, without spaces or '+'")
    raw = _public_bytes(public_key)
    encoded = base64.b64encode(bytes([ALG_ED25519]) + raw).decode()
    return f"{name}+{key_id(name, raw).hex()}+{encoded}"


def parse_verifier_key(text: str) -> NoteVerifier:
    """Parse a verifier key string; the key ID must match the name and the key."""
    name, sep1, rest = text.partition("+")
    hex_id, sep2, encoded = rest.partition("+")
    if not (sep1 and sep2) or not _valid_name(name) or not _HEX8_RE.fullmatch(hex_id):
        raise MalformedVerifierKey("verifier key must be name+8-hex-key-id+base64-key")
    raw = _b64decode(encoded, MalformedVerifierKey, "verifier key material is not base64")
    if len(raw) != 33 or raw[0] != ALG_ED25519:
        raise MalformedVerifierKey("verifier key is not an Ed25519 (0x01) key")
    if key_id(name, raw[1:]).hex() != hex_id:
        raise MalformedVerifierKey("verifier key ID does not match its name and key")
    return NoteVerifier(name, bytes.fromhex(hex_id), Ed25519PublicKey.from_public_bytes(raw[1:]))


def signer_key(name: str, private_key: Ed25519PrivateKey) -> str:
    """Encode ``PRIVATE+KEY+<name>+<hex key ID>+<base64(0x01 || seed)>``."""
    if not _valid_name(name):
        raise MalformedVerifierKey("key name must be non-empty, without spaces or '+'")
    seed = private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    encoded = base64.b64encode(bytes([ALG_ED25519]) + seed).decode()
    return f"PRIVATE+KEY+{name}+{key_id(name, private_key.public_key()).hex()}+{encoded}"


def parse_signer_key(text: str) -> tuple[str, Ed25519PrivateKey]:
    """Parse a signer key string into (name, private key)."""
    prefix = "PRIVATE+KEY+"
    if not text.startswith(prefix):
        raise MalformedVerifierKey("signer key must start with PRIVATE+KEY+")
    name, sep1, rest = text[len(prefix) :].partition("+")
    hex_id, sep2, encoded = rest.partition("+")
    if not (sep1 and sep2) or not _valid_name(name) or not _HEX8_RE.fullmatch(hex_id):
        raise MalformedVerifierKey("signer key must be PRIVATE+KEY+name+key-id+base64-seed")
    raw = _b64decode(encoded, MalformedVerifierKey, "signer key material is not base64")
    if len(raw) != 33 or raw[0] != ALG_ED25519:
        raise MalformedVerifierKey("signer key is not an Ed25519 (0x01) key")
    private_key = Ed25519PrivateKey.from_private_bytes(raw[1:])
    if key_id(name, private_key.public_key()).hex() != hex_id:
        raise MalformedVerifierKey("signer key ID does not match its name and key")
    return name, private_key


def _b64decode(text: str, error: type[Exception], message: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise error(message) from exc


# --- signed notes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class NoteSignature:
    """One signature line: key name, 4-byte key ID, raw signature bytes."""

    name: str
    key_id: bytes
    signature: bytes

    def line(self) -> str:
        """The signature line, with its final newline."""
        blob = base64.b64encode(self.key_id + self.signature).decode()
        return f"{SIGNATURE_PREFIX}{self.name} {blob}\n"


@dataclass(frozen=True)
class Note:
    """A parsed (not yet verified) signed note: its text and its signature lines."""

    text: str
    signatures: tuple[NoteSignature, ...]

    def __str__(self) -> str:
        return self.text + "\n" + "".join(sig.line() for sig in self.signatures)

    @classmethod
    def parse(cls, note: str | bytes) -> Note:
        """Split a signed note into text and signatures (C2SP signed-note "Format")."""
        if isinstance(note, bytes):
            try:
                note = note.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise MalformedNote("note is not valid UTF-8") from exc
        # "Signed notes ... MUST NOT contain any ASCII control characters (those below
        # U+0020) other than newline."
        if any(ch < " " and ch != "\n" for ch in note):
            raise MalformedNote("note contains a control character")
        # "the text is separated from the signatures by the last empty line in the note."
        split = note.rfind("\n\n")
        if split < 0:
            raise MalformedNote("note has no blank line before its signatures")
        text, block = note[: split + 1], note[split + 2 :]
        if not block or not block.endswith("\n"):
            raise MalformedNote("note signatures must end with a newline")
        lines = block[:-1].split("\n")
        if len(lines) > MAX_SIGNATURES:
            raise MalformedNote(f"note has more than {MAX_SIGNATURES} signatures")
        signatures: list[NoteSignature] = []
        for line in lines:
            if not line.startswith(SIGNATURE_PREFIX):
                raise MalformedNote("signature line must start with an em dash and a space")
            name, space, blob = line[len(SIGNATURE_PREFIX) :].rpartition(" ")
            if not space or not _valid_name(name):
                raise MalformedNote("signature line has no valid key name")
            raw = _b64decode(blob, MalformedNote, "signature is not base64")
            if len(raw) < 5:
                raise MalformedNote("signature is too short for a key ID and a signature")
            signatures.append(NoteSignature(name, raw[:4], raw[4:]))
        return cls(text, tuple(signatures))


def sign_note(text: str, name: str, private_key: Ed25519PrivateKey) -> str:
    """Sign ``text`` (which must end with a newline) and return the signed note."""
    if not text.endswith("\n") or any(ch < " " and ch != "\n" for ch in text):
        raise MalformedNote("note text must end with a newline and contain no control chars")
    if not _valid_name(name):
        raise MalformedNote("key name must be non-empty, without spaces or '+'")
    signature = private_key.sign(text.encode("utf-8"))
    sig = NoteSignature(name, key_id(name, private_key.public_key()), signature)
    return str(Note(text, (sig,)))


VerifierKeys = str | NoteVerifier | Sequence[str | NoteVerifier]


def _verifiers(keys: VerifierKeys) -> list[NoteVerifier]:
    items: Sequence[str | NoteVerifier] = [keys] if isinstance(keys, str | NoteVerifier) else keys
    return [parse_verifier_key(k) if isinstance(k, str) else k for k in items]


def open_note(note: str | bytes, keys: VerifierKeys) -> str:
    """Verify a signed note against trusted keys and return its text.

    C2SP signed-note: signatures from unknown keys are ignored; a known key (same name *and*
    key ID) whose signature fails makes the whole note rejected (:class:`BadSignature`); if
    no known key signed, the note is rejected (:class:`UnknownKey`).
    """
    parsed = Note.parse(note)
    known = {(v.name, v.key_id): v for v in _verifiers(keys)}
    message = parsed.text.encode("utf-8")
    verified = False
    for sig in parsed.signatures:
        verifier = known.get((sig.name, sig.key_id))
        if verifier is None:
            continue
        if not verifier.verify(message, sig.signature):
            raise BadSignature(f"signature by {sig.name} does not verify")
        verified = True
    if not verified:
        raise UnknownKey("note is not signed by any trusted key")
    return parsed.text


# --- checkpoints ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """A signed tree head: log origin, tree size, RFC 6962 root hash, optional extensions."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin:
            raise MalformedCheckpoint("checkpoint origin must be one non-empty line")
        if self.size < 0:
            raise MalformedCheckpoint("checkpoint size must be >= 0")
        if len(self.root_hash) != 32:
            raise MalformedCheckpoint("checkpoint root hash must be 32 bytes")
        for line in self.extensions:
            if not line or "\n" in line:
                raise MalformedCheckpoint("extension lines must be single non-empty lines")


def format_body(checkpoint: Checkpoint) -> str:
    """Note text of a checkpoint: origin, size, base64 root, extension lines, each ending in
    a newline (C2SP tlog-checkpoint "Note text")."""
    lines = [
        checkpoint.origin,
        str(checkpoint.size),
        base64.b64encode(checkpoint.root_hash).decode(),
        *checkpoint.extensions,
    ]
    return "\n".join(lines) + "\n"


def parse_body(text: str) -> Checkpoint:
    """Parse checkpoint note text; the exact inverse of :func:`format_body`."""
    if not text.endswith("\n"):
        raise MalformedCheckpoint("checkpoint text must end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise MalformedCheckpoint("checkpoint needs origin, size and root hash lines")
    origin, size_text, root_text, *extensions = lines
    if not origin:
        raise MalformedCheckpoint("checkpoint origin is empty")
    # "the ASCII decimal representation ... with no leading zeroes"
    if not _SIZE_RE.fullmatch(size_text):
        raise MalformedCheckpoint("checkpoint size is not a canonical decimal number")
    root_hash = _b64decode(root_text, MalformedCheckpoint, "checkpoint root is not base64")
    if len(root_hash) != 32 or base64.b64encode(root_hash).decode() != root_text:
        raise MalformedCheckpoint("checkpoint root is not the base64 of a 32-byte hash")
    if any(not line for line in extensions):
        raise MalformedCheckpoint("checkpoint extension lines must be non-empty")
    return Checkpoint(origin, int(size_text), root_hash, tuple(extensions))


def sign(checkpoint: Checkpoint, name: str, private_key: Ed25519PrivateKey) -> str:
    """Sign a checkpoint; returns the note. The key name SHOULD equal the origin (C2SP)."""
    return sign_note(format_body(checkpoint), name, private_key)


def parse_unverified(note: str | bytes) -> Checkpoint:
    """Read the checkpoint of a note WITHOUT checking signatures (for error reports only)."""
    return parse_body(Note.parse(note).text)


def parse_and_verify(
    note: str | bytes, keys: VerifierKeys, *, origin: str | None = None
) -> Checkpoint:
    """Verify a signed checkpoint against trusted key(s) and return it.

    Raises :class:`MalformedNote` / :class:`MalformedCheckpoint` for bad syntax,
    :class:`BadSignature` when a trusted key's signature fails, :class:`UnknownKey` when no
    trusted key signed, and :class:`OriginMismatch` when ``origin`` is given and differs.
    """
    checkpoint = parse_body(open_note(note, keys))
    if origin is not None and checkpoint.origin != origin:
        raise OriginMismatch(f"checkpoint is for log {checkpoint.origin!r}, not {origin!r}")
    return checkpoint
