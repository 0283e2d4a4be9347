"""Reading bounces (RFC 3464) as Postfix, Exim and Exchange send them; broken reports are
refused with MalformedMessage, never a crash."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email import policy

import pytest

from relay.mail.dsn import Bounce, BouncedRecipient, ReportedAction, is_delivery_report, read_bounce
from relay.mail.errors import MailError, MalformedMessage
from relay.mail.limits import MailLimits
from relay.mail.mdn import RecipientFailure, build_bounce, header_section
from relay.mail.parser_pool import parse_inbound
from tests.relay.mail import bounces

ID = "<Zq3xY8rT2mN5bV7cX1aS4dF6@relais.localhost>"
TO = "secretariat@cabinet.example"


def test_postfix_bounce_with_the_undelivered_headers() -> None:
    assert read_bounce(bounces.postfix(ID, TO)) == Bounce(
        reporting_mta="smtp.cabinet.example",
        original_message_ids=(ID,),
        recipients=(
            BouncedRecipient(
                final_recipient=TO,
                action=ReportedAction.FAILED,
                status="5.1.1",
                diagnostic=f"550 5.1.1 <{TO}>: Recipient address rejected: User unknown in"
                " virtual mailbox table",
                original_recipient=TO,
            ),
        ),
    )


def test_postfix_bounce_with_the_whole_message_and_an_alias() -> None:
    bounce = read_bounce(
        bounces.postfix(ID, TO, returned="message/rfc822", original_to="Accueil@Cabinet.example")
    )
    (failure,) = bounce.failures
    assert bounce.original_message_ids == (ID,)
    assert failure.final_recipient == TO
    assert failure.original_recipient == "accueil@cabinet.example"


def test_postfix_gives_up_on_a_temporary_error_and_warns_of_delays() -> None:
    # Past maximal_queue_lifetime Postfix says "failed" with the last 4.x.x status.
    expired = read_bounce(bounces.postfix(ID, TO, status="4.4.1", diagnostic="X-Postfix; timeout"))
    (failure,) = expired.failures
    assert failure.status == "4.4.1" and failure.diagnostic == "timeout"
    delayed = read_bounce(bounces.postfix(ID, TO, action="delayed", status="4.4.1"))
    assert delayed.failures == ()
    assert delayed.recipients[0].action is ReportedAction.DELAYED


def test_exim_bounce_action_first_and_its_constant_status_refined() -> None:
    bounce = read_bounce(bounces.exim(ID, "Dr.Martin@Hopital.example"))
    assert bounce.reporting_mta == "mail.hopital.example"
    # The returned message's Message-ID first, then the report's own References.
    assert bounce.original_message_ids == (ID, "<root-thread@relais.localhost>")
    (failure,) = bounce.failures
    assert failure.final_recipient == "dr.martin@hopital.example"
    assert failure.status == "5.2.1"  # "5.0.0" in Status, 5.2.1 in the remote reply
    assert failure.diagnostic == "550 5.2.1 Mailbox disabled"


def test_exchange_ndr_folded_fields_and_alternative_text() -> None:
    bounce = read_bounce(bounces.exchange(ID, "Secretariat@CHU.example"))
    assert bounce.original_message_ids == (ID,)
    (failure,) = bounce.failures
    assert failure.final_recipient == "secretariat@chu.example"
    assert failure.status == "5.1.10"
    assert failure.diagnostic == (
        "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"
    )


def test_our_own_bounce_reads_back() -> None:
    original = f"From: a@relais.localhost\r\nTo: {TO}\r\nMessage-ID: {ID}\r\n".encode()
    report = build_bounce(
        original_headers=original,
        sender="dr@hopital.example",
        failures=[RecipientFailure(TO, "5.7.1", "550 5.7.1 refused", "mx.cabinet.example")],
        domain="relais.localhost",
        now=datetime(2026, 11, 23, 18, 0, tzinfo=UTC),
    )
    bounce = read_bounce(report.as_bytes(policy=policy.SMTP))
    assert bounce.original_message_ids == (ID,)
    assert bounce.failures == (
        BouncedRecipient(TO, ReportedAction.FAILED, "5.7.1", "550 5.7.1 refused"),
    )


def test_global_delivery_status_and_odd_blocks() -> None:
    # RFC 6533 form (left as text by the email package), several recipients: an unknown
    # action, an X.400 address and a block without a Final-Recipient are skipped, the rest read.
    raw = (
        "From: Mailer-Daemon@mail.hopital.example\r\n"
        "To: postmaster@relais.localhost\r\n"
        f"In-Reply-To: {ID}\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=global-delivery-status; boundary="g"\r\n'
        "\r\n--g\r\nContent-Type: text/plain\r\n\r\nEchec.\r\n"
        "--g\r\nContent-Type: message/global-delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mail.hopital.example\r\n\r\n"
        "Final-Recipient: RFC822; <A@Hopital.example>\r\nAction: Failed\r\n"
        "Status: 5.0.0 (permanent failure)\r\n\r\n"
        "Final-Recipient: rfc822; b@hopital.example\r\nAction: exploded\r\nStatus: 5.0.0\r\n\r\n"
        "Final-Recipient: x400; c=FR;a=;p=CHU\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
        "Action: failed\r\nStatus: 5.1.1\r\n\r\n"
        "Final-Recipient: rfc822;d@hopital.example\r\nAction: delayed\r\n\r\n"
        "--g--\r\n"
    ).encode()
    bounce = read_bounce(raw)
    assert bounce.original_message_ids == (ID,)
    assert bounce.recipients == (
        BouncedRecipient("a@hopital.example", ReportedAction.FAILED, "5.0.0"),
        BouncedRecipient("d@hopital.example", ReportedAction.DELAYED, "4.0.0"),
    )


def test_diagnostics_are_short_printable_ascii() -> None:
    noisy = "smtp; 550 5.1.1 " + "\u00e9\x07" + "x" * 500
    (failure,) = read_bounce(bounces.postfix(ID, TO, diagnostic=noisy)).failures
    assert failure.diagnostic is not None and len(failure.diagnostic) == 200
    assert failure.diagnostic.startswith("550 5.1.1 ??xx") and failure.diagnostic.isascii()


def _report(status_part: str, content_type: str = "message/delivery-status") -> bytes:
    return (
        "From: MAILER-DAEMON@mx.example\r\nTo: postmaster@relais.localhost\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        f"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n--b\r\nContent-Type: {content_type}\r\n\r\n"
        f"{status_part}\r\n--b--\r\n"
    ).encode()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"From: a@b.example\r\nSubject: hello\r\n\r\nplain text\r\n", "Not a multipart/report"),
        (
            bounces.postfix(ID, TO).replace(b"report-type=delivery-status", b"report-type=x"),
            "Not a multipart/report",
        ),
        (_report("Reporting-MTA: dns; x", "text/plain"), "No message/delivery-status part"),
        (_report("Reporting-MTA: dns; x\r\n"), "without a usable recipient"),
        (_report("Reporting-MTA: dns; x\r\n\r\nAction: failed\r\n"), "without a usable recipient"),
        (
            _report("Reporting-MTA: dns; x\r\n\r\nFinal-Recipient: rfc822; not an address\r\n"),
            "without a usable recipient",
        ),
        (b"\x00\xff garbage", "Not a multipart/report"),
        (b"", "Not a multipart/report"),
    ],
)
def test_broken_reports_are_refused(raw: bytes, reason: str) -> None:
    with pytest.raises(MalformedMessage, match=reason):
        read_bounce(raw)


def test_mangled_reports_never_crash() -> None:
    # Random damage to a real shape: a refusal (MailError) or a reading, nothing else.
    sample = bytearray(bounces.exchange(ID, TO))
    rng = random.Random(4)
    limits = MailLimits(max_depth=8, max_parts=20)
    for _ in range(300):
        damaged = bytearray(sample)
        for _ in range(rng.randint(1, 12)):
            at = rng.randrange(len(damaged))
            damaged[at : at + rng.randint(0, 40)] = bytes(
                rng.choice(b"\r\n:;<>@-= \x00\xffabc") for _ in range(rng.randint(0, 8))
            )
        try:
            bounce = read_bounce(bytes(damaged), limits)
        except MailError:
            continue
        assert bounce.recipients
        assert all(r.status[0] in "245" for r in bounce.recipients)


def test_is_delivery_report_reads_only_the_header_section() -> None:
    assert is_delivery_report(header_section(bounces.postfix(ID, TO)))
    assert is_delivery_report(header_section(bounces.exchange(ID, TO)))  # quoted type
    assert not is_delivery_report(b"Content-Type: multipart/report; report-type=disposition-no")
    assert not is_delivery_report(b"Content-Type: text/plain\r\n")
    assert not is_delivery_report(b"")
    # Any case, folded parameters: the quick test on the bytes must not miss one.
    assert is_delivery_report(
        b'Content-Type: MULTIPART/REPORT;\r\n\tREPORT-TYPE="Delivery-Status";\r\n'
        b'\tboundary="b"\r\nSubject: Undeliverable\r\n'
    )


def test_the_parser_processes_read_reports_and_keep_broken_ones_as_mail() -> None:
    limits = MailLimits()
    parsed, decrypted, bounce = parse_inbound(bounces.postfix(ID, TO), limits)
    assert not decrypted and bounce is not None and bounce.failures[0].final_recipient == TO
    plain = b"From: a@b.example\r\nTo: postmaster@relais.localhost\r\n\r\nhello\r\n"
    assert parse_inbound(plain, limits)[2] is None
    broken = _report("Reporting-MTA: dns; x\r\n\r\nAction: failed\r\n")
    parsed, _, bounce = parse_inbound(broken, limits)
    assert bounce is None and parsed.from_address == "mailer-daemon@mx.example"
