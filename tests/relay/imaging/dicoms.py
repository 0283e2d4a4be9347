"""Generated DICOM objects for the input tests (pydicom, in memory)."""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from typing import Final

from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    JPEG2000,
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

PATIENT_NAME: Final = "DUPONT^JEANNE"
PATIENT_ID: Final = "SECRET-PID-0042"
CT_IMAGE_STORAGE: Final = UID("1.2.840.10008.5.1.4.1.1.2")


def base(sop_class: str = CT_IMAGE_STORAGE, syntax: str = ExplicitVRLittleEndian) -> Dataset:
    """Header of an image with patient identity everywhere it usually is."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = generate_uid(prefix=None)
    meta.TransferSyntaxUID = UID(syntax)
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19400101"
    ds.StudyDescription = "Scanner Mme DUPONT"
    ds.InstitutionName = "CHU Exemple"
    ds.Modality = "CT"
    ds.StudyDate = "20240603"
    ds.BodyPartExamined = "LEG"
    ds.StudyInstanceUID = generate_uid(prefix=None)
    ds.SeriesInstanceUID = generate_uid(prefix=None)
    return ds


def to_bytes(ds: Dataset) -> bytes:
    """Part 10 bytes (preamble, meta) in the dataset's transfer syntax."""
    out = io.BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def monochrome(
    values: Callable[[int, int], int],
    *,
    rows: int = 32,
    columns: int = 32,
    bits: int = 16,
    signed: bool = False,
    photometric: str = "MONOCHROME2",
    window: tuple[float, float] | None = None,
    rescale: tuple[float, float] | None = None,
    syntax: str = ExplicitVRLittleEndian,
) -> Dataset:
    """A native monochrome image whose pixel (x, y) is ``values(x, y)``."""
    ds = base(syntax=syntax)
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if signed else 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    code = {8: "b" if signed else "B", 16: "h" if signed else "H"}[bits]
    order = ">" if syntax == ExplicitVRBigEndian else "<"
    flat = [values(x, y) for y in range(rows) for x in range(columns)]
    ds.PixelData = struct.pack(f"{order}{len(flat)}{code}", *flat)
    ds["PixelData"].VR = "OW" if bits == 16 else "OB"
    return ds


def half_and_half(low: int, high: int) -> Callable[[int, int], int]:
    """Left half ``low``, right half ``high`` (32 columns)."""
    return lambda x, _y: low if x < 16 else high


def rgb(planar: int = 0, *, rows: int = 8, columns: int = 8) -> Dataset:
    """A native RGB image: red left half, blue right half."""
    ds = base(SecondaryCaptureImageStorage)
    ds.Modality = "OT"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = planar
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    pixels = [
        (200, 0, 0) if x < columns // 2 else (0, 0, 200)
        for _ in range(rows)
        for x in range(columns)
    ]
    if planar == 0:
        ds.PixelData = bytes(v for p in pixels for v in p)
    else:
        ds.PixelData = b"".join(bytes(p[i] for p in pixels) for i in range(3))
    return ds


def encapsulated(
    frame: bytes,
    syntax: str,
    *,
    rows: int,
    columns: int,
    samples: int,
    photometric: str,
    bits: int = 8,
    signed: bool = False,
) -> Dataset:
    """A one-frame encapsulated image (JPEG, JPEG 2000, RLE...)."""
    ds = base(SecondaryCaptureImageStorage, syntax)
    ds.Modality = "OT"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ds


def with_private(ds: Dataset, size: int, *, nested: bool = False) -> Dataset:
    """Add a private block (creator + one OB element of ``size`` bytes)."""
    target = ds
    if nested:
        item = Dataset()
        ds.ReferencedImageSequence = Sequence([item])
        target = item
    block = target.private_block(0x0011, "SECRET VENDOR", create=True)
    block.add_new(0x10, "OB", b"\x00" * size)
    return ds


__all__ = [
    "JPEG2000",
    "ExplicitVRBigEndian",
    "ImplicitVRLittleEndian",
    "JPEGBaseline8Bit",
    "RLELossless",
]
