"""Wound photos as DICOM VL Photographic Image objects (pure: values in, Part 10 bytes out).

Issue 5 item 8: a case's photos exported as DICOM "VL Photographic Image Storage"
(``1.2.840.10008.5.1.4.1.1.77.1.4``, PS3.3 A.32.4) with the sanitized JPEG wrapped as is
(no re-encoding: no further generation loss) in the "JPEG Baseline (Process 1)" transfer
syntax ``1.2.840.10008.1.2.4.50``, pixel data encapsulated (PS3.5 A.4: one fragment per
frame, Basic Offset Table item, OB with undefined length). Objects pass ``dciodvfy``
(dicom3tools) without errors; the test suite runs it.

Rules this module enforces (DOMAIN.md "DICOM for wound photos"):

* The JPEG must come from :func:`relay.imaging.sanitize.sanitize_photo`: baseline 8-bit,
  three components, 4:2:2 (or 4:4:4), and no metadata segment (APP1 EXIF/XMP, APP13, COM,
  trailer): wrapping a phone JPEG as is would carry its GPS into the PACS. Anything else is
  refused (:class:`DicomExportInvalid`), never silently repaired.
* Photometric Interpretation follows the stream: ``YBR_FULL_422`` for 4:2:2 (PS3.3
  C.7.6.3.1.2: Cb/Cr sampled horizontally at half the Y rate; JFIF streams are YCbCr),
  ``YBR_FULL`` for 4:4:4; Planar Configuration 0; Lossy Image Compression ``01`` with method
  ``ISO_10918_1`` and its ratio (PS3.3 C.7.6.1.1.5).
* Anatomy is coded: Anatomic Region Sequence with a SNOMED CT code (``SCT``) from the small
  :data:`WOUND_SITES` table (CID 4029 "Dermatology Anatomic Site" for paired sites, CID 4
  "Anatomic Region" for unpaired ones); laterality both in Laterality (0020,0060) for paired
  structures (General Series, Type 2C) and as an Anatomic Region Modifier (CID 244).
* UIDs are new unless given: ``2.25.<UUID>`` (PS3.5 B.2) or under the organisation's root.
  Give the same Study Instance UID to all photos of a case (one study per case).
* Character set ``ISO_IR 192`` (UTF-8): French names with accents are encoded as they are.

``now`` (instance creation time) is a parameter: this core never reads the clock.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import UID, generate_uid

from relay.imaging.errors import DicomExportInvalid
from relay.imaging.jpeg import APP0, APP2, MalformedJpeg, frame_of, parse_structure

__all__ = [
    "JPEG_BASELINE",
    "VL_PHOTOGRAPHIC_IMAGE_STORAGE",
    "WOUND_SITES",
    "AnatomicSite",
    "DicomPhoto",
    "Laterality",
    "PatientSex",
    "PersonName",
    "WoundPhotoExport",
    "WoundSite",
    "build_wound_photo",
    "new_uid",
]

VL_PHOTOGRAPHIC_IMAGE_STORAGE: Final = UID("1.2.840.10008.5.1.4.1.1.77.1.4")
JPEG_BASELINE: Final = UID("1.2.840.10008.1.2.4.50")
IMPLEMENTATION_VERSION: Final = "RELAIS_0_1"  # SH, 16 chars max (PS3.7 D.3.3.2)
_UID_MAX: Final = 64  # PS3.5 9.1
_UID_PATTERN: Final = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


class WoundSite(StrEnum):
    """Where the wound is, as the nurse picks it (the API value)."""

    HEEL = "heel"
    FOOT = "foot"
    TOE = "toe"
    ANKLE_LATERAL = "ankle_lateral"
    ANKLE_MEDIAL = "ankle_medial"
    LOWER_LEG_ANTERIOR = "lower_leg_anterior"
    LOWER_LEG_POSTERIOR = "lower_leg_posterior"
    KNEE = "knee"
    THIGH = "thigh"
    HIP = "hip"
    BUTTOCK = "buttock"
    SACRUM = "sacrum"
    COCCYX = "coccyx"
    PERINEUM = "perineum"
    BACK = "back"
    ABDOMEN = "abdomen"
    CHEST = "chest"
    NECK = "neck"
    SCALP = "scalp"
    HEAD = "head"
    ELBOW = "elbow"
    HAND = "hand"
    EAR = "ear"
    LOWER_LIMB = "lower_limb"
    UPPER_LIMB = "upper_limb"


@dataclass(frozen=True)
class AnatomicSite:
    """A coded anatomic region: SNOMED CT concept, meaning, whether it is paired, French label."""

    code: str
    meaning: str
    paired: bool
    label: str
    scheme: str = "SCT"


# SNOMED CT concepts as DICOM PS3.16 lists them. Paired sites use CID 4029 "Dermatology
# Anatomic Site" (the skin of the region: what a wound photo shows). Unpaired sites use CID 4
# "Anatomic Region" concepts: dciodvfy knows those as unpaired, whereas it requires a
# Laterality for the CID 4029 skin concepts of the trunk and head (Type 2C error if absent,
# warning if empty), which would make a sacral or abdominal wound impossible to encode
# cleanly.
WOUND_SITES: Final[Mapping[WoundSite, AnatomicSite]] = MappingProxyType(
    {
        WoundSite.HEEL: AnatomicSite("84607009", "Skin of heel", True, "talon"),
        WoundSite.FOOT: AnatomicSite("60496002", "Skin of foot", True, "pied"),
        WoundSite.TOE: AnatomicSite("52034004", "Skin of toe", True, "orteil"),
        WoundSite.ANKLE_LATERAL: AnatomicSite(
            "181564009", "Skin of lateral aspect of ankle", True, "malléole externe"
        ),
        WoundSite.ANKLE_MEDIAL: AnatomicSite(
            "181563003", "Skin of medial aspect of ankle", True, "malléole interne"
        ),
        WoundSite.LOWER_LEG_ANTERIOR: AnatomicSite(
            "25763004", "Skin of anterior surface of lower leg", True, "jambe (face antérieure)"
        ),
        WoundSite.LOWER_LEG_POSTERIOR: AnatomicSite(
            "47224004", "Skin of posterior surface of lower leg", True, "mollet"
        ),
        WoundSite.KNEE: AnatomicSite(
            "181553006", "Skin of anterior surface of knee", True, "genou"
        ),
        WoundSite.THIGH: AnatomicSite(
            "61248009", "Skin of anterior surface of thigh", True, "cuisse"
        ),
        WoundSite.HIP: AnatomicSite("29836001", "Hip", True, "hanche (trochanter)"),  # CID 4
        WoundSite.BUTTOCK: AnatomicSite("22180002", "Skin of buttock", True, "fesse"),
        WoundSite.SACRUM: AnatomicSite("54735007", "Sacrum", False, "sacrum"),  # CID 4
        WoundSite.COCCYX: AnatomicSite("64688005", "Coccyx", False, "coccyx"),  # CID 4
        WoundSite.PERINEUM: AnatomicSite("38864007", "Perineum", False, "périnée"),  # CID 4
        WoundSite.BACK: AnatomicSite("77568009", "Back", False, "dos"),  # CID 4
        WoundSite.ABDOMEN: AnatomicSite("818981001", "Abdomen", False, "abdomen"),  # CID 4
        # 51185008 is the "Chest" of earlier CID 4 releases (now 816094009 "Thorax", which
        # dciodvfy does not know as unpaired yet).
        WoundSite.CHEST: AnatomicSite("51185008", "Chest", False, "thorax (sternum)"),
        WoundSite.NECK: AnatomicSite("45048000", "Neck", False, "cou"),  # CID 4
        WoundSite.SCALP: AnatomicSite("41695006", "Scalp", False, "cuir chevelu, occiput"),
        WoundSite.HEAD: AnatomicSite("69536005", "Head", False, "tête, visage"),  # CID 4
        WoundSite.ELBOW: AnatomicSite(
            "181536004", "Skin of posterior surface of elbow", True, "coude"
        ),
        WoundSite.HAND: AnatomicSite("33712006", "Skin of hand", True, "main"),
        WoundSite.EAR: AnatomicSite("1902009", "Skin of ear", True, "oreille"),
        WoundSite.LOWER_LIMB: AnatomicSite(
            "371304004", "Skin of lower extremity", True, "membre inférieur"
        ),
        WoundSite.UPPER_LIMB: AnatomicSite(
            "371311000", "Skin of upper extremity", True, "membre supérieur"
        ),
    }
)


class Laterality(StrEnum):
    """Side of the wound. ``NONE`` for a structure that is not paired (sacrum, back...)."""

    RIGHT = "R"
    LEFT = "L"
    BOTH = "B"
    NONE = ""


# CID 244 "Laterality" (SNOMED CT qualifiers), used as Anatomic Region Modifier.
_LATERALITY_CODES: Final = MappingProxyType(
    {
        Laterality.RIGHT: ("24028007", "Right"),
        Laterality.LEFT: ("7771000", "Left"),
        Laterality.BOTH: ("51440002", "Right and left"),
    }
)


class PatientSex(StrEnum):
    """Patient's Sex (0010,0040) enumerated values (PS3.3 C.7.1.1)."""

    MALE = "M"
    FEMALE = "F"
    OTHER = "O"
    UNKNOWN = ""


@dataclass(frozen=True)
class PersonName:
    """A person's name, encoded as the PN value ``Family^Given`` (PS3.5 6.2.1)."""

    family: str
    given: str = ""

    def to_dicom(self) -> str:
        """The PN alphabetic representation (checked: no delimiter inside a component)."""
        for component in (self.family, self.given):
            _check_text(component, 64, "nom", forbidden="^=\\")
        return f"{self.family}^{self.given}" if self.given else self.family


@dataclass(frozen=True)
class WoundPhotoExport:
    """Everything needed to wrap one sanitized wound photo as a DICOM object.

    ``content_datetime`` is when the photo was taken, timezone-aware (DICOM stores local
    date/time plus the offset). Missing UIDs are generated; pass the case's Study Instance
    UID for every photo of a case, and the same Series Instance UID for one export batch.
    """

    jpeg: bytes = field(repr=False)
    patient_name: PersonName
    patient_id: str
    patient_birth_date: date | None
    patient_sex: PatientSex
    study_description: str
    wound_site: WoundSite
    laterality: Laterality
    content_datetime: datetime
    referring_physician: PersonName | None = None
    issuer_of_patient_id: str | None = None
    manufacturer: str = "Relais Santé"
    software_version: str = "0.1"
    accession_number: str = ""
    study_id: str = ""
    series_number: int = 1
    instance_number: int = 1
    study_datetime: datetime | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    sop_instance_uid: str | None = None


@dataclass(frozen=True)
class DicomPhoto:
    """A DICOM Part 10 file and the UIDs to find it again in the PACS."""

    data: bytes = field(repr=False)
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str


def new_uid(uid_root: str | None = None) -> str:
    """A new UID: ``2.25.<UUID as integer>`` (PS3.5 B.2) or ``<uid_root>.<random>``."""
    if uid_root is None:
        return str(generate_uid(prefix=None))
    root = uid_root.rstrip(".")
    if not _is_uid(root) or len(root) > _UID_MAX - 12:
        raise DicomExportInvalid("La racine d'UID configurée est invalide.")
    return str(generate_uid(prefix=f"{root}."))


def build_wound_photo(
    photo: WoundPhotoExport, *, now: datetime, uid_root: str | None = None
) -> DicomPhoto:
    """Wrap ``photo.jpeg`` as a VL Photographic Image object; Part 10 bytes and UIDs.

    Raises :class:`DicomExportInvalid` when the JPEG is not a sanitized baseline JPEG or a
    value cannot be encoded (too long, control characters, paired site without side...).
    """
    frame = _checked_frame(photo.jpeg)
    site = WOUND_SITES[photo.wound_site]
    if site.paired and photo.laterality is Laterality.NONE:
        raise DicomExportInvalid(f"Précisez le côté de la plaie ({site.label}) : droit ou gauche.")
    if photo.content_datetime.tzinfo is None or now.tzinfo is None:
        raise DicomExportInvalid("Les dates de la photo doivent porter leur fuseau horaire.")
    uids = (
        _given_or_new(photo.study_instance_uid, uid_root),
        _given_or_new(photo.series_instance_uid, uid_root),
        _given_or_new(photo.sop_instance_uid, uid_root),
    )
    dataset = _dataset(photo, frame, site, uids, now)
    out = io.BytesIO()
    dcmwrite(out, dataset, enforce_file_format=True)
    return DicomPhoto(out.getvalue(), *uids)


def _given_or_new(uid: str | None, uid_root: str | None) -> str:
    if uid is None:
        return new_uid(uid_root)
    if not _is_uid(uid):
        raise DicomExportInvalid("Un identifiant DICOM (UID) fourni est invalide.")
    return uid


def _is_uid(value: str) -> bool:
    """PS3.5 9.1: digits and dots, no empty component, no leading zero, 64 characters."""
    return len(value) <= _UID_MAX and _UID_PATTERN.fullmatch(value) is not None


@dataclass(frozen=True)
class _Frame:
    rows: int
    columns: int
    photometric: str
    icc_profile: bytes | None


def _checked_frame(jpeg: bytes) -> _Frame:
    """The stream's geometry, after checking it is a sanitized baseline JPEG."""
    try:
        structure = parse_structure(jpeg)
        frame = frame_of(structure)
    except MalformedJpeg:
        raise DicomExportInvalid("La photo n'est pas un JPEG valide.") from None
    subsampling = frame.chroma_subsampling
    if not frame.is_baseline or subsampling not in ("4:2:2", "4:4:4"):
        raise DicomExportInvalid(
            "La photo n'est pas un JPEG baseline 4:2:2 : exportez-la telle "
            "que le relais l'a enregistrée."
        )
    icc_parts: list[tuple[int, bytes]] = []
    for segment in structure.segments:
        if 0xE0 <= segment.marker <= 0xEF or segment.marker == 0xFE:
            if segment.marker == APP0 and segment.identifier == b"JFIF":
                continue
            if segment.marker == APP2 and segment.identifier == b"ICC_PROFILE":
                # ICC.1 B.4: "ICC_PROFILE\0", sequence number, count, then the chunk.
                icc_parts.append((segment.payload[12], segment.payload[14:]))
                continue
            raise DicomExportInvalid(
                "La photo contient encore des métadonnées (EXIF, XMP, commentaire) : "
                "elle doit passer par le nettoyage du relais avant l'export."
            )
    if structure.trailing.strip(b"\x00"):
        raise DicomExportInvalid("La photo contient des données après la fin de l'image.")
    icc = b"".join(part for _, part in sorted(icc_parts)) or None
    photometric = "YBR_FULL_422" if subsampling == "4:2:2" else "YBR_FULL"
    return _Frame(frame.height, frame.width, photometric, icc)


def _dataset(
    photo: WoundPhotoExport,
    frame: _Frame,
    site: AnatomicSite,
    uids: tuple[str, str, str],
    now: datetime,
) -> Dataset:
    study_uid, series_uid, instance_uid = uids
    taken = photo.content_datetime
    study_time = photo.study_datetime or taken

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = VL_PHOTOGRAPHIC_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = UID(instance_uid)
    meta.TransferSyntaxUID = JPEG_BASELINE
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION

    ds = Dataset()
    ds.file_meta = meta
    # SOP Common (C.12.1)
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = VL_PHOTOGRAPHIC_IMAGE_STORAGE
    ds.SOPInstanceUID = instance_uid
    ds.InstanceCreationDate = _da(now)
    ds.InstanceCreationTime = _tm(now)
    ds.TimezoneOffsetFromUTC = _offset(taken)
    # Patient (C.7.1.1)
    ds.PatientName = photo.patient_name.to_dicom()
    ds.PatientID = _check_text(photo.patient_id, 64, "identifiant patient")
    if photo.issuer_of_patient_id:
        ds.IssuerOfPatientID = _check_text(photo.issuer_of_patient_id, 64, "émetteur")
    ds.PatientBirthDate = (
        photo.patient_birth_date.strftime("%Y%m%d") if (photo.patient_birth_date) else ""
    )
    ds.PatientSex = photo.patient_sex.value
    # General Study (C.7.2.1)
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = _da(study_time)
    ds.StudyTime = _tm(study_time)
    ds.ReferringPhysicianName = (
        photo.referring_physician.to_dicom() if photo.referring_physician else ""
    )
    ds.StudyID = _check_text(photo.study_id, 16, "numéro d'étude")
    ds.AccessionNumber = _check_text(photo.accession_number, 16, "numéro d'accès")
    ds.StudyDescription = _check_text(photo.study_description, 64, "description")
    # General Series (C.7.3.1): XC = External-camera Photography
    ds.Modality = "XC"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = _positive(photo.series_number)
    if site.paired and photo.laterality in (Laterality.RIGHT, Laterality.LEFT):
        ds.Laterality = photo.laterality.value
    elif site.paired:
        # Both sides: (0020,0060) can only say R or L, and absent is an error for a paired
        # site (Type 2C); empty means "unknown" to dciodvfy (a warning). The side is coded
        # exactly in the Anatomic Region Modifier ("Right and left").
        ds.Laterality = ""
    # General Equipment (C.7.5.1)
    ds.Manufacturer = _check_text(photo.manufacturer, 64, "fabricant")
    ds.SoftwareVersions = _check_text(photo.software_version, 64, "version")
    # General Image (C.7.6.1) and VL Image (C.8.12.1)
    ds.InstanceNumber = _positive(photo.instance_number)
    ds.PatientOrientation = ""
    ds.ContentDate = _da(taken)
    ds.ContentTime = _tm(taken)
    ds.AcquisitionDateTime = _dt(taken)
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "01"
    raw_size = frame.rows * frame.columns * 3
    ds.LossyImageCompressionRatio = f"{raw_size / max(1, len(photo.jpeg)):.2f}"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.AnatomicRegionSequence = Sequence([_region(site, photo.laterality)])
    # Acquisition Context (C.7.6.14): Type 2, nothing to record
    ds.AcquisitionContextSequence = Sequence([])
    # Image Pixel (C.7.6.3)
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = frame.photometric
    ds.PlanarConfiguration = 0
    ds.Rows = frame.rows
    ds.Columns = frame.columns
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    if frame.icc_profile is not None:
        # ICC Profile module (C.11.15): the profile the JPEG already carries.
        ds.ICCProfile = frame.icc_profile
    ds.PixelData = encapsulate([photo.jpeg])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ds


def _region(site: AnatomicSite, laterality: Laterality) -> Dataset:
    item = _code(site.code, site.scheme, site.meaning)
    if laterality in _LATERALITY_CODES:
        code, meaning = _LATERALITY_CODES[laterality]
        item.AnatomicRegionModifierSequence = Sequence([_code(code, "SCT", meaning)])
    return item


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    """A Code Sequence Macro item (PS3.3 8.8, Table 8.8-1)."""
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _check_text(value: str, limit: int, what: str, *, forbidden: str = "\\") -> str:
    """A LO/SH/PN component value: bounded, no control character, no delimiter."""
    if len(value) > limit or any(ch in forbidden or not ch.isprintable() for ch in value):
        raise DicomExportInvalid(
            f"Valeur « {what} » impossible à exporter en DICOM "
            f"({limit} caractères au plus, sans caractère de contrôle)."
        )
    return value


def _positive(value: int) -> int:
    if not 0 < value < 2**31:
        raise DicomExportInvalid("Numéro de série ou d'instance invalide.")
    return value


def _da(moment: datetime) -> str:
    return moment.strftime("%Y%m%d")


def _tm(moment: datetime) -> str:
    return moment.strftime("%H%M%S")


def _dt(moment: datetime) -> str:
    return moment.strftime("%Y%m%d%H%M%S") + _offset(moment)


def _offset(moment: datetime) -> str:
    """``&ZZXX`` offset from UTC (PS3.5 6.2, DT; Timezone Offset From UTC, C.12.1.1.8)."""
    delta = moment.utcoffset()
    if delta is None:
        raise DicomExportInvalid("Les dates de la photo doivent porter leur fuseau horaire.")
    minutes = int(delta.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    hours, mins = divmod(abs(minutes), 60)
    return f"{sign}{hours:02d}{mins:02d}"
