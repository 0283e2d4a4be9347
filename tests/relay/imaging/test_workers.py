"""The imaging pool: forkserver workers, niced, with Pillow's block cache, running the cores."""

from __future__ import annotations

import asyncio
import os

import pillow_heif
from PIL import _imaging as pillow_core  # Image.core: the block allocator's knobs

from relay.imaging.dicom_in import DicomSummary, read_dicom
from relay.imaging.errors import CorruptImage
from relay.imaging.sanitize import SanitizedPhoto, sanitize_photo
from relay.imaging.workers import create_pool
from tests.relay.imaging import dicoms, images


def worker_state() -> tuple[int, int, int, int]:
    """(pid, niceness, Pillow blocks kept, libheif threads) inside a worker."""
    return os.getpid(), os.nice(0), pillow_core.get_blocks_max(), pillow_heif.options.DECODE_THREADS


async def test_pool_runs_the_cores_off_the_event_loop() -> None:
    loop = asyncio.get_running_loop()
    parent_niceness = os.nice(0)
    with create_pool(2, niceness=3, pillow_blocks=4) as pool:
        pid, niceness, blocks, threads = await loop.run_in_executor(pool, worker_state)
        photo, summary = await asyncio.gather(
            loop.run_in_executor(pool, sanitize_photo, images.phone_jpeg(orientation=6)),
            loop.run_in_executor(
                pool, read_dicom, dicoms.to_bytes(dicoms.monochrome(dicoms.half_and_half(0, 9)))
            ),
        )
        try:
            await loop.run_in_executor(pool, sanitize_photo, images.phone_jpeg()[:300])
        except CorruptImage as error:
            refused: CorruptImage | None = error
        else:
            refused = None
    assert pid != os.getpid()
    assert niceness == min(19, parent_niceness + 3)
    assert (blocks, threads) == (4, 1)
    assert isinstance(photo, SanitizedPhoto) and (photo.width, photo.height) == (40, 60)
    assert isinstance(summary, DicomSummary) and summary.preview is not None
    assert refused is not None and refused.http_status == 422
