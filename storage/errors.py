"""Errors raised by the storage layer.

Each error carries the answer a protocol adapter gives for it (DESIGN.md rule 4):
an HTTP status and machine code, an SMTP reply, a WebSocket close code.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base class: something went wrong storing or reading data."""

    http_status = 503
    code = "storage_unavailable"
    smtp_reply = (451, "4.3.0 Temporary storage failure, try again later")
    ws_close = 1011


class MasterKeyError(StorageError):
    """The master key file is missing, unreadable, or malformed."""

    code = "master_key_unavailable"


class BlobNotFound(StorageError):
    """No blob with this identifier exists (or it was never completely written)."""

    http_status = 404
    code = "not_found"
    smtp_reply = (550, "5.1.1 No such object")
    ws_close = 1008


class BlobIntegrityError(StorageError):
    """Decryption failed: the stored ciphertext was altered, truncated or reordered.

    Never recoverable and never partially returned.
    """

    http_status = 500
    code = "integrity_error"
    smtp_reply = (554, "5.3.0 Stored data failed its integrity check")


class BlobTooLarge(StorageError):
    """The blob exceeds the size the caller allowed."""

    http_status = 413
    code = "too_large"
    smtp_reply = (552, "5.3.4 Message size exceeds fixed maximum message size")
    ws_close = 1009


class MigrationError(StorageError):
    """A schema migration file is malformed or failed to apply."""

    code = "migration_failed"


class BusError(StorageError):
    """The event bus could not publish or read (e.g. Redis unreachable)."""

    code = "event_bus_unavailable"


class MasterKeyInUse(StorageError):
    """A master key cannot be destroyed: it is current or still wraps stored data keys."""

    http_status = 409
    code = "master_key_in_use"


class OffsetExpired(BusError):
    """The offset is older than the channel's retained history: events were lost for it.

    The client must reload its state in full, then follow the channel from its latest offset.
    """

    http_status = 410
    code = "resync_required"
    # RFC 6455 §7.4.2 leaves 4000-4999 to applications; 4410 mirrors HTTP 410 Gone.
    ws_close = 4410


class SubscriptionOverflow(BusError):
    """The subscriber fell too far behind and was dropped; resume from its last offset."""

    code = "subscriber_too_slow"
    # 1013 "Try Again Later" (IANA WebSocket close code registry).
    ws_close = 1013


class InvalidOffset(BusError):
    """The offset was not issued by the bus (malformed), e.g. a forged ``Last-Event-ID``."""

    http_status = 400
    code = "invalid_offset"
    ws_close = 1008
