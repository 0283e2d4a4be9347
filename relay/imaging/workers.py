"""The process pool the imaging cores run in (decoding never happens on the event loop).

Usage by an adapter (one pool for the process, created at start-up, shut down at exit)::

    pool = create_pool()
    photo = await loop.run_in_executor(pool, sanitize_photo, body, settings)
    summary = await loop.run_in_executor(pool, read_dicom, body, limits)

Choices, measured with ``bench/photo_sanitize.py`` (2 cores):

* **forkserver**, not fork: the relay process has threads (executor, aiohttp resolver); a
  forked child of a multi-threaded process can inherit a held lock. Workers import the
  imaging modules once, at their start.
* **Lower CPU priority** for workers (``nice`` +5): with every core decoding photos, the
  event loop must still get the CPU when a socket is ready; the scheduler then prefers it.
  This is what keeps the loop's lag low while 20 uploads are decoded at once.
* **Pillow keeps freed memory blocks** (``set_blocks_max``): a 12 MP photo needs 48 MB for
  the decoded image and as much again for the rotated copy; by default Pillow returns them
  to the OS and the next photo page-faults all of it back (~10 ms per 48 MB).
  Keeping 12 blocks of 16 MB per worker avoids that at a bounded cost (192 MB at most).
* **One libheif decoding thread** per worker: the pool already uses every core.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Final

import pillow_heif
from PIL import _imaging as pillow_core  # Image.core: the block allocator's knobs

from relay.workers import exit_with

__all__ = ["create_pool", "initialize_worker"]

DEFAULT_NICENESS: Final = 5
DEFAULT_PILLOW_BLOCKS: Final = 12  # x 16 MB (Pillow's default block size)


def initialize_worker(
    niceness: int = DEFAULT_NICENESS,
    pillow_blocks: int = DEFAULT_PILLOW_BLOCKS,
    relay_pid: int | None = None,
) -> None:
    """Prepare a worker process (``ProcessPoolExecutor(initializer=...)``); see module doc.

    With ``relay_pid``, the worker ends when that process ends, ``kill -9`` included.
    """
    if relay_pid is not None:
        exit_with(relay_pid)
    if niceness:
        os.nice(niceness)
    pillow_core.set_blocks_max(pillow_blocks)
    pillow_heif.options.DECODE_THREADS = 1
    # Importing here makes the first job as fast as the next ones.
    import relay.imaging.dicom_in
    import relay.imaging.sanitize  # noqa: F401


def create_pool(
    max_workers: int | None = None,
    *,
    niceness: int = DEFAULT_NICENESS,
    pillow_blocks: int = DEFAULT_PILLOW_BLOCKS,
) -> ProcessPoolExecutor:
    """The imaging pool: one worker per core by default, forkserver, initialised workers."""
    return ProcessPoolExecutor(
        max_workers=max_workers or os.cpu_count() or 1,
        mp_context=multiprocessing.get_context("forkserver"),
        initializer=initialize_worker,
        initargs=(niceness, pillow_blocks, os.getpid()),
    )
