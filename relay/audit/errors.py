"""Errors of the audit package.

Each error carries the HTTP answer an adapter gives when it escapes a request handler
(DESIGN.md rule 4): ``http_status`` and a stable machine ``code``. Messages never contain
event content, only indices, sizes and key names.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AuditError",
    "AuditUnavailable",
    "BadSignature",
    "CanonicalizationError",
    "CheckpointError",
    "InvalidAuditRecord",
    "InvalidProof",
    "MalformedCheckpoint",
    "MalformedNote",
    "MalformedVerifierKey",
    "OriginMismatch",
    "ProofRequestError",
    "UnknownKey",
]


class AuditError(Exception):
    """Base class of every audit error."""

    http_status: ClassVar[int] = 500
    code: ClassVar[str] = "audit_error"


class AuditUnavailable(AuditError):
    """The audit log cannot durably append: the audited action must be refused, not done
    untraced (issue 3, "written before the result is released")."""

    http_status = 503
    code = "audit_unavailable"


class InvalidAuditRecord(AuditError, ValueError):
    """An audit record breaks the event rules (free text, unknown detail key, bad
    identifier). This is a programming error in the caller, hence 500."""

    code = "audit_record_invalid"


class CanonicalizationError(AuditError, ValueError):
    """A value cannot be serialised by RFC 8785 (NaN, lone surrogate, non-string key...)."""

    code = "canonicalization_failed"


class ProofRequestError(AuditError, ValueError):
    """A proof was asked for an index or size the tree does not have."""

    http_status = 400
    code = "invalid_proof_request"


class InvalidProof(AuditError):
    """A Merkle inclusion or consistency proof does not verify (RFC 9162 §2.1.3.2/§2.1.4.2)."""

    http_status = 422
    code = "proof_invalid"


class CheckpointError(AuditError):
    """Base class of signed-note / checkpoint errors."""

    http_status = 422
    code = "checkpoint_invalid"


class MalformedNote(CheckpointError):
    """The text is not a well-formed C2SP signed note."""

    http_status = 400
    code = "note_malformed"


class MalformedCheckpoint(MalformedNote):
    """The note text is not a well-formed C2SP tlog-checkpoint body."""

    code = "checkpoint_malformed"


class MalformedVerifierKey(CheckpointError):
    """A verifier (``name+hex+base64``) or signer (``PRIVATE+KEY+...``) key string is bad."""

    http_status = 400
    code = "verifier_key_malformed"


class OriginMismatch(CheckpointError):
    """A correctly signed checkpoint names another log than the one expected."""

    code = "checkpoint_origin_mismatch"


class UnknownKey(CheckpointError):
    """No signature in the note comes from a known key (C2SP signed-note: "If no signature
    from a known key verifies successfully, clients MUST reject the note")."""

    code = "note_unknown_key"


class BadSignature(CheckpointError):
    """A signature from a known key (name and key ID match) fails to verify."""

    code = "note_signature_invalid"
