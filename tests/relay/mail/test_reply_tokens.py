"""Reply tokens: bound to target and recipient, unforgeable, short and case-insensitive."""

from __future__ import annotations

import secrets

import pytest

from relay.mail.addresses import classify, reply_address
from relay.mail.errors import ReplyNotAllowed
from relay.mail.reply_tokens import TOKEN_LENGTH, ReplyKind, ReplyTarget, issue, verify

SECRET = bytes(range(32))
OTHER_SECRET = bytes(range(1, 33))
THREAD = secrets.token_hex(16)
RECIPIENT = "Jean.Dubois@CHU.example.fr"


def test_round_trip() -> None:
    token = issue(SECRET, ReplyKind.THREAD, THREAD, RECIPIENT)
    assert verify(SECRET, token, "jean.dubois@chu.example.fr") == ReplyTarget(
        kind=ReplyKind.THREAD, target_id=THREAD, recipient="jean.dubois@chu.example.fr"
    )


def test_case_kind_round_trip() -> None:
    case_id = secrets.token_hex(16)
    token = issue(SECRET, ReplyKind.CASE, case_id, RECIPIENT)
    assert token.startswith("c")
    assert verify(SECRET, token, RECIPIENT).kind is ReplyKind.CASE


def test_fits_in_a_local_part_and_is_lower_case() -> None:
    token = issue(SECRET, ReplyKind.THREAD, THREAD, RECIPIENT)
    assert len(token) == TOKEN_LENGTH
    assert len("r+" + token) <= 64  # RFC 5321 §4.5.3.1.1
    assert token == token.lower() and token.isalnum()
    address = reply_address(token, "relais.localhost")
    assert classify(address, "relais.localhost").reply_token == token


def test_mail_systems_may_change_the_case() -> None:
    token = issue(SECRET, ReplyKind.THREAD, THREAD, RECIPIENT)
    assert verify(SECRET, token.upper(), RECIPIENT.upper()).target_id == THREAD


def test_deterministic_per_recipient_and_distinct_across_recipients() -> None:
    first = issue(SECRET, ReplyKind.THREAD, THREAD, RECIPIENT)
    assert first == issue(SECRET, ReplyKind.THREAD, THREAD, RECIPIENT.lower())
    assert first != issue(SECRET, ReplyKind.THREAD, THREAD, "autre@chu.example.fr")
    assert first != issue(SECRET, ReplyKind.CASE, THREAD, RECIPIENT)


def test_other_sender_refused_with_the_genuine_target() -> None:
    token = issue(SECRET, ReplyKind.THREAD, THREAD, RECIPIENT)
    with pytest.raises(ReplyNotAllowed) as caught:
        verify(SECRET, token, "intrus@example.org")
    assert caught.value.reason == "wrong_sender"
    assert (caught.value.target_kind, caught.value.target_id) == ("thread", THREAD)
    assert caught.value.smtp_reply.startswith("550 5.7.1 ")


def test_garbage_sender_is_a_wrong_sender() -> None:
    token = issue(SECRET, ReplyKind.THREAD, THREAD, RECIPIENT)
    with pytest.raises(ReplyNotAllowed) as caught:
        verify(SECRET, token, "<>")
    assert caught.value.reason == "wrong_sender"


@pytest.mark.parametrize("position", range(TOKEN_LENGTH))
def test_any_altered_character_is_forged(position: int) -> None:
    token = issue(SECRET, ReplyKind.THREAD, THREAD, RECIPIENT)
    replacement = "b" if token[position] != "b" else "c"
    altered = token[:position] + replacement + token[position + 1 :]
    with pytest.raises(ReplyNotAllowed) as caught:
        verify(SECRET, altered, RECIPIENT)
    # Changing the recipient MAC alone leaves a genuine target with a wrong binding.
    expected = "wrong_sender" if position >= TOKEN_LENGTH - 16 else "forged"
    assert caught.value.reason == expected
    if expected == "forged":
        assert caught.value.target_id is None


def test_same_smtp_text_for_forged_and_wrong_sender() -> None:
    token = issue(SECRET, ReplyKind.THREAD, THREAD, RECIPIENT)
    with pytest.raises(ReplyNotAllowed) as forged:
        verify(OTHER_SECRET, token, RECIPIENT)
    with pytest.raises(ReplyNotAllowed) as wrong:
        verify(SECRET, token, "intrus@example.org")
    assert forged.value.reason == "forged"
    assert forged.value.smtp_reply == wrong.value.smtp_reply


@pytest.mark.parametrize("token", ["", "t", "x" * TOKEN_LENGTH, "t" + "1" * (TOKEN_LENGTH - 1)])
def test_malformed_tokens_are_forged(token: str) -> None:
    with pytest.raises(ReplyNotAllowed) as caught:
        verify(SECRET, token, RECIPIENT)
    assert caught.value.reason == "forged"


def test_previous_secrets_accepted_during_rotation() -> None:
    token = issue(OTHER_SECRET, ReplyKind.THREAD, THREAD, RECIPIENT)
    target = verify(SECRET, token, RECIPIENT, previous_secrets=[OTHER_SECRET])
    assert target.target_id == THREAD
    with pytest.raises(ReplyNotAllowed):
        verify(SECRET, token, "intrus@example.org", previous_secrets=[OTHER_SECRET])


@pytest.mark.parametrize("target", ["short", "a" * 22 + "=", "not-base64!!!!!!!!!!!!", "AB" * 11])
def test_target_ids_must_be_relay_identifiers(target: str) -> None:
    with pytest.raises(ValueError):
        issue(SECRET, ReplyKind.THREAD, target, RECIPIENT)


def test_short_secret_refused() -> None:
    with pytest.raises(ValueError):
        issue(b"short", ReplyKind.THREAD, THREAD, RECIPIENT)
    with pytest.raises(ValueError):
        verify(b"short", "t", RECIPIENT)
