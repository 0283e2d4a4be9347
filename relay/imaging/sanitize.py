"""Photo pipeline: uploaded bytes in, sanitized JPEG + thumbnail out (pure, no I/O).

Issue 5 item 3 and DOMAIN.md "Images from phones". Everything here is a module-level function
taking and returning picklable values, so a handler runs it in a ``ProcessPoolExecutor``
(decoding a 12-megapixel photo takes ~0.1 s of CPU: never on the event loop)::

    photo = await loop.run_in_executor(pool, sanitize_photo, body, settings)

What the pipeline guarantees, in order:

1. **Format by content, from an allow-list.** ``Image.open(..., formats=("JPEG", "PNG",
   "HEIF"))`` only tries those decoders (Pillow's CVEs cluster in rarely used ones); the file
   name and the declared content type are never consulted. Anything else (GIF, SVG, a PDF
   renamed ``.jpg``, WebP, AVIF...) is :class:`UnsupportedImageFormat`.
2. **Size caps before decoding.** Bytes are capped; pixels are checked from the header
   (``width * height`` against ``max_pixels``) before a single pixel is decoded, with
   ``Image.MAX_IMAGE_PIXELS`` set to the same cap and ``DecompressionBombWarning`` turned into
   an error for the duration of the call as a second fence. A 16k x 16k image or a
   decompression-bomb PNG is refused, not downscaled: downscaling would require decoding it
   (805 MB for 16k x 16k RGB, per worker), which is exactly the attack, and JPEG's cheap
   DCT-domain scaling does not exist for PNG or HEIC. 50 MP by default covers the largest
   default modes of current phones (48 MP "HEIF Max"); the refusal message tells the nurse to
   use the camera's standard resolution.
3. **Complete decoding only.** ``ImageFile.LOAD_TRUNCATED_IMAGES`` is forced off for the
   call: a truncated upload is :class:`CorruptImage`, never an image with a grey bottom.
4. **Orientation applied** from EXIF tag 0x0112 (the same table as
   ``ImageOps.exif_transpose``), so the pixels are upright and the orientation flag can go.
   pillow-heif applies HEIF ``irot``/``imir`` itself and resets the EXIF flag to 1.
5. **Nothing but pixels and the ICC profile.** The output is a new JPEG encoded from the
   pixels: no EXIF (GPS, maker notes, serial numbers, thumbnails), no XMP, no IPTC/Photoshop
   block, no comment (Pillow would copy ``info["comment"]`` by default: ``info`` is cleared),
   no MPF secondary images, no trailer after EOI. The ICC profile is kept (colour matters for
   a wound) when it is an RGB profile of sane size; otherwise the pixels are converted to sRGB
   and no profile is embedded.
6. **Baseline JPEG, 4:2:2.** Quality 90, sequential (not progressive) and 4:2:2 chroma
   subsampling, so the same bytes can be wrapped as DICOM "JPEG Baseline (Process 1)" with
   Photometric Interpretation ``YBR_FULL_422`` (PS3.3 C.7.6.3.1.2: Cb/Cr sampled
   horizontally at half the Y rate) without re-encoding. ``optimize`` is off: it costs a
   second Huffman pass for ~5 % size.
7. **A thumbnail** (longest side 320 px by default), made from the decoded image. ``draft()``
   (DCT-domain downscale) was measured and is slower here: the full decode is needed anyway
   and resampling the decoded image costs ~2 ms against ~45-65 ms for a second, drafted
   decode of a 12 MP photo (entropy decoding dominates; draft cannot skip it).

The original bytes are never returned nor kept: the result holds only the re-encoded images.

Pillow's globals (``MAX_IMAGE_PIXELS``, ``LOAD_TRUNCATED_IMAGES``) and the warnings filter are
process-wide: the call sets and restores them, which is safe in a process pool (one call at a
time per worker). In a thread pool the header check in step 2 still applies the caller's
``max_pixels`` whatever another thread set.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

import pillow_heif
from PIL import Image, ImageCms, ImageFile, UnidentifiedImageError

from relay.imaging.errors import CorruptImage, ImageTooLarge, UnsupportedImageFormat

__all__ = [
    "ALLOWED_FORMATS",
    "PhotoFormat",
    "PhotoSettings",
    "SanitizedPhoto",
    "sanitize_photo",
    "sniff_format",
    "strict_decoding",
]

# Registers the "HEIF" opener (HEIC/HEIF only: pillow-heif >= 1.0 leaves AVIF to Pillow, and
# AVIF is not on our list). Thumbnail boxes and depth images inside the HEIF are never read.
pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)

ALLOWED_FORMATS: Final = ("JPEG", "PNG", "HEIF")

_ORIENTATION_TAG: Final = 0x0112
# EXIF orientation -> the transposition that makes the image upright (as ImageOps does).
_UPRIGHT: Final = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# JPEG cannot encode a side over 65,535 (T.81 B.2.2, 16-bit X/Y).
_JPEG_MAX_SIDE: Final = 65_535
_WHITE: Final = (255, 255, 255)


_Pixels = tuple[Image.Image, bytes | None]


class PhotoFormat(StrEnum):
    """The accepted upload formats (as detected from the content)."""

    JPEG = "jpeg"
    PNG = "png"
    HEIF = "heif"


_FORMAT_OF_PLUGIN: Final = {
    "JPEG": PhotoFormat.JPEG,
    "MPO": PhotoFormat.JPEG,  # phones' JPEG + MP extension (depth map, gain map): frame 0 only
    "PNG": PhotoFormat.PNG,
    "HEIF": PhotoFormat.HEIF,
}


@dataclass(frozen=True)
class PhotoSettings:
    """Limits and encoder settings of the pipeline (from the configuration; picklable)."""

    max_bytes: int = 40 * 1024 * 1024
    max_pixels: int = 50_000_000
    jpeg_quality: int = 90
    thumbnail_side: int = 320
    thumbnail_quality: int = 80
    # Real camera profiles are 0.5-4 KB (Display P3: 536 B); a huge one is suspicious.
    max_icc_bytes: int = 256 * 1024


DEFAULT_SETTINGS: Final = PhotoSettings()


@dataclass(frozen=True)
class SanitizedPhoto:
    """The only thing kept from an upload: re-encoded pixels (and their ICC profile)."""

    jpeg: bytes = field(repr=False)
    thumbnail: bytes = field(repr=False)
    width: int
    height: int
    sha256: str  # hex digest of ``jpeg``
    icc_present: bool
    source_format: PhotoFormat


@contextlib.contextmanager
def strict_decoding(max_pixels: int) -> Iterator[None]:
    """Pillow's decompression-bomb and truncation checks at their strictest, for one call.

    ``MAX_IMAGE_PIXELS`` becomes ``max_pixels`` and ``DecompressionBombWarning`` an error
    (Pillow only warns between 1x and 2x the limit); truncated files raise.
    """
    saved = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    Image.MAX_IMAGE_PIXELS = max_pixels
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = saved


def sanitize_photo(data: bytes, settings: PhotoSettings = DEFAULT_SETTINGS) -> SanitizedPhoto:
    """Turn an uploaded photo into a metadata-free, upright JPEG and its thumbnail.

    Raises :class:`UnsupportedImageFormat`, :class:`ImageTooLarge` or :class:`CorruptImage`
    (all with a French message and an HTTP status). See the module docstring for the rules.
    """
    if len(data) > settings.max_bytes:
        raise ImageTooLarge(
            f"Photo trop volumineuse ({len(data) / 2**20:.1f} Mo, maximum "
            f"{settings.max_bytes / 2**20:.0f} Mo)."
        )
    with strict_decoding(settings.max_pixels):
        source = _open(data, settings)
        try:
            source_format = _FORMAT_OF_PLUGIN[source.format or ""]
            orientation = _orientation(source)
            icc = source.info.get("icc_profile") or None
            source.load()
            upright = _to_rgb(source, icc, settings)
        except (ImageTooLarge, UnsupportedImageFormat):
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise _too_many_pixels(source.size, settings) from None
        except MemoryError:
            raise  # the worker's problem, not the photo's
        except Exception:
            # OSError "image file is truncated", zlib/CRC errors, broken HEVC stream...
            raise CorruptImage() from None
    # ``source`` is not closed: Image.close() would also invalidate ``upright`` when it is
    # the same object (an RGB source); it reads from memory and has no file handle.
    pixels, icc = upright
    if orientation in _UPRIGHT:
        pixels = pixels.transpose(_UPRIGHT[orientation])
    jpeg = _encode(pixels, icc, settings.jpeg_quality)
    thumbnail = _encode(
        _thumbnail(pixels, settings.thumbnail_side), icc, settings.thumbnail_quality
    )
    return SanitizedPhoto(
        jpeg=jpeg,
        thumbnail=thumbnail,
        width=pixels.width,
        height=pixels.height,
        sha256=hashlib.sha256(jpeg).hexdigest(),
        icc_present=icc is not None,
        source_format=source_format,
    )


def _open(data: bytes, settings: PhotoSettings) -> Image.Image:
    """Open from the allow-list and check the header's dimensions; nothing decoded yet."""
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        # Pillow's fence (MAX_IMAGE_PIXELS = max_pixels) fired on the header's size.
        raise _too_many_pixels(None, settings) from None
    except UnidentifiedImageError:
        # Pillow also says "unidentified" when an allowed plugin fails on a broken header:
        # the signature tells a corrupt photo from a file of another kind.
        kind = sniff_format(data)
        if kind in _FORMAT_OF_PLUGIN:
            raise CorruptImage() from None
        raise _unsupported(kind) from None
    except Exception:
        raise CorruptImage() from None
    width, height = image.size
    if width * height > settings.max_pixels or max(width, height) > _JPEG_MAX_SIDE:
        image.close()
        raise _too_many_pixels(image.size, settings)
    if width < 1 or height < 1:
        image.close()
        raise CorruptImage()
    return image


def _too_many_pixels(size: tuple[int, int] | None, settings: PhotoSettings) -> ImageTooLarge:
    limit = f"{settings.max_pixels / 1e6:.0f} mégapixels au plus"
    found = "" if size is None else f"{size[0]} × {size[1]} pixels, "
    return ImageTooLarge(
        f"Photo trop grande ({found}{limit}) : utilisez la résolution standard de l'appareil photo."
    )


def _unsupported(kind: str | None) -> UnsupportedImageFormat:
    if kind == "DICOM":
        return UnsupportedImageFormat(
            "Ce fichier est un objet DICOM : joignez-le comme document DICOM, pas comme photo."
        )
    if kind is not None:
        return UnsupportedImageFormat(
            f"Format {kind} non accepté : envoyez une photo JPEG, PNG ou HEIC."
        )
    return UnsupportedImageFormat()


def _orientation(image: Image.Image) -> int:
    """EXIF orientation (1-8), 1 when absent or unreadable (the EXIF is dropped anyway)."""
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _to_rgb(image: Image.Image, icc: bytes | None, settings: PhotoSettings) -> _Pixels:
    """Frame 0 as a fresh RGB image with empty ``info``, and the ICC profile to embed.

    The ICC profile is kept when it describes RGB data (what we encode); a CMYK or grey
    profile, or an oversized one, is applied instead (pixels converted to sRGB).
    """
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit PNG: keep the top 8 bits (Pillow's I -> L conversion would clip at 255).
        image = image.point(lambda value: value / 256, "L")
        mode = "L"
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, _WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        rgb = background
    elif mode == "RGB":
        rgb = image  # no copy: 36 MB for 12 MP, and the source is not used afterwards
    else:
        rgb = image.convert("RGB")
    profile = _icc_colour_space(icc) if icc else None
    if icc is not None and (profile != b"RGB " or len(icc) > settings.max_icc_bytes):
        rgb = _to_srgb(image if mode in ("CMYK", "L") else rgb, icc, rgb)
        icc = None
    rgb.info = {}  # Pillow copies info["comment"] (and more) into the output otherwise
    return rgb, icc


def _icc_colour_space(icc: bytes) -> bytes | None:
    """The data colour space signature of an ICC profile (ICC.1 7.2.6), e.g. ``b"RGB "``."""
    return icc[16:20] if len(icc) >= 128 else None


def _to_srgb(image: Image.Image, icc: bytes, fallback: Image.Image) -> Image.Image:
    """Apply an embedded profile we do not keep (to sRGB); ``fallback`` if it is unusable."""
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        srgb = ImageCms.createProfile("sRGB")
        converted = ImageCms.profileToProfile(image, source, srgb, outputMode="RGB")
    except Exception:  # a broken or mismatched profile: plain conversion, no profile
        return fallback
    return converted if converted is not None else fallback


def _thumbnail(image: Image.Image, side: int) -> Image.Image:
    """Longest side ``side`` px, in time independent of the photo's resolution.

    A photo over 8x the thumbnail is sampled (nearest) to 4x the thumbnail size, then
    box-reduced by 4: each thumbnail pixel averages 16 samples, enough against noise and
    aliasing at this size, for ~2 ms on a 12 MP photo (a box reduce of every pixel: ~9 ms,
    plus ~3 ms of bicubic filtering; a second, ``draft()``-ed decode: 45-65 ms, as entropy
    decoding dominates and draft cannot skip it). Smaller photos: box reduce + bicubic.
    """
    longest = max(image.size)
    if longest <= side:
        return image
    scale = side / longest
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if longest > 8 * side:
        sampled = image.resize((size[0] * 4, size[1] * 4), Image.Resampling.NEAREST)
        return sampled.reduce(4)
    if (factor := int(longest / (side * 1.5))) > 1:
        image = image.reduce(factor)
    return image.resize(size, Image.Resampling.BICUBIC)


def _encode(image: Image.Image, icc: bytes | None, quality: int) -> bytes:
    """Baseline JPEG, 4:2:2, nothing but the pixels and (optionally) the ICC profile."""
    out = io.BytesIO()
    options: dict[str, object] = {"quality": quality, "subsampling": "4:2:2"}
    if icc is not None:
        options["icc_profile"] = icc
    image.save(out, format="JPEG", **options)
    return out.getvalue()


_SIGNATURES: Final = (
    (0, b"\xff\xd8\xff", "JPEG"),
    (0, b"\x89PNG\r\n\x1a\n", "PNG"),
    (0, b"GIF87a", "GIF"),
    (0, b"GIF89a", "GIF"),
    (0, b"%PDF-", "PDF"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (0, b"BM", "BMP"),
    (128, b"DICM", "DICOM"),
)
_HEIF_BRANDS: Final = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1"})


def sniff_format(data: bytes) -> str | None:
    """Name the kind of file from its first bytes (for messages and routing, not acceptance).

    Returns ``"JPEG"``, ``"PNG"``, ``"HEIF"``, ``"DICOM"``, ``"GIF"``, ``"PDF"``, ``"SVG"``,
    ``"WEBP"``, ``"AVIF"``, ``"TIFF"``, ``"BMP"`` or ``None``. Acceptance is decided by the
    decoders of the allow-list alone.
    """
    for offset, magic, name in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in _HEIF_BRANDS:
            return "HEIF"
    head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(b"<") and b"<svg" in head:
        return "SVG"
    return None
