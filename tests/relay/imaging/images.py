"""Generated test images: phone-like photos loaded with metadata, hostile files.

Everything is built in memory from a few pixels, so the tests need no binary fixtures; the
marker strings (``SECRET_*``) are planted in every metadata block so a test can prove, byte
by byte, that none survived.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib
from typing import Final

import pillow_heif
from PIL import Image, ImageCms, PngImagePlugin

from relay.imaging.jpeg import APP0, APP2, SOF0, JpegStructure, parse_structure

# Planted in metadata; none may appear in any output.
SECRET_GPS: Final = (48.0, 51.0, 29.0)  # Paris, as EXIF rationals
SECRET_MAKER: Final = b"SECRET_MAKERNOTE"
SECRET_COMMENT: Final = b"SECRET_COMMENT Mme Dupont"
SECRET_XMP: Final = b"SECRET_XMP"
SECRET_IPTC: Final = b"SECRET_IPTC"
SECRET_TEXT: Final = "SECRET_PNG_TEXT"
SECRET_TRAILER: Final = b"SECRET_TRAILER"
SECRETS: Final = (
    SECRET_MAKER,
    SECRET_COMMENT,
    SECRET_XMP,
    SECRET_IPTC,
    SECRET_TEXT.encode(),
    SECRET_TRAILER,
    b"SECRET_SERIAL",
    b"SECRET_ARTIST",
)

RED: Final = (220, 20, 20)
GREEN: Final = (20, 200, 20)
BLUE: Final = (20, 20, 220)
GREY: Final = (128, 128, 128)

ORIENTATION: Final = 0x0112
GPS_IFD: Final = 0x8825
EXIF_IFD: Final = 0x8769
MAKER_NOTE: Final = 0x927C


def quadrants(width: int = 60, height: int = 40) -> Image.Image:
    """Grey picture with a red top-left and a blue bottom-right corner (to see rotations)."""
    image = Image.new("RGB", (width, height), GREY)
    image.paste(RED, (0, 0, width // 3, height // 3))
    image.paste(BLUE, (width - width // 3, height - height // 3, width, height))
    return image


def exif_block(orientation: int = 1) -> bytes:
    """EXIF with orientation, GPS, maker note, camera serial and artist."""
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    exif[0x010F] = "SecretPhone"  # Make
    exif[0x013B] = "SECRET_ARTIST"  # Artist
    exif[GPS_IFD] = {1: "N", 2: SECRET_GPS, 3: "E", 4: (2.0, 21.0, 7.0)}
    exif[EXIF_IFD] = {MAKER_NOTE: SECRET_MAKER, 0xA431: "SECRET_SERIAL"}  # BodySerialNumber
    return exif.tobytes()


@functools.cache
def srgb_profile() -> bytes:
    """An sRGB ICC profile (littleCMS; cached: its header holds the creation time)."""
    profile: bytes = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return profile


def _iptc_segment() -> bytes:
    """APP13 Photoshop 3.0 IRB holding an IPTC-NAA record (resource 0x0404)."""
    iptc = b"\x1c\x02\x78" + struct.pack(">H", len(SECRET_IPTC)) + SECRET_IPTC  # 2:120 caption
    resource = b"8BIM" + struct.pack(">H", 0x0404) + b"\x00\x00" + struct.pack(">I", len(iptc))
    resource += iptc + (b"\x00" if len(iptc) % 2 else b"")
    payload = b"Photoshop 3.0\x00" + resource
    return b"\xff\xed" + struct.pack(">H", len(payload) + 2) + payload


def phone_jpeg(
    image: Image.Image | None = None,
    *,
    orientation: int = 1,
    icc: bytes | None = None,
    trailer: bool = True,
    quality: int = 92,
) -> bytes:
    """A JPEG as phones write them, with every metadata block we must strip."""
    image = image or quadrants()
    out = io.BytesIO()
    options: dict[str, object] = {
        "quality": quality,
        "exif": exif_block(orientation),
        "comment": SECRET_COMMENT,
        "xmp": b'<x:xmpmeta xmlns:x="adobe:ns:meta/">' + SECRET_XMP + b"</x:xmpmeta>",
    }
    if icc is not None:
        options["icc_profile"] = icc
    image.save(out, format="JPEG", **options)
    data = out.getvalue()
    data = data[:2] + _iptc_segment() + data[2:]  # APP13 right after SOI
    if trailer:
        data += b"SEFT" + SECRET_TRAILER  # vendor trailer after EOI (Samsung style)
    return data


def mpo_jpeg() -> bytes:
    """A JPEG with an MP extension and a second image (depth/gain map style)."""
    out = io.BytesIO()
    quadrants().save(
        out, format="MPO", save_all=True, append_images=[Image.new("RGB", (60, 40), GREEN)]
    )
    return out.getvalue()


def png_with_metadata(mode: str = "RGB") -> bytes:
    """A PNG with tEXt/zTXt/iTXt (incl. XMP), eXIf (GPS) and an ICC profile."""
    image = quadrants().convert(mode)
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", SECRET_TEXT)
    info.add_text("Author", SECRET_TEXT, zip=True)
    info.add_itxt("XML:com.adobe.xmp", SECRET_XMP.decode())
    out = io.BytesIO()
    options: dict[str, object] = {"pnginfo": info, "exif": exif_block()}
    if mode in ("RGB", "RGBA"):
        options["icc_profile"] = srgb_profile()
    image.save(out, format="PNG", **options)
    return out.getvalue()


def heic_with_gps(orientation: int = 6) -> bytes:
    """A HEIC with EXIF (GPS, orientation) and XMP, as an iPhone writes it."""
    assert pillow_heif.libheif_info()["HEIF"], "pillow-heif built without an HEVC encoder"
    out = io.BytesIO()
    quadrants().save(
        out,
        format="HEIF",
        quality=90,
        exif=exif_block(orientation),
        xmp=b'<x:xmpmeta xmlns:x="adobe:ns:meta/">' + SECRET_XMP + b"</x:xmpmeta>",
    )
    return out.getvalue()


def encoded(image: Image.Image, format: str, **options: object) -> bytes:
    """``image`` saved in ``format``."""
    out = io.BytesIO()
    image.save(out, format=format, **options)
    return out.getvalue()


def with_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    """The same JPEG with its SOF0 header claiming another size (entropy data unchanged)."""
    offset = 2
    for segment in parse_structure(data).segments[1:]:
        if segment.marker == SOF0:
            position = offset + 4 + 1  # FF C0, length (2), precision (1)
            return data[:position] + struct.pack(">HH", height, width) + data[position + 4 :]
        offset += len(bytes(segment))
    raise AssertionError("no SOF0")


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_bomb(width: int, height: int, *, idat: bool = True) -> bytes:
    """A 1-bit greyscale PNG of ``width`` x ``height`` zero pixels: tiny file, huge image.

    With ``idat=False`` only the header is real (for sizes too big to even compress here).
    """
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    chunks = [_png_chunk(b"IHDR", header)]
    if idat:
        row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
        compressor = zlib.compressobj(9)
        parts = [compressor.compress(row) for _ in range(height)]
        parts.append(compressor.flush())
        chunks.append(_png_chunk(b"IDAT", b"".join(parts)))
    else:
        chunks.append(_png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)))
    chunks.append(_png_chunk(b"IEND", b""))
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


# Segments a sanitized JPEG may contain: structure, JFIF header, ICC profile. Nothing else.
STRUCTURAL = {"SOI", "DQT", "SOF0", "DHT", "SOS", "EOI"}


def assert_clean(data: bytes, *, icc: bytes | None = None) -> JpegStructure:
    """Byte-level proof that a JPEG carries nothing but pixels (and ``icc``)."""
    structure = parse_structure(data)
    for segment in structure.segments:
        if segment.name in STRUCTURAL:
            continue
        if segment.marker == APP0:
            assert segment.identifier == b"JFIF"
            # JFIF 1.02: version, units, density, thumbnail width/height = 0 (no thumbnail)
            assert len(segment.payload) == 14 and segment.payload[12:14] == b"\x00\x00"
            continue
        if segment.marker == APP2 and icc is not None:
            assert segment.identifier == b"ICC_PROFILE"
            continue
        raise AssertionError(f"unexpected {segment.name} segment {segment.identifier!r}")
    assert structure.trailing == b"", "bytes after EOI"
    icc_segments = structure.find(APP2)
    if icc is None:
        assert icc_segments == []
    else:
        assert b"".join(s.payload[14:] for s in icc_segments) == icc
    for secret in SECRETS:
        assert secret not in data
    decoded = Image.open(io.BytesIO(data))
    assert not decoded.getexif()
    allowed = {"jfif", "jfif_version", "jfif_unit", "jfif_density", "dpi", "icc_profile"}
    assert set(decoded.info) <= allowed, set(decoded.info) - allowed
    return structure


def pixel(data: bytes, xy: tuple[int, int]) -> tuple[int, int, int]:
    value = Image.open(io.BytesIO(data)).convert("RGB").getpixel(xy)
    assert isinstance(value, tuple)
    return value[0], value[1], value[2]


def close(
    actual: tuple[int, int, int], expected: tuple[int, int, int], tolerance: int = 40
) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


GIF: Final = encoded(quadrants().convert("P"), "GIF")
SVG: Final = (
    b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
    b'<script>alert(1)</script><rect width="10" height="10" fill="red"/></svg>'
)
PDF: Final = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
