"""Fixtures of the storage tests: a fresh keyring and a blob store with small chunks."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from storage.blobs import BlobStore
from storage.keys import Keyring

CS = 64  # small chunks: many-chunk blobs and documents stay tiny


@pytest.fixture
def keyring(tmp_path: Path) -> Keyring:
    return Keyring.create(tmp_path / "keys")


@pytest.fixture
def store(tmp_path: Path, keyring: Keyring) -> BlobStore:
    # No recover(): shard directories are then made on demand (recover() is tested apart).
    return BlobStore(tmp_path / "blobs", keyring, chunk_size=CS)


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)
