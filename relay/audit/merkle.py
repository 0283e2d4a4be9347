"""RFC 6962 / RFC 9162 Merkle tree hashing and proofs — pure, no I/O.

Hashing (RFC 9162 §2.1.1)::

    MTH({})        = SHA-256()
    MTH({d(0)})    = SHA-256(0x00 || d(0))                      leaf hash
    MTH(D[n])      = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))  k = largest power of 2 < n

The leaf data ``d(i)`` of the audit log is the entry *commitment*
``SHA-256(32-byte salt || canonical event)``: once retention erases the salt and the event,
the commitment still yields the same leaf, so the tree and every proof keep verifying while
the content cannot be brute-forced back from it.

Storage model: :class:`MerkleTree` keeps every *complete* subtree hash, addressed by
``(level, index)`` — node ``(l, i)`` covers leaves ``[i * 2**l, (i + 1) * 2**l)``. Any subtree
the RFC recursion needs is then either one stored node or the fold of at most ``log2(n)``
stored nodes, so a proof reads O(log n) nodes whatever the tree size. The nodes live in a
:class:`NodeStore` (an in-memory one here; the SQL one belongs to storage).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from relay.audit.errors import InvalidProof, ProofRequestError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "SALT_SIZE",
    "MemoryNodeStore",
    "MerkleTree",
    "Node",
    "NodeStore",
    "RootAccumulator",
    "compute_root",
    "consistency_proof",
    "entry_commitment",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root",
    "root_from_inclusion_proof",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
SALT_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

_sha256 = hashlib.sha256

Node = tuple[int, int, bytes]
"""A stored node: ``(level, index, hash)``."""


def entry_commitment(salt: bytes, canonical_event: bytes) -> bytes:
    """Commitment to one audit entry: ``SHA-256(salt || canonical event)`` (issue 3 §4).

    The random salt (caller-generated, 32 bytes) stops anyone holding only the commitment
    from confirming a guessed event once the content has been erased.
    """
    if len(salt) != SALT_SIZE:
        raise ValueError(f"salt must be {SALT_SIZE} bytes")
    return _sha256(salt + canonical_event).digest()


def leaf_hash(commitment: bytes) -> bytes:
    """RFC 9162 §2.1.1 leaf hash: ``SHA-256(0x00 || data)``."""
    return _sha256(b"\x00" + commitment).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 §2.1.1 interior node hash: ``SHA-256(0x01 || left || right)``."""
    return _sha256(b"\x01" + left + right).digest()


def _largest_power_of_two_below(n: int) -> int:
    # RFC 9162 §2.1.1: "k is the largest power of two smaller than n" (n > 1).
    return 1 << ((n - 1).bit_length() - 1)


class RootAccumulator:
    """Streaming tree head: append leaf hashes one by one, ask the root at any time.

    Keeps only the compact range (one hash per set bit of the size), so millions of leaves
    need O(log n) memory.
    """

    __slots__ = ("_size", "_stack")

    def __init__(self) -> None:
        self._stack: list[bytes] = []
        self._size = 0

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    def append(self, leaf: bytes) -> None:
        """Append one leaf hash."""
        self._size += 1
        carry = self._size
        node = leaf
        stack = self._stack
        # Appending leaf number n completes one subtree per trailing zero bit of n.
        while not carry & 1:
            node = _sha256(b"\x01" + stack.pop() + node).digest()
            carry >>= 1
        stack.append(node)

    def root(self) -> bytes:
        """RFC 6962 root of the leaves appended so far."""
        return _fold(self._stack)

    def frontier(self) -> list[bytes]:
        """The complete-subtree hashes, largest (leftmost) first."""
        return list(self._stack)


def _fold(subtrees: Sequence[bytes]) -> bytes:
    # Perfect subtrees left to right; the RFC recursion splits off the left one first, so
    # the root is S1 . (S2 . (... . Sm)) — fold from the right.
    if not subtrees:
        return EMPTY_ROOT
    acc = subtrees[-1]
    for left in reversed(subtrees[:-1]):
        acc = _sha256(b"\x01" + left + acc).digest()
    return acc


def compute_root(leaf_hashes: Iterable[bytes]) -> bytes:
    """RFC 6962 root of a stream of leaf hashes, in O(log n) memory."""
    accumulator = RootAccumulator()
    for leaf in leaf_hashes:
        accumulator.append(leaf)
    return accumulator.root()


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """RFC 6962 root (``MTH``) of a list of leaf hashes; ``SHA-256("")`` when empty."""
    return compute_root(leaf_hashes)


# --- proof construction, shared by the list-based functions and MerkleTree -------------------

RangeHash = Callable[[int, int], bytes]
"""``range_hash(start, end)`` = MTH of leaves ``[start, end)`` for a subtree of the RFC split."""


def _inclusion_path(index: int, size: int, range_hash: RangeHash) -> list[bytes]:
    # RFC 9162 §2.1.3.1 PATH(m, D[n]): for m < k, PATH(m, D[0:k]) : MTH(D[k:n]);
    # otherwise PATH(m - k, D[k:n]) : MTH(D[0:k]). Walk top-down, then reverse so the
    # path runs from the leaf's sibling up to the root's child.
    path: list[bytes] = []
    start, end = 0, size
    while end - start > 1:
        k = _largest_power_of_two_below(end - start)
        if index < start + k:
            path.append(range_hash(start + k, end))
            end = start + k
        else:
            path.append(range_hash(start, start + k))
            start += k
    path.reverse()
    return path


def _consistency_path(old_size: int, new_size: int, range_hash: RangeHash) -> list[bytes]:
    # RFC 9162 §2.1.4.1 SUBPROOF(m, D[n], b):
    #   SUBPROOF(m, D[m], true) = {};  SUBPROOF(m, D[m], false) = {MTH(D[m])}
    #   m <= k: SUBPROOF(m, D[0:k], b) : MTH(D[k:n])
    #   m >  k: SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k])
    path: list[bytes] = []
    start, end, m, whole = 0, new_size, old_size, True
    while True:
        if m == end - start:
            if not whole:
                path.append(range_hash(start, end))
            break
        k = _largest_power_of_two_below(end - start)
        if m <= k:
            path.append(range_hash(start + k, end))
            end = start + k
        else:
            path.append(range_hash(start, start + k))
            start += k
            m -= k
            whole = False
    path.reverse()
    return path


def _check_inclusion_request(index: int, size: int, available: int) -> None:
    if size < 0 or size > available:
        raise ProofRequestError(f"tree size {size} not available (tree has {available} leaves)")
    if not 0 <= index < size:
        raise ProofRequestError(f"leaf index {index} not in a tree of size {size}")


def _check_consistency_request(old_size: int, new_size: int, available: int) -> None:
    if new_size < 0 or new_size > available:
        raise ProofRequestError(f"tree size {new_size} not available (tree has {available} leaves)")
    if not 0 <= old_size <= new_size:
        raise ProofRequestError(f"no consistency proof from size {old_size} to {new_size}")


def inclusion_proof(index: int, size: int, leaves: Sequence[bytes]) -> list[bytes]:
    """Audit path (RFC 9162 §2.1.3.1) for leaf ``index`` in the first ``size`` leaf hashes.

    Reference implementation over a plain list (O(n)); :meth:`MerkleTree.inclusion_proof`
    gives the same answer in O(log n) node reads.
    """
    _check_inclusion_request(index, size, len(leaves))
    return _inclusion_path(index, size, lambda start, end: compute_root(leaves[start:end]))


def consistency_proof(old_size: int, new_size: int, leaves: Sequence[bytes]) -> list[bytes]:
    """Consistency proof (RFC 9162 §2.1.4.1) between the first ``old_size`` and ``new_size``
    leaf hashes. Empty when ``old_size`` is 0 or equals ``new_size``."""
    _check_consistency_request(old_size, new_size, len(leaves))
    if old_size in (0, new_size):
        return []
    return _consistency_path(old_size, new_size, lambda start, end: compute_root(leaves[start:end]))


# --- verification, exactly RFC 9162 §2.1.3.2 and §2.1.4.2 ----------------------------------


def root_from_inclusion_proof(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """Run RFC 9162 §2.1.3.2 steps 1-4 and return the computed root ``r``.

    Raises :class:`InvalidProof` when the steps themselves fail (index out of range, path too
    long or too short for the tree size).
    """
    # 1. If leaf_index is greater than or equal to tree_size, then fail.
    if not 0 <= index < size:
        raise InvalidProof(f"leaf index {index} not in a tree of size {size}")
    _check_hash(leaf, "leaf hash")
    # 2. Set fn to leaf_index and sn to tree_size - 1.
    fn, sn = index, size - 1
    # 3. Set r to hash.
    r = leaf
    # 4. For each value p in the inclusion_path array:
    for p in proof:
        _check_hash(p, "proof node")
        # a. If sn is 0, then stop the iteration and fail the proof verification.
        if sn == 0:
            raise InvalidProof("inclusion proof is longer than the tree is high")
        # b. If LSB(fn) is set, or if fn is equal to sn, then:
        if fn & 1 or fn == sn:
            # i. Set r to HASH(0x01 || p || r).
            r = node_hash(p, r)
            # ii. If LSB(fn) is not set, then right-shift both fn and sn equally until
            #     either LSB(fn) is set or fn is 0.
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            # Otherwise: Set r to HASH(0x01 || r || p).
            r = node_hash(r, p)
        # c. Finally, right-shift both fn and sn one time.
        fn >>= 1
        sn >>= 1
    # 5. (first half) Compare sn to 0.
    if sn != 0:
        raise InvalidProof("inclusion proof is shorter than the tree is high")
    return r


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root_hash: bytes
) -> None:
    """Verify an inclusion proof (RFC 9162 §2.1.3.2); raise :class:`InvalidProof` if it fails."""
    computed = root_from_inclusion_proof(index, size, leaf, proof)
    # 5. (second half) Compare r against the root_hash.
    if computed != root_hash:
        raise InvalidProof(f"inclusion proof for leaf {index} does not lead to the root")


def verify_consistency(
    old_size: int,
    new_size: int,
    old_root: bytes,
    new_root: bytes,
    proof: Sequence[bytes],
) -> None:
    """Verify a consistency proof (RFC 9162 §2.1.4.2); raise :class:`InvalidProof` if it fails.

    The RFC algorithm covers ``0 < first < second``. The edge cases follow from the
    definition of SUBPROOF: equal sizes need an empty proof and equal roots; from the empty
    tree every tree is consistent, with an empty proof.
    """
    if not 0 <= old_size <= new_size:
        raise InvalidProof(f"no consistency between size {old_size} and size {new_size}")
    if old_size == new_size:
        if proof:
            raise InvalidProof("consistency proof between equal sizes must be empty")
        if old_root != new_root:
            raise InvalidProof(f"two different roots for tree size {old_size}")
        return
    if old_size == 0:
        if proof:
            raise InvalidProof("consistency proof from the empty tree must be empty")
        return
    # 1. If consistency_path is an empty array, stop and fail the proof verification.
    if not proof:
        raise InvalidProof("consistency proof is empty")
    for p in proof:
        _check_hash(p, "proof node")
    path = list(proof)
    # 2. If first is an exact power of 2, then prepend first_hash to the consistency_path.
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    # 3. Set fn to first - 1 and sn to second - 1.
    fn, sn = old_size - 1, new_size - 1
    # 4. If LSB(fn) is set, then right-shift both fn and sn equally until LSB(fn) is not set.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5. Set both fr and sr to the first value in the consistency_path array.
    fr = sr = path[0]
    # 6. For each subsequent value c in the consistency_path array:
    for c in path[1:]:
        # a. If sn is 0, then stop the iteration and fail the proof verification.
        if sn == 0:
            raise InvalidProof("consistency proof is too long")
        # b. If LSB(fn) is set, or if fn is equal to sn, then:
        if fn & 1 or fn == sn:
            # i. Set fr to HASH(0x01 || c || fr).  ii. Set sr to HASH(0x01 || c || sr).
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            # iii. If LSB(fn) is not set, then right-shift both fn and sn equally until
            #      either LSB(fn) is set or fn is 0.
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            # Otherwise: Set sr to HASH(0x01 || sr || c).
            sr = node_hash(sr, c)
        # c. Finally, right-shift both fn and sn one time.
        fn >>= 1
        sn >>= 1
    # 7. Verify that fr equals first_hash, sr equals second_hash, and sn is 0.
    if sn != 0:
        raise InvalidProof("consistency proof is too short")
    if fr != old_root:
        raise InvalidProof(f"consistency proof does not reproduce the root of size {old_size}")
    if sr != new_root:
        raise InvalidProof(f"consistency proof does not reproduce the root of size {new_size}")


def _check_hash(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise InvalidProof(f"{what} must be {HASH_SIZE} bytes, got {len(value)}")


# --- incremental tree over a node store -------------------------------------------------------


class NodeStore(Protocol):
    """Where :class:`MerkleTree` keeps complete-subtree hashes.

    Node ``(level, index)`` is the hash of leaves ``[index * 2**level, (index+1) * 2**level)``;
    level 0 holds the leaf hashes. Nodes are immutable once written.
    """

    def get(self, level: int, index: int) -> bytes:
        """Return the stored hash; raise ``KeyError`` if absent."""
        ...

    def put_many(self, nodes: Sequence[Node]) -> None:
        """Store new nodes (in the order given: children before their parent)."""
        ...


class MemoryNodeStore:
    """:class:`NodeStore` in memory: one ``bytearray`` per level, 32 bytes per node.

    About 64 MB for a million leaves (2n nodes), against ~400 MB for a dict of tuples.
    """

    __slots__ = ("_levels",)

    def __init__(self) -> None:
        self._levels: list[bytearray] = []

    def get(self, level: int, index: int) -> bytes:
        """Return node ``(level, index)``; ``KeyError`` if it was never stored."""
        if level < len(self._levels) and index >= 0:
            offset = index * HASH_SIZE
            row = self._levels[level]
            if offset + HASH_SIZE <= len(row):
                return bytes(row[offset : offset + HASH_SIZE])
        raise KeyError((level, index))

    def put_many(self, nodes: Sequence[Node]) -> None:
        """Store nodes; a level only grows at its end (append-only tree)."""
        levels = self._levels
        for level, index, value in nodes:
            if len(value) != HASH_SIZE:
                raise ValueError("node hash must be 32 bytes")
            while len(levels) <= level:
                levels.append(bytearray())
            row = levels[level]
            offset = index * HASH_SIZE
            if offset == len(row):
                row += value
            elif offset < len(row):
                row[offset : offset + HASH_SIZE] = value
            else:
                raise ValueError(f"node ({level}, {index}) would leave a gap")


class MerkleTree:
    """Append-only RFC 6962 tree over a :class:`NodeStore`.

    The right border (one complete-subtree hash per set bit of the size) is cached, so
    ``append`` reads nothing and ``root()`` of the current size is O(log n) hashing. Proofs
    read at most ~2·log2(n) stored nodes. The tree object is not thread-safe: callers
    serialise appends (the audit writer holds one lock).

    After a failed durable write, rebuild the object with ``MerkleTree(store, size)`` from the
    size that is known to be stored.
    """

    def __init__(self, store: NodeStore, size: int = 0) -> None:
        if size < 0:
            raise ValueError("size must be >= 0")
        self._store = store
        self._size = size
        self._frontier = self._read_frontier(size)

    @property
    def size(self) -> int:
        """Number of leaves in the tree."""
        return self._size

    @property
    def store(self) -> NodeStore:
        """The node store backing this tree."""
        return self._store

    def _read_frontier(self, size: int) -> list[bytes]:
        frontier: list[bytes] = []
        start = 0
        for level in range(size.bit_length() - 1, -1, -1):
            if size >> level & 1:
                frontier.append(self._store.get(level, start >> level))
                start += 1 << level
        return frontier

    def plan_append(self, leaves: Iterable[bytes]) -> list[Node]:
        """Nodes that appending ``leaves`` would store, without changing the tree.

        Lets a storage adapter write leaves and nodes in the same transaction as the entries,
        then call :meth:`commit_append` once that transaction is durable.
        """
        size = self._size
        frontier = list(self._frontier)
        nodes: list[Node] = []
        for leaf in leaves:
            if len(leaf) != HASH_SIZE:
                raise ValueError("leaf hash must be 32 bytes")
            nodes.append((0, size, leaf))
            size += 1
            carry, level, node = size, 0, leaf
            while not carry & 1:
                node = node_hash(frontier.pop(), node)
                carry >>= 1
                level += 1
                nodes.append((level, (size >> level) - 1, node))
            frontier.append(node)
        return nodes

    def commit_append(self, nodes: Sequence[Node]) -> None:
        """Adopt nodes produced by :meth:`plan_append` once the store durably holds them."""
        # Replay the plan on the cached border: a leaf is pushed; each parent replaces the
        # two subtrees it was computed from. No store read.
        frontier = self._frontier
        for level, _, value in nodes:
            if level == 0:
                self._size += 1
            else:
                del frontier[-2:]
            frontier.append(value)

    def append(self, leaf: bytes) -> int:
        """Append one leaf hash; return its index."""
        index = self._size
        self.extend((leaf,))
        return index

    def extend(self, leaves: Iterable[bytes]) -> int:
        """Append several leaf hashes with one store write; return the new size."""
        nodes = self.plan_append(leaves)
        if nodes:
            self._store.put_many(nodes)
            self.commit_append(nodes)
        return self._size

    def leaf(self, index: int) -> bytes:
        """Leaf hash at ``index``."""
        if not 0 <= index < self._size:
            raise ProofRequestError(f"leaf index {index} not in a tree of size {self._size}")
        return self._store.get(0, index)

    def _range_hash(self, start: int, end: int) -> bytes:
        # [start, end) is a subtree of the RFC split: start is a multiple of a power of two
        # >= end - start, so the range decomposes into complete stored subtrees, largest first.
        subtrees: list[bytes] = []
        length = end - start
        position = start
        for level in range(length.bit_length() - 1, -1, -1):
            if length >> level & 1:
                subtrees.append(self._store.get(level, position >> level))
                position += 1 << level
        return _fold(subtrees)

    def root(self, size: int | None = None) -> bytes:
        """Root at ``size`` (default: current size)."""
        if size is None or size == self._size:
            return _fold(self._frontier)
        if not 0 <= size <= self._size:
            raise ProofRequestError(
                f"tree size {size} not available (tree has {self._size} leaves)"
            )
        return self._range_hash(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Audit path for leaf ``index`` in the tree of ``size`` leaves (default: current)."""
        size = self._size if size is None else size
        _check_inclusion_request(index, size, self._size)
        return _inclusion_path(index, size, self._range_hash)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """Consistency proof from ``old_size`` to ``new_size`` (default: current size)."""
        new_size = self._size if new_size is None else new_size
        _check_consistency_request(old_size, new_size, self._size)
        if old_size in (0, new_size):
            return []
        return _consistency_path(old_size, new_size, self._range_hash)
