"""Uploaded DICOM objects: parsed under limits, minimal summary, clean preview (pure, no I/O).

Issue 5 item 3 ("DICOM files accepted too: parsed under limits, summary shown, preview
rendered"). Like :mod:`relay.imaging.sanitize`, :func:`read_dicom` is a module-level
function with picklable arguments and result, to run in a ``ProcessPoolExecutor``.

Limits, checked before anything is shown:

* the file size (``max_bytes``);
* a DICOM Part 10 file only (128-byte preamble + ``DICM``, PS3.10 7.1): pydicom is not
  ``force``-d into guessing, so a renamed PDF is refused as malformed;
* ``dcmread(..., defer_size=...)``: values larger than the element cap are not even read
  while parsing; then every element's declared length is checked against its cap, private
  elements (odd groups) against a much smaller one: a huge private tag is refused, not
  silently carried. Nested sequences are walked to a bounded depth and element count;
* deferred values must lie inside the file (a truncated file is malformed, not padded);
* the frame's pixel count (``max_pixels``) before any decoding, with the same Pillow
  strictness as photos (:func:`relay.imaging.sanitize.strict_decoding`).

DICOM headers hold patient identity (name, id, birth date, often free text). The summary
keeps only what a clinician needs to recognise the object: modality, study date, body part
or anatomic region, size, frame count, SOP class and transfer syntax names. Nothing from the
header goes into messages or logs: pydicom's warnings (which quote values) are silenced for
the call and its exceptions are replaced by ours, raised ``from None``.

The preview is a JPEG rendered from the first frame by Pillow, re-encoded (so it carries no
metadata): native monochrome 8/16-bit with the Modality LUT (rescale slope/intercept) and a
basic linear VOI window (PS3.3 C.11.2.1.2.1; the file's first window, else the full range),
MONOCHROME1 inverted; native RGB (both planar configurations) and YBR_FULL; encapsulated
JPEG Baseline / Extended 8-bit and JPEG 2000 (when Pillow has OpenJPEG). Anything else (RLE,
JPEG-LS, JPEG Lossless, 12-bit JPEG, palette colour, float pixels) gives no preview and a
French reason, "aperçu indisponible", never an error: the object itself is valid.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field, replace
from datetime import date
from typing import Final, cast

from PIL import Image, features
from pydicom import dcmread, encaps
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import UID

from relay.imaging.errors import DicomElementTooLarge, DicomTooLarge, MalformedDicom
from relay.imaging.sanitize import strict_decoding

__all__ = ["DicomLimits", "DicomSummary", "read_dicom"]

PIXEL_DATA: Final = Tag(0x7FE0, 0x0010)
_UNDEFINED_LENGTH: Final = 0xFFFFFFFF

# Transfer syntaxes (PS3.5 A and PS3.6 Annex A).
_NATIVE: Final = frozenset(
    {
        "1.2.840.10008.1.2",  # Implicit VR Little Endian
        "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
        "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian (inflated by pydicom)
        "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still found)
    }
)
_BIG_ENDIAN: Final = "1.2.840.10008.1.2.2"
_JPEG_8BIT: Final = frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"})
_JPEG_2000: Final = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"})

PREVIEW_UNAVAILABLE: Final = "Aperçu indisponible"


@dataclass(frozen=True)
class DicomLimits:
    """Limits applied to an uploaded DICOM object (from the configuration; picklable)."""

    max_bytes: int = 64 * 1024 * 1024
    # Any element but Pixel Data. Real headers stay far below (an ICC profile: a few KB;
    # an embedded SR or a large LUT: some hundred KB).
    max_element_bytes: int = 4 * 1024 * 1024
    # Private elements are vendor blobs we never read: a few KB in practice.
    max_private_element_bytes: int = 256 * 1024
    max_elements: int = 50_000
    max_sequence_depth: int = 12
    max_pixels: int = 50_000_000
    preview_side: int = 1024
    preview_quality: int = 85


DEFAULT_LIMITS: Final = DicomLimits()


@dataclass(frozen=True)
class DicomSummary:
    """What may be displayed about an uploaded DICOM object: no patient identity.

    ``preview`` is a metadata-free JPEG of the first frame, or ``None`` with
    ``preview_unavailable`` saying why (French, for display).
    """

    sop_class: str
    transfer_syntax: str
    modality: str | None
    study_date: date | None
    body_part: str | None
    anatomic_region: str | None
    rows: int | None
    columns: int | None
    frames: int
    photometric_interpretation: str | None
    preview: bytes | None = field(default=None, repr=False)
    preview_unavailable: str | None = None


def read_dicom(data: bytes, limits: DicomLimits = DEFAULT_LIMITS) -> DicomSummary:
    """Parse an uploaded DICOM Part 10 file under ``limits``; summary and preview.

    Raises :class:`DicomTooLarge`, :class:`MalformedDicom` or :class:`DicomElementTooLarge`.
    """
    if len(data) > limits.max_bytes:
        raise DicomTooLarge()
    with warnings.catch_warnings():
        # pydicom warns about invalid values by quoting them: health data must not reach logs.
        warnings.simplefilter("ignore")
        try:
            dataset = dcmread(io.BytesIO(data), defer_size=limits.max_element_bytes)
        except Exception:
            raise MalformedDicom() from None
        try:
            _check_elements(dataset, limits, len(data), depth=0, counter=[0])
            summary = _summarise(dataset)
        except (DicomElementTooLarge, MalformedDicom):
            raise
        except Exception:
            raise MalformedDicom() from None
        preview, reason = _preview(dataset, summary, limits)
    return replace(summary, preview=preview, preview_unavailable=reason)


def _check_elements(
    dataset: Dataset, limits: DicomLimits, file_size: int, *, depth: int, counter: list[int]
) -> None:
    """Every element's length against its cap; recurse into sequences (bounded)."""
    if depth > limits.max_sequence_depth:
        raise MalformedDicom("Le fichier DICOM imbrique trop de séquences.")
    for tag in list(dataset.keys()):
        element = dataset.get_item(tag, keep_deferred=True)
        if element is None:
            continue
        counter[0] += 1
        if counter[0] > limits.max_elements:
            raise MalformedDicom("Le fichier DICOM contient trop d'éléments.")
        length = _length(element)
        if (
            isinstance(element, RawDataElement)
            and element.value is None
            and element.value_tell + element.length > file_size
        ):
            # A deferred value was skipped, not read: its bytes must exist all the same.
            raise MalformedDicom("Le fichier DICOM est tronqué.")
        if tag == PIXEL_DATA and depth == 0:
            continue  # bounded by the file size; checked against max_pixels when decoded
        cap = limits.max_private_element_bytes if tag.is_private else limits.max_element_bytes
        if length > cap:
            raise DicomElementTooLarge()
        if element.VR == "SQ":
            for item in dataset[tag].value:
                _check_elements(item, limits, file_size, depth=depth + 1, counter=counter)


def _length(element: DataElement | RawDataElement) -> int:
    """The element's size in bytes as read (an undefined length is measured)."""
    if isinstance(element, RawDataElement):
        if element.length == _UNDEFINED_LENGTH or element.value is not None:
            return len(element.value or b"")
        return int(element.length)
    value = element.value
    return len(value) if isinstance(value, bytes | str) else 0


def _summarise(dataset: Dataset) -> DicomSummary:
    meta = dataset.file_meta
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if not syntax:
        raise MalformedDicom()
    sop_class = dataset.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") or "")
    region = None
    regions = dataset.get("AnatomicRegionSequence")
    if regions:
        region = _text(regions[0].get("CodeMeaning"))
    return DicomSummary(
        sop_class=_uid_name(sop_class),
        transfer_syntax=_uid_name(syntax),
        modality=_text(dataset.get("Modality")),
        study_date=_date(dataset.get("StudyDate")),
        body_part=_text(dataset.get("BodyPartExamined")),
        anatomic_region=region,
        rows=_int(dataset.get("Rows")),
        columns=_int(dataset.get("Columns")),
        frames=max(1, _int(dataset.get("NumberOfFrames")) or 1),
        photometric_interpretation=_text(dataset.get("PhotometricInterpretation")),
    )


def _uid_name(value: object) -> str:
    uid = UID(str(value))
    return uid.name if uid.is_valid else "inconnu"


def _text(value: object, limit: int = 64) -> str | None:
    """A displayable short string: printable characters only, bounded."""
    if value is None:
        return None
    text = "".join(ch for ch in str(value) if ch.isprintable()).strip()
    return text[:limit] or None


def _int(value: object) -> int | None:
    try:
        return int(str(value)) if value not in (None, "") else None
    except ValueError:
        return None


def _date(value: object) -> date | None:
    text = str(value or "")
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


class _NoPreview(Exception):
    """The first frame cannot be rendered here (unsupported, not broken)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _preview(
    dataset: Dataset, summary: DicomSummary, limits: DicomLimits
) -> tuple[bytes | None, str | None]:
    """(JPEG, None) or (None, French reason); :class:`MalformedDicom` for broken pixels."""
    try:
        frame = _first_frame(dataset, summary, limits)
    except _NoPreview as refusal:
        return None, f"{PREVIEW_UNAVAILABLE} : {refusal.reason}."
    frame.thumbnail((limits.preview_side, limits.preview_side), Image.Resampling.BICUBIC)
    frame.info = {}
    out = io.BytesIO()
    frame.save(out, format="JPEG", quality=limits.preview_quality)
    return out.getvalue(), None


def _first_frame(dataset: Dataset, summary: DicomSummary, limits: DicomLimits) -> Image.Image:
    if PIXEL_DATA not in dataset:
        raise _NoPreview("cet objet ne contient pas d'image")
    rows, columns = summary.rows, summary.columns
    if not rows or not columns or rows < 1 or columns < 1:
        raise MalformedDicom()
    if rows * columns > limits.max_pixels:
        raise _NoPreview("image trop grande pour un aperçu")
    syntax = str(dataset.file_meta.TransferSyntaxUID)
    photometric = summary.photometric_interpretation or ""
    samples = _int(dataset.get("SamplesPerPixel")) or 1
    bits = _int(dataset.get("BitsAllocated")) or 0
    signed = _int(dataset.get("PixelRepresentation")) == 1
    try:
        with strict_decoding(limits.max_pixels):
            if syntax in _NATIVE:
                image = _native(
                    dataset, syntax, (columns, rows), photometric, samples, bits, signed
                )
            elif syntax in _JPEG_8BIT or (syntax in _JPEG_2000 and features.check("jpg_2000")):
                image = _encapsulated(dataset, syntax, summary.frames)
            else:
                raise _NoPreview(f"compression {summary.transfer_syntax} non prise en charge")
            if image.size != (columns, rows):  # before decoding: the header is all we trust
                raise MalformedDicom("Les données d'image ne correspondent pas à l'en-tête DICOM.")
            image.load()
    except (_NoPreview, MalformedDicom):
        raise
    except Exception:
        raise MalformedDicom("Les données d'image du fichier DICOM sont illisibles.") from None
    if image.mode in ("L", "I", "I;16", "I;16B") and photometric.startswith("MONOCHROME"):
        stored = (1.0, 0.0)
        if syntax in _JPEG_2000 and image.mode == "I;16":
            stored = _j2k_stored_values(dataset, signed)
        return _window(image, dataset, inverted=photometric == "MONOCHROME1", stored=stored)
    if image.mode in ("RGB", "YCbCr"):
        return image.convert("RGB")
    raise _NoPreview(f"photométrie {photometric or 'inconnue'} non prise en charge")


def _native(
    dataset: Dataset,
    syntax: str,
    size: tuple[int, int],
    photometric: str,
    samples: int,
    bits: int,
    signed: bool,
) -> Image.Image:
    """The first frame of native (uncompressed) pixel data as a Pillow image."""
    if bits not in (8, 16) or (samples == 3 and bits != 8):
        raise _NoPreview(f"échantillons de {bits} bits non pris en charge")
    monochrome = samples == 1 and photometric.startswith("MONOCHROME")
    colour = samples == 3 and photometric in ("RGB", "YBR_FULL")
    if not (monochrome or colour):
        raise _NoPreview(f"photométrie {photometric or 'inconnue'} non prise en charge")
    columns, rows = size
    frame_bytes = columns * rows * samples * bits // 8
    pixels = dataset.PixelData
    if not isinstance(pixels, bytes) or len(pixels) < frame_bytes:
        raise MalformedDicom("Les données d'image du fichier DICOM sont tronquées.")
    frame = pixels[:frame_bytes]
    big = syntax == _BIG_ENDIAN
    if monochrome:
        if bits == 8:
            return (
                Image.frombytes("I", size, frame, "raw", "I;8S")
                if signed
                else (Image.frombytes("L", size, frame))
            )
        rawmode = "I;16" + ("B" if big else "") + ("S" if signed else "")
        return Image.frombytes("I", size, frame, "raw", rawmode)
    mode = "RGB" if photometric == "RGB" else "YCbCr"
    if _int(dataset.get("PlanarConfiguration")) == 1:
        plane = columns * rows
        bands = [Image.frombytes("L", size, frame[i * plane : (i + 1) * plane]) for i in range(3)]
        return Image.merge(mode, bands)
    return Image.frombytes(mode, size, frame)


def _encapsulated(dataset: Dataset, syntax: str, frames: int) -> Image.Image:
    """The first frame of encapsulated JPEG / JPEG 2000 pixel data, opened by Pillow."""
    bits = _int(dataset.get("BitsStored")) or 8
    if syntax in _JPEG_8BIT and bits > 8:
        raise _NoPreview("JPEG 12 bits non pris en charge")
    fragment = encaps.get_frame(dataset.PixelData, 0, number_of_frames=frames)
    plugin = "JPEG" if syntax in _JPEG_8BIT else "JPEG2000"
    return Image.open(io.BytesIO(fragment), formats=(plugin,))


def _j2k_stored_values(dataset: Dataset, signed: bool) -> tuple[float, float]:
    """Undo Pillow's mapping of JPEG 2000 samples to unsigned 16 bits.

    Pillow's OpenJPEG glue stores ``(v + 2**(p-1) if signed else v) << (16 - p)`` for a
    component of precision ``p``; the stored value is ``x / 2**(16-p) - offset``.
    """
    precision = min(16, max(1, _int(dataset.get("BitsStored")) or 16))
    offset = float(1 << (precision - 1)) if signed else 0.0
    return 1.0 / (1 << (16 - precision)), -offset


def _window(
    image: Image.Image,
    dataset: Dataset,
    *,
    inverted: bool,
    stored: tuple[float, float] = (1.0, 0.0),
) -> Image.Image:
    """Modality LUT then linear VOI window to 8 bits (PS3.3 C.11.1, C.11.2.1.2.1).

    ``stored`` maps the decoded sample to the stored pixel value (scale, offset); the whole
    chain is linear, so it folds into one ``point`` call.
    """
    slope = _float(dataset.get("RescaleSlope"), 1.0) or 1.0
    intercept = _float(dataset.get("RescaleIntercept"), 0.0)
    intercept += slope * stored[1]
    slope *= stored[0]
    center = _first_float(dataset.get("WindowCenter"))
    width = _first_float(dataset.get("WindowWidth"))
    if image.mode != "L":
        image = image.convert("I") if image.mode != "I" else image
    if center is None or width is None or width < 1:
        low, high = cast(tuple[float, float], image.getextrema())  # one band: (min, max)
        values = sorted((low * slope + intercept, high * slope + intercept))
        center = (values[0] + values[1]) / 2 + 0.5
        width = values[1] - values[0] + 1
    span = max(width - 1, 1.0)
    # y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255 with x = v * slope + intercept
    scale = slope * 255 / span
    offset = ((intercept - center + 0.5) / span + 0.5) * 255
    if inverted:
        scale, offset = -scale, 255 - offset
    mapped = image.point(lambda value: value * scale + offset)
    return mapped.convert("L") if mapped.mode != "L" else mapped


def _float(value: object, default: float) -> float:
    try:
        return float(str(value)) if value not in (None, "") else default
    except ValueError:
        return default


def _first_float(value: object) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        items = list(value)  # type: ignore[call-overload]
        value = items[0] if items else None
    try:
        return float(str(value)) if value is not None else None
    except ValueError:
        return None
