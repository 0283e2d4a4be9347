"""JPEG marker walk: round trip of the header segments, stuffing, RST, trailers, errors."""

from __future__ import annotations

import pytest

from relay.imaging.jpeg import (
    APP1,
    COM,
    EOI,
    SOS,
    JpegSegment,
    MalformedJpeg,
    frame_of,
    parse_structure,
)
from tests.relay.imaging import images


def test_segments_serialise_back_to_the_header_bytes() -> None:
    data = images.phone_jpeg(trailer=False)
    structure = parse_structure(data)
    header = b"".join(bytes(s) for s in structure.segments[: structure.markers().index("SOS") + 1])
    assert data.startswith(header)
    assert structure.segments[-1].marker == EOI and structure.trailing == b""


def test_every_metadata_block_of_a_phone_jpeg_is_seen() -> None:
    structure = parse_structure(images.phone_jpeg())
    identifiers = {(s.name, s.identifier) for s in structure.segments if s.name.startswith("APP")}
    assert ("APP1", b"Exif") in identifiers
    assert ("APP1", b"http://ns.adobe.com/xap/1.0/") in identifiers
    assert ("APP13", b"Photoshop 3.0") in identifiers
    assert structure.find(COM)[0].payload == images.SECRET_COMMENT
    assert structure.trailing.endswith(images.SECRET_TRAILER)


def test_entropy_data_with_stuffing_and_restart_markers() -> None:
    data = images.encoded(images.quadrants(256, 256), "JPEG", restart_marker_blocks=1)
    structure = parse_structure(data)
    assert any(name.startswith("RST") for name in structure.markers())
    assert structure.markers().count("SOS") == 1
    progressive = parse_structure(images.encoded(images.quadrants(), "JPEG", progressive=True))
    assert progressive.markers().count("SOS") > 1  # one per scan
    assert frame_of(progressive).marker == 0xC2 and not frame_of(progressive).is_baseline


def test_frame_header() -> None:
    frame = frame_of(parse_structure(images.encoded(images.quadrants(), "JPEG", subsampling=2)))
    assert (frame.width, frame.height, frame.precision) == (60, 40, 8)
    assert frame.is_baseline and frame.chroma_subsampling == "4:2:0"
    grey = frame_of(parse_structure(images.encoded(images.quadrants().convert("L"), "JPEG")))
    assert len(grey.components) == 1 and grey.chroma_subsampling is None


def test_segment_names_and_serialisation() -> None:
    assert JpegSegment(APP1, b"Exif\x00\x00").name == "APP1"
    assert JpegSegment(SOS).name == "SOS"
    assert bytes(JpegSegment(COM, b"hi")) == b"\xff\xfe\x00\x04hi"
    assert bytes(JpegSegment(EOI)) == b"\xff\xd9"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x89PNG",
        b"\xff\xd8",  # SOI only
        b"\xff\xd8\xff\xe1\x00",  # length cut
        b"\xff\xd8\xff\xe1\x00\x40abc",  # length beyond the end
        b"\xff\xd8\xff\xda\x00\x02\x12\x34",  # entropy data never ends
        b"\xff\xd8\x00",  # no marker where one is due
    ],
)
def test_malformed_streams(data: bytes) -> None:
    with pytest.raises(MalformedJpeg):
        parse_structure(data)


def test_no_frame_header() -> None:
    with pytest.raises(MalformedJpeg):
        frame_of(parse_structure(b"\xff\xd8\xff\xd9"))
