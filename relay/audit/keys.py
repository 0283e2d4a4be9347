"""Keys of the audit log, kept in ``DATA_DIR/audit/`` next to ``audit.db``.

=================  =====  ==========================================================
file               mode   content
=================  =====  ==========================================================
``signing.key``    0600   Ed25519 checkpoint signer, ``PRIVATE+KEY+<name>+<id>+<b64>``
``verifier.key``   0644   its public verifier key ``<name>+<id>+<b64>`` (C2SP signed
                          note / golang.org/x/mod/sumdb/note format): all that
                          ``relais audit verify`` needs besides a copy of the log
``patient.key``    0600   32 random bytes: HMAC key of patient and search references
=================  =====  ==========================================================

Each file is written once (``O_CREAT | O_EXCL``), fsynced, and never modified: replacing the
signing key would make every later checkpoint unverifiable with the published verifier key,
and replacing the patient key would make earlier events unsearchable by patient. Once the
database exists, a missing secret key is therefore an error (:class:`AuditUnavailable`), never
a reason to generate a new one silently.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.audit.checkpoint import parse_signer_key, parse_verifier_key, signer_key, verifier_key
from relay.audit.errors import AuditUnavailable, CheckpointError
from storage.keys import fsync_dir

__all__ = [
    "PATIENT_KEY_BYTES",
    "PATIENT_KEY_FILE",
    "SIGNING_KEY_FILE",
    "VERIFIER_KEY_FILE",
    "AuditKeys",
    "load_keys",
    "read_verifier_key",
]

SIGNING_KEY_FILE = "signing.key"
VERIFIER_KEY_FILE = "verifier.key"
PATIENT_KEY_FILE = "patient.key"
PATIENT_KEY_BYTES = 32


@dataclass(frozen=True)
class AuditKeys:
    """The loaded keys: checkpoint signer (name + Ed25519 key), its verifier string, and the
    HMAC key of patient references."""

    name: str
    signing_key: Ed25519PrivateKey
    verifier_key: str
    patient_key: bytes

    def __repr__(self) -> str:  # never print key material
        return f"AuditKeys(name={self.name!r}, verifier_key={self.verifier_key!r})"


def _write_new(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL: two processes racing on first start cannot both create (and one overwrite) a key.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    path.chmod(mode)  # the umask may have removed bits (0644 for the public key)
    fsync_dir(path.parent)


def _missing(path: Path, what: str) -> AuditUnavailable:
    return AuditUnavailable(
        f"audit {what} {path} is missing although the audit database exists: restore it from "
        "backup (a new key would break verification of the existing log)"
    )


def load_keys(directory: Path, name: str, *, create: bool) -> AuditKeys:
    """Load the audit keys of ``directory``; with ``create``, generate the missing ones.

    ``name`` is the signer key name used when a signing key is generated (C2SP: it SHOULD be
    the log origin). ``create`` must be false once the audit database exists: then a missing
    signing or patient key raises :class:`AuditUnavailable`. The public ``verifier.key`` is
    derived from the signing key and rewritten if it was deleted; if present it must match.
    """
    signing_path = directory / SIGNING_KEY_FILE
    patient_path = directory / PATIENT_KEY_FILE
    verifier_path = directory / VERIFIER_KEY_FILE
    try:
        if not signing_path.exists():
            if not create:
                raise _missing(signing_path, "signing key")
            generated = Ed25519PrivateKey.generate()
            _write_new(signing_path, (signer_key(name, generated) + "\n").encode(), 0o600)
        if not patient_path.exists():
            if not create:
                raise _missing(patient_path, "patient key")
            _write_new(patient_path, secrets.token_bytes(PATIENT_KEY_BYTES), 0o600)
        key_name, private_key = parse_signer_key(signing_path.read_text("ascii").strip())
        patient_key = patient_path.read_bytes()
        public = verifier_key(key_name, private_key.public_key())
        if verifier_path.exists():
            if verifier_path.read_text("ascii").strip() != public:
                raise AuditUnavailable(
                    f"{verifier_path} does not match the audit signing key {signing_path}"
                )
        else:
            _write_new(verifier_path, (public + "\n").encode(), 0o644)
    except (OSError, UnicodeDecodeError, CheckpointError) as exc:
        raise AuditUnavailable(f"cannot load the audit keys in {directory}: {exc}") from exc
    if len(patient_key) != PATIENT_KEY_BYTES:
        raise AuditUnavailable(f"audit patient key {patient_path} is not {PATIENT_KEY_BYTES} bytes")
    return AuditKeys(key_name, private_key, public, patient_key)


def read_verifier_key(path: Path) -> str:
    """Read and check a ``verifier.key`` file (for ``relais audit verify`` on a copy)."""
    text = path.read_text("ascii").strip()
    parse_verifier_key(text)  # raises MalformedVerifierKey with a precise message
    return text
