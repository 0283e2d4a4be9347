"""DICOMweb STOW-RS client: push DICOM objects to a PACS (PS3.18 10.5 "Store Transaction").

A thin adapter over aiohttp plus its pure halves, tested on their own:

* :func:`encode_multipart` / :func:`decode_multipart` — the ``multipart/related;
  type="application/dicom"`` request body (RFC 2387, PS3.18 8.6.1.2), one DICOM Part 10
  file per part;
* :func:`parse_stow_response` — the Store Instances Response Module (PS3.18 10.5.3,
  Table 10.5.3-1) in the DICOM JSON (PS3.18 F.2) or Native DICOM XML (PS3.19 A.1) model:
  Referenced SOP Sequence (0008,1199) for stored instances, Failed SOP Sequence (0008,1198)
  with Failure Reason (0008,1197), Warning Reason (0008,1196), Retrieve URL (0008,1190).

The response status alone does not say which instance was stored: PS3.18 uses 200 (all
stored), 202 (stored with warnings or some failed) and 409 (none stored), and Orthanc 1.10
answers 400 with a partial Referenced SOP Sequence when one part is not DICOM at all,
without naming it. So the result is computed per instance: each SOP Instance UID we sent is
stored, failed (with its reason) or *unaccounted* (the PACS said nothing about it, which
the caller must treat as not stored).

Errors: :class:`PacsUnavailable` (no answer, timeout, 5xx: retry later) and
:class:`PacsRefused` (401/403/404/415... or a body that is not a STOW response: fix the
configuration). No logging here: the caller records the push in the audit log.
"""

from __future__ import annotations

import base64
import io
import json
import secrets
import warnings
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp
from pydicom import dcmread

from relay.imaging.errors import PacsRefused, PacsUnavailable

__all__ = [
    "BasicCredentials",
    "StowFailure",
    "StowInstance",
    "StowResult",
    "decode_multipart",
    "encode_multipart",
    "multipart_content_type",
    "parse_stow_response",
    "sop_instance_uid_of",
    "stow",
]

DICOM_JSON: Final = "application/dicom+json"
DICOM_XML: Final = "application/dicom+xml"
# Tags of the Store Instances Response Module (PS3.18 Table 10.5.3-1).
_RETRIEVE_URL: Final = "00081190"
_FAILED_SOP_SEQUENCE: Final = "00081198"
_REFERENCED_SOP_SEQUENCE: Final = "00081199"
_REFERENCED_SOP_CLASS: Final = "00081150"
_REFERENCED_SOP_INSTANCE: Final = "00081155"
_FAILURE_REASON: Final = "00081197"
_WARNING_REASON: Final = "00081196"
_CRLF: Final = b"\r\n"


@dataclass(frozen=True)
class StowInstance:
    """An instance the PACS stored (possibly with a warning: coerced or discarded values)."""

    sop_class_uid: str
    sop_instance_uid: str
    retrieve_url: str | None = None
    warning_reason: int | None = None


@dataclass(frozen=True)
class StowFailure:
    """An instance the PACS refused; ``failure_reason`` per PS3.18 Table 10.5.3-2
    (0xA700 out of resources, 0xA900 data set does not match SOP class, 0xC000 cannot
    understand, 0x0110 processing failure, 0x0122 SOP class not supported...)."""

    sop_class_uid: str
    sop_instance_uid: str
    failure_reason: int | None


@dataclass(frozen=True)
class StowResult:
    """The outcome of one STOW-RS request, per instance."""

    http_status: int
    stored: tuple[StowInstance, ...]
    failed: tuple[StowFailure, ...]
    unaccounted: tuple[str, ...]  # SOP Instance UIDs sent and mentioned nowhere
    retrieve_url: str | None = None

    @property
    def ok(self) -> bool:
        """Every instance sent is stored (warnings allowed)."""
        return not self.failed and not self.unaccounted and bool(self.stored)


@dataclass(frozen=True)
class BasicCredentials:
    """HTTP Basic credentials for the PACS (RFC 7617); never logged (``repr`` hides them)."""

    username: str
    password: str = field(repr=False)

    @property
    def authorization(self) -> str:
        """The ``Authorization`` header value (user-id and password in UTF-8, RFC 7617 2.1)."""
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode("ascii")
        return f"Basic {token}"


def multipart_content_type(boundary: str) -> str:
    """The request's Content-Type (RFC 2387 ``type`` parameter, PS3.18 8.6.1.2)."""
    return f'multipart/related; type="application/dicom"; boundary={boundary}'


def encode_multipart(datasets: Sequence[bytes], boundary: str) -> bytes:
    """The ``multipart/related`` body: one ``application/dicom`` part per Part 10 file."""
    delimiter = b"--" + boundary.encode("ascii")
    body = io.BytesIO()
    for dataset in datasets:
        if delimiter in dataset:
            raise ValueError("boundary occurs in a dataset")  # the caller draws another
        body.write(delimiter + _CRLF + b"Content-Type: application/dicom" + _CRLF + _CRLF)
        body.write(dataset + _CRLF)
    body.write(delimiter + b"--" + _CRLF)
    return body.getvalue()


def decode_multipart(body: bytes, boundary: str) -> list[tuple[dict[str, str], bytes]]:
    """Parse a body built by :func:`encode_multipart` (RFC 2046 5.1.1): (headers, content)."""
    delimiter = _CRLF + b"--" + boundary.encode("ascii")
    # The first delimiter may start the body without the preceding CRLF (RFC 2046 5.1.1).
    chunks = (_CRLF + body).split(delimiter)
    if len(chunks) < 2 or not chunks[-1].startswith(b"--"):
        raise ValueError("no closing delimiter")
    parts: list[tuple[dict[str, str], bytes]] = []
    for chunk in chunks[1:-1]:
        head, separator, content = chunk.partition(_CRLF + _CRLF)
        if not separator:
            raise ValueError("part without header section")
        headers: dict[str, str] = {}
        for line in head.split(_CRLF)[1:]:  # [0] is the rest of the delimiter line
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        parts.append((headers, content))
    return parts


def sop_instance_uid_of(dataset: bytes) -> str:
    """The SOP Instance UID of a Part 10 file (read from its header only)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            header = dcmread(io.BytesIO(dataset), stop_before_pixels=True, defer_size=1024)
            return str(header.SOPInstanceUID)
        except Exception:
            raise ValueError("not a DICOM Part 10 file with a SOP Instance UID") from None


def parse_stow_response(
    body: bytes, content_type: str | None, *, http_status: int, sent: Sequence[str]
) -> StowResult:
    """Interpret a STOW-RS response body for the instances ``sent`` (SOP Instance UIDs).

    ``content_type`` may be missing (Orthanc omits it on errors): the body's first
    character then tells JSON from XML. Raises ``ValueError`` when the body is not a Store
    Instances Response.
    """
    media = (content_type or "").split(";")[0].strip().lower()
    text = body.lstrip()
    if media.endswith("xml") or (not media.endswith("json") and text.startswith(b"<")):
        module = _from_xml(text)
    else:
        module = _from_json(text)
    if _REFERENCED_SOP_SEQUENCE not in module and _FAILED_SOP_SEQUENCE not in module:
        raise ValueError("not a Store Instances Response")
    stored = tuple(
        StowInstance(
            sop_class_uid=_first_str(item, _REFERENCED_SOP_CLASS) or "",
            sop_instance_uid=_first_str(item, _REFERENCED_SOP_INSTANCE) or "",
            retrieve_url=_first_str(item, _RETRIEVE_URL),
            warning_reason=_first_int(item, _WARNING_REASON),
        )
        for item in _items(module, _REFERENCED_SOP_SEQUENCE)
    )
    failed = tuple(
        StowFailure(
            sop_class_uid=_first_str(item, _REFERENCED_SOP_CLASS) or "",
            sop_instance_uid=_first_str(item, _REFERENCED_SOP_INSTANCE) or "",
            failure_reason=_first_int(item, _FAILURE_REASON),
        )
        for item in _items(module, _FAILED_SOP_SEQUENCE)
    )
    mentioned = {i.sop_instance_uid for i in stored} | {f.sop_instance_uid for f in failed}
    return StowResult(
        http_status=http_status,
        stored=stored,
        failed=failed,
        unaccounted=tuple(uid for uid in sent if uid not in mentioned),
        retrieve_url=_first_str(module, _RETRIEVE_URL),
    )


async def stow(
    base_url: str,
    datasets: list[bytes],
    *,
    session: aiohttp.ClientSession,
    auth: BasicCredentials | None = None,
    study_instance_uid: str | None = None,
    request_timeout: float = 60.0,
) -> StowResult:
    """POST ``datasets`` (DICOM Part 10 files) to ``{base_url}/studies[/{study}]``.

    ``base_url`` is the DICOMweb root (Orthanc: ``http://host:8042/dicom-web``). Returns
    the per-instance :class:`StowResult`; raises :class:`PacsUnavailable` or
    :class:`PacsRefused` when there is no Store Instances Response to read.
    """
    if not datasets:
        raise ValueError("nothing to store")
    sent = [sop_instance_uid_of(dataset) for dataset in datasets]
    boundary = secrets.token_hex(16)
    while any(boundary.encode() in dataset for dataset in datasets):
        boundary = secrets.token_hex(16)
    url = base_url.rstrip("/") + "/studies"
    if study_instance_uid is not None:
        url += "/" + study_instance_uid
    headers = {"Content-Type": multipart_content_type(boundary), "Accept": DICOM_JSON}
    if auth is not None:
        headers["Authorization"] = auth.authorization
    try:
        async with session.post(
            url,
            data=encode_multipart(datasets, boundary),
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=request_timeout),
        ) as response:
            body = await response.read()
            status, content_type = response.status, response.headers.get("Content-Type")
    except (TimeoutError, aiohttp.ClientError):
        raise PacsUnavailable() from None
    if status >= 500:
        raise PacsUnavailable()
    try:
        return parse_stow_response(body, content_type, http_status=status, sent=sent)
    except ValueError:
        if status < 300:
            raise PacsRefused("Le PACS a répondu sans compte rendu de stockage lisible.") from None
        raise PacsRefused() from None


# --- DICOM JSON / XML models, reduced to {tag: [values]} with items as nested dicts ------

_Module = dict[str, list[Any]]


def _from_json(text: bytes) -> _Module:
    try:
        document = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("invalid JSON") from None
    if not isinstance(document, dict):
        raise ValueError("DICOM JSON object expected")
    return _json_dataset(document)


def _json_dataset(document: dict[str, Any]) -> _Module:
    module: _Module = {}
    for tag, attribute in document.items():
        if not isinstance(attribute, dict):
            raise ValueError("DICOM JSON attribute must be an object")
        values = attribute.get("Value", [])
        if not isinstance(values, list):
            raise ValueError("DICOM JSON Value must be an array")
        if attribute.get("vr") == "SQ":
            values = [_json_dataset(item) for item in values if isinstance(item, dict)]
        module[tag.upper()] = values
    return module


def _from_xml(text: bytes) -> _Module:
    # No DTD means no entity expansion or external entity to worry about; ElementTree never
    # fetches external resources and expat bounds entity amplification, this is belt and braces.
    if b"<!DOCTYPE" in text or b"<!ENTITY" in text:
        raise ValueError("DTDs are not accepted")
    try:
        root = ElementTree.fromstring(text)  # noqa: S314 - DTDs refused above
    except ElementTree.ParseError:
        raise ValueError("invalid XML") from None
    return _xml_dataset(root)


def _xml_dataset(element: ElementTree.Element) -> _Module:
    module: _Module = {}
    # "{*}" matches the NativeDicomModel namespace or none (both are seen in the wild).
    for attribute in element.findall("{*}DicomAttribute"):
        tag = (attribute.get("tag") or "").upper()
        if attribute.get("vr") == "SQ":
            module[tag] = [_xml_dataset(item) for item in attribute.findall("{*}Item")]
        else:
            values = attribute.findall("{*}Value")
            module[tag] = [(value.text or "").strip() for value in values]
    return module


def _items(module: _Module, tag: str) -> list[_Module]:
    return [item for item in module.get(tag, []) if isinstance(item, dict)]


def _first_str(module: _Module, tag: str) -> str | None:
    values = module.get(tag) or []
    return str(values[0]) if values and values[0] is not None else None


def _first_int(module: _Module, tag: str) -> int | None:
    value = _first_str(module, tag)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
