"""Errors of the imaging cores; each carries its HTTP answer (DESIGN.md rule 4).

They subclass :class:`relay.errors.RelayError`, so the HTTP error middleware renders them as
``{"error": {"code": ..., "message": ...}}`` with ``http_status`` unchanged. The message is
French (it is shown to the nurse or the specialist) and never contains health data: no file
name, no DICOM value, no library message (a pydicom or Pillow message can quote header
values, which may be a patient's name). Errors are raised ``from None`` by the cores so that
no such library message travels in a chained traceback either.

Every error is picklable: the cores run in a ``ProcessPoolExecutor`` and the error crosses
back to the event loop process. Instances are frozen once built (their message is the only
per-instance value; status and code are class constants).
"""

from __future__ import annotations

from relay.errors import RelayError

__all__ = [
    "CorruptImage",
    "DicomElementTooLarge",
    "DicomExportInvalid",
    "DicomTooLarge",
    "ImageTooLarge",
    "ImagingError",
    "MalformedDicom",
    "PacsError",
    "PacsRefused",
    "PacsUnavailable",
    "UnsupportedImageFormat",
]


class ImagingError(RelayError):
    """Base class: an uploaded image or DICOM object cannot be accepted or exported."""

    http_status = 422
    code = "imaging_error"
    default_message = "Le fichier n'a pas pu être traité."

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message if message is not None else self.default_message)
        object.__setattr__(self, "_frozen", True)

    def __setattr__(self, name: str, value: object) -> None:
        # Frozen once built: a shared error must not have its answer changed by a handler.
        # Dunder attributes stay writable: the interpreter sets __traceback__, __notes__...
        if getattr(self, "_frozen", False) and not name.startswith("__"):
            raise AttributeError(f"{type(self).__name__} is immutable")
        super().__setattr__(name, value)

    def __reduce__(self) -> tuple[type[ImagingError], tuple[str]]:
        # Exceptions pickle as cls(*args); the message is the only constructor argument.
        return (type(self), (self.message,))


class UnsupportedImageFormat(ImagingError):
    """The content is not JPEG, PNG or HEIC/HEIF (detected from the bytes, never the name)."""

    http_status = 415
    code = "image_format_unsupported"
    default_message = (
        "Format de fichier non accepté : envoyez une photo JPEG, PNG ou HEIC (ou un fichier DICOM)."
    )


class ImageTooLarge(ImagingError):
    """Too many bytes or too many pixels (decompression bombs are refused from the header)."""

    http_status = 413
    code = "image_too_large"
    default_message = "Photo trop grande : utilisez la résolution standard de l'appareil photo."


class CorruptImage(ImagingError):
    """The image announces an accepted format but cannot be decoded completely."""

    http_status = 422
    code = "image_corrupt"
    default_message = (
        "La photo est illisible ou incomplète (envoi interrompu ?) : envoyez-la de nouveau."
    )


class DicomTooLarge(ImagingError):
    """The DICOM file exceeds the configured size."""

    http_status = 413
    code = "dicom_too_large"
    default_message = "Le fichier DICOM dépasse la taille maximale acceptée."


class MalformedDicom(ImagingError):
    """Not a DICOM Part 10 file, or its structure is broken (lengths, sequences, meta)."""

    http_status = 422
    code = "dicom_malformed"
    default_message = "Le fichier DICOM est invalide ou endommagé."


class DicomElementTooLarge(ImagingError):
    """An element (often a private tag) exceeds its size limit: refused, not truncated."""

    http_status = 422
    code = "dicom_element_too_large"
    default_message = (
        "Le fichier DICOM contient un élément de taille excessive (balise privée ?) : "
        "il est refusé."
    )


class DicomExportInvalid(ImagingError):
    """The data given for a DICOM export cannot be encoded (a caller or data error)."""

    http_status = 422
    code = "dicom_export_invalid"
    default_message = "Les informations de la photo ne permettent pas l'export DICOM."


class PacsError(ImagingError):
    """Base of the failures to push to a PACS (the relay is a gateway there: 502)."""

    http_status = 502
    code = "pacs_error"
    default_message = "L'envoi vers le PACS a échoué."


class PacsUnavailable(PacsError):
    """The PACS did not answer, timed out or answered with a server error (retry later)."""

    code = "pacs_unavailable"
    default_message = "Le PACS ne répond pas pour le moment : l'envoi sera à refaire."


class PacsRefused(PacsError):
    """The PACS refused the request itself (authentication, media type, bad request)."""

    code = "pacs_refused"
    default_message = "Le PACS a refusé l'envoi (configuration ou droits d'accès)."
