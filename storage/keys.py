"""Master keys: a keyring directory of 32-byte AES-256 keys that wrap per-blob data keys.

Layout of ``DATA_DIR/keys/`` (mode 0700)::

    master-<keyid>.key   32 raw bytes, mode 0600, written once (O_CREAT|O_EXCL), never modified
    current              "<keyid>\\n": the key that wraps new data keys, replaced atomically

Wrapping uses AES-256-GCM (NIST SP 800-38D) rather than AES key wrap (RFC 3394) because GCM takes
associated data: the AAD binds each wrapped key to the master key id that wrapped it and to a
caller context (the blob id), so a wrapped key copied onto another blob or relabelled with another
key id fails to authenticate. RFC 3394 has no associated data and only a 64-bit integrity check;
GCM's tag is 128 bits and it is the primitive the blobs already use. Each wrap draws a random
96-bit nonce; SP 800-38D section 8.3 allows 2**32 such invocations per key, i.e. four billion
blobs per master key, and rotation starts a fresh key.

Several nodes may share the keyring (DESIGN.md: blobs on a shared volume). ``wrap`` therefore
re-reads the ``current`` pointer, and ``unwrap`` loads a key it has not seen yet, so a rotation
done by one node is picked up by the others without a restart.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from time import monotonic
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from storage.errors import BlobIntegrityError, MasterKeyError, MasterKeyInUse

MASTER_KEY_BYTES = 32
KEY_ID_MAX_LEN = 32
_KEY_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
_KEY_FILE_RE = re.compile(r"master-([A-Za-z0-9_-]{1,32})\.key")
_NONCE_BYTES = 12
_WRAP_LABEL = b"relais-sante key wrap v1\x00"
_CURRENT = "current"
_POINTER_RECHECK_SECONDS = 1.0


@dataclass(frozen=True)
class WrappedKey:
    """A data key encrypted under the master key ``key_id``: ``nonce || ciphertext || tag``."""

    key_id: str
    wrapped: bytes


class KeyUser(Protocol):
    """Something that stores data keys wrapped by master keys (the blob store, for one)."""

    def key_ids_in_use(self) -> set[str]:
        """Master key ids that some stored data key still needs."""
        ...


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (creations, renames, unlinks) durable (fsync(2) on the dir)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_valid_key_id(key_id: str) -> bool:
    """Whether ``key_id`` is a well-formed master key id (safe in a file name)."""
    return _KEY_ID_RE.fullmatch(key_id) is not None


def _wrap_aad(key_id: str, context: bytes) -> bytes:
    return _WRAP_LABEL + key_id.encode("ascii") + b"\x00" + context


class Keyring:
    """The master keys in one keyring directory. Thread-safe.

    Build it with :meth:`create` (new data dir) or :meth:`load` (start-up); both raise
    :class:`MasterKeyError` with one line naming the faulty file.
    """

    def __init__(self, directory: Path, keys: dict[str, AESGCM], current_id: str) -> None:
        """Use :meth:`create` or :meth:`load`; this constructor does no I/O or checks."""
        self.directory = directory
        self._keys = keys
        self._current_id = current_id
        self._lock = threading.Lock()
        # (inode, mtime, size) of the pointer file when it was last read, and when. A rotation
        # writes a new file beside the old one and renames it over: the inode differs, so the
        # first seal after the rename reads the new pointer, as before this cache (key
        # destruction relies on it: a seal under the old key can only be in a transaction
        # that was open before, which its scan under the write lock waits for). It is read
        # again at least every _POINTER_RECHECK_SECONDS all the same, should an edit in place
        # keep the inode, size and (within the clock's granularity) the mtime.
        self._pointer_seen: tuple[int, int, int] | None = None
        self._pointer_read_at = 0.0

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def create(cls, directory: Path) -> Keyring:
        """Create the keyring directory with a first master key; refuse if one already exists."""
        directory = Path(directory)
        created = not directory.exists()
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.chmod(0o700)  # also when it existed (umask or an earlier mkdir)
        if created:
            fsync_dir(directory.parent)
        if (directory / _CURRENT).exists() or any(_key_files(directory)):
            raise MasterKeyError(f"keyring {directory} already exists; refusing to overwrite it")
        key_id = _new_key_id()
        key = _write_key_file(directory, key_id)
        _write_current(directory, key_id)
        return cls(directory, {key_id: AESGCM(key)}, key_id)

    @classmethod
    def load(cls, directory: Path) -> Keyring:
        """Load every master key of ``directory``; the ``current`` one must be present.

        Refuses key files that group or others may access: a master key readable by another
        account is a key that has leaked.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise MasterKeyError(f"keyring directory {directory} is missing")
        current_id = _read_current(directory)
        keys = {current_id: AESGCM(_read_key_file(_key_path(directory, current_id)))}
        for key_id in _key_files(directory):
            if key_id not in keys:
                keys[key_id] = AESGCM(_read_key_file(_key_path(directory, key_id)))
        return cls(directory, keys, current_id)

    # -- queries ------------------------------------------------------------------------------

    @property
    def current_id(self) -> str:
        """Id of the master key that wraps new data keys (as last seen by this process)."""
        return self._current_id

    def key_ids(self) -> set[str]:
        """Ids of the master keys this keyring holds in memory."""
        with self._lock:
            return set(self._keys)

    # -- wrapping -----------------------------------------------------------------------------

    def wrap(self, data_key: bytes, *, context: bytes = b"") -> WrappedKey:
        """Encrypt ``data_key`` under the current master key, bound to ``context`` (AAD)."""
        key_id, aead = self._current()
        nonce = os.urandom(_NONCE_BYTES)
        ciphertext = aead.encrypt(nonce, data_key, _wrap_aad(key_id, context))
        return WrappedKey(key_id, nonce + ciphertext)

    def unwrap(self, key_id: str, wrapped: bytes, *, context: bytes = b"") -> bytes:
        """Decrypt a data key wrapped by :meth:`wrap` with the same ``context``.

        Raises :class:`MasterKeyError` when the master key is not (or no longer) in the keyring,
        :class:`BlobIntegrityError` when the wrapped key fails to authenticate.
        """
        aead = self._key(key_id)
        try:
            return aead.decrypt(
                wrapped[:_NONCE_BYTES], wrapped[_NONCE_BYTES:], _wrap_aad(key_id, context)
            )
        except InvalidTag:
            raise BlobIntegrityError(
                f"wrapped data key failed authentication under master key {key_id}"
            ) from None

    # -- lifecycle ----------------------------------------------------------------------------

    def rotate(self) -> str:
        """Create a new master key and make it current; older keys stay until destroyed."""
        with self._lock:
            key_id = _new_key_id()
            key = _write_key_file(self.directory, key_id)
            _write_current(self.directory, key_id)
            self._keys[key_id] = AESGCM(key)
            self._current_id = key_id
            return key_id

    def destroy(self, key_id: str, *, users: Iterable[KeyUser]) -> None:
        """Delete master key ``key_id`` for good.

        Refuses (:class:`MasterKeyInUse`) while it is the current key or while any of ``users``
        (every store that keeps wrapped data keys: pass them all) still has a data key wrapped
        by it: destroying it then would make those blobs unreadable forever.

        Unlinking does not scrub the bytes from the disk (journalling file systems and SSDs keep
        copies); it removes the key from every future read of the keyring.
        """
        if not is_valid_key_id(key_id):
            raise MasterKeyError(f"master key id {key_id!r} is malformed")
        path = _key_path(self.directory, key_id)
        if key_id == self._current()[0]:
            raise MasterKeyInUse(f"master key {key_id} is the current key; rotate first")
        if not path.exists():
            raise MasterKeyError(f"master key file {path} is missing")
        for user in users:
            if key_id in user.key_ids_in_use():
                raise MasterKeyInUse(
                    f"master key {key_id} still wraps stored data keys; re-wrap them first"
                )
        with self._lock:
            path.unlink()
            fsync_dir(self.directory)
            self._keys.pop(key_id, None)

    # -- internals ----------------------------------------------------------------------------

    def _current(self) -> tuple[str, AESGCM]:
        # Another process or node may have rotated: follow the pointer on disk so this one
        # never wraps under a key scheduled for destruction. A stat(2) tells whether the file
        # changed; it is read again only then (every sealed message document calls this on
        # the database writer thread: the read was ~12 % of that thread's work, issue 4).
        path = self.directory / _CURRENT
        try:
            info = path.stat()
        except FileNotFoundError:
            raise MasterKeyError(f"master key pointer {path} is missing") from None
        except OSError as exc:
            raise MasterKeyError(
                f"master key pointer {path} is unreadable: {exc.strerror}"
            ) from None
        seen = (info.st_ino, info.st_mtime_ns, info.st_size)
        now = monotonic()
        with self._lock:
            fresh = now - self._pointer_read_at < _POINTER_RECHECK_SECONDS
            cached = self._current_id if fresh and seen == self._pointer_seen else None
        if cached is not None:
            return cached, self._key(cached)
        key_id = _read_current(self.directory)
        with self._lock:
            self._current_id = key_id
            self._pointer_seen = seen
            self._pointer_read_at = now
        return key_id, self._key(key_id)

    def _key(self, key_id: str) -> AESGCM:
        with self._lock:
            aead = self._keys.get(key_id)
        if aead is not None:
            return aead
        if not is_valid_key_id(key_id):
            raise MasterKeyError(f"master key id {key_id!r} is malformed")
        path = _key_path(self.directory, key_id)
        if not path.exists():
            raise MasterKeyError(f"master key {key_id} is not in keyring {self.directory}")
        aead = AESGCM(_read_key_file(path))
        with self._lock:
            self._keys.setdefault(key_id, aead)
        return aead


def _new_key_id() -> str:
    return secrets.token_hex(8)


def _key_path(directory: Path, key_id: str) -> Path:
    return directory / f"master-{key_id}.key"


def _key_files(directory: Path) -> list[str]:
    ids = []
    for path in directory.iterdir():
        match = _KEY_FILE_RE.fullmatch(path.name)
        if match:
            ids.append(match.group(1))
    return sorted(ids)


def _write_key_file(directory: Path, key_id: str) -> bytes:
    """Create ``master-<id>.key`` with mode 0600 from the first byte on, durably."""
    key = AESGCM.generate_key(bit_length=256)
    path = _key_path(directory, key_id)
    # O_EXCL: never overwrite a key; mode 0600 at creation so there is no window where the
    # file exists with broader permissions (a later chmod would leave one).
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(directory)
    return key


def _read_key_file(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise MasterKeyError(f"master key file {path} is missing") from None
    except OSError as exc:
        raise MasterKeyError(f"master key file {path} is unreadable: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise MasterKeyError(f"master key file {path} is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            who = "readable" if mode & 0o044 else "accessible"
            raise MasterKeyError(
                f"master key file {path} is {who} by group/others (mode {mode:04o}); chmod 600 it"
            )
        if info.st_size != MASTER_KEY_BYTES:
            raise MasterKeyError(
                f"master key file {path} has wrong length {info.st_size}, "
                f"expected {MASTER_KEY_BYTES}"
            )
        try:
            key = os.read(fd, MASTER_KEY_BYTES + 1)
        except OSError as exc:
            raise MasterKeyError(f"master key file {path} is unreadable: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(key) != MASTER_KEY_BYTES:
        raise MasterKeyError(
            f"master key file {path} has wrong length {len(key)}, expected {MASTER_KEY_BYTES}"
        )
    return key


def _read_current(directory: Path) -> str:
    path = directory / _CURRENT
    try:
        text = path.read_text("ascii")
    except FileNotFoundError:
        raise MasterKeyError(f"master key pointer {path} is missing") from None
    except UnicodeDecodeError:
        raise MasterKeyError(f"master key pointer {path} is malformed") from None
    except OSError as exc:
        raise MasterKeyError(f"master key pointer {path} is unreadable: {exc.strerror}") from None
    key_id = text.strip()
    if not is_valid_key_id(key_id):
        raise MasterKeyError(f"master key pointer {path} is malformed")
    return key_id


def _write_current(directory: Path, key_id: str) -> None:
    """Point ``current`` at ``key_id``: temp file, fsync, rename(2), fsync dir (atomic)."""
    tmp = directory / f".{_CURRENT}.tmp-{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, f"{key_id}\n".encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(directory / _CURRENT)
    fsync_dir(directory)
