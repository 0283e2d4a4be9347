"""Every mail error carries its exact SMTP reply and HTTP answer."""

from __future__ import annotations

import pytest

from relay.mail import errors

EXPECTED = [
    (errors.MessageTooLarge, 552, "5.3.4", 413),
    (errors.MalformedMessage, 554, "5.6.0", 400),
    (errors.MimeTooDeep, 554, "5.6.0", 422),
    (errors.TooManyParts, 554, "5.6.0", 422),
    (errors.HeaderTooLong, 554, "5.6.0", 422),
    (errors.ForbiddenAttachment, 554, "5.6.1", 415),
    (errors.InvalidAddress, 553, "5.1.3", 400),
    (errors.InvalidSenderAddress, 553, "5.1.7", 400),
    (errors.UnknownRecipient, 550, "5.1.1", 404),
    (errors.RelayDenied, 550, "5.7.1", 403),
    (errors.StartTlsRequired, 530, "5.7.0", 403),
    (errors.SenderNotAllowed, 550, "5.7.1", 403),
    (errors.TooManyRecipients, 452, "4.5.3", 400),
    (errors.DecryptionFailed, 554, "5.7.5", 422),
    (errors.EncryptionFailed, 554, "5.7.5", 422),
]


@pytest.mark.parametrize(("cls", "code", "enhanced", "http"), EXPECTED)
def test_codes(cls: type[errors.MailError], code: int, enhanced: str, http: int) -> None:
    error = cls()
    assert error.smtp_reply == f"{code} {enhanced} {cls.default_text}"
    assert error.http_status == http
    # RFC 3463 §2: the class digit of the enhanced code matches the reply's first digit.
    assert enhanced[0] == str(code)[0]
    assert error.code and error.code.islower()


def test_starttls_text_is_rfc_3207() -> None:
    assert errors.StartTlsRequired().smtp_reply == "530 5.7.0 Must issue a STARTTLS command first"


def test_relay_denied_text() -> None:
    assert errors.RelayDenied().smtp_reply == "550 5.7.1 Relaying denied"


def test_reply_not_allowed_carries_reason() -> None:
    error = errors.ReplyNotAllowed(reason="wrong_sender", target_kind="case", target_id="abc")
    assert error.smtp_reply.startswith("550 5.7.1 ")
    assert (error.reason, error.target_kind, error.target_id) == ("wrong_sender", "case", "abc")


def test_reply_text_is_one_ascii_line_of_bounded_length() -> None:
    error = errors.MalformedMessage("pièce\r\n250 OK injected " + "x" * 1000)
    reply = error.smtp_reply
    assert "\r" not in reply and "\n" not in reply and reply.isascii()
    assert reply.startswith("554 5.6.0 pi?ce 250 OK injected ")
    assert len(reply) <= 512


def test_custom_message_kept() -> None:
    assert str(errors.UnknownRecipient("No such team")) == "No such team"
