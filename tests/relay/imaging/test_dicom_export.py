"""DICOM VL Photographic export, checked by dciodvfy (dicom3tools) and dcmdump (dcmtk)."""

from __future__ import annotations

import io
import subprocess
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from PIL import Image, ImageChops
from pydicom import dcmread, encaps
from pydicom.uid import UID

from relay.dicom_export import (
    JPEG_BASELINE,
    VL_PHOTOGRAPHIC_IMAGE_STORAGE,
    WOUND_SITES,
    Laterality,
    PatientSex,
    PersonName,
    WoundPhotoExport,
    WoundSite,
    build_wound_photo,
    new_uid,
)
from relay.imaging.dicom_in import read_dicom
from relay.imaging.errors import DicomExportInvalid
from relay.imaging.sanitize import sanitize_photo
from tests.conftest import require_component
from tests.relay.imaging import images

PARIS_SUMMER = timezone(timedelta(hours=2))
TAKEN = datetime(2024, 6, 3, 10, 15, 42, tzinfo=PARIS_SUMMER)
NOW = datetime(2024, 6, 3, 10, 20, tzinfo=PARIS_SUMMER)
# dciodvfy's only remark on a valid object without Study ID (Type 2, may be empty): it is
# needed to build a DICOMDIR for media interchange, which these objects never go into.
STUDY_ID_WARNING = (
    "Warning - Missing attribute or value that would be needed to build DICOMDIR - Study ID"
)
# A wound on both sides of a paired site: Laterality (0020,0060) can only be R or L, so it is
# sent empty (Type 2C; absent would be an error) and the side is coded in the Anatomic Region
# Modifier "Right and left"; dciodvfy reads empty as "unknown" and says so.
BOTH_SIDES_WARNING = (
    "Warning - is only permitted to be empty when actually unknown; should be absent (not "
    "empty) if an unpaired body part, and have a value if a paired body part - attribute "
    "<Laterality>"
)


@pytest.fixture(scope="module")
def sanitized_jpeg() -> bytes:
    upload = images.phone_jpeg(images.quadrants(320, 240), orientation=6, icc=images.srgb_profile())
    return sanitize_photo(upload).jpeg


def export(jpeg: bytes, **changes: object) -> WoundPhotoExport:
    photo = WoundPhotoExport(
        jpeg=jpeg,
        patient_name=PersonName("Dupont", "Élodie"),
        patient_id="285057800608431",
        issuer_of_patient_id="1.2.250.1.213.1.4.8",  # INS-NIR
        patient_birth_date=date(1985, 5, 7),
        patient_sex=PatientSex.FEMALE,
        study_description="Télé-expertise plaie",
        wound_site=WoundSite.HEEL,
        laterality=Laterality.LEFT,
        content_datetime=TAKEN,
        referring_physician=PersonName("Martin", "Jeanne"),
        study_id="TE-2024-0042",
    )
    return replace(photo, **changes)  # type: ignore[arg-type]


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) lines of dciodvfy on ``path``."""
    require_component("dciodvfy", "dicom3tools")
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = [line.strip() for line in (run.stdout + run.stderr).splitlines() if line.strip()]
    return (
        [line for line in lines if line.startswith("Error")],
        [line for line in lines if line.startswith("Warning")],
    )


@pytest.mark.parametrize(
    ("site", "laterality", "study_id", "expected"),
    [
        (WoundSite.HEEL, Laterality.LEFT, "TE-2024-0042", []),
        (WoundSite.SACRUM, Laterality.NONE, "TE-2024-0042", []),
        (WoundSite.LOWER_LEG_ANTERIOR, Laterality.RIGHT, "", [STUDY_ID_WARNING]),
        (WoundSite.BUTTOCK, Laterality.BOTH, "TE-2024-0042", [BOTH_SIDES_WARNING]),
    ],
)
def test_dciodvfy_finds_no_error(
    sanitized_jpeg: bytes,
    tmp_path: Path,
    site: WoundSite,
    laterality: Laterality,
    study_id: str,
    expected: list[str],
) -> None:
    photo = build_wound_photo(
        export(sanitized_jpeg, wound_site=site, laterality=laterality, study_id=study_id), now=NOW
    )
    path = tmp_path / "photo.dcm"
    path.write_bytes(photo.data)
    errors, warnings = dciodvfy(path)
    assert errors == []
    assert warnings == expected  # documented above, nothing else


def test_every_wound_site_passes_dciodvfy(sanitized_jpeg: bytes, tmp_path: Path) -> None:
    for site, coded in WOUND_SITES.items():
        laterality = Laterality.RIGHT if coded.paired else Laterality.NONE
        photo = build_wound_photo(
            export(sanitized_jpeg, wound_site=site, laterality=laterality), now=NOW
        )
        path = tmp_path / f"{site.value}.dcm"
        path.write_bytes(photo.data)
        assert dciodvfy(path) == ([], []), site


def test_dciodvfy_catches_a_broken_object(sanitized_jpeg: bytes, tmp_path: Path) -> None:
    # The check above can fail: the same object without its Modality is an error.
    dataset = dcmread(io.BytesIO(build_wound_photo(export(sanitized_jpeg), now=NOW).data))
    del dataset.Modality
    path = tmp_path / "broken.dcm"
    dataset.save_as(path, enforce_file_format=True)
    errors, _ = dciodvfy(path)
    assert any("Modality" in line for line in errors)


def test_dcmdump_reads_it(sanitized_jpeg: bytes, tmp_path: Path) -> None:
    require_component("dcmdump", "dcmtk")
    path = tmp_path / "photo.dcm"
    path.write_bytes(build_wound_photo(export(sanitized_jpeg), now=NOW).data)
    run = subprocess.run(["dcmdump", "+U8", str(path)], capture_output=True, timeout=60, check=True)
    dump = run.stdout.decode("utf-8")
    assert "=VLPhotographicImageStorage" in dump
    assert "=JPEGBaseline" in dump
    assert "[Dupont^Élodie]" in dump
    assert "(0028,0004) CS [YBR_FULL_422]" in dump
    assert "(0008,0060) CS [XC]" in dump
    assert "(0020,0060) CS [L]" in dump
    assert "[84607009]" in dump and "[Skin of heel]" in dump
    assert "[7771000]" in dump  # laterality modifier: Left


def test_attributes_and_pixel_round_trip(sanitized_jpeg: bytes) -> None:
    photo = build_wound_photo(export(sanitized_jpeg), now=NOW)
    ds = dcmread(io.BytesIO(photo.data))
    assert ds.file_meta.TransferSyntaxUID == JPEG_BASELINE
    assert ds.SOPClassUID == VL_PHOTOGRAPHIC_IMAGE_STORAGE
    assert ds.SOPInstanceUID == photo.sop_instance_uid == ds.file_meta.MediaStorageSOPInstanceUID
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID) == (
        photo.study_instance_uid,
        photo.series_instance_uid,
    )
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert str(ds.PatientName) == "Dupont^Élodie"
    assert ds.PatientBirthDate == "19850507" and ds.PatientSex == "F"
    assert (ds.ContentDate, ds.ContentTime) == ("20240603", "101542")
    assert ds.AcquisitionDateTime == "20240603101542+0200"
    assert ds.TimezoneOffsetFromUTC == "+0200"
    assert (ds.Rows, ds.Columns) == (320, 240)  # orientation 6 applied before wrapping
    assert ds.LossyImageCompression == "01"
    assert ds.LossyImageCompressionMethod == "ISO_10918_1"
    assert float(ds.LossyImageCompressionRatio) > 1
    assert ds.BurnedInAnnotation == "NO"
    assert ds.ICCProfile == images.srgb_profile()
    region = ds.AnatomicRegionSequence[0]
    assert (region.CodeValue, region.CodingSchemeDesignator) == ("84607009", "SCT")
    assert region.AnatomicRegionModifierSequence[0].CodeValue == "7771000"
    assert len(ds.AcquisitionContextSequence) == 0

    frame = encaps.get_frame(ds.PixelData, 0, number_of_frames=1)
    assert frame.rstrip(b"\x00") == sanitized_jpeg.rstrip(b"\x00")  # even-length padding only
    decoded = Image.open(io.BytesIO(frame))
    original = Image.open(io.BytesIO(sanitized_jpeg))
    assert ImageChops.difference(decoded.convert("RGB"), original.convert("RGB")).getbbox() is None


def test_export_reads_back_through_the_dicom_input(sanitized_jpeg: bytes) -> None:
    summary = read_dicom(build_wound_photo(export(sanitized_jpeg), now=NOW).data)
    assert summary.sop_class == "VL Photographic Image Storage"
    assert summary.modality == "XC"
    assert summary.anatomic_region == "Skin of heel"
    assert summary.preview is not None
    assert images.close(images.pixel(summary.preview, (235, 3)), images.RED)


def test_uids(sanitized_jpeg: bytes) -> None:
    first = build_wound_photo(export(sanitized_jpeg), now=NOW)
    second = build_wound_photo(export(sanitized_jpeg), now=NOW)
    for uid in (first.study_instance_uid, first.series_instance_uid, first.sop_instance_uid):
        assert uid.startswith("2.25.") and UID(uid).is_valid
    assert first.sop_instance_uid != second.sop_instance_uid
    case_study = new_uid()
    grouped = build_wound_photo(
        export(sanitized_jpeg, study_instance_uid=case_study, instance_number=2), now=NOW
    )
    assert grouped.study_instance_uid == case_study
    rooted = build_wound_photo(export(sanitized_jpeg), now=NOW, uid_root="1.2.250.1.999.7")
    assert rooted.sop_instance_uid.startswith("1.2.250.1.999.7.")
    with pytest.raises(DicomExportInvalid):
        new_uid("not.a.uid")
    with pytest.raises(DicomExportInvalid):
        build_wound_photo(export(sanitized_jpeg, sop_instance_uid="1.2.abc"), now=NOW)


def test_every_wound_site_is_coded() -> None:
    assert set(WOUND_SITES) == set(WoundSite)
    for site in WOUND_SITES.values():
        assert site.scheme == "SCT" and site.code.isdigit() and site.meaning and site.label


@pytest.mark.parametrize(
    "jpeg",
    [
        images.phone_jpeg(trailer=False),  # EXIF, XMP, IPTC, comment: not sanitized
        images.encoded(images.quadrants(), "JPEG", progressive=True, subsampling=1),
        images.encoded(images.quadrants(), "JPEG", subsampling=2),  # 4:2:0 is not "422"
        images.encoded(images.quadrants(), "PNG"),
        images.encoded(images.quadrants(), "JPEG", subsampling=1) + b"trailer",
    ],
)
def test_refuses_jpegs_that_were_not_sanitized(jpeg: bytes) -> None:
    with pytest.raises(DicomExportInvalid):
        build_wound_photo(export(jpeg), now=NOW)


@pytest.mark.parametrize(
    "changes",
    [
        {"wound_site": WoundSite.HEEL, "laterality": Laterality.NONE},  # which heel?
        {"content_datetime": datetime(2024, 6, 3, 10, 15)},  # naive
        {"patient_name": PersonName("Dupont^Jean")},  # PN delimiter inside a component
        {"patient_id": "x" * 65},  # LO is 64 characters at most
        {"study_description": "ligne 1\nligne 2"},
        {"study_id": "TE-2024-0042-LONG"},  # SH is 16
        {"instance_number": 0},
    ],
)
def test_refuses_values_dicom_cannot_carry(
    sanitized_jpeg: bytes, changes: dict[str, object]
) -> None:
    with pytest.raises(DicomExportInvalid) as refused:
        build_wound_photo(export(sanitized_jpeg, **changes), now=NOW)
    assert refused.value.http_status == 422


def test_utc_and_negative_offsets(sanitized_jpeg: bytes) -> None:
    utc = build_wound_photo(export(sanitized_jpeg, content_datetime=TAKEN.astimezone(UTC)), now=NOW)
    assert dcmread(io.BytesIO(utc.data)).TimezoneOffsetFromUTC == "+0000"
    reunion = timezone(timedelta(hours=-3, minutes=-30))
    west = build_wound_photo(
        export(sanitized_jpeg, content_datetime=TAKEN.astimezone(reunion)), now=NOW
    )
    assert dcmread(io.BytesIO(west.data)).AcquisitionDateTime.endswith("-0330")
