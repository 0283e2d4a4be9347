"""Every bad input of issue 5 gets a clear error through the real upload and case API."""

from __future__ import annotations

import io

import aiohttp
import pillow_heif
import pytest
from PIL import Image

from tests.harness.accounts import NURSE, SPECIALIST
from tests.relay.cases.helpers import with_nir_key
from tests.relay.cases_api.helpers import case_body, create_case, session_of, upload
from tests.relay.imaging import dicoms, images

# Importing the sanitizer registers the opener in the relay; the test encodes HEIC itself.
pillow_heif.register_heif_opener()


def _refusals() -> list[tuple[str, bytes, str, int, str]]:
    jpeg = images.phone_jpeg()
    return [
        ("gif", images.GIF, "image/jpeg", 415, "image_format_unsupported"),
        ("svg", images.SVG, "image/jpeg", 415, "image_format_unsupported"),
        ("pdf renamed .jpg", images.PDF, "image/jpeg", 415, "image_format_unsupported"),
        ("truncated jpeg", jpeg[: len(jpeg) // 2], "image/jpeg", 422, "image_corrupt"),
        (
            "decompression bomb png",
            images.png_bomb(30_000, 30_000, idat=False),
            "image/png",
            413,
            "image_too_large",
        ),
        (
            "16k x 16k",
            images.with_jpeg_size(jpeg, 16_000, 16_000),
            "image/jpeg",
            413,
            "image_too_large",
        ),
        (
            "malformed dicom",
            b"\x00" * 128 + b"DICM" + b"\x02\x00\x00\x00garbage" * 8,
            "application/dicom",
            422,
            "dicom_malformed",
        ),
        (
            "dicom with a huge private tag",
            dicoms.to_bytes(
                dicoms.with_private(dicoms.monochrome(dicoms.half_and_half(0, 1000)), 600 * 1024)
            ),
            "application/dicom",
            422,
            "dicom_element_too_large",
        ),
    ]


@pytest.mark.parametrize(
    ("label", "data", "content_type", "status", "code"),
    _refusals(),
    ids=[r[0] for r in _refusals()],
)
async def test_refused_upload(
    http: aiohttp.ClientSession, label: str, data: bytes, content_type: str, status: int, code: str
) -> None:
    nurse = await session_of(http, NURSE.email)
    answer_status, body = await upload(http, nurse, data, content_type=content_type)
    assert (answer_status, body["error"]["code"]) == (status, code), (label, body)
    assert body["error"]["message"]  # a French sentence, not a stack trace


async def test_wrong_declared_type_refused_at_creation(http: aiohttp.ClientSession) -> None:
    nurse = await session_of(http, NURSE.email)
    status, body = await upload(http, nurse, images.GIF, content_type="image/gif")
    assert (status, body["error"]["code"]) == (415, "image_format_unsupported")


async def _photo_through_case(
    http: aiohttp.ClientSession, data: bytes, content_type: str
) -> tuple[dict[str, object], bytes]:
    nurse = await session_of(http, NURSE.email)
    status, uploaded = await upload(http, nurse, data, content_type=content_type)
    assert status == 200, uploaded
    body = case_body()
    status, case = await create_case(http, nurse, {**body, "photo_ids": [uploaded["photo_id"]]})
    assert status == 201, case
    specialist = await session_of(http, SPECIALIST.email)
    photo = case["photos"][0]
    async with http.get(
        f"/api/cases/{case['id']}/photos/{photo['id']}", headers=specialist
    ) as response:
        assert response.status == 200
        return photo, await response.read()


async def test_orientation_6_is_applied(http: aiohttp.ClientSession) -> None:
    photo, jpeg = await _photo_through_case(http, images.phone_jpeg(orientation=6), "image/jpeg")
    # quadrants() is 60x40 landscape; orientation 6 (rotate 90° CW) makes it 40x60.
    assert (photo["width"], photo["height"]) == (40, 60)
    images.assert_clean(jpeg)
    with Image.open(io.BytesIO(jpeg)) as shown:
        assert shown.size == (40, 60)
        # Top-left quadrant of the source (red) is top-right once upright.
        assert images.close(images.pixel(jpeg, (35, 5)), images.RED)


async def test_heic_with_gps_becomes_metadata_free(http: aiohttp.ClientSession) -> None:
    photo, jpeg = await _photo_through_case(http, images.heic_with_gps(), "image/heic")
    assert (photo["width"], photo["height"]) == (40, 60)
    images.assert_clean(jpeg)
    for secret in (b"SECRET", b"GPS", b"Exif"):
        assert secret not in jpeg


async def test_case_without_consent_cannot_be_submitted(http: aiohttp.ClientSession) -> None:
    nurse = await session_of(http, NURSE.email)
    status, body = await create_case(http, nurse, case_body(consent=False))
    assert status == 400
    assert body["error"]["code"] == "consent_required"
    assert "consentement" in body["error"]["message"]


async def test_invalid_nir_key_is_refused(http: aiohttp.ClientSession) -> None:
    nurse = await session_of(http, NURSE.email)
    valid = with_nir_key("2500375123456")
    wrong_key = valid[:13] + f"{(int(valid[13:]) + 1) % 97:02d}"
    status, body = await create_case(http, nurse, case_body(nir=wrong_key))
    assert status == 400
    assert body["error"]["code"] == "invalid_identifier"
    assert "patient.nir" in body["error"]["message"] or "NIR" in body["error"]["message"]
