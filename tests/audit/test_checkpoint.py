"""C2SP signed notes and checkpoints.

Reference vector: the PeterNeumann key pair and signed note of golang.org/x/mod/sumdb/note
(``note_test.go``). Ed25519 is deterministic (RFC 8032), so signing the same text with the
same key must reproduce the Go note byte for byte.
"""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from relay.audit import checkpoint as cp
from relay.audit.errors import (
    BadSignature,
    CheckpointError,
    MalformedCheckpoint,
    MalformedNote,
    MalformedVerifierKey,
    OriginMismatch,
    UnknownKey,
)

GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_SIG = (
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="
)
GO_NOTE = GO_TEXT + "\n\u2014 PeterNeumann " + GO_SIG + "\n"

# c2sp.org/tlog-checkpoint example body.
C2SP_BODY = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"

ORIGIN = "relais.test/audit"
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
VKEY = cp.verifier_key(ORIGIN, KEY.public_key())
ROOT = hashlib.sha256(b"root").digest()
CHECKPOINT = cp.Checkpoint(ORIGIN, 1000, ROOT)


def test_go_reference_keys_parse_and_re_encode() -> None:
    verifier = cp.parse_verifier_key(GO_VKEY)
    assert verifier.name == "PeterNeumann"
    assert verifier.key_id.hex() == "c74f20a3"
    assert str(verifier) == GO_VKEY
    name, private_key = cp.parse_signer_key(GO_SKEY)
    assert name == "PeterNeumann"
    assert cp.signer_key(name, private_key) == GO_SKEY
    assert cp.verifier_key(name, private_key.public_key()) == GO_VKEY


def test_go_reference_note_is_reproduced_byte_for_byte() -> None:
    name, private_key = cp.parse_signer_key(GO_SKEY)
    assert cp.sign_note(GO_TEXT, name, private_key) == GO_NOTE
    assert cp.open_note(GO_NOTE, GO_VKEY) == GO_TEXT
    assert cp.open_note(GO_NOTE.encode(), [GO_VKEY]) == GO_TEXT


def test_go_reference_note_tampered_text_fails() -> None:
    with pytest.raises(BadSignature):
        cp.open_note(GO_NOTE.replace("cryptography", "cryptographY"), GO_VKEY)


def test_go_verifier_key_manglings_are_refused() -> None:
    # As note_test.go TestNewVerifier: every proper substring and every one-byte change.
    raw = GO_VKEY.encode()
    mangled = {raw[i:j] for i in range(len(raw)) for j in range(i + 1, len(raw) + 1)}
    mangled.discard(raw)
    for i in range(len(raw)):
        mangled.add(raw[:i] + bytes([raw[i] + 1]) + raw[i + 1 :])
    for candidate in mangled:
        with pytest.raises(MalformedVerifierKey):
            cp.parse_verifier_key(candidate.decode("latin-1"))


def test_key_id_is_sha256_of_name_newline_type_and_key() -> None:
    public = KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    expected = hashlib.sha256(ORIGIN.encode() + b"\x0a\x01" + public).digest()[:4]
    assert cp.key_id(ORIGIN, KEY.public_key()) == expected
    name, hex_id, material = VKEY.split("+", 2)
    assert (name, hex_id) == (ORIGIN, expected.hex())
    assert base64.b64decode(material) == b"\x01" + public


def test_checkpoint_body_round_trip() -> None:
    body = cp.format_body(CHECKPOINT)
    assert body == f"{ORIGIN}\n1000\n{base64.b64encode(ROOT).decode()}\n"
    assert cp.parse_body(body) == CHECKPOINT
    with_ext = cp.Checkpoint(ORIGIN, 0, ROOT, ("ext one", "ext two"))
    assert cp.parse_body(cp.format_body(with_ext)) == with_ext


def test_c2sp_example_body_parses() -> None:
    parsed = cp.parse_body(C2SP_BODY)
    assert parsed.origin == "example.com/behind-the-sofa"
    assert parsed.size == 20852163
    assert cp.format_body(parsed) == C2SP_BODY


def test_sign_and_verify_round_trip() -> None:
    note = cp.sign(CHECKPOINT, ORIGIN, KEY)
    text, _, signature_line = note.partition("\n\n")
    assert text + "\n" == cp.format_body(CHECKPOINT)
    assert signature_line.startswith("\u2014 " + ORIGIN + " ")
    raw = base64.b64decode(signature_line.split(" ")[2])
    assert raw[:4] == cp.key_id(ORIGIN, KEY.public_key()) and len(raw) == 68
    assert cp.parse_and_verify(note, VKEY) == CHECKPOINT
    assert cp.parse_and_verify(note, [cp.parse_verifier_key(VKEY)], origin=ORIGIN) == CHECKPOINT
    assert cp.Note.parse(note).text == text + "\n"
    assert str(cp.Note.parse(note)) == note


def test_unknown_signatures_are_ignored_but_one_known_is_needed() -> None:
    note = cp.sign(CHECKPOINT, ORIGIN, KEY)
    cosigned = note + cp.sign(CHECKPOINT, "witness.example", OTHER_KEY).partition("\n\n")[2]
    assert cp.parse_and_verify(cosigned, VKEY) == CHECKPOINT
    with pytest.raises(UnknownKey):
        cp.parse_and_verify(cp.sign(CHECKPOINT, ORIGIN, OTHER_KEY), VKEY)
    with pytest.raises(UnknownKey):
        cp.parse_and_verify(cp.sign(CHECKPOINT, "someone.else", KEY), VKEY)


def test_replaced_signature_is_a_bad_signature() -> None:
    note = cp.sign(CHECKPOINT, ORIGIN, KEY)
    parsed = cp.Note.parse(note)
    forged = cp.NoteSignature(ORIGIN, parsed.signatures[0].key_id, bytes(64))
    with pytest.raises(BadSignature) as caught:
        cp.parse_and_verify(str(cp.Note(parsed.text, (forged,))), VKEY)
    assert caught.value.http_status == 422
    assert caught.value.code == "note_signature_invalid"


def test_altered_size_breaks_the_signature() -> None:
    note = cp.sign(CHECKPOINT, ORIGIN, KEY).replace("\n1000\n", "\n1001\n")
    with pytest.raises(BadSignature):
        cp.parse_and_verify(note, VKEY)
    assert cp.parse_unverified(note).size == 1001


def test_origin_mismatch() -> None:
    note = cp.sign(cp.Checkpoint("other.log", 1, ROOT), ORIGIN, KEY)
    with pytest.raises(OriginMismatch):
        cp.parse_and_verify(note, VKEY, origin=ORIGIN)


@pytest.mark.parametrize(
    "note",
    [
        "no blank line\n\u2014 a AAAAAAAA\n",
        "text\n\n\u2014 a AAAAAAAAAA==",  # no final newline
        "text\n\n- a AAAAAAAAAA==\n",  # hyphen instead of em dash
        "text\n\n\u2014 a+b AAAAAAAAAA==\n",  # '+' in key name
        "text\n\n\u2014 a !!!!\n",  # not base64
        "text\n\n\u2014 a AAAA\n",  # shorter than key ID + signature
        "te\x01xt\n\n\u2014 a AAAAAAAAAA==\n",  # control character
        "text\n\n",  # no signature at all
    ],
)
def test_malformed_notes(note: str) -> None:
    with pytest.raises(MalformedNote) as caught:
        cp.open_note(note, VKEY)
    assert caught.value.http_status == 400


@pytest.mark.parametrize(
    "body",
    [
        "origin\n1000\n",  # no root
        "\n1000\n" + base64.b64encode(ROOT).decode() + "\n",  # empty origin
        "origin\n01000\n" + base64.b64encode(ROOT).decode() + "\n",  # leading zero
        "origin\n-1\n" + base64.b64encode(ROOT).decode() + "\n",
        "origin\n1\n" + base64.b64encode(ROOT[:31]).decode() + "\n",  # short root
        "origin\n1\n" + base64.b64encode(ROOT).decode() + "\n\nextension\n",  # empty line
        "origin\n1\n" + base64.b64encode(ROOT).decode(),  # no final newline
    ],
)
def test_malformed_checkpoint_bodies(body: str) -> None:
    with pytest.raises(MalformedCheckpoint):
        cp.parse_body(body)


def test_signed_malformed_checkpoint_is_refused() -> None:
    note = cp.sign_note("origin\n01\nAAAA\n", ORIGIN, KEY)
    with pytest.raises(MalformedCheckpoint):
        cp.parse_and_verify(note, VKEY)


def test_checkpoint_dataclass_invariants() -> None:
    with pytest.raises(MalformedCheckpoint):
        cp.Checkpoint("", 1, ROOT)
    with pytest.raises(MalformedCheckpoint):
        cp.Checkpoint(ORIGIN, -1, ROOT)
    with pytest.raises(MalformedCheckpoint):
        cp.Checkpoint(ORIGIN, 1, b"short")
    with pytest.raises(MalformedCheckpoint):
        cp.Checkpoint(ORIGIN, 1, ROOT, ("two\nlines",))


def test_key_strings_refuse_bad_names_and_types() -> None:
    with pytest.raises(MalformedVerifierKey):
        cp.verifier_key("bad name", KEY.public_key())
    with pytest.raises(MalformedVerifierKey):
        cp.signer_key("a+b", KEY)
    bad_type = base64.b64encode(b"\x02" + bytes(32)).decode()
    with pytest.raises(MalformedVerifierKey):
        cp.parse_verifier_key(f"n+00000000+{bad_type}")
    with pytest.raises(MalformedVerifierKey):
        cp.parse_signer_key(GO_SKEY.replace("c74f20a3", "c74f20a4"))
    with pytest.raises(MalformedVerifierKey):
        cp.parse_signer_key(GO_VKEY)
    with pytest.raises(MalformedNote):
        cp.sign_note("no newline", ORIGIN, KEY)


def test_errors_share_a_base() -> None:
    for error in (BadSignature, UnknownKey, MalformedNote, OriginMismatch, MalformedVerifierKey):
        assert issubclass(error, CheckpointError)
