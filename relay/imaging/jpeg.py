"""JPEG stream structure (ITU-T T.81 / ISO/IEC 10918-1 Annex B): markers, segments, frame.

Pure parsing used to *prove* what a JPEG carries: the sanitizer's tests walk every marker of
the output (APPn, COM, trailing bytes after EOI) and the DICOM export checks that a JPEG is
the baseline process with the chroma sampling its Photometric Interpretation claims.

The walk follows the whole stream, entropy-coded data included (T.81 B.1.1.5: a 0xFF byte in
entropy-coded data is followed by a stuffed 0x00; RSTn markers carry no length), so metadata
hidden between scans or appended after EOI (MPO secondary images, vendor trailers) is seen.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "APP0",
    "APP1",
    "APP2",
    "APP13",
    "COM",
    "EOI",
    "SOF0",
    "SOI",
    "SOS",
    "JpegComponent",
    "JpegFrame",
    "JpegSegment",
    "JpegStructure",
    "MalformedJpeg",
    "frame_of",
    "parse_structure",
]

SOI = 0xD8
EOI = 0xD9
SOS = 0xDA
SOF0 = 0xC0  # baseline DCT, Huffman (the only process of DICOM "JPEG Baseline (Process 1)")
APP0 = 0xE0  # JFIF
APP1 = 0xE1  # Exif, XMP
APP2 = 0xE2  # ICC_PROFILE, MPF
APP13 = 0xED  # Photoshop IRB / IPTC
COM = 0xFE
# SOFn markers (T.81 Table B.1); 0xC4 DHT, 0xC8 JPG and 0xCC DAC are not frames.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field (T.81 B.1.1.3 and Table B.1): TEM, RST0-7, SOI, EOI.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8), SOI, EOI})


class MalformedJpeg(ValueError):
    """The bytes do not follow the JPEG interchange format."""


@dataclass(frozen=True)
class JpegSegment:
    """One marker segment: the marker byte (after 0xFF) and its payload (without length)."""

    marker: int
    payload: bytes = b""

    @property
    def name(self) -> str:
        """Conventional marker name (``APP1``, ``COM``, ``SOF0``...)."""
        if 0xE0 <= self.marker <= 0xEF:
            return f"APP{self.marker - 0xE0}"
        if self.marker in _SOF_MARKERS:
            return f"SOF{self.marker - 0xC0}"
        if 0xD0 <= self.marker <= 0xD7:
            return f"RST{self.marker - 0xD0}"
        names = {SOI: "SOI", EOI: "EOI", SOS: "SOS", COM: "COM", 0xDB: "DQT", 0xC4: "DHT"}
        return names.get(self.marker, f"0x{self.marker:02X}")

    @property
    def identifier(self) -> bytes:
        """The NUL-terminated identifier an APPn payload starts with (``b"Exif"``...)."""
        head, _, _ = self.payload[:32].partition(b"\x00")
        return head

    def __bytes__(self) -> bytes:
        if self.marker in _STANDALONE:
            return bytes((0xFF, self.marker))
        return bytes((0xFF, self.marker)) + struct.pack(">H", len(self.payload) + 2) + self.payload


@dataclass(frozen=True)
class JpegComponent:
    """A frame component: identifier, sampling factors and quantisation table (T.81 B.2.2)."""

    identifier: int
    horizontal: int
    vertical: int
    quantization_table: int


@dataclass(frozen=True)
class JpegFrame:
    """The frame header (SOFn) of a JPEG stream."""

    marker: int
    precision: int
    height: int
    width: int
    components: tuple[JpegComponent, ...]

    @property
    def is_baseline(self) -> bool:
        """SOF0 with 8-bit samples: the process of DICOM transfer syntax 1.2.840.10008.1.2.4.50."""
        return self.marker == SOF0 and self.precision == 8

    @property
    def chroma_subsampling(self) -> str | None:
        """``"4:4:4"``, ``"4:2:2"``, ``"4:2:0"`` for 3 components with luma-only upsampling."""
        if len(self.components) != 3:
            return None
        luma, cb, cr = self.components
        if (cb.horizontal, cb.vertical) != (1, 1) or (cr.horizontal, cr.vertical) != (1, 1):
            return None
        return {(1, 1): "4:4:4", (2, 1): "4:2:2", (2, 2): "4:2:0"}.get(
            (luma.horizontal, luma.vertical)
        )


@dataclass(frozen=True)
class JpegStructure:
    """Every marker segment in stream order (SOS and RSTn included) and bytes after EOI."""

    segments: tuple[JpegSegment, ...]
    trailing: bytes

    def markers(self) -> list[str]:
        """Marker names in order, for assertions and messages."""
        return [segment.name for segment in self.segments]

    def find(self, marker: int) -> list[JpegSegment]:
        """The segments with this marker."""
        return [segment for segment in self.segments if segment.marker == marker]


def parse_structure(data: bytes) -> JpegStructure:
    """Walk a whole JPEG stream, entropy-coded data included; raise :class:`MalformedJpeg`.

    The walk stops at the first EOI; anything after it is returned as ``trailing``.
    """
    if data[:2] != b"\xff\xd8":
        raise MalformedJpeg("no SOI marker")
    segments: list[JpegSegment] = [JpegSegment(SOI)]
    pos = 2
    size = len(data)
    while True:
        if pos >= size or data[pos] != 0xFF:
            raise MalformedJpeg(f"marker expected at offset {pos}")
        while pos < size and data[pos] == 0xFF:  # fill bytes (T.81 B.1.1.2)
            pos += 1
        if pos >= size:
            raise MalformedJpeg("stream ends inside a marker")
        marker = data[pos]
        pos += 1
        if marker == EOI:
            segments.append(JpegSegment(EOI))
            return JpegStructure(tuple(segments), data[pos:])
        if marker in _STANDALONE:
            segments.append(JpegSegment(marker))
        else:
            if pos + 2 > size:
                raise MalformedJpeg("stream ends inside a segment length")
            (length,) = struct.unpack_from(">H", data, pos)
            if length < 2 or pos + length > size:
                raise MalformedJpeg(f"segment 0x{marker:02X} length {length} out of bounds")
            segments.append(JpegSegment(marker, data[pos + 2 : pos + length]))
            pos += length
        if marker == SOS or 0xD0 <= marker <= 0xD7:
            pos = _skip_entropy_coded(data, pos)


def _skip_entropy_coded(data: bytes, pos: int) -> int:
    """Offset of the next marker after entropy-coded data (0xFF00 is a stuffed byte)."""
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(data):
            raise MalformedJpeg("entropy-coded data runs to the end of the stream")
        following = data[pos + 1]
        if following == 0x00 or following == 0xFF:
            pos += 1 if following == 0xFF else 2
            continue
        return pos


def frame_of(structure: JpegStructure) -> JpegFrame:
    """The (first) frame header of a parsed stream."""
    for segment in structure.segments:
        if segment.marker in _SOF_MARKERS:
            payload = segment.payload
            if len(payload) < 6:
                raise MalformedJpeg("frame header too short")
            precision, height, width, count = struct.unpack_from(">BHHB", payload)
            if len(payload) != 6 + 3 * count:
                raise MalformedJpeg("frame header length does not match its components")
            components = tuple(
                JpegComponent(
                    identifier=payload[6 + 3 * i],
                    horizontal=payload[7 + 3 * i] >> 4,
                    vertical=payload[7 + 3 * i] & 0x0F,
                    quantization_table=payload[8 + 3 * i],
                )
                for i in range(count)
            )
            return JpegFrame(segment.marker, precision, height, width, components)
    raise MalformedJpeg("no frame header")
