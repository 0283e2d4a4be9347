"""MDNs and DSNs: MSSanté structure, round trips through the parsers, nothing confidential."""

from __future__ import annotations

from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser

import pytest

from relay.mail.errors import MalformedMessage
from relay.mail.limits import ParsedMessage, parse_message
from relay.mail.mdn import (
    BOUNCE_SUBJECT,
    DeliveryReport,
    Disposition,
    DispositionReport,
    RecipientFailure,
    RecipientStatus,
    build_bounce,
    build_mdn,
    header_section,
    parse_dsn,
    parse_mdn,
)

NOW = datetime(2026, 11, 23, 13, 30, tzinfo=UTC)
DOMAIN = "relais.localhost"

ORIGINAL = (
    b"From: Dr Jean Dubois <jean.dubois@chu.example.fr>\r\n"
    b"To: cardio@relais.localhost\r\n"
    b"Subject: Avis pour Mme Marcelle Dupont\r\n"
    b"Thread-Topic: Avis pour Mme Marcelle Dupont\r\n"
    b"Date: Mon, 23 Nov 2026 14:05:00 +0100\r\n"
    b"Message-ID: <orig-1@chu.example.fr>\r\n"
    b"References: <root@relais.localhost>\r\n"
    b"Disposition-Notification-To: Dr Jean Dubois <jean.dubois@chu.example.fr>\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Ulc\xc3\xa8re de jambe gauche, NIR 284057511601234.\r\n"
)


def original() -> ParsedMessage:
    return parse_message(ORIGINAL)


def as_bytes(message: EmailMessage) -> bytes:
    return message.as_bytes(policy=policy.SMTP)


def parts_of(message: Message) -> list[EmailMessage]:
    payload = message.get_payload()
    assert isinstance(payload, list)
    parts = [part for part in payload if isinstance(part, EmailMessage)]
    assert len(parts) == len(payload)
    return parts


def text_of(part: EmailMessage) -> str:
    content = part.get_content()
    assert isinstance(content, str)
    return content


def test_mdn_structure_is_the_mssante_one() -> None:
    mdn = build_mdn(original(), final_recipient="cardio@relais.localhost", now=NOW, domain=DOMAIN)
    parsed = BytesParser(policy=policy.default).parsebytes(as_bytes(mdn))
    assert parsed.get_content_type() == "multipart/report"
    assert parsed.get_param("report-type") == "disposition-notification"
    parts = parts_of(parsed)
    assert [part.get_content_type() for part in parts] == [
        "text/plain",
        "message/disposition-notification",
        "text/rfc822-headers",
    ]
    assert parsed["To"] == "jean.dubois@chu.example.fr"
    assert parsed["From"] == "cardio@relais.localhost"
    assert parsed["Subject"] == "Accusé de traitement"
    assert parsed["In-Reply-To"] == "<orig-1@chu.example.fr>"
    assert parsed["References"] == "<root@relais.localhost> <orig-1@chu.example.fr>"
    assert parsed["Auto-Submitted"] == "auto-replied"
    fields = parts_of(parts[1])[0]
    assert fields["Reporting-UA"] == "relais.localhost; Relais-Sante"
    assert fields["Final-Recipient"] == "rfc822;cardio@relais.localhost"
    assert fields["Original-Message-ID"] == "<orig-1@chu.example.fr>"
    assert fields["Disposition"] == "automatic-action/MDN-sent-automatically; processed"
    assert fields["Original-Recipient"] is None
    text = text_of(parts[0])
    assert "reçu et enregistré par Relais Santé" in text
    assert "23/11/2026 à 14:05" in text


def test_mdn_never_carries_the_body_or_the_subject() -> None:
    data = as_bytes(
        build_mdn(original(), final_recipient="cardio@relais.localhost", now=NOW, domain=DOMAIN)
    )
    for secret in (b"Dupont", b"Marcelle", b"284057511601234", b"Ulc", b"jambe"):
        assert secret not in data
    assert b"Message-ID: <orig-1@chu.example.fr>" in data  # the other original headers stay


def test_mdn_round_trip_processed() -> None:
    mdn = build_mdn(
        original(),
        final_recipient="cardio@relais.localhost",
        original_recipient="Cardio@Relais.Localhost",
        now=NOW,
        domain=DOMAIN,
    )
    assert parse_mdn(as_bytes(mdn)) == DispositionReport(
        reporting_ua="relais.localhost; Relais-Sante",
        original_recipient="cardio@relais.localhost",
        final_recipient="cardio@relais.localhost",
        original_message_id="<orig-1@chu.example.fr>",
        action_mode="automatic-action",
        sending_mode="MDN-sent-automatically",
        disposition="processed",
    )


def test_mdn_displayed_is_a_manual_action() -> None:
    mdn = build_mdn(
        original(),
        final_recipient="cardio@relais.localhost",
        now=NOW,
        domain=DOMAIN,
        disposition=Disposition.DISPLAYED,
        message_id="<mdn-1@relais.localhost>",
    )
    assert mdn["Subject"] == "Accusé de lecture"
    assert mdn["Message-ID"] == "<mdn-1@relais.localhost>"
    report = parse_mdn(as_bytes(mdn))
    assert (report.action_mode, report.disposition) == ("manual-action", "displayed")


def test_our_message_parser_accepts_an_mdn() -> None:
    mdn = build_mdn(original(), final_recipient="cardio@relais.localhost", now=NOW, domain=DOMAIN)
    parsed = parse_message(as_bytes(mdn))
    assert parsed.auto_submitted
    assert parsed.from_address == "cardio@relais.localhost"
    assert "Accusé" not in parsed.text_body and "reçu et enregistré" in parsed.text_body


def test_no_mdn_unless_requested() -> None:
    without = parse_message(ORIGINAL.replace(b"Disposition-Notification-To", b"X-Not"))
    with pytest.raises(ValueError, match="did not ask"):
        build_mdn(without, final_recipient="cardio@relais.localhost", now=NOW, domain=DOMAIN)


def test_peer_mdn_with_extra_spacing_is_read() -> None:
    peer = (
        b"From: cardio@chu.example.fr\r\nTo: claire@relais.localhost\r\nSubject: Lu\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type="disposition-notification";\r\n'
        b' boundary="r"\r\n\r\n--r\r\nContent-Type: text/plain\r\n\r\nLu.\r\n--r\r\n'
        b"Content-Type: message/disposition-notification\r\n\r\n"
        b"Reporting-UA: mail.chu.example.fr; Zimbra\r\n"
        b"Final-Recipient: RFC822; Cardio@CHU.example.fr\r\n"
        b"Original-Message-ID: <m1@relais.localhost>\r\n"
        b"Disposition: manual-action/MDN-sent-manually; displayed/error\r\n"
        b"\r\n--r--\r\n"
    )
    report = parse_mdn(peer)
    assert report.final_recipient == "cardio@chu.example.fr"
    assert report.sending_mode == "MDN-sent-manually"
    assert report.disposition == "displayed"


@pytest.mark.parametrize(
    "data",
    [
        ORIGINAL,
        b"From: a@b.org\r\nContent-Type: multipart/report; report-type=delivery-status;"
        b" boundary=r\r\n\r\n--r\r\nContent-Type: text/plain\r\n\r\nx\r\n--r--\r\n",
        b"From: a@b.org\r\nContent-Type: multipart/report; report-type=disposition-notification;"
        b" boundary=r\r\n\r\n--r\r\nContent-Type: message/disposition-notification\r\n\r\n"
        b"Reporting-UA: x\r\n\r\n--r--\r\n",
    ],
    ids=["not-a-report", "wrong-report-type", "no-final-recipient"],
)
def test_parse_mdn_refuses_non_mdns(data: bytes) -> None:
    with pytest.raises(MalformedMessage):
        parse_mdn(data)


# --- DSN ---------------------------------------------------------------------------------------


def bounce() -> EmailMessage:
    return build_bounce(
        original_headers=header_section(ORIGINAL),
        sender="claire.martin@relais.localhost",
        failures=[
            RecipientFailure(
                recipient="Jean.Dubois@chu.example.fr",
                status="5.1.1",
                diagnostic="550 5.1.1 <jean.dubois@chu.example.fr>: user unknown",
                remote_mta="mx.chu.example.fr",
            ),
            RecipientFailure(recipient="autre@example.org", status="5.7.1"),
        ],
        domain=DOMAIN,
        now=NOW,
        arrival_date=NOW,
    )


def test_bounce_structure() -> None:
    parsed = BytesParser(policy=policy.default).parsebytes(as_bytes(bounce()))
    assert parsed.get_content_type() == "multipart/report"
    assert parsed.get_param("report-type") == "delivery-status"
    parts = parts_of(parsed)
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    assert parsed["Subject"] == BOUNCE_SUBJECT
    assert parsed["From"].addresses[0].addr_spec == "postmaster@relais.localhost"
    assert parsed["To"] == "claire.martin@relais.localhost"
    assert parsed["Auto-Submitted"] == "auto-replied"
    text = text_of(parts[0])
    assert "jean.dubois@chu.example.fr : adresse du destinataire inconnue" in text
    assert "autre@example.org : message refusé par la politique de sécurité" in text


def test_bounce_round_trip() -> None:
    assert parse_dsn(as_bytes(bounce())) == DeliveryReport(
        reporting_mta="relais.localhost",
        recipients=(
            RecipientStatus(
                final_recipient="jean.dubois@chu.example.fr",
                action="failed",
                status="5.1.1",
                diagnostic="smtp; 550 5.1.1 <jean.dubois@chu.example.fr>: user unknown",
                remote_mta="mx.chu.example.fr",
            ),
            RecipientStatus(
                final_recipient="autre@example.org",
                action="failed",
                status="5.7.1",
                diagnostic=None,
                remote_mta=None,
            ),
        ),
    )


def test_bounce_carries_no_subject_nor_body() -> None:
    data = as_bytes(bounce())
    for secret in (b"Dupont", b"284057511601234", b"Ulc"):
        assert secret not in data


def test_bounce_input_checked() -> None:
    with pytest.raises(ValueError):
        build_bounce(original_headers=b"", sender="a@b.org", failures=[], domain=DOMAIN, now=NOW)
    with pytest.raises(ValueError, match="RFC 3463"):
        build_bounce(
            original_headers=b"",
            sender="a@b.org",
            failures=[RecipientFailure(recipient="x@y.org", status="550")],
            domain=DOMAIN,
            now=NOW,
        )


def test_diagnostic_cannot_inject_fields() -> None:
    report = build_bounce(
        original_headers=b"",
        sender="a@b.org",
        failures=[
            RecipientFailure(
                recipient="x@y.org", status="5.0.0", diagnostic="550 no\r\nAction: delivered"
            )
        ],
        domain=DOMAIN,
        now=NOW,
    )
    [status] = parse_dsn(as_bytes(report)).recipients
    assert status.action == "failed"
    assert status.diagnostic == "smtp; 550 no Action: delivered"


def test_header_section() -> None:
    assert header_section(b"A: 1\r\nB: 2\r\n\r\nbody") == b"A: 1\r\nB: 2\r\n"
    assert header_section(b"A: 1\nB: 2\n\nbody") == b"A: 1\nB: 2\n"
    assert header_section(b"A: 1\r\n") == b"A: 1\r\n"
