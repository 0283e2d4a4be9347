"""The photo pipeline: allow-list, caps, orientation, and no metadata left, byte by byte."""

from __future__ import annotations

import hashlib
import io
import struct
import time
from concurrent.futures import ProcessPoolExecutor

import pytest
from PIL import Image, ImageFile, features

from relay.imaging.errors import CorruptImage, ImageTooLarge, UnsupportedImageFormat
from relay.imaging.jpeg import SOF0, frame_of, parse_structure
from relay.imaging.sanitize import (
    PhotoFormat,
    PhotoSettings,
    SanitizedPhoto,
    sanitize_photo,
    sniff_format,
)
from tests.relay.imaging import images
from tests.relay.imaging.images import BLUE, GREY, RED, assert_clean, close, pixel


def test_phone_jpeg_is_stripped_of_every_metadata_block() -> None:
    icc = images.srgb_profile()
    upload = images.phone_jpeg(icc=icc)
    # The upload really carries all of it (so the test can fail).
    names = parse_structure(upload).markers()
    assert {"APP1", "APP13", "COM"} <= set(names)
    assert images.SECRET_TRAILER in upload and images.SECRET_MAKER in upload

    photo = sanitize_photo(upload)

    assert_clean(photo.jpeg, icc=icc)
    assert_clean(photo.thumbnail, icc=icc)
    assert photo.icc_present
    assert photo.source_format is PhotoFormat.JPEG
    assert photo.sha256 == hashlib.sha256(photo.jpeg).hexdigest()
    assert upload not in (photo.jpeg, photo.thumbnail)


def test_output_is_baseline_422_for_dicom_wrapping() -> None:
    photo = sanitize_photo(images.phone_jpeg())
    frame = frame_of(parse_structure(photo.jpeg))
    assert frame.marker == SOF0 and frame.is_baseline
    assert frame.chroma_subsampling == "4:2:2"
    assert (frame.width, frame.height) == (photo.width, photo.height)


def test_exif_orientation_6_is_applied() -> None:
    # Stored 60 x 40 with red top-left; orientation 6 = rotate 90° clockwise to display.
    photo = sanitize_photo(images.phone_jpeg(orientation=6))
    assert (photo.width, photo.height) == (40, 60)
    assert close(pixel(photo.jpeg, (35, 3)), RED)  # top-left went to the top-right
    assert close(pixel(photo.jpeg, (3, 56)), BLUE)  # bottom-right went to the bottom-left
    assert close(pixel(photo.jpeg, (3, 3)), GREY)
    thumb = Image.open(io.BytesIO(photo.thumbnail))
    assert thumb.size == (40, 60)  # already small: not enlarged


@pytest.mark.parametrize(
    ("orientation", "size", "red_at"),
    [(1, (60, 40), (3, 3)), (3, (60, 40), (56, 36)), (8, (40, 60), (3, 56))],
)
def test_other_orientations(
    orientation: int, size: tuple[int, int], red_at: tuple[int, int]
) -> None:
    photo = sanitize_photo(images.phone_jpeg(orientation=orientation))
    assert (photo.width, photo.height) == size
    assert close(pixel(photo.jpeg, red_at), RED)


def test_heic_with_gps_loses_it_and_keeps_its_orientation() -> None:
    upload = images.heic_with_gps(orientation=6)
    assert images.SECRET_MAKER in upload or images.SECRET_XMP in upload  # metadata is there
    assert sniff_format(upload) == "HEIF"

    photo = sanitize_photo(upload)

    assert photo.source_format is PhotoFormat.HEIF
    assert (photo.width, photo.height) == (40, 60)  # pillow-heif applied irot, once
    assert close(pixel(photo.jpeg, (35, 3)), RED)
    assert_clean(photo.jpeg, icc=None)
    decoded = Image.open(io.BytesIO(photo.jpeg))
    assert decoded.getexif().get_ifd(images.GPS_IFD) == {}


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P"])
def test_png_text_exif_and_xmp_are_dropped(mode: str) -> None:
    upload = images.png_with_metadata(mode)
    assert images.SECRET_TEXT.encode() in upload
    photo = sanitize_photo(upload)
    assert photo.source_format is PhotoFormat.PNG
    icc = images.srgb_profile() if mode in ("RGB", "RGBA") else None
    assert_clean(photo.jpeg, icc=icc)
    assert Image.open(io.BytesIO(photo.jpeg)).mode == "RGB"


def test_transparent_png_goes_on_white() -> None:
    image = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    image.paste((200, 0, 0, 255), (0, 0, 10, 20))
    photo = sanitize_photo(images.encoded(image, "PNG"))
    assert close(pixel(photo.jpeg, (15, 10)), (255, 255, 255), 8)
    assert close(pixel(photo.jpeg, (3, 10)), (200, 0, 0))


def test_sixteen_bit_png_keeps_its_range() -> None:
    row = struct.pack("<16H", *([0] * 8 + [60000] * 8))
    image = Image.frombytes("I;16", (16, 16), row * 16)
    assert image.getpixel((13, 8)) == 60000
    photo = sanitize_photo(images.encoded(image, "PNG"))
    assert pixel(photo.jpeg, (2, 8))[0] < 10
    assert pixel(photo.jpeg, (13, 8))[0] > 220  # not clipped to 255 grey levels of 65535


def test_mpo_secondary_image_is_dropped() -> None:
    upload = images.mpo_jpeg()
    assert Image.open(io.BytesIO(upload)).format == "MPO"
    photo = sanitize_photo(upload)
    structure = assert_clean(photo.jpeg)
    assert structure.markers().count("SOI") == 1
    assert close(pixel(photo.jpeg, (3, 3)), RED)  # frame 0, not the green second image


def test_cmyk_jpeg_is_converted_to_rgb() -> None:
    upload = images.encoded(images.quadrants().convert("CMYK"), "JPEG", quality=95)
    photo = sanitize_photo(upload)
    assert Image.open(io.BytesIO(photo.jpeg)).mode == "RGB"
    assert close(pixel(photo.jpeg, (3, 3)), RED, 60)


def test_thumbnail_is_bounded_and_clean() -> None:
    big = images.quadrants(1200, 800)
    photo = sanitize_photo(images.phone_jpeg(big), PhotoSettings(thumbnail_side=100))
    thumb = Image.open(io.BytesIO(photo.thumbnail))
    assert thumb.size == (100, 67)
    assert close(pixel(photo.thumbnail, (5, 5)), RED)
    assert_clean(photo.thumbnail)


@pytest.mark.parametrize(
    ("upload", "kind"),
    [
        (images.GIF, "GIF"),
        (images.SVG, "SVG"),
        (images.PDF, "PDF"),  # whatever the file was called: names are never looked at
        (images.encoded(images.quadrants(), "WEBP"), "WEBP"),
        (images.encoded(images.quadrants(), "BMP"), "BMP"),
        (images.encoded(images.quadrants(), "TIFF"), "TIFF"),
        (b"", None),
        (b"hello, world", None),
    ],
)
def test_formats_outside_the_allow_list_are_refused(upload: bytes, kind: str | None) -> None:
    assert sniff_format(upload) == kind
    with pytest.raises(UnsupportedImageFormat) as refused:
        sanitize_photo(upload)
    assert refused.value.http_status == 415
    assert refused.value.code == "image_format_unsupported"
    assert "JPEG, PNG ou HEIC" in refused.value.message
    if kind is not None:
        assert kind in refused.value.message


@pytest.mark.skipif(not features.check("avif"), reason="Pillow built without AVIF")
def test_avif_is_refused_although_pillow_could_decode_it() -> None:
    upload = images.encoded(images.quadrants(), "AVIF")
    assert Image.open(io.BytesIO(upload)).format == "AVIF"
    with pytest.raises(UnsupportedImageFormat):
        sanitize_photo(upload)


def test_dicom_sent_as_a_photo_is_pointed_to_the_right_door() -> None:
    fake = b"\x00" * 128 + b"DICM" + b"\x00" * 64
    with pytest.raises(UnsupportedImageFormat) as refused:
        sanitize_photo(fake)
    assert "DICOM" in refused.value.message


def test_truncated_jpeg_is_an_error_not_a_grey_image(monkeypatch: pytest.MonkeyPatch) -> None:
    upload = images.phone_jpeg(images.quadrants(400, 300), trailer=False)
    cut = upload[: len(upload) * 2 // 3]
    # Even if some other code in the process relaxed Pillow, the pipeline does not.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(CorruptImage) as refused:
        sanitize_photo(cut)
    assert refused.value.http_status == 422
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored after the call


def test_truncated_png_is_an_error() -> None:
    upload = images.encoded(images.quadrants(200, 200), "PNG")
    with pytest.raises(CorruptImage):
        sanitize_photo(upload[: len(upload) // 2])


def test_broken_header_of_an_allowed_format_is_corrupt_not_unsupported() -> None:
    with pytest.raises(CorruptImage):
        sanitize_photo(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)


def test_decompression_bomb_png_is_refused_from_its_header() -> None:
    bomb = images.png_bomb(10_000, 10_000)  # 100 MP of zeros in ~40 KB
    assert len(bomb) < 100_000
    limit_before = Image.MAX_IMAGE_PIXELS
    started = time.perf_counter()
    with pytest.raises(ImageTooLarge) as refused:
        sanitize_photo(bomb)
    assert time.perf_counter() - started < 0.5
    assert refused.value.http_status == 413
    assert limit_before == Image.MAX_IMAGE_PIXELS  # the call's limit is scoped to the call


@pytest.mark.parametrize("pixels", [1_500_000, 3_000_000])
def test_bomb_warning_band_is_an_error_too(pixels: int) -> None:
    # Between 1x and 2x MAX_IMAGE_PIXELS Pillow only warns; the call turns it into an error.
    side = int(pixels**0.5)
    with pytest.raises(ImageTooLarge):
        sanitize_photo(images.png_bomb(side, side), PhotoSettings(max_pixels=1_000_000))


def test_sixteen_k_square_is_refused_without_decoding() -> None:
    small = images.encoded(images.quadrants(64, 64), "JPEG")
    huge = images.with_jpeg_size(small, 16_384, 16_384)
    frame = frame_of(parse_structure(huge))
    assert (frame.width, frame.height) == (16_384, 16_384)
    started = time.perf_counter()
    # Decoding would fail as truncated (CorruptImage): ImageTooLarge proves the header check.
    with pytest.raises(ImageTooLarge) as refused:
        sanitize_photo(huge)
    assert time.perf_counter() - started < 0.5
    assert "50 mégapixels au plus" in refused.value.message
    with pytest.raises(ImageTooLarge):
        sanitize_photo(images.png_bomb(16_384, 16_384, idat=False))


def test_side_longer_than_jpeg_allows_is_refused() -> None:
    with pytest.raises(ImageTooLarge) as refused:
        sanitize_photo(images.png_bomb(70_000, 8))
    assert "70000 × 8 pixels" in refused.value.message


def test_byte_cap() -> None:
    upload = images.phone_jpeg()
    with pytest.raises(ImageTooLarge):
        sanitize_photo(upload, PhotoSettings(max_bytes=len(upload) - 1))
    assert sanitize_photo(upload, PhotoSettings(max_bytes=len(upload))).width == 60


def test_runs_in_a_process_pool_and_errors_cross_back() -> None:
    with ProcessPoolExecutor(max_workers=1) as pool:
        photo = pool.submit(sanitize_photo, images.phone_jpeg(orientation=6)).result()
        assert isinstance(photo, SanitizedPhoto)
        assert (photo.width, photo.height) == (40, 60)
        with pytest.raises(UnsupportedImageFormat) as refused:
            pool.submit(sanitize_photo, images.GIF).result()
    assert refused.value.code == "image_format_unsupported"
    assert "GIF" in refused.value.message


def test_repr_shows_no_image_bytes() -> None:
    photo = sanitize_photo(images.phone_jpeg())
    assert "jpeg=" not in repr(photo) and len(repr(photo)) < 300
