"""STOW-RS: multipart body and response parsing, then pushes to a real Orthanc."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import date, datetime, timedelta, timezone

import aiohttp
import pytest

from relay.dicom_export import (
    DicomPhoto,
    Laterality,
    PatientSex,
    PersonName,
    WoundPhotoExport,
    WoundSite,
    build_wound_photo,
    new_uid,
)
from relay.imaging.errors import PacsRefused, PacsUnavailable
from relay.imaging.sanitize import sanitize_photo
from relay.pacs import (
    BasicCredentials,
    decode_multipart,
    encode_multipart,
    multipart_content_type,
    parse_stow_response,
    sop_instance_uid_of,
    stow,
)
from tests.relay.imaging import images
from tests.relay.imaging.orthanc_server import OrthancServer, free_port

TZ = timezone(timedelta(hours=1))
VL_PHOTO = "1.2.840.10008.5.1.4.1.1.77.1.4"


def wound_photos(count: int, *, study: str | None = None) -> list[DicomPhoto]:
    """``count`` photos of one case (one study, one series)."""
    jpeg = sanitize_photo(images.phone_jpeg(images.quadrants(120, 90))).jpeg
    study, series = study or new_uid(), new_uid()
    return [
        build_wound_photo(
            WoundPhotoExport(
                jpeg=jpeg,
                patient_name=PersonName("Lefèvre", "Anaïs"),
                patient_id="285057800608431",
                patient_birth_date=date(1950, 2, 1),
                patient_sex=PatientSex.FEMALE,
                study_description="Télé-expertise plaie",
                wound_site=WoundSite.HEEL,
                laterality=Laterality.RIGHT,
                content_datetime=datetime(2024, 1, 8, 9, 30, tzinfo=TZ),
                study_id="TE-1",
                study_instance_uid=study,
                series_instance_uid=series,
                instance_number=n + 1,
            ),
            now=datetime(2024, 1, 8, 9, 31, tzinfo=TZ),
        )
        for n in range(count)
    ]


# --- pure halves ------------------------------------------------------------------------


def test_multipart_round_trip() -> None:
    parts = [b"\x00" * 128 + b"DICM first", b"second\r\n--almost-a-boundary"]
    body = encode_multipart(parts, "b0undary")
    decoded = decode_multipart(body, "b0undary")
    assert [content for _, content in decoded] == parts
    assert all(headers == {"content-type": "application/dicom"} for headers, _ in decoded)
    assert multipart_content_type("b0undary") == (
        'multipart/related; type="application/dicom"; boundary=b0undary'
    )
    with pytest.raises(ValueError, match="boundary"):
        encode_multipart([b"xx--b0undary"], "b0undary")
    with pytest.raises(ValueError):
        decode_multipart(body[:-10], "b0undary")


ORTHANC_JSON_200 = {
    "00080005": {"Value": ["ISO_IR 100"], "vr": "CS"},
    "00081190": {"Value": ["http://pacs/dicom-web/studies/1.2.3"], "vr": "UR"},
    "00081198": {"vr": "SQ"},
    "00081199": {
        "Value": [
            {
                "00081150": {"Value": [VL_PHOTO], "vr": "UI"},
                "00081155": {"Value": ["1.2.3.4"], "vr": "UI"},
                "00081190": {
                    "Value": [
                        "http://pacs/dicom-web/studies/1.2.3/series/1.2.3.9/instances/1.2.3.4"
                    ],
                    "vr": "UR",
                },
            }
        ],
        "vr": "SQ",
    },
}

# Orthanc's answer with Accept: application/dicom+xml (PS3.19 Native DICOM Model).
ORTHANC_XML_202 = b"""<?xml version="1.0" encoding="utf-8"?>
<NativeDicomModel xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM">
  <DicomAttribute tag="00081190" vr="UR" keyword="RetrieveURL">
    <Value number="1">http://pacs/dicom-web/studies/1.2.3</Value>
  </DicomAttribute>
  <DicomAttribute tag="00081198" vr="SQ" keyword="FailedSOPSequence">
    <Item number="1">
      <DicomAttribute tag="00081150" vr="UI"><Value number="1">1.2.840.10008.5.1.4.1.1.7</Value></DicomAttribute>
      <DicomAttribute tag="00081155" vr="UI"><Value number="1">1.2.3.5</Value></DicomAttribute>
      <DicomAttribute tag="00081197" vr="US"><Value number="1">290</Value></DicomAttribute>
    </Item>
  </DicomAttribute>
  <DicomAttribute tag="00081199" vr="SQ" keyword="ReferencedSOPSequence">
    <Item number="1">
      <DicomAttribute tag="00081150" vr="UI"><Value number="1">1.2.840.10008.5.1.4.1.1.77.1.4</Value></DicomAttribute>
      <DicomAttribute tag="00081155" vr="UI"><Value number="1">1.2.3.4</Value></DicomAttribute>
      <DicomAttribute tag="00081196" vr="US"><Value number="1">45056</Value></DicomAttribute>
    </Item>
  </DicomAttribute>
</NativeDicomModel>"""  # noqa: E501


def test_parse_json_response() -> None:
    body = json.dumps(ORTHANC_JSON_200).encode()
    result = parse_stow_response(body, "application/dicom+json", http_status=200, sent=["1.2.3.4"])
    assert result.ok
    assert result.stored[0].sop_instance_uid == "1.2.3.4"
    assert result.stored[0].sop_class_uid == VL_PHOTO
    assert result.stored[0].retrieve_url is not None
    assert result.retrieve_url == "http://pacs/dicom-web/studies/1.2.3"
    assert result.failed == () and result.unaccounted == ()


def test_parse_xml_response_with_failure_and_warning() -> None:
    for content_type in ("application/dicom+xml", None):  # Orthanc omits it on errors
        result = parse_stow_response(
            ORTHANC_XML_202, content_type, http_status=202, sent=["1.2.3.4", "1.2.3.5", "1.2.3.6"]
        )
        assert not result.ok
        assert [i.sop_instance_uid for i in result.stored] == ["1.2.3.4"]
        assert result.stored[0].warning_reason == 0xB000  # coercion of data elements
        assert result.failed[0].sop_instance_uid == "1.2.3.5"
        assert result.failed[0].failure_reason == 290  # 0x0122 SOP class not supported
        assert result.unaccounted == ("1.2.3.6",)


def test_parse_refuses_what_is_not_a_store_response() -> None:
    with pytest.raises(ValueError):
        parse_stow_response(b'{"error": "no"}', "application/json", http_status=400, sent=[])
    with pytest.raises(ValueError):
        parse_stow_response(b"<html>502</html>", "text/html", http_status=200, sent=[])
    with pytest.raises(ValueError):
        parse_stow_response(b"not json", "application/dicom+json", http_status=200, sent=[])
    entity = (
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]>'
        b'<NativeDicomModel><DicomAttribute tag="00081199" vr="SQ"/></NativeDicomModel>'
    )
    with pytest.raises(ValueError, match="DTD"):
        parse_stow_response(entity, "application/dicom+xml", http_status=200, sent=[])


def test_credentials() -> None:
    credentials = BasicCredentials("infirmière", "s3cret")
    assert credentials.authorization == "Basic aW5maXJtacOocmU6czNjcmV0"
    assert "s3cret" not in repr(credentials)


def test_sop_instance_uid_of() -> None:
    photo = wound_photos(1)[0]
    assert sop_instance_uid_of(photo.data) == photo.sop_instance_uid
    with pytest.raises(ValueError):
        sop_instance_uid_of(b"junk")


# --- against a real Orthanc -------------------------------------------------------------


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def orthanc_instance(orthanc: OrthancServer, sop_instance_uid: str) -> str:
    """Orthanc's identifier of the instance with this SOP Instance UID."""
    for identifier in orthanc.get_json("/instances"):
        tags = orthanc.get_json(f"/instances/{identifier}/simplified-tags")
        if tags.get("SOPInstanceUID") == sop_instance_uid:
            return str(identifier)
    raise AssertionError(f"{sop_instance_uid} not in Orthanc")


async def test_stow_to_orthanc_stores_the_photos_unchanged(
    orthanc: OrthancServer, session: aiohttp.ClientSession
) -> None:
    photos = wound_photos(2)
    result = await stow(
        orthanc.dicomweb_url, [p.data for p in photos], session=session, auth=orthanc.auth
    )
    assert result.http_status == 200 and result.ok, result
    assert sorted(i.sop_instance_uid for i in result.stored) == sorted(
        p.sop_instance_uid for p in photos
    )
    assert result.retrieve_url is not None
    assert result.retrieve_url.endswith(photos[0].study_instance_uid)

    # QIDO-RS sees the study's instances; the REST API gives back the very bytes sent.
    found = orthanc.get_json(f"/dicom-web/studies/{photos[0].study_instance_uid}/instances")
    assert sorted(item["00080018"]["Value"][0] for item in found) == sorted(
        p.sop_instance_uid for p in photos
    )
    for photo in photos:
        identifier = orthanc_instance(orthanc, photo.sop_instance_uid)
        assert orthanc.get(f"/instances/{identifier}/file") == photo.data
        tags = orthanc.get_json(f"/instances/{identifier}/simplified-tags")
        assert tags["PatientName"] == "Lefèvre^Anaïs"
        assert tags["Modality"] == "XC" and tags["Laterality"] == "R"


async def test_stow_reports_instances_orthanc_refuses(
    orthanc: OrthancServer, session: aiohttp.ClientSession
) -> None:
    photo = wound_photos(1)[0]
    result = await stow(
        orthanc.dicomweb_url,
        [photo.data],
        session=session,
        auth=orthanc.auth,
        study_instance_uid=new_uid(),  # not this photo's study: refused (PS3.18 10.5.1)
    )
    assert result.http_status == 409
    assert not result.ok
    assert result.stored == ()
    assert result.failed[0].sop_instance_uid == photo.sop_instance_uid
    assert result.failed[0].failure_reason is not None


async def test_storing_again_is_idempotent(
    orthanc: OrthancServer, session: aiohttp.ClientSession
) -> None:
    photo = wound_photos(1)[0]
    for _ in range(2):
        result = await stow(orthanc.dicomweb_url, [photo.data], session=session, auth=orthanc.auth)
        assert result.ok
    orthanc_instance(orthanc, photo.sop_instance_uid)


async def test_wrong_credentials_are_a_refusal(
    orthanc: OrthancServer, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(PacsRefused) as refused:
        await stow(
            orthanc.dicomweb_url,
            [wound_photos(1)[0].data],
            session=session,
            auth=BasicCredentials("relais", "wrong"),
        )
    assert refused.value.http_status == 502


async def test_unreachable_pacs_is_unavailable(session: aiohttp.ClientSession) -> None:
    with pytest.raises(PacsUnavailable):
        await stow(
            f"http://127.0.0.1:{free_port()}/dicom-web",
            [wound_photos(1)[0].data],
            session=session,
            request_timeout=5,
        )


async def test_nothing_to_store(session: aiohttp.ClientSession) -> None:
    with pytest.raises(ValueError):
        await stow("http://127.0.0.1:9/dicom-web", [], session=session)
