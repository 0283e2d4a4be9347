"""RFC 6962 / RFC 9162 Merkle tree: reference vectors, corruption probes, properties.

The 8-leaf vectors are those of transparency-dev/merkle ``proof/verify_test.go`` (the same
tree as certificate-transparency's ``merkle_tree_test``): leaf data, the roots of every prefix,
and known inclusion / consistency proofs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.audit.errors import InvalidProof, ProofRequestError
from relay.audit.merkle import (
    EMPTY_ROOT,
    MemoryNodeStore,
    MerkleTree,
    Node,
    RootAccumulator,
    compute_root,
    consistency_proof,
    entry_commitment,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    root_from_inclusion_proof,
    verify_consistency,
    verify_inclusion,
)

h = bytes.fromhex

LEAVES = [h(x) for x in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657")] + [
    h("606162636465666768696a6b6c6d6e6f")
]
ROOTS = [
    h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
    h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
    h("aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77"),
    h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
    h("4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4"),
    h("76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef"),
    h("ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c"),
    h("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"),
]
# (leaf number, 1-based as in the Go table; tree size; proof)
INCLUSION = [
    (1, 1, []),
    (
        1,
        8,
        [
            h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
        ],
    ),
    (
        6,
        8,
        [
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
            h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
    (3, 3, [h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")]),
    (
        2,
        5,
        [
            h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        ],
    ),
]
CONSISTENCY = [
    (1, 1, []),
    (
        1,
        8,
        [
            h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
        ],
    ),
    (
        6,
        8,
        [
            h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
    (
        2,
        5,
        [
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        ],
    ),
    (
        6,
        7,
        [
            h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            h("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
]
SOME_HASH = h("abacaba000000000000000000000000000000000000000000060061e00123456")
LEAF_HASHES = [leaf_hash(d) for d in LEAVES]


# --- reference implementation, transcribed from RFC 6962 §2.1 -------------------------------


def mth(leaves: Sequence[bytes]) -> bytes:
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return leaves[0]
    k = 1 << ((n - 1).bit_length() - 1)
    return node_hash(mth(leaves[:k]), mth(leaves[k:]))


def path(m: int, leaves: Sequence[bytes]) -> list[bytes]:
    n = len(leaves)
    if n == 1:
        return []
    k = 1 << ((n - 1).bit_length() - 1)
    if m < k:
        return [*path(m, leaves[:k]), mth(leaves[k:])]
    return [*path(m - k, leaves[k:]), mth(leaves[:k])]


def subproof(m: int, leaves: Sequence[bytes], whole: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if whole else [mth(leaves)]
    k = 1 << ((n - 1).bit_length() - 1)
    if m <= k:
        return [*subproof(m, leaves[:k], whole), mth(leaves[k:])]
    return [*subproof(m - k, leaves[k:], False), mth(leaves[:k])]


def tree_of(leaves: Sequence[bytes]) -> MerkleTree:
    tree = MerkleTree(MemoryNodeStore())
    tree.extend(leaves)
    return tree


def flip(data: bytes, bit: int) -> bytes:
    return bytes([data[0] ^ (1 << bit)]) + data[1:]


# --- vectors ----------------------------------------------------------------------------------


def test_empty_tree_root_is_sha256_of_nothing() -> None:
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert root([]) == EMPTY_ROOT
    assert MerkleTree(MemoryNodeStore()).root() == EMPTY_ROOT


@pytest.mark.parametrize("size", range(1, 9))
def test_roots_of_every_prefix(size: int) -> None:
    assert root(LEAF_HASHES[:size]) == ROOTS[size - 1]
    assert compute_root(iter(LEAF_HASHES[:size])) == ROOTS[size - 1]
    tree = tree_of(LEAF_HASHES)
    assert tree.root(size) == ROOTS[size - 1]


@pytest.mark.parametrize(("leaf", "size", "expected"), INCLUSION)
def test_inclusion_vectors(leaf: int, size: int, expected: list[bytes]) -> None:
    index = leaf - 1
    assert inclusion_proof(index, size, LEAF_HASHES) == expected
    assert tree_of(LEAF_HASHES).inclusion_proof(index, size) == expected
    verify_inclusion(index, size, LEAF_HASHES[index], expected, ROOTS[size - 1])


@pytest.mark.parametrize(("old", "new", "expected"), CONSISTENCY)
def test_consistency_vectors(old: int, new: int, expected: list[bytes]) -> None:
    assert consistency_proof(old, new, LEAF_HASHES) == expected
    assert tree_of(LEAF_HASHES).consistency_proof(old, new) == expected
    verify_consistency(old, new, ROOTS[old - 1], ROOTS[new - 1], expected)


def _inclusion_probes(
    index: int, size: int, proof: list[bytes], root_hash: bytes, leaf: bytes
) -> list[tuple[str, int, int, bytes, list[bytes], bytes]]:
    # Port of corruptInclusionProof (transparency-dev/merkle proof/verify_test.go).
    probes = [
        ("index - 1", index - 1, size, leaf, proof, root_hash),
        ("index + 1", index + 1, size, leaf, proof, root_hash),
        ("index ^ 2", index ^ 2, size, leaf, proof, root_hash),
        ("size * 2", index, size * 2, leaf, proof, root_hash),
        ("size / 2", index, size // 2, leaf, proof, root_hash),
        ("wrong leaf", index, size, b"WrongLeaf", proof, root_hash),
        ("empty root", index, size, leaf, proof, EMPTY_ROOT),
        ("random root", index, size, leaf, proof, SOME_HASH),
        ("trailing garbage", index, size, leaf, [*proof, b""], root_hash),
        ("trailing root", index, size, leaf, [*proof, root_hash], root_hash),
        ("preceding garbage", index, size, leaf, [b"", *proof], root_hash),
        ("preceding root", index, size, leaf, [root_hash, *proof], root_hash),
    ]
    for i in range(len(proof)):
        wrong = list(proof)
        wrong[i] = flip(wrong[i], 3)
        probes.append((f"modified proof[{i}]", index, size, leaf, wrong, root_hash))
    if proof:
        probes.append(("removed component", index, size, leaf, proof[:-1], root_hash))
    if len(proof) > 1:
        probes.append(
            ("inserted component", index, size, leaf, [proof[0], SOME_HASH, *proof[1:]], root_hash)
        )
    return probes


@pytest.mark.parametrize(("leaf", "size", "expected"), INCLUSION)
def test_corrupted_inclusion_proofs_fail(leaf: int, size: int, expected: list[bytes]) -> None:
    index = leaf - 1
    probes = _inclusion_probes(index, size, expected, ROOTS[size - 1], LEAF_HASHES[index])
    for desc, p_index, p_size, p_leaf, p_proof, p_root in probes:
        with pytest.raises(InvalidProof):
            verify_inclusion(p_index, p_size, p_leaf, p_proof, p_root)
            pytest.fail(f"verified despite {desc}")


@pytest.mark.parametrize(("old", "new", "expected"), [c for c in CONSISTENCY if c[2]])
def test_corrupted_consistency_proofs_fail(old: int, new: int, expected: list[bytes]) -> None:
    # Port of corruptConsistencyProof.
    r1, r2 = ROOTS[old - 1], ROOTS[new - 1]
    probes = [
        (old - 1, new, r1, r2, expected),
        (old + 1, new, r1, r2, expected),
        (old ^ 2, new, r1, r2, expected),
        (old, new * 2, r1, r2, expected),
        (old, new // 2, r1, r2, expected),
        (old, new, b"WrongRoot", r2, expected),
        (old, new, r1, b"WrongRoot", expected),
        (old, new, r2, r1, expected),
        (old, new, r1, r2, []),
        (old, new, r1, r2, [*expected, b""]),
        (old, new, r1, r2, [*expected, r1]),
        (old, new, r1, r2, [*expected, r2]),
        (old, new, r1, r2, [b"", *expected]),
        (old, new, r1, r2, [r1, *expected]),
        (old, new, r1, r2, [r2, *expected]),
        (old, new, r1, r2, [expected[0], *expected]),
        (old, new, r1, r2, expected[:-1]),
    ]
    for i in range(len(expected)):
        wrong = list(expected)
        wrong[i] = flip(wrong[i], 4)
        probes.append((old, new, r1, r2, wrong))
    for number, (p_old, p_new, p_r1, p_r2, p_proof) in enumerate(probes):
        with pytest.raises(InvalidProof):
            verify_consistency(p_old, p_new, p_r1, p_r2, p_proof)
            pytest.fail(f"probe {number} verified")


ROOT1, ROOT2 = b"don't care 1", b"don't care 2"


@pytest.mark.parametrize(
    ("old", "new", "r1", "r2", "proof", "valid"),
    [
        # TestVerifyConsistency edge cases (transparency-dev/merkle).
        (0, 0, ROOT1, ROOT2, [], False),
        (1, 1, ROOT1, ROOT2, [], False),
        (0, 0, ROOT1, ROOT1, [], True),
        (0, 1, ROOT1, ROOT2, [], True),
        (1, 1, ROOT2, ROOT2, [], True),
        (1, 0, ROOT1, ROOT2, [], False),
        (2, 1, ROOT1, ROOT2, [], False),
        (1, 2, ROOT1, ROOT2, [], False),
        (0, 0, EMPTY_ROOT, ROOT2, [], False),
        (1, 1, EMPTY_ROOT, ROOT2, [], False),
        (0, 0, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], False),
        (0, 1, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], False),
        (1, 1, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], False),
    ],
)
def test_consistency_edge_cases(
    old: int, new: int, r1: bytes, r2: bytes, proof: list[bytes], valid: bool
) -> None:
    if valid:
        verify_consistency(old, new, r1, r2, proof)
    else:
        with pytest.raises(InvalidProof):
            verify_consistency(old, new, r1, r2, proof)


def test_single_entry_inclusion() -> None:
    leaf = leaf_hash(b"data")
    verify_inclusion(0, 1, leaf, [], leaf)
    for bad_root, bad_leaf in ((leaf, b""), (b"", leaf), (b"", b"")):
        with pytest.raises(InvalidProof):
            verify_inclusion(0, 1, bad_leaf, [], bad_root)
    for index, size in ((0, 0), (1, 0), (2, 1)):
        with pytest.raises(InvalidProof):
            verify_inclusion(index, size, SOME_HASH, [], EMPTY_ROOT)


def test_root_from_inclusion_proof_matches_vectors() -> None:
    proof = INCLUSION[2][2]
    assert root_from_inclusion_proof(5, 8, LEAF_HASHES[5], proof) == ROOTS[7]


# --- commitments ------------------------------------------------------------------------------


def test_entry_commitment_and_leaf() -> None:
    salt = bytes(range(32))
    commitment = entry_commitment(salt, b'{"id":"0"}')
    assert commitment == hashlib.sha256(salt + b'{"id":"0"}').digest()
    assert leaf_hash(commitment) == hashlib.sha256(b"\x00" + commitment).digest()
    with pytest.raises(ValueError, match="32 bytes"):
        entry_commitment(b"short", b"{}")


# --- the incremental tree ---------------------------------------------------------------------


def _leaves(n: int) -> list[bytes]:
    return [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


def test_tree_matches_reference_for_every_small_size() -> None:
    leaves = _leaves(40)
    tree = tree_of(leaves)
    for size in range(1, 41):
        assert tree.root(size) == mth(leaves[:size])
        for index in range(size):
            assert tree.inclusion_proof(index, size) == path(index, leaves[:size])
        for old in range(1, size + 1):
            assert tree.consistency_proof(old, size) == subproof(old, leaves[:size], True)


def test_append_one_by_one_equals_extend_and_reopen() -> None:
    leaves = _leaves(77)
    one_by_one = MerkleTree(MemoryNodeStore())
    for position, leaf in enumerate(leaves):
        assert one_by_one.append(leaf) == position
        assert one_by_one.root() == mth(leaves[: position + 1])
    batched = tree_of(leaves)
    assert batched.root() == one_by_one.root()
    reopened = MerkleTree(batched.store, size=77)
    assert reopened.root() == batched.root()
    assert reopened.inclusion_proof(30) == batched.inclusion_proof(30)
    reopened.append(SOME_HASH)
    assert reopened.root() == mth([*leaves, SOME_HASH])
    assert reopened.leaf(77) == SOME_HASH


def test_plan_then_commit_append() -> None:
    tree = tree_of(_leaves(5))
    nodes = tree.plan_append(_leaves(3))
    assert tree.size == 5  # planning changes nothing
    assert (0, 5, _leaves(3)[0]) in nodes
    assert [(lv, i) for lv, i, _ in nodes] == [
        (0, 5),
        (1, 2),
        (0, 6),
        (0, 7),
        (1, 3),
        (2, 1),
        (3, 0),
    ]
    tree.store.put_many(nodes)
    tree.commit_append(nodes)
    assert tree.size == 8
    assert tree.root() == mth(_leaves(5) + _leaves(3))


class CountingStore(MemoryNodeStore):
    """Counts node reads, to check that proofs read O(log n) nodes."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def get(self, level: int, index: int) -> bytes:
        self.reads += 1
        return super().get(level, index)

    def put_many(self, nodes: Sequence[Node]) -> None:
        super().put_many(nodes)


def test_proofs_read_logarithmically_many_nodes() -> None:
    store = CountingStore()
    tree = MerkleTree(store)
    size = (1 << 14) + 12345
    tree.extend(_leaves(size))
    store.reads = 0
    tree.append(SOME_HASH)
    assert store.reads == 0  # the right border is cached
    bound = 2 * size.bit_length() + 2
    for index in (0, 1, 5000, size - 1, size):
        store.reads = 0
        tree.inclusion_proof(index)
        assert store.reads <= bound
    for old in (1, 2, 777, 1 << 14, size):
        store.reads = 0
        tree.consistency_proof(old)
        assert store.reads <= bound


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda t: t.inclusion_proof(8, 8), "leaf index 8"),
        (lambda t: t.inclusion_proof(0, 9), "tree size 9"),
        (lambda t: t.inclusion_proof(-1, 3), "leaf index -1"),
        (lambda t: t.consistency_proof(5, 4), "from size 5 to 4"),
        (lambda t: t.consistency_proof(1, 9), "tree size 9"),
        (lambda t: t.root(9), "tree size 9"),
        (lambda t: t.leaf(8), "leaf index 8"),
    ],
)
def test_impossible_proof_requests(call: object, message: str) -> None:
    tree = tree_of(LEAF_HASHES)
    with pytest.raises(ProofRequestError, match=message) as caught:
        call(tree)  # type: ignore[operator]
    assert caught.value.http_status == 400


def test_memory_store_is_append_only() -> None:
    store = MemoryNodeStore()
    store.put_many([(0, 0, SOME_HASH)])
    with pytest.raises(ValueError, match="gap"):
        store.put_many([(0, 2, SOME_HASH)])
    with pytest.raises(ValueError, match="32 bytes"):
        store.put_many([(0, 1, b"x")])
    with pytest.raises(KeyError):
        store.get(0, 1)
    with pytest.raises(KeyError):
        store.get(3, 0)


def test_root_accumulator_frontier() -> None:
    accumulator = RootAccumulator()
    for leaf in _leaves(6):
        accumulator.append(leaf)
    assert accumulator.size == 6
    assert accumulator.frontier() == [mth(_leaves(4)), mth(_leaves(6)[4:])]
    assert accumulator.root() == mth(_leaves(6))


# --- properties -------------------------------------------------------------------------------

TREE = tree_of(_leaves(300))
LEAVES_300 = _leaves(300)


@settings(max_examples=200)
@given(st.data())
def test_every_inclusion_proof_verifies_and_any_alteration_fails(data: st.DataObject) -> None:
    size = data.draw(st.integers(1, 300))
    index = data.draw(st.integers(0, size - 1))
    proof = TREE.inclusion_proof(index, size)
    assert proof == path(index, LEAVES_300[:size])
    root_hash = TREE.root(size)
    verify_inclusion(index, size, LEAVES_300[index], proof, root_hash)
    if proof:
        position = data.draw(st.integers(0, len(proof) - 1))
        bit = data.draw(st.integers(0, 7))
        altered = list(proof)
        altered[position] = flip(altered[position], bit)
        with pytest.raises(InvalidProof):
            verify_inclusion(index, size, LEAVES_300[index], altered, root_hash)
        with pytest.raises(InvalidProof):
            verify_inclusion(index, size, LEAVES_300[index], proof[:-1], root_hash)
    other = data.draw(
        st.integers(0, size - 1).filter(lambda i: i != index) if size > 1 else st.none()
    )
    if other is not None:
        with pytest.raises(InvalidProof):
            verify_inclusion(other, size, LEAVES_300[index], proof, root_hash)


@settings(max_examples=200)
@given(st.data())
def test_every_consistency_proof_verifies_and_any_alteration_fails(data: st.DataObject) -> None:
    new = data.draw(st.integers(1, 300))
    old = data.draw(st.integers(0, new))
    proof = TREE.consistency_proof(old, new)
    old_root, new_root = TREE.root(old), TREE.root(new)
    verify_consistency(old, new, old_root, new_root, proof)
    if 0 < old < new:
        assert proof == subproof(old, LEAVES_300[:new], True)
        position = data.draw(st.integers(0, len(proof) - 1))
        bit = data.draw(st.integers(0, 7))
        altered = list(proof)
        altered[position] = flip(altered[position], bit)
        with pytest.raises(InvalidProof):
            verify_consistency(old, new, old_root, new_root, altered)
        with pytest.raises(InvalidProof):
            verify_consistency(old, new, old_root, flip(new_root, 0), proof)
        with pytest.raises(InvalidProof):
            verify_consistency(old, new, flip(old_root, 1), new_root, proof)
