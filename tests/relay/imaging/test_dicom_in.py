"""Uploaded DICOM: limits, minimal summary without identity, preview rendering."""

from __future__ import annotations

import io
import warnings
from concurrent.futures import ProcessPoolExecutor
from datetime import date

import pytest
from PIL import Image, features
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from relay.imaging.dicom_in import DicomLimits, DicomSummary, read_dicom
from relay.imaging.errors import DicomElementTooLarge, DicomTooLarge, MalformedDicom
from tests.relay.imaging import dicoms, images
from tests.relay.imaging.dicoms import half_and_half, monochrome, to_bytes


def grey(summary: DicomSummary, x: int, y: int = 16) -> int:
    """Grey level of the preview at (x, y) of the 32 x 32 test image."""
    assert summary.preview is not None, summary.preview_unavailable
    preview = Image.open(io.BytesIO(summary.preview)).convert("L")
    value = preview.getpixel((x * preview.width // 32, y * preview.height // 32))
    assert isinstance(value, int)
    return value


def test_summary_is_minimal_and_the_preview_clean() -> None:
    data = to_bytes(monochrome(half_and_half(0, 1000), window=(500, 1000)))
    assert dicoms.PATIENT_NAME.encode() in data

    summary = read_dicom(data)

    assert summary.sop_class == "CT Image Storage"
    assert summary.transfer_syntax == "Explicit VR Little Endian"
    assert summary.modality == "CT"
    assert summary.study_date == date(2024, 6, 3)
    assert summary.body_part == "LEG"
    assert (summary.rows, summary.columns, summary.frames) == (32, 32, 1)
    assert summary.preview_unavailable is None
    assert summary.preview is not None
    images.assert_clean(summary.preview)
    shown = repr(summary) + "".join(str(v) for v in summary.__dict__.values())
    for identity in ("DUPONT", "JEANNE", dicoms.PATIENT_ID, "19400101", "CHU", "Scanner"):
        assert identity not in shown
        assert identity.encode() not in summary.preview


@pytest.mark.parametrize(
    ("kwargs", "left", "right"),
    [
        ({"window": (500, 1000)}, 0, 255),
        ({"window": (0, 100)}, 129, 255),  # C.11.2.1.2.1: x = c maps to mid-grey
        ({"window": (500, 1000), "photometric": "MONOCHROME1"}, 255, 0),
        ({}, 0, 255),  # no window: full range of the image
        # HU -1024 and -24: ((-24 - 39.5) / 399 + 0.5) * 255 = 86.9
        ({"rescale": (1, -1024), "window": (40, 400)}, 0, 87),
        ({"syntax": dicoms.ExplicitVRBigEndian}, 0, 255),
        ({"syntax": dicoms.ImplicitVRLittleEndian}, 0, 255),
    ],
)
def test_monochrome_16_bit_windowing(kwargs: dict[str, object], left: int, right: int) -> None:
    summary = read_dicom(to_bytes(monochrome(half_and_half(0, 1000), **kwargs)))  # type: ignore[arg-type]
    assert abs(grey(summary, 4) - left) <= 3
    assert abs(grey(summary, 28) - right) <= 3


def test_signed_and_8_bit_pixels() -> None:
    signed = read_dicom(to_bytes(monochrome(half_and_half(-500, 500), signed=True)))
    assert grey(signed, 4) <= 3 and grey(signed, 28) >= 252
    eight = read_dicom(to_bytes(monochrome(half_and_half(30, 220), bits=8, window=(128, 256))))
    assert abs(grey(eight, 4) - 30) <= 3 and abs(grey(eight, 28) - 220) <= 3


@pytest.mark.parametrize("planar", [0, 1])
def test_native_rgb(planar: int) -> None:
    summary = read_dicom(to_bytes(dicoms.rgb(planar)))
    assert summary.preview is not None
    preview = Image.open(io.BytesIO(summary.preview)).convert("RGB")
    assert images.close(preview.getpixel((1, 4)), (200, 0, 0))  # type: ignore[arg-type]
    assert images.close(preview.getpixel((6, 4)), (0, 0, 200))  # type: ignore[arg-type]


def test_encapsulated_jpeg_baseline() -> None:
    jpeg = images.encoded(images.quadrants(), "JPEG", quality=95, subsampling=1)
    ds = dicoms.encapsulated(
        jpeg, dicoms.JPEGBaseline8Bit, rows=40, columns=60, samples=3, photometric="YBR_FULL_422"
    )
    summary = read_dicom(to_bytes(ds))
    assert summary.transfer_syntax == "JPEG Baseline (Process 1)"
    assert summary.preview is not None
    preview = Image.open(io.BytesIO(summary.preview)).convert("RGB")
    assert images.close(preview.getpixel((3, 3)), images.RED)  # type: ignore[arg-type]
    assert images.close(preview.getpixel((56, 36)), images.BLUE)  # type: ignore[arg-type]


@pytest.mark.skipif(not features.check("jpg_2000"), reason="Pillow built without OpenJPEG")
def test_encapsulated_jpeg_2000_matches_native() -> None:
    values = half_and_half(0, 1000)
    native = monochrome(values, window=(500, 1000))
    codestream = images.encoded(
        Image.frombytes("I;16", (32, 32), native.PixelData), "JPEG2000", no_jp2=True
    )
    ds = dicoms.encapsulated(
        codestream,
        dicoms.JPEG2000,
        rows=32,
        columns=32,
        samples=1,
        photometric="MONOCHROME2",
        bits=16,
    )
    ds.WindowCenter, ds.WindowWidth = 500, 1000
    summary = read_dicom(to_bytes(ds))
    assert abs(grey(summary, 4) - 0) <= 3 and abs(grey(summary, 28) - 255) <= 3


def test_unsupported_compression_gives_no_preview_but_a_summary() -> None:
    ds = dicoms.encapsulated(
        b"\x00" * 64, dicoms.RLELossless, rows=8, columns=8, samples=1, photometric="MONOCHROME2"
    )
    summary = read_dicom(to_bytes(ds))
    assert summary.preview is None
    assert summary.preview_unavailable is not None
    assert summary.preview_unavailable.startswith("Aperçu indisponible")
    assert "RLE" in summary.preview_unavailable


def test_twelve_bit_jpeg_gives_no_preview() -> None:
    ds = dicoms.encapsulated(
        b"\xff\xd8\xff\xd9",
        "1.2.840.10008.1.2.4.51",
        rows=8,
        columns=8,
        samples=1,
        photometric="MONOCHROME2",
        bits=12,
    )
    summary = read_dicom(to_bytes(ds))
    assert summary.preview is None and "12 bits" in (summary.preview_unavailable or "")


def test_object_without_pixels() -> None:
    ds = dicoms.base("1.2.840.10008.5.1.4.1.1.88.11")  # Basic Text SR
    ds.Modality = "SR"
    summary = read_dicom(to_bytes(ds))
    assert summary.modality == "SR" and summary.preview is None
    assert "pas d'image" in (summary.preview_unavailable or "")


def test_frame_over_the_pixel_cap_gets_no_preview() -> None:
    data = to_bytes(monochrome(half_and_half(0, 1000)))
    summary = read_dicom(data, DicomLimits(max_pixels=100))
    assert summary.preview is None and "trop grande" in (summary.preview_unavailable or "")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not dicom at all",
        images.PDF,
        b"\x00" * 128 + b"DICM" + b"\xff" * 200,
        images.phone_jpeg(),
    ],
)
def test_malformed_files_are_refused(data: bytes) -> None:
    with pytest.raises(MalformedDicom) as refused:
        read_dicom(data)
    assert refused.value.http_status == 422
    assert refused.value.code == "dicom_malformed"


def test_truncated_files_are_refused() -> None:
    data = to_bytes(monochrome(half_and_half(0, 1000)))
    with pytest.raises(MalformedDicom):
        read_dicom(data[:-100])  # pixel data cut
    with pytest.raises(MalformedDicom):
        read_dicom(data[:200])  # header cut
    big = to_bytes(dicoms.with_private(monochrome(half_and_half(0, 1)), 100_000))
    cut = big[: len(big) // 2]  # a deferred (skipped) element runs past the end
    with pytest.raises(MalformedDicom):
        read_dicom(cut, DicomLimits(max_element_bytes=10_000, max_private_element_bytes=200_000))


@pytest.mark.parametrize("nested", [False, True])
def test_huge_private_tag_is_refused(nested: bool) -> None:
    ds = dicoms.with_private(monochrome(half_and_half(0, 1000)), 1024 * 1024, nested=nested)
    with pytest.raises(DicomElementTooLarge) as refused:
        read_dicom(to_bytes(ds))
    assert refused.value.code == "dicom_element_too_large"
    small = dicoms.with_private(monochrome(half_and_half(0, 1000)), 1024, nested=nested)
    assert read_dicom(to_bytes(small)).preview is not None


def test_oversized_standard_element_is_refused() -> None:
    ds = monochrome(half_and_half(0, 1000))
    ds.ImageComments = "x" * 5000
    with pytest.raises(DicomElementTooLarge):
        read_dicom(to_bytes(ds), DicomLimits(max_element_bytes=4096))


def test_file_size_cap() -> None:
    data = to_bytes(monochrome(half_and_half(0, 1000)))
    with pytest.raises(DicomTooLarge) as refused:
        read_dicom(data, DicomLimits(max_bytes=len(data) - 1))
    assert refused.value.http_status == 413


def test_nesting_and_element_count_are_bounded() -> None:
    ds = monochrome(half_and_half(0, 1000))
    inner = ds
    for _ in range(20):
        item = Dataset()
        inner.ReferencedImageSequence = Sequence([item])
        inner = item
    with pytest.raises(MalformedDicom):
        read_dicom(to_bytes(ds))
    flat = monochrome(half_and_half(0, 1000))
    with pytest.raises(MalformedDicom):
        read_dicom(to_bytes(flat), DicomLimits(max_elements=10))


def test_invalid_values_raise_no_warning_quoting_them() -> None:
    ds = monochrome(half_and_half(0, 1000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.StudyDate = "2024XX03"
        ds.BodyPartExamined = "JAMBE\x07GAUCHE DE MME DUPONT"
        data = to_bytes(ds)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = read_dicom(data)
    assert caught == []
    assert summary.study_date is None
    assert summary.body_part is not None and "\x07" not in summary.body_part


def test_runs_in_a_process_pool() -> None:
    data = to_bytes(monochrome(half_and_half(0, 1000)))
    with ProcessPoolExecutor(max_workers=1) as pool:
        summary = pool.submit(read_dicom, data).result()
        with pytest.raises(MalformedDicom):
            pool.submit(read_dicom, b"junk").result()
    assert summary.modality == "CT" and summary.preview is not None


def test_frame_larger_than_its_header_is_refused_before_decoding() -> None:
    small = images.encoded(images.quadrants(64, 64), "JPEG", subsampling=1)
    lying = images.with_jpeg_size(small, 6000, 6000)  # 36 MP behind a 64 x 64 header
    ds = dicoms.encapsulated(
        lying, dicoms.JPEGBaseline8Bit, rows=64, columns=64, samples=3, photometric="YBR_FULL_422"
    )
    with pytest.raises(MalformedDicom) as refused:
        read_dicom(to_bytes(ds))
    assert "en-tête" in refused.value.message  # the size check, not a decoding failure
