"""Resumable chunked uploads (issue 5: photos sent over a weak 4G link): the core, no I/O.

The protocol follows tus 1.0 (tus.io/protocols/resumable-upload) in its core subset:

- ``POST /api/uploads {size, content_type}`` creates an upload and returns its id;
- ``PATCH /api/uploads/{id}`` with ``Upload-Offset: n`` appends a chunk that must start at
  exactly the offset the relay acknowledged last; any other offset is refused with 409 and
  the current offset (tus: "the Server MUST respond with the 409 Conflict status"), so a
  client that lost an acknowledgement resumes from the truth, never from its guess;
- ``HEAD``/``GET`` return the current offset (resume after a dropped connection or a
  relay restart).

Durability and confidentiality of the partial data — a decision, recorded here:
each acknowledged chunk is written as its **own encrypted blob** (the blob store's
AES-256-GCM envelope encryption, fsynced file and directory) and its row committed
before the new offset is acknowledged. A half-uploaded wound photo is health data: it is
never on disk in clear, and a ``kill -9`` loses at most the chunk being received (whose
offset was never acknowledged). We chose chunk blobs over one growing staging file because
the blob store's format is write-once (authenticated chunks with a final flag): appending
to an encrypted file in place would need a second format. On completion the chunks are
decrypted and joined in memory (a photo is bounded by ``max_bytes``), the photo pipeline
runs in the process pool, only its sanitized outputs are stored, and the chunk blobs —
the original upload — are deleted.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Final

from relay.errors import BadRequest, Conflict, PayloadTooLarge, UnsupportedMediaType

__all__ = [
    "ACCEPTED_CONTENT_TYPES",
    "OffsetMismatch",
    "Upload",
    "UploadLimits",
    "accept_chunk",
    "new_upload",
]

# What the client declares; the pipeline detects the real format from the bytes (a PDF
# renamed .jpg is declared image/jpeg and refused by the pipeline, not here).
ACCEPTED_CONTENT_TYPES: Final = frozenset(
    {
        "image/jpeg",
        "image/png",
        "image/heic",
        "image/heif",
        "application/dicom",
        "application/octet-stream",
    }
)


@dataclass(frozen=True)
class UploadLimits:
    """Size limits (from the configuration)."""

    max_bytes: int = 40 * 1024 * 1024
    max_chunk_bytes: int = 8 * 1024 * 1024


@dataclass(frozen=True)
class Upload:
    """An upload in progress: how much of ``size`` bytes the relay has acknowledged."""

    id: str
    owner_id: str
    size: int
    content_type: str
    offset: int
    created_at: datetime

    @property
    def complete(self) -> bool:
        return self.offset == self.size


class OffsetMismatch(Conflict):
    """A chunk does not start at the acknowledged offset (tus: 409 with the current one)."""

    code = "upload_offset_mismatch"

    def __init__(self, expected: int, given: int) -> None:
        super().__init__(
            f"Reprise de l'envoi à la mauvaise position ({given}) : le relais a reçu "
            f"{expected} octets, reprenez à partir de là."
        )
        self.expected = expected


def new_upload(
    upload_id: str,
    owner_id: str,
    size: object,
    content_type: object,
    now: datetime,
    limits: UploadLimits,
) -> Upload:
    """Validate a creation request; raises 400/413/415 naming what is wrong."""
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise BadRequest(
            "Le champ « size » doit être un nombre d'octets positif.", code="invalid_field"
        )
    if size > limits.max_bytes:
        raise PayloadTooLarge(
            f"Fichier trop volumineux ({size} octets ; maximum {limits.max_bytes})."
        )
    if not isinstance(content_type, str) or content_type.lower() not in ACCEPTED_CONTENT_TYPES:
        raise UnsupportedMediaType(
            "Format de fichier non accepté : envoyez une photo JPEG, PNG ou HEIC (ou un "
            "fichier DICOM).",
            code="image_format_unsupported",
        )
    return Upload(upload_id, owner_id, size, content_type.lower(), 0, now)


def accept_chunk(upload: Upload, offset: int | None, length: int, limits: UploadLimits) -> Upload:
    """The upload after a chunk of ``length`` bytes declared at ``offset``."""
    if offset is None:
        raise BadRequest("En-tête Upload-Offset manquant ou invalide.", code="missing_offset")
    if offset != upload.offset:
        raise OffsetMismatch(upload.offset, offset)
    if length > limits.max_chunk_bytes:
        raise PayloadTooLarge(f"Morceau trop gros (maximum {limits.max_chunk_bytes} octets).")
    if offset + length > upload.size:
        raise BadRequest(
            f"Le morceau dépasse la taille annoncée du fichier ({upload.size} octets).",
            code="upload_too_long",
        )
    return replace(upload, offset=offset + length)


def parse_offset(header: str | None) -> int | None:
    """``Upload-Offset``: a non-negative decimal integer (tus 1.0), else None."""
    if header is None or not header.isdigit() or len(header) > 15:
        return None
    return int(header)
