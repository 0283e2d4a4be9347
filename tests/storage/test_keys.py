"""Master keyring: file layout and modes, wrapping, rotation, destruction, one-line errors."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

import storage.keys as keys_module
from storage.errors import BlobIntegrityError, MasterKeyError, MasterKeyInUse
from storage.keys import MASTER_KEY_BYTES, Keyring

REPO = Path(__file__).resolve().parents[2]
DATA_KEY = bytes(range(32))


class FixedUsers:
    """A key user reporting a fixed set of key ids (stands for a store in destroy())."""

    def __init__(self, *key_ids: str) -> None:
        self.ids = set(key_ids)

    def key_ids_in_use(self) -> set[str]:
        return set(self.ids)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def keydir(tmp_path: Path) -> Path:
    return tmp_path / "data" / "keys"


@pytest.fixture
def keyring(keydir: Path) -> Keyring:
    return Keyring.create(keydir)


def key_file(keydir: Path, key_id: str) -> Path:
    return keydir / f"master-{key_id}.key"


def load_error(keydir: Path) -> str:
    with pytest.raises(MasterKeyError) as info:
        Keyring.load(keydir)
    message = str(info.value)
    assert "\n" not in message
    return message


# -- layout -------------------------------------------------------------------------------------


def test_create_writes_private_key_and_current_pointer(keydir: Path, keyring: Keyring) -> None:
    path = key_file(keydir, keyring.current_id)
    assert path.read_bytes() != bytes(MASTER_KEY_BYTES)
    assert len(path.read_bytes()) == MASTER_KEY_BYTES
    assert mode(path) == 0o600
    assert mode(keydir) == 0o700
    assert (keydir / "current").read_text() == f"{keyring.current_id}\n"
    assert sorted(p.name for p in keydir.iterdir()) == ["current", path.name]


def test_create_tightens_an_existing_directory(keydir: Path) -> None:
    keydir.mkdir(parents=True, mode=0o755)
    keydir.chmod(0o755)
    Keyring.create(keydir)
    assert mode(keydir) == 0o700


def test_create_refuses_an_existing_keyring(keydir: Path, keyring: Keyring) -> None:
    with pytest.raises(MasterKeyError, match=re.escape(f"keyring {keydir} already exists")):
        Keyring.create(keydir)
    assert Keyring.load(keydir).current_id == keyring.current_id


def test_load_reads_back_the_same_keys(keydir: Path, keyring: Keyring) -> None:
    wrapped = keyring.wrap(DATA_KEY, context=b"blob:1")
    loaded = Keyring.load(keydir)
    assert loaded.current_id == keyring.current_id
    assert loaded.unwrap(wrapped.key_id, wrapped.wrapped, context=b"blob:1") == DATA_KEY


# -- wrapping -----------------------------------------------------------------------------------


def test_wrap_is_randomised_and_authenticated(keyring: Keyring) -> None:
    first = keyring.wrap(DATA_KEY, context=b"blob:1")
    second = keyring.wrap(DATA_KEY, context=b"blob:1")
    assert first.key_id == second.key_id == keyring.current_id
    assert first.wrapped != second.wrapped
    assert DATA_KEY not in first.wrapped
    assert len(first.wrapped) == 12 + 32 + 16
    assert keyring.unwrap(first.key_id, first.wrapped, context=b"blob:1") == DATA_KEY


@pytest.mark.parametrize("position", [0, 11, 12, 30, 59])
def test_unwrap_rejects_a_flipped_bit(keyring: Keyring, position: int) -> None:
    wrapped = bytearray(keyring.wrap(DATA_KEY).wrapped)
    wrapped[position] ^= 0x01
    with pytest.raises(BlobIntegrityError, match="failed authentication"):
        keyring.unwrap(keyring.current_id, bytes(wrapped))


def test_unwrap_rejects_another_context(keyring: Keyring) -> None:
    wrapped = keyring.wrap(DATA_KEY, context=b"blob:aaaa")
    with pytest.raises(BlobIntegrityError):
        keyring.unwrap(wrapped.key_id, wrapped.wrapped, context=b"blob:bbbb")


def test_unwrap_rejects_a_relabelled_key_id(keyring: Keyring) -> None:
    old = keyring.wrap(DATA_KEY)
    new_id = keyring.rotate()
    with pytest.raises(BlobIntegrityError):
        keyring.unwrap(new_id, old.wrapped)
    assert keyring.unwrap(old.key_id, old.wrapped) == DATA_KEY


def test_unwrap_with_unknown_key_id(keydir: Path, keyring: Keyring) -> None:
    wrapped = keyring.wrap(DATA_KEY).wrapped
    with pytest.raises(
        MasterKeyError, match=re.escape(f"master key 0123456789abcdef is not in keyring {keydir}")
    ):
        keyring.unwrap("0123456789abcdef", wrapped)
    with pytest.raises(MasterKeyError, match="malformed"):
        keyring.unwrap("../../etc/passwd", wrapped)


# -- rotation and destruction -------------------------------------------------------------------


def test_rotate_makes_a_new_current_key_and_keeps_the_old(keydir: Path, keyring: Keyring) -> None:
    old_id = keyring.current_id
    old = keyring.wrap(DATA_KEY)
    new_id = keyring.rotate()
    assert new_id != old_id
    assert keyring.current_id == new_id
    assert (keydir / "current").read_text() == f"{new_id}\n"
    assert mode(key_file(keydir, new_id)) == 0o600
    assert keyring.wrap(DATA_KEY).key_id == new_id
    reloaded = Keyring.load(keydir)
    assert reloaded.current_id == new_id
    assert reloaded.key_ids() == {old_id, new_id}
    assert reloaded.unwrap(old_id, old.wrapped) == DATA_KEY
    assert not [p for p in keydir.iterdir() if p.name.startswith(".")]  # no temp pointer left


def test_destroy_refuses_the_current_key(keyring: Keyring) -> None:
    with pytest.raises(MasterKeyInUse, match="is the current key; rotate first"):
        keyring.destroy(keyring.current_id, users=[])


def test_destroy_refuses_a_key_still_in_use(keydir: Path, keyring: Keyring) -> None:
    old_id = keyring.current_id
    keyring.rotate()
    with pytest.raises(MasterKeyInUse, match=f"master key {old_id} still wraps stored data"):
        keyring.destroy(old_id, users=[FixedUsers(), FixedUsers(old_id)])
    assert key_file(keydir, old_id).exists()


def test_destroy_removes_an_unused_key(keydir: Path, keyring: Keyring) -> None:
    old_id = keyring.current_id
    old = keyring.wrap(DATA_KEY)
    new_id = keyring.rotate()
    keyring.destroy(old_id, users=[FixedUsers(new_id)])
    assert not key_file(keydir, old_id).exists()
    with pytest.raises(MasterKeyError, match="is not in keyring"):
        keyring.unwrap(old_id, old.wrapped)
    assert Keyring.load(keydir).key_ids() == {new_id}
    with pytest.raises(MasterKeyError, match="is missing"):
        keyring.destroy(old_id, users=[])
    with pytest.raises(MasterKeyError, match="malformed"):
        keyring.destroy("../keys/current", users=[])


def test_a_second_node_follows_a_rotation(keydir: Path, keyring: Keyring) -> None:
    other_node = Keyring.load(keydir)
    new_id = keyring.rotate()
    wrapped = keyring.wrap(DATA_KEY)
    assert other_node.unwrap(new_id, wrapped.wrapped) == DATA_KEY  # loads the new key lazily
    assert other_node.wrap(DATA_KEY).key_id == new_id  # follows the current pointer
    assert other_node.current_id == new_id


def test_a_node_that_wrapped_before_follows_each_later_rotation(
    keydir: Path, keyring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    other_node = Keyring.load(keydir)
    first_id = other_node.wrap(DATA_KEY).key_id
    reads: list[Path] = []
    read_current = keys_module._read_current

    def counted(directory: Path) -> str:
        reads.append(directory)
        return read_current(directory)

    monkeypatch.setattr(keys_module, "_read_current", counted)
    for _ in range(3):
        assert other_node.wrap(DATA_KEY).key_id == first_id
    assert reads == []  # an unchanged pointer file is not read again
    later = time.monotonic() + 1.5
    monkeypatch.setattr(keys_module, "monotonic", lambda: later)
    assert other_node.wrap(DATA_KEY).key_id == first_id
    assert len(reads) == 1  # ...though at least once a second all the same
    reads.clear()
    for _ in range(2):  # two rotations in a row, each seen at the next wrap
        new_id = keyring.rotate()
        assert other_node.wrap(DATA_KEY).key_id == new_id
        assert other_node.current_id == new_id
    assert len(reads) == 2


# -- load errors: one clear line naming the file ------------------------------------------------


def test_missing_key_file(keydir: Path, keyring: Keyring) -> None:
    path = key_file(keydir, keyring.current_id)
    path.unlink()
    assert load_error(keydir) == f"master key file {path} is missing"


def test_key_file_readable_by_others_is_refused(keydir: Path, keyring: Keyring) -> None:
    path = key_file(keydir, keyring.current_id)
    path.chmod(0o644)
    assert load_error(keydir) == (
        f"master key file {path} is readable by group/others (mode 0644); chmod 600 it"
    )
    path.chmod(0o620)
    assert load_error(keydir) == (
        f"master key file {path} is accessible by group/others (mode 0620); chmod 600 it"
    )


@pytest.mark.parametrize("length", [0, 17, 31, 33, 64])
def test_key_file_of_wrong_length(keydir: Path, keyring: Keyring, length: int) -> None:
    path = key_file(keydir, keyring.current_id)
    path.write_bytes(b"k" * length)
    assert load_error(keydir) == f"master key file {path} has wrong length {length}, expected 32"


def test_an_old_key_file_is_checked_too(keydir: Path, keyring: Keyring) -> None:
    old_path = key_file(keydir, keyring.current_id)
    keyring.rotate()
    old_path.write_bytes(b"k" * 17)
    assert load_error(keydir) == f"master key file {old_path} has wrong length 17, expected 32"


def test_unreadable_key_file(keydir: Path, keyring: Keyring) -> None:
    path = key_file(keydir, keyring.current_id)
    path.unlink()
    path.symlink_to(path.name)  # a loop: open() fails with ELOOP
    assert load_error(keydir) == (
        f"master key file {path} is unreadable: Too many levels of symbolic links"
    )


def test_key_file_without_read_permission(keydir: Path, keyring: Keyring) -> None:
    path = key_file(keydir, keyring.current_id)
    path.chmod(0o000)
    expected = f"master key file {path} is unreadable: Permission denied"
    if os.geteuid() != 0:
        assert load_error(keydir) == expected
        return
    # root reads anything: drop the capabilities that bypass file modes (setpriv, util-linux).
    code = (
        "import sys\n"
        "from storage.keys import Keyring\n"
        "from storage.errors import MasterKeyError\n"
        "try:\n"
        "    Keyring.load(sys.argv[1])\n"
        "except MasterKeyError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [
            *("setpriv", "--bounding-set", "-dac_override,-dac_read_search"),
            *(sys.executable, "-c", code, str(keydir)),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == expected


def test_key_file_that_is_a_directory(keydir: Path, keyring: Keyring) -> None:
    path = key_file(keydir, keyring.current_id)
    path.unlink()
    path.mkdir()
    assert load_error(keydir) == f"master key file {path} is not a regular file"


def test_missing_or_malformed_pointer(keydir: Path, keyring: Keyring) -> None:
    pointer = keydir / "current"
    pointer.write_text("../evil\n")
    assert load_error(keydir) == f"master key pointer {pointer} is malformed"
    pointer.unlink()
    assert load_error(keydir) == f"master key pointer {pointer} is missing"


def test_missing_keyring_directory(tmp_path: Path) -> None:
    assert (
        load_error(tmp_path / "nowhere") == f"keyring directory {tmp_path / 'nowhere'} is missing"
    )


def test_wrap_after_the_pointer_vanished_fails_clearly(keydir: Path, keyring: Keyring) -> None:
    (keydir / "current").unlink()
    with pytest.raises(MasterKeyError, match=r"master key pointer .* is missing"):
        keyring.wrap(DATA_KEY)
