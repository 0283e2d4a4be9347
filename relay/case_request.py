"""Validation of a tele-expertise request ("demande de télé-expertise"): JSON-like in, frozen out.

The request carries: the requester (account id, profession, RPPS), the patient (INS — NIR
with its check key — plus name, birth date and sex; or a pseudonymous local id), the
recipient (a named specialist and/or a specialty team: any member of an addressed team may
take the case), the clinical question, structured wound details (coded anatomic site,
laterality, size in cm, how long, current treatment), the urgency, and the patient's consent
(who collected it, when, how).

Two moments, one parser:

- :func:`parse_case_request` validates every field that is present and tolerates absent
  ones, so a phone can save a draft while the nurse types (photos upload meanwhile);
- :func:`require_complete` is the submission check: every field is required, and a request
  without **consent** cannot be submitted (the check comes last, with its own error code
  ``consent_required``, so the form can point at it).

Every error is a :class:`CaseFieldError` (HTTP 400) whose message names the field in French
and whose ``field`` is the JSON path, so the form can highlight it. Unknown keys are refused
(a misspelt field must not be silently dropped from a clinical request).

Anatomic sites are a small list coded in SNOMED CT. Codes come from the DICOM content
mapping resource (PS3.16), so the same code serves the FHIR ``bodySite`` and the DICOM
Anatomic Region Sequence of the photo export: CID 4031 "Common Anatomic Regions" where it
has the region, CID 4 "Anatomic Region" otherwise, and CID 4029 "Dermatology Anatomic Site"
for the heel (absent from the region lists, yet a frequent pressure-ulcer site). Paired sites
need a laterality (DICOM sets Laterality for paired body parts); unpaired ones take "none".
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Final, NoReturn, TypeVar

from relay.cases import REQUESTING_ROLES, Submit, Urgency
from relay.errors import BadRequest, InvalidIdentifier
from relay.identifiers import validate_nir, validate_rpps
from relay.roles import Role

__all__ = [
    "ANATOMIC_SITES",
    "CONSENT_METHOD_LABELS_FR",
    "DURATION_LABELS_FR",
    "FIELD_LABELS_FR",
    "LATERALITY_LABELS_FR",
    "LATERALITY_SNOMED",
    "MAX_QUESTION_CHARS",
    "MAX_TREATMENT_CHARS",
    "AnatomicSite",
    "CaseFieldError",
    "CaseRequest",
    "Consent",
    "ConsentMethod",
    "DurationUnit",
    "InsPatient",
    "Laterality",
    "Patient",
    "PseudonymousPatient",
    "Recipient",
    "Requester",
    "Sex",
    "WoundDetails",
    "WoundDuration",
    "WoundSize",
    "parse_case_request",
    "patient_key",
    "require_complete",
    "submit_event",
]

MAX_QUESTION_CHARS: Final = 4000
MIN_QUESTION_CHARS: Final = 5
MAX_TREATMENT_CHARS: Final = 1000
MAX_NAME_CHARS: Final = 100
MAX_LENGTH_CM: Final = 100.0
MAX_DEPTH_CM: Final = 30.0
MAX_DURATION: Final = {"days": 3660, "weeks": 520, "months": 240}
CONSENT_MAX_AGE: Final = timedelta(days=366)
CLOCK_SKEW: Final = timedelta(minutes=5)
EARLIEST_BIRTH_DATE: Final = date(1890, 1, 1)

_E = TypeVar("_E", bound=StrEnum)

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_LOCAL_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Letters (any script), with inner spaces, hyphens, apostrophes and dots: no digits.
_NAME_RE = re.compile(r"[^\W\d_](?:[^\W\d_]|[ '’.-])*")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


FIELD_LABELS_FR: Final[Mapping[str, str]] = {
    "": "Demande",
    "requester": "Demandeur",
    "requester.id": "Demandeur — identifiant",
    "requester.role": "Demandeur — profession",
    "requester.rpps": "Demandeur — numéro RPPS",
    "patient": "Patient",
    "patient.kind": "Patient — type d'identification",
    "patient.nir": "Patient — matricule INS (NIR)",
    "patient.family_name": "Patient — nom de naissance",
    "patient.given_name": "Patient — premier prénom",
    "patient.birth_date": "Patient — date de naissance",
    "patient.sex": "Patient — sexe",
    "patient.local_id": "Patient — identifiant local",
    "recipient": "Destinataire",
    "recipient.specialist_id": "Destinataire — spécialiste",
    "recipient.team_id": "Destinataire — équipe",
    "question": "Question clinique",
    "wound": "Plaie",
    "wound.site": "Plaie — localisation",
    "wound.laterality": "Plaie — côté",
    "wound.size_cm": "Plaie — dimensions",
    "wound.size_cm.length": "Plaie — longueur (cm)",
    "wound.size_cm.width": "Plaie — largeur (cm)",
    "wound.size_cm.depth": "Plaie — profondeur (cm)",
    "wound.duration": "Plaie — ancienneté",
    "wound.duration.value": "Plaie — ancienneté (durée)",
    "wound.duration.unit": "Plaie — ancienneté (unité)",
    "wound.treatment": "Plaie — traitement en cours",
    "urgency": "Urgence",
    "consent": "Consentement du patient",
    "consent.collected_by": "Consentement — recueilli par",
    "consent.collected_at": "Consentement — date du recueil",
    "consent.method": "Consentement — mode de recueil",
}


class CaseFieldError(BadRequest):
    """A field of the request is missing or invalid; ``field`` is its JSON path."""

    code = "invalid_case_field"

    def __init__(self, field: str, problem: str, *, code: str | None = None) -> None:
        super().__init__(f"{FIELD_LABELS_FR.get(field, field)} : {problem}", code=code)
        self.field = field


def _fail(path: str, problem: str, *, code: str | None = None) -> NoReturn:
    raise CaseFieldError(path, problem, code=code)


# --- Values --------------------------------------------------------------------------------


class Sex(StrEnum):
    """Administrative sex as the INS carries it (FR Core INS: male | female | unknown)."""

    FEMALE = "female"
    MALE = "male"
    UNKNOWN = "unknown"


class Laterality(StrEnum):
    LEFT = "left"
    RIGHT = "right"
    BILATERAL = "bilateral"
    NONE = "none"


LATERALITY_LABELS_FR: Final[Mapping[Laterality, str]] = {
    Laterality.LEFT: "gauche",
    Laterality.RIGHT: "droit",
    Laterality.BILATERAL: "bilatéral",
    Laterality.NONE: "",
}

LATERALITY_SNOMED: Final[Mapping[Laterality, tuple[str, str]]] = {
    # DICOM CID 244 "Laterality" (SNOMED CT).
    Laterality.LEFT: ("7771000", "Left"),
    Laterality.RIGHT: ("24028007", "Right"),
    Laterality.BILATERAL: ("51440002", "Bilateral"),
}


class DurationUnit(StrEnum):
    DAYS = "days"
    WEEKS = "weeks"
    MONTHS = "months"


DURATION_LABELS_FR: Final[Mapping[DurationUnit, str]] = {
    DurationUnit.DAYS: "jour(s)",
    DurationUnit.WEEKS: "semaine(s)",
    DurationUnit.MONTHS: "mois",
}


class ConsentMethod(StrEnum):
    ORAL = "oral"
    WRITTEN = "written"


CONSENT_METHOD_LABELS_FR: Final[Mapping[ConsentMethod, str]] = {
    ConsentMethod.ORAL: "oral",
    ConsentMethod.WRITTEN: "écrit",
}


@dataclass(frozen=True)
class AnatomicSite:
    """A wound site: our key, French label, SNOMED CT code and the DICOM CID it comes from."""

    key: str
    label_fr: str
    snomed_code: str
    snomed_display: str
    paired: bool
    dicom_cid: int


def _sites(*sites: AnatomicSite) -> Mapping[str, AnatomicSite]:
    return {site.key: site for site in sites}


ANATOMIC_SITES: Final[Mapping[str, AnatomicSite]] = _sites(
    AnatomicSite("head", "Tête", "69536005", "Head", False, 4031),
    AnatomicSite("scalp", "Cuir chevelu", "41695006", "Scalp", False, 4),
    AnatomicSite("face", "Visage", "89545001", "Face", False, 4),
    AnatomicSite("neck", "Cou", "45048000", "Neck", False, 4031),
    AnatomicSite("chest", "Thorax", "816094009", "Chest", False, 4031),
    AnatomicSite("breast", "Sein", "76752008", "Breast", True, 4031),
    AnatomicSite("abdomen", "Abdomen", "818981001", "Abdomen", False, 4031),
    AnatomicSite("back", "Dos", "77568009", "Back", False, 4),
    AnatomicSite("sacrum", "Sacrum", "54735007", "Sacrum", False, 4031),
    AnatomicSite("perineum", "Périnée", "38864007", "Perineum", False, 4),
    AnatomicSite("buttock", "Fesse", "46862004", "Buttock", True, 4),
    AnatomicSite("hip", "Hanche", "29836001", "Hip", True, 4031),
    AnatomicSite("shoulder", "Épaule", "16982005", "Shoulder", True, 4031),
    AnatomicSite("upper_arm", "Bras", "40983000", "Upper arm", True, 4031),
    AnatomicSite("elbow", "Coude", "16953009", "Elbow joint", True, 4031),
    AnatomicSite("forearm", "Avant-bras", "14975008", "Forearm", True, 4031),
    AnatomicSite("hand", "Main", "85562004", "Hand", True, 4031),
    AnatomicSite("finger", "Doigt", "7569003", "Finger", True, 4031),
    AnatomicSite("thigh", "Cuisse", "68367000", "Thigh", True, 4031),
    AnatomicSite("knee", "Genou", "72696002", "Knee", True, 4031),
    AnatomicSite("lower_leg", "Jambe", "30021000", "Lower leg", True, 4031),
    AnatomicSite("ankle", "Cheville", "70258002", "Ankle joint", True, 4031),
    AnatomicSite("heel", "Talon", "84607009", "Skin of heel", True, 4029),
    AnatomicSite("foot", "Pied", "56459004", "Foot", True, 4031),
    AnatomicSite("toe", "Orteil", "29707007", "Toe", True, 4031),
)


@dataclass(frozen=True)
class Requester:
    id: str
    role: Role
    rpps: str


@dataclass(frozen=True)
class InsPatient:
    """A patient identified by the INS (matricule = NIR, 15 characters with the key)."""

    nir: str
    family_name: str
    given_name: str
    birth_date: date
    sex: Sex


@dataclass(frozen=True)
class PseudonymousPatient:
    """A patient known to the requester's team by a local id only (no identity traits)."""

    local_id: str


Patient = InsPatient | PseudonymousPatient


@dataclass(frozen=True)
class Recipient:
    """A named specialist and/or a team. With both, the team is the fallback: its members
    may take the case once it is escalated or released (see :mod:`relay.cases`)."""

    specialist_id: str | None
    team_id: str | None


@dataclass(frozen=True)
class WoundSize:
    length_cm: float
    width_cm: float
    depth_cm: float | None = None


@dataclass(frozen=True)
class WoundDuration:
    value: int
    unit: DurationUnit

    @property
    def label_fr(self) -> str:
        return f"{self.value} {DURATION_LABELS_FR[self.unit]}"


@dataclass(frozen=True)
class WoundDetails:
    site: AnatomicSite
    laterality: Laterality
    size: WoundSize
    duration: WoundDuration
    treatment: str = ""

    @property
    def site_label_fr(self) -> str:
        """E.g. "Talon gauche", "Sacrum"."""
        side = LATERALITY_LABELS_FR[self.laterality]
        return f"{self.site.label_fr} {side}".strip()


@dataclass(frozen=True)
class Consent:
    """The patient's consent to the tele-expertise: who collected it, when, how."""

    collected_by: str
    collected_at: datetime
    method: ConsentMethod


@dataclass(frozen=True)
class CaseRequest:
    """A validated request. Every field but the requester may be None in a draft;
    :func:`require_complete` guarantees they are all set before submission."""

    requester: Requester
    patient: Patient | None = None
    recipient: Recipient | None = None
    question: str | None = None
    wound: WoundDetails | None = None
    urgency: Urgency | None = None
    consent: Consent | None = None


# --- Field parsers -------------------------------------------------------------------------


def _object(value: object, path: str, allowed: frozenset[str]) -> Mapping[str, object]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        _fail(path, "un objet JSON est attendu.")
    for key in value:
        if key not in allowed:
            where = f"{path}.{key}" if path else key
            _fail(path, f"champ inconnu « {where} ».", code="unknown_field")
    return value


def _sub(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _required(data: Mapping[str, object], path: str, key: str) -> object:
    value = data.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        _fail(_sub(path, key), "ce champ est obligatoire.", code="missing_field")
    return value


def _text(value: object, path: str, *, max_chars: int, min_chars: int = 1) -> str:
    if not isinstance(value, str):
        _fail(path, "du texte est attendu.")
    text = value.replace("\r\n", "\n").replace("\r", "\n").strip()
    if _CONTROL_RE.search(text):
        _fail(path, "caractères de contrôle interdits.")
    if len(text) < min_chars:
        if not text:
            _fail(path, "ce champ est obligatoire.", code="missing_field")
        _fail(path, f"{min_chars} caractères au minimum.")
    if len(text) > max_chars:
        _fail(path, f"{max_chars} caractères au maximum.")
    return text


def _identifier(value: object, path: str, pattern: re.Pattern[str] = _ID_RE) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value.strip()):
        _fail(path, "identifiant invalide (lettres, chiffres, « . _ : - », 64 au maximum).")
    return value.strip()


def _choice(value: object, path: str, enum: type[_E]) -> _E:
    if isinstance(value, str):
        for member in enum:
            if member.value == value:
                return member
    allowed = ", ".join(f"« {member.value} »" for member in enum)
    _fail(path, f"valeur inconnue ; valeurs possibles : {allowed}.")


def _number(value: object, path: str, *, maximum: float) -> float:
    # bool is an int in Python; a checkbox value must not pass for a size.
    if isinstance(value, bool) or not isinstance(value, int | float):
        _fail(path, "un nombre est attendu.")
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        _fail(path, "un nombre strictement positif est attendu.")
    if number > maximum:
        _fail(path, f"{maximum:g} cm au maximum.")
    return number


def _datetime(value: object, path: str) -> datetime:
    if not isinstance(value, str):
        _fail(path, "une date et heure ISO 8601 est attendue.")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        _fail(path, "une date et heure ISO 8601 est attendue (ex. 2024-05-01T08:30:00+02:00).")
    if parsed.tzinfo is None:
        _fail(path, "le fuseau horaire est obligatoire (ex. +02:00 ou Z).")
    return parsed


def _date(value: object, path: str) -> date:
    if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value.strip()):
        _fail(path, "une date AAAA-MM-JJ est attendue.")
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        _fail(path, "cette date n'existe pas.")


def _requester(value: object) -> Requester:
    path = "requester"
    data = _object(value, path, frozenset({"id", "role", "rpps"}))
    account = _identifier(_required(data, path, "id"), "requester.id")
    role = _choice(_required(data, path, "role"), "requester.role", Role)
    if role not in REQUESTING_ROLES:
        _fail(
            "requester.role",
            "seuls les infirmier·es et les médecins peuvent demander une télé-expertise.",
        )
    rpps_value = _required(data, path, "rpps")
    if not isinstance(rpps_value, str):
        _fail("requester.rpps", "du texte est attendu.")
    try:
        rpps = validate_rpps(rpps_value)
    except InvalidIdentifier as exc:
        _fail("requester.rpps", exc.message, code=exc.code)
    return Requester(account, role, rpps)


_INS_KEYS = frozenset({"kind", "nir", "family_name", "given_name", "birth_date", "sex"})
_LOCAL_KEYS = frozenset({"kind", "local_id"})


def _patient(value: object, now: datetime) -> Patient:
    path = "patient"
    raw = _object(value, path, _INS_KEYS | _LOCAL_KEYS)
    kind = _required(raw, path, "kind")
    if kind == "pseudonymous":
        data = _object(raw, path, _LOCAL_KEYS)
        local_id = _identifier(_required(data, path, "local_id"), "patient.local_id", _LOCAL_ID_RE)
        return PseudonymousPatient(local_id)
    if kind != "ins":
        _fail("patient.kind", "valeurs possibles : « ins », « pseudonymous ».")
    data = _object(raw, path, _INS_KEYS)
    nir_value = _required(data, path, "nir")
    if not isinstance(nir_value, str):
        _fail("patient.nir", "du texte est attendu.")
    try:
        nir = validate_nir(nir_value)
    except InvalidIdentifier as exc:
        _fail("patient.nir", exc.message, code=exc.code)
    family = _name(_required(data, path, "family_name"), "patient.family_name")
    given = _name(_required(data, path, "given_name"), "patient.given_name")
    birth = _date(_required(data, path, "birth_date"), "patient.birth_date")
    if birth > now.date():
        _fail("patient.birth_date", "la date de naissance est dans le futur.")
    if birth < EARLIEST_BIRTH_DATE:
        _fail("patient.birth_date", "date de naissance invraisemblable.")
    sex = _choice(_required(data, path, "sex"), "patient.sex", Sex)
    _check_nir_traits(nir, birth, sex)
    return InsPatient(nir, family, given, birth, sex)


def _name(value: object, path: str) -> str:
    text = _text(value, path, max_chars=MAX_NAME_CHARS)
    text = " ".join(text.split())
    if not _NAME_RE.fullmatch(text):
        _fail(path, "lettres, espaces, traits d'union et apostrophes uniquement.")
    return text


def _check_nir_traits(nir: str, birth: date, sex: Sex) -> None:
    """Catch the wrong patient picked, not just a typo: the NIR encodes sex and birth year.

    First digit 1 = male, 2 = female (3, 4, 7, 8 are other registrations: not checked);
    digits 2-3 are the last two digits of the birth year.
    """
    first = nir[0]
    if (sex, first) in ((Sex.MALE, "2"), (Sex.FEMALE, "1")):
        _fail("patient.nir", "le NIR ne correspond pas au sexe indiqué.")
    if first in "12" and int(nir[1:3]) != birth.year % 100:
        _fail("patient.nir", "le NIR ne correspond pas à l'année de naissance.")


def _recipient(value: object, requester: Requester) -> Recipient:
    path = "recipient"
    data = _object(value, path, frozenset({"specialist_id", "team_id"}))
    specialist = data.get("specialist_id")
    team = data.get("team_id")
    if specialist is None and team is None:
        _fail(path, "indiquez un·e spécialiste ou une équipe.", code="missing_field")
    specialist_id = (
        None if specialist is None else _identifier(specialist, _sub(path, "specialist_id"))
    )
    team_id = None if team is None else _identifier(team, _sub(path, "team_id"))
    if specialist_id == requester.id:
        _fail("recipient.specialist_id", "vous ne pouvez pas vous adresser la demande.")
    return Recipient(specialist_id, team_id)


def _wound(value: object) -> WoundDetails:
    path = "wound"
    data = _object(
        value, path, frozenset({"site", "laterality", "size_cm", "duration", "treatment"})
    )
    site_key = _required(data, path, "site")
    if not isinstance(site_key, str) or site_key not in ANATOMIC_SITES:
        _fail("wound.site", "localisation inconnue ; choisissez-la dans la liste.")
    site = ANATOMIC_SITES[site_key]
    laterality = _choice(_required(data, path, "laterality"), "wound.laterality", Laterality)
    if site.paired and laterality is Laterality.NONE:
        _fail(
            "wound.laterality",
            f"précisez le côté (gauche, droit ou bilatéral) pour : {site.label_fr.lower()}.",
        )
    if not site.paired and laterality is not Laterality.NONE:
        _fail("wound.laterality", f"pas de côté pour : {site.label_fr.lower()} (« none »).")
    size_path = "wound.size_cm"
    size_data = _object(
        _required(data, path, "size_cm"), size_path, frozenset({"length", "width", "depth"})
    )
    length = _number(
        _required(size_data, size_path, "length"), "wound.size_cm.length", maximum=MAX_LENGTH_CM
    )
    width = _number(
        _required(size_data, size_path, "width"), "wound.size_cm.width", maximum=MAX_LENGTH_CM
    )
    depth_value = size_data.get("depth")
    depth = (
        None
        if depth_value is None
        else _number(depth_value, "wound.size_cm.depth", maximum=MAX_DEPTH_CM)
    )
    duration_path = "wound.duration"
    duration_data = _object(
        _required(data, path, "duration"), duration_path, frozenset({"value", "unit"})
    )
    unit = _choice(
        _required(duration_data, duration_path, "unit"), "wound.duration.unit", DurationUnit
    )
    amount = duration_data.get("value")
    if amount is None:
        _fail("wound.duration.value", "ce champ est obligatoire.", code="missing_field")
    if isinstance(amount, bool) or not isinstance(amount, int):
        _fail("wound.duration.value", "un nombre entier est attendu.")
    if not 0 <= amount <= MAX_DURATION[unit.value]:
        _fail(
            "wound.duration.value",
            f"entre 0 et {MAX_DURATION[unit.value]} {DURATION_LABELS_FR[unit]}.",
        )
    treatment_value = data.get("treatment")
    treatment = (
        ""
        if treatment_value is None or treatment_value == ""
        else _text(treatment_value, "wound.treatment", max_chars=MAX_TREATMENT_CHARS)
    )
    return WoundDetails(
        site, laterality, WoundSize(length, width, depth), WoundDuration(amount, unit), treatment
    )


def _consent(value: object, now: datetime) -> Consent:
    path = "consent"
    data = _object(value, path, frozenset({"collected_by", "collected_at", "method"}))
    by = _identifier(_required(data, path, "collected_by"), "consent.collected_by")
    at = _datetime(_required(data, path, "collected_at"), "consent.collected_at")
    if at > now + CLOCK_SKEW:
        _fail("consent.collected_at", "la date du recueil est dans le futur.")
    if at < now - CONSENT_MAX_AGE:
        _fail(
            "consent.collected_at",
            "consentement trop ancien (plus d'un an) : recueillez-le à nouveau.",
        )
    method = _choice(_required(data, path, "method"), "consent.method", ConsentMethod)
    return Consent(by, at, method)


_TOP_KEYS: Final = frozenset(
    {"requester", "patient", "recipient", "question", "wound", "urgency", "consent"}
)


def parse_case_request(data: object, now: datetime) -> CaseRequest:
    """Validate a request body (draft rules: absent fields allowed, present ones checked).

    ``now`` bounds dates (birth date not in the future, consent not older than a year).
    Raises :class:`CaseFieldError` naming the first invalid field.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    body = _object(data, "", _TOP_KEYS)
    requester = _requester(_required(body, "", "requester"))

    def present(key: str) -> object | None:
        value = body.get(key)
        return None if value is None or value == "" else value

    patient_value = present("patient")
    recipient_value = present("recipient")
    question_value = present("question")
    wound_value = present("wound")
    urgency_value = present("urgency")
    consent_value = present("consent")
    return CaseRequest(
        requester=requester,
        patient=None if patient_value is None else _patient(patient_value, now),
        recipient=None if recipient_value is None else _recipient(recipient_value, requester),
        question=(
            None
            if question_value is None
            else _text(
                question_value,
                "question",
                max_chars=MAX_QUESTION_CHARS,
                min_chars=MIN_QUESTION_CHARS,
            )
        ),
        wound=None if wound_value is None else _wound(wound_value),
        urgency=None if urgency_value is None else _choice(urgency_value, "urgency", Urgency),
        consent=None if consent_value is None else _consent(consent_value, now),
    )


def require_complete(request: CaseRequest) -> None:
    """The submission check: every field present, consent last (code ``consent_required``)."""
    for name in ("patient", "recipient", "question", "wound", "urgency"):
        if getattr(request, name) is None:
            _fail(name, "ce champ est obligatoire pour envoyer la demande.", code="missing_field")
    if request.consent is None:
        _fail(
            "consent",
            "le consentement du patient doit être recueilli (par qui, quand, comment) avant "
            "l'envoi de la demande.",
            code="consent_required",
        )


def patient_key(patient: Patient) -> str:
    """A stable key for the patient (``ins:<NIR>`` or ``local:<id>``).

    The adapter stores a keyed hash of it rather than the NIR itself where it only needs to
    count or match (billing limits, "previous photos of the same wound").
    """
    if isinstance(patient, InsPatient):
        return f"ins:{patient.nir}"
    return f"local:{patient.local_id}"


def submit_event(request: CaseRequest, *, key: str | None = None) -> Submit:
    """The :class:`~relay.cases.Submit` event of a complete request.

    ``key`` overrides the patient key (the adapter's keyed hash); by default
    :func:`patient_key`. Raises :class:`CaseFieldError` if the request is incomplete.
    """
    require_complete(request)
    assert request.patient is not None and request.recipient is not None  # require_complete
    assert request.urgency is not None
    return Submit(
        urgency=request.urgency,
        patient_key=key if key is not None else patient_key(request.patient),
        specialist_id=request.recipient.specialist_id,
        team_id=request.recipient.team_id,
        consent_recorded=request.consent is not None,
    )
