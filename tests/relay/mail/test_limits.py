"""Parsing under limits: fields, body choice, attachments, and every hostile shape refused."""

from __future__ import annotations

import base64
import random
import time
from datetime import UTC, datetime, timedelta, timezone
from email import policy
from email.message import Message
from email.parser import BytesParser
from typing import Any

import pytest

from relay.mail import limits
from relay.mail.errors import (
    ForbiddenAttachment,
    HeaderTooLong,
    MalformedMessage,
    MessageTooLarge,
    MimeTooDeep,
    TooManyParts,
)
from relay.mail.limits import (
    MailLimits,
    _prescan,
    parse_message,
    parse_tree,
    sanitize_filename,
)

HEAD = "From: Dr Claire Martin <claire.martin@example.org>\nTo: cardio@relais.localhost\n"


def crlf(text: str) -> bytes:
    """Test messages are written with \\n; SMTP delivers CRLF."""
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")


def deep_multipart(depth: int) -> bytes:
    lines = [HEAD + "Subject: x\nMIME-Version: 1.0\n"]
    for level in range(depth):
        lines.append(f'Content-Type: multipart/mixed; boundary="b{level}"\n\n--b{level}\n')
    lines.append("Content-Type: text/plain\n\nbonjour\n")
    lines.extend(f"--b{level}--\n" for level in reversed(range(depth)))
    return crlf("".join(lines))


def many_parts(count: int) -> bytes:
    parts = [f"--x\nContent-Type: text/plain\n\npart {n}\n" for n in range(count)]
    return crlf(HEAD + "Content-Type: multipart/mixed; boundary=x\n\n" + "".join(parts) + "--x--\n")


COMPLETE = crlf(
    """From: "Dr Claire Martin" <Claire.Martin@Example.ORG>
To: cardio@relais.localhost, R+Token@Relais.Localhost
Cc: x@y.org
Subject: =?utf-8?q?Plaie_de_M=2E_Dupont?=
Date: Mon, 23 Nov 2026 14:05:00 +0100
Message-ID: <abc@example.org>
In-Reply-To: <root@relais.localhost>
References: <root@relais.localhost>
 <n1@relais.localhost>
Disposition-Notification-To: Claire <claire.martin@example.org>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="outer"

--outer
Content-Type: multipart/alternative; boundary="alt"

--alt
Content-Type: text/plain; charset=utf-8; format=flowed
Content-Transfer-Encoding: quoted-printable

Bonjour, la plaie =C3=A9volue bien. Je propose de=20
continuer le pansement.

Le lun. 23 nov. 2026 =C3=A0 10:00, Inf <inf@relais.localhost> a =C3=A9crit :
> Question initiale
--alt
Content-Type: text/html; charset=utf-8

<p>Bonjour (version HTML)</p>
--alt--
--outer
Content-Type: image/jpeg
Content-Disposition: attachment; filename="photo plaie.jpg"
Content-Transfer-Encoding: base64

/9j/4AAQSkZJRg==
--outer
Content-Type: application/pdf; name="compte-rendu.pdf"
Content-Transfer-Encoding: base64

JVBERi0xLjQK
--outer--
"""
)


def test_complete_message_fields() -> None:
    parsed = parse_message(COMPLETE)
    assert parsed.message_id == "<abc@example.org>"
    assert parsed.in_reply_to == ("<root@relais.localhost>",)
    assert parsed.references == ("<root@relais.localhost>", "<n1@relais.localhost>")
    assert parsed.from_address == "claire.martin@example.org"
    assert parsed.from_name == "Dr Claire Martin"
    assert parsed.to == ("cardio@relais.localhost", "r+token@relais.localhost")
    assert parsed.cc == ("x@y.org",)
    assert parsed.subject == "Plaie de M. Dupont"
    assert parsed.date == datetime(2026, 11, 23, 13, 5, tzinfo=UTC)
    assert parsed.disposition_notification_to == "claire.martin@example.org"
    assert not parsed.smime_enveloped and not parsed.auto_submitted
    assert parsed.size == len(COMPLETE)
    assert parsed.raw_headers.startswith(b"From: ")
    assert parsed.raw_headers.endswith(b'boundary="outer"\r\n')


def test_body_prefers_plain_unflowed_and_reply_text_strips_history() -> None:
    parsed = parse_message(COMPLETE)
    assert parsed.text_body.startswith(
        "Bonjour, la plaie évolue bien. Je propose de continuer le pansement.\n"
    )
    assert "HTML" not in parsed.text_body
    assert (
        parsed.reply_text == "Bonjour, la plaie évolue bien. Je propose de continuer le pansement."
    )


def test_attachments_decoded_with_names() -> None:
    attachments = parse_message(COMPLETE).attachments
    assert [(a.filename, a.content_type) for a in attachments] == [
        ("photo plaie.jpg", "image/jpeg"),
        ("compte-rendu.pdf", "application/pdf"),
    ]
    assert attachments[0].data == base64.b64decode("/9j/4AAQSkZJRg==")
    assert attachments[1].data == b"%PDF-1.4\n"


def test_repr_hides_health_data() -> None:
    shown = repr(parse_message(COMPLETE))
    assert "Dupont" not in shown and "plaie" not in shown and "photo" not in shown


def test_html_only_body_is_converted_to_text() -> None:
    raw = crlf(
        HEAD + "Content-Type: text/html; charset=utf-8\n\n"
        "<html><head><style>p{color:red}</style><script>alert(1)</script></head>"
        "<body><p>Plaie &eacute;tendue</p><div>Ligne&nbsp;2</div></body></html>\n"
    )
    assert parse_message(raw).text_body == "Plaie étendue\n\nLigne 2"


def test_unknown_charset_falls_back_to_utf8() -> None:
    raw = crlf(HEAD + "Content-Type: text/plain; charset=x-unknown\n\nr\u00e9ponse\n")
    assert parse_message(raw).text_body == "réponse\n"


def test_auto_submitted_and_precedence() -> None:
    assert parse_message(crlf(HEAD + "Auto-Submitted: auto-replied\n\nabsent\n")).auto_submitted
    assert parse_message(crlf(HEAD + "Precedence: bulk\n\nx\n")).auto_submitted
    assert not parse_message(crlf(HEAD + "Auto-Submitted: no\n\nx\n")).auto_submitted


def test_smime_enveloped_detected_and_not_extracted() -> None:
    body = base64.b64encode(b"\x30\x80opaque").decode()
    raw = crlf(
        HEAD + "Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m\n"
        "Content-Transfer-Encoding: base64\n\n" + body + "\n"
    )
    parsed = parse_message(raw)
    assert parsed.smime_enveloped
    assert parsed.attachments == () and parsed.text_body == ""
    signed = crlf(HEAD + "Content-Type: application/pkcs7-mime; smime-type=signed-data\n\nx\n")
    assert not parse_message(signed).smime_enveloped


def test_signed_message_signature_is_not_an_attachment() -> None:
    raw = crlf(
        HEAD + 'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; '
        "micalg=sha-256; boundary=s\n\n--s\nContent-Type: text/plain\n\nsigné\n--s\n"
        "Content-Type: application/pkcs7-signature; name=smime.p7s\n"
        "Content-Transfer-Encoding: base64\n\nMIIB\n--s--\n"
    )
    parsed = parse_message(raw)
    assert parsed.smime_signed and parsed.attachments == ()
    assert parsed.text_body == "signé"


def test_attached_message_is_one_attachment() -> None:
    raw = crlf(
        HEAD + "Content-Type: multipart/mixed; boundary=m\n\n--m\nContent-Type: text/plain\n\n"
        "voir le message joint\n--m\nContent-Type: message/rfc822\n\n"
        "From: x@y.org\nSubject: ancien\n\ncorps ancien\n--m--\n"
    )
    parsed = parse_message(raw)
    assert parsed.text_body == "voir le message joint"
    [attached] = parsed.attachments
    assert attached.content_type == "message/rfc822"
    assert attached.filename == "message-joint-1.eml"
    assert b"corps ancien" in attached.data and b"Subject: ancien" in attached.data


# --- limits ------------------------------------------------------------------------------------


def test_thousand_deep_nesting_refused_fast_without_recursion_error() -> None:
    raw = deep_multipart(1000)
    started = time.perf_counter()
    with pytest.raises(MimeTooDeep) as caught:
        parse_message(raw)
    assert time.perf_counter() - started < 1.0
    assert caught.value.smtp_reply.startswith("554 5.6.0 ")


def test_nesting_at_the_limit_is_accepted() -> None:
    assert parse_message(deep_multipart(20)).text_body == "bonjour"
    with pytest.raises(MimeTooDeep):
        parse_message(deep_multipart(21))
    assert parse_message(deep_multipart(3), MailLimits(max_depth=3)).text_body == "bonjour"


def test_ten_thousand_parts_refused_fast() -> None:
    raw = many_parts(10_000)
    started = time.perf_counter()
    with pytest.raises(TooManyParts):
        parse_message(raw)
    assert time.perf_counter() - started < 1.0
    assert len(parse_message(many_parts(199)).text_body.splitlines()) == 199


def test_deep_message_rfc822_nesting_refused() -> None:
    raw = crlf(HEAD + "Content-Type: message/rfc822\n\n" * 1000 + "\nfin\n")
    with pytest.raises(MimeTooDeep):
        parse_message(raw)


def test_deep_digest_default_type_nesting_refused() -> None:
    # In multipart/digest, a part without Content-Type is message/rfc822 (RFC 2046 §5.1.5):
    # the nesting hides behind default types.
    lines = [HEAD]
    for level in range(500):
        lines.append(f"Content-Type: multipart/digest; boundary=d{level}\n\n--d{level}\n\n")
    with pytest.raises(MimeTooDeep):
        parse_message(crlf("".join(lines) + "fin\n"))


def test_repeated_boundary_lines_cannot_hide_nesting() -> None:
    # The parser skips boundary lines repeated after a delimiter, even a close delimiter:
    # a scanner that closed the multipart there would miss everything nested after it.
    lines = [HEAD]
    for level in range(500):
        lines.append(
            f"Content-Type: multipart/mixed; boundary=r{level}\n\n"
            f"--r{level}\n--r{level}--\n--r{level}\n"
        )
    started = time.perf_counter()
    with pytest.raises(MimeTooDeep):
        parse_message(crlf("".join(lines) + "\nfin\n"))
    assert time.perf_counter() - started < 1.0


def test_many_delivery_status_blocks_refused() -> None:
    raw = crlf(HEAD + "Content-Type: message/delivery-status\n\n" + "Status: 5.0.0\n\n" * 1000)
    with pytest.raises(TooManyParts):
        parse_message(raw)


def test_header_line_too_long() -> None:
    raw = crlf(HEAD + "X-Long: " + "a" * 991 + "\n\nbody\n")
    assert len(raw.split(b"\r\n")[2]) == 999
    with pytest.raises(HeaderTooLong) as caught:
        parse_message(raw)
    assert caught.value.smtp_reply.startswith("554 5.6.0 ")
    parse_message(crlf(HEAD + "X-Long: " + "a" * 990 + "\n\nbody\n"))


def test_header_line_in_a_part_too_long() -> None:
    raw = crlf(
        HEAD + "Content-Type: multipart/mixed; boundary=x\n\n--x\n"
        "Content-Type: text/plain; name=" + "a" * 1000 + "\n\nhi\n--x--\n"
    )
    with pytest.raises(HeaderTooLong):
        parse_message(raw)


def test_header_section_too_long() -> None:
    folded = "X-Many: " + "\n ".join(["word"] * 20_000)
    with pytest.raises(HeaderTooLong):
        parse_message(crlf(HEAD + folded + "\n\nbody\n"))
    with pytest.raises(HeaderTooLong):
        parse_message(crlf(HEAD + "X-A: b\n" * 100 + "\nbody\n"), MailLimits(max_header_bytes=500))


def test_message_too_large() -> None:
    raw = crlf(HEAD + "\n" + "x" * 2000 + "\n")
    with pytest.raises(MessageTooLarge) as caught:
        parse_message(raw, MailLimits(max_message_bytes=1000))
    assert caught.value.smtp_reply.startswith("552 5.3.4 ")


def test_broken_base64_names_the_part_not_the_file() -> None:
    raw = crlf(
        HEAD + "Content-Type: multipart/mixed; boundary=x\n\n--x\nContent-Type: text/plain\n\n"
        "voir PJ\n--x\nContent-Type: application/pdf\n"
        'Content-Disposition: attachment; filename="Dupont Jean.pdf"\n'
        "Content-Transfer-Encoding: base64\n\nJVBERi0x*LjQK\n--x--\n"
    )
    with pytest.raises(MalformedMessage) as caught:
        parse_message(raw)
    assert "part 2 (application/pdf)" in caught.value.message
    assert "base64" in caught.value.message
    assert "Dupont" not in caught.value.smtp_reply


@pytest.mark.parametrize("payload", ["JVBERi0xLjQK=", "JVBERi0xLjQ", "QQ==QQ==", "=QUFB"])
def test_base64_padding_errors(payload: str) -> None:
    raw = crlf(
        HEAD
        + "Content-Type: application/pdf\nContent-Transfer-Encoding: base64\n\n"
        + payload
        + "\n"
    )
    with pytest.raises(MalformedMessage, match="invalid base64"):
        parse_message(raw)


def test_unknown_transfer_encoding_refused() -> None:
    raw = crlf(HEAD + "Content-Transfer-Encoding: x-uuencode\n\nbegin 644 x\n")
    with pytest.raises(MalformedMessage, match="Content-Transfer-Encoding"):
        parse_message(raw)


@pytest.mark.parametrize(
    "body",
    [
        "Content-Type: multipart/mixed; boundary=x\n\n--x\nContent-Type: text/plain\n\nhi\n",
        "Content-Type: multipart/mixed; boundary=x\n\nno boundary at all\n",
        "Content-Type: multipart/mixed\n\n--x\n\nhi\n--x--\n",
    ],
    ids=["close-missing", "start-missing", "no-boundary-parameter"],
)
def test_boundary_defects_refused(body: str) -> None:
    with pytest.raises(MalformedMessage) as caught:
        parse_message(crlf(HEAD + body))
    assert caught.value.smtp_reply.startswith("554 5.6.0 ")


@pytest.mark.parametrize(
    "head",
    ["To: x@y.org\n", "From: undisclosed-recipients:;\n", "From: pas une adresse\n"],
)
def test_missing_or_invalid_from(head: str) -> None:
    with pytest.raises(MalformedMessage, match="From"):
        parse_message(crlf(head + "\nbody\n"))


# --- attachments -------------------------------------------------------------------------------


def _with_attachment(headers: str, payload: bytes) -> bytes:
    return crlf(
        HEAD + "Content-Type: multipart/mixed; boundary=x\n\n--x\nContent-Type: text/plain\n\n"
        "ci-joint\n--x\n"
        + headers
        + "Content-Transfer-Encoding: base64\n\n"
        + base64.b64encode(payload).decode()
        + "\n--x--\n"
    )


def test_zip_attachment_refused() -> None:
    raw = _with_attachment(
        'Content-Type: application/zip\nContent-Disposition: attachment; filename="photos.zip"\n',
        b"PK\x03\x04rest",
    )
    with pytest.raises(ForbiddenAttachment) as caught:
        parse_message(raw)
    assert caught.value.smtp_reply.startswith("554 5.6.1 ")
    assert ".zip" in caught.value.message and "photos" not in caught.value.message


def test_executable_refused_whatever_its_name() -> None:
    raw = _with_attachment(
        'Content-Type: image/jpeg\nContent-Disposition: attachment; filename="photo.jpg"\n',
        b"MZ\x90\x00 this program cannot be run in DOS mode",
    )
    with pytest.raises(ForbiddenAttachment):
        parse_message(raw)


def test_bidi_override_cannot_disguise_an_executable() -> None:
    raw = _with_attachment(
        "Content-Type: image/jpeg\nContent-Disposition: attachment; "
        "filename*=utf-8''photo%E2%80%AEgpj.exe\n",
        b"\xff\xd8\xff",
    )
    with pytest.raises(ForbiddenAttachment, match=r"\.exe"):
        parse_message(raw)


def test_office_documents_are_zip_inside_but_accepted() -> None:
    raw = _with_attachment(
        "Content-Type: application/vnd.openxmlformats-officedocument.wordprocessingml.document\n"
        'Content-Disposition: attachment; filename="courrier.docx"\n',
        b"PK\x03\x04docx",
    )
    [attachment] = parse_message(raw).attachments
    assert attachment.filename == "courrier.docx"


def test_forbidden_lists_are_configurable() -> None:
    raw = _with_attachment(
        'Content-Type: application/zip\nContent-Disposition: attachment; filename="a.zip"\n',
        b"PK\x03\x04",
    )
    limits = MailLimits(forbidden_extensions=frozenset(), forbidden_content_types=frozenset())
    assert parse_message(raw, limits).attachments[0].filename == "a.zip"


def test_inline_image_kept_with_content_id() -> None:
    raw = _with_attachment(
        "Content-Type: image/png\nContent-Disposition: inline\nContent-ID: <logo@x>\n",
        b"\x89PNG",
    )
    [image] = parse_message(raw).attachments
    assert image.inline and image.content_id == "<logo@x>"
    assert image.filename == "piece-jointe-1.png"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\x\\photo.jpg", "photo.jpg"),
        ("..hidden.pdf", "hidden.pdf"),
        ("a\x00b\x1fc.txt", "abc.txt"),
        ('ré<s>u:l"t|a?t*.pdf', "ré_s_u_l_t_a_t_.pdf"),
        ("Compte  rendu \t final.pdf ", "Compte rendu final.pdf"),
        ("CON.txt", "_CON.txt"),
        ("e\u0301te\u0301.jpg", "été.jpg"),
        ("...", "piece-jointe-3.pdf"),
        (None, "piece-jointe-3.pdf"),
    ],
)
def test_sanitize_filename(given: str | None, expected: str) -> None:
    assert sanitize_filename(given, "application/pdf", 3) == expected


def test_sanitize_filename_caps_length_keeping_extension() -> None:
    name = sanitize_filename("a" * 300 + ".jpeg", "image/jpeg", 1)
    assert len(name) == 150 and name.endswith(".jpeg")


def test_undeclared_utf8_filename_recovered() -> None:
    raw = _with_attachment(
        'Content-Type: application/pdf\nContent-Disposition: attachment; filename="résumé.pdf"\n',
        b"%PDF",
    )
    assert parse_message(raw).attachments[0].filename == "résumé.pdf"


def test_date_variants() -> None:
    naive = parse_message(crlf(HEAD + "Date: Mon, 23 Nov 2026 14:05:00 -0000\n\nx\n"))
    assert naive.date == datetime(2026, 11, 23, 14, 5, tzinfo=UTC)
    assert parse_message(crlf(HEAD + "Date: demain\n\nx\n")).date is None
    paris = parse_message(crlf(HEAD + "Date: Mon, 23 Nov 2026 14:05:00 +0100\n\nx\n")).date
    assert paris is not None and paris.utcoffset() == timedelta(hours=1)
    assert paris.tzinfo == timezone(timedelta(hours=1))


def test_limits_validated() -> None:
    with pytest.raises(ValueError):
        MailLimits(max_parts=0)
    with pytest.raises(ValueError):
        MailLimits(max_message_bytes=0)


def test_parse_tree_returns_the_stdlib_tree() -> None:
    tree = parse_tree(COMPLETE)
    assert tree.get_content_type() == "multipart/mixed"
    assert len(list(tree.walk())) == 6


# --- the pre-scan never under-counts what the parser will build --------------------------------


def _random_entity(rng: random.Random, depth: int, budget: list[int]) -> str:
    """A random MIME entity using the parser's quirks (digest defaults, message/*, missing
    blank lines, repeated delimiters, LF/CR line ends mixed in later)."""
    budget[0] -= 1
    choice = rng.random() if depth < 12 and budget[0] > 0 else 1.0
    if choice < 0.35:
        boundary = f"b{rng.randrange(10**6)}"
        subtype = rng.choice(["mixed", "alternative", "digest", "related"])
        head = f'Content-Type: multipart/{subtype}; boundary="{boundary}"\n'
        children = []
        for _ in range(rng.randint(1, 3)):
            child = _random_entity(rng, depth + 1, budget)
            if subtype == "digest" and rng.random() < 0.5:
                child = "\n" + child.split("\n", 1)[1]  # drop the Content-Type line
            repeat = f"--{boundary}\n" * rng.randint(1, 2)
            children.append(repeat + child)
        end = f"--{boundary}--\n" if rng.random() < 0.9 else ""
        return head + "\n" + "".join(children) + end
    if choice < 0.55:
        separator = "\n" if rng.random() < 0.8 else ""
        return "Content-Type: message/rfc822\n" + separator + _random_entity(rng, depth + 1, budget)
    if choice < 0.6:
        return "Content-Type: message/delivery-status\n\nStatus: 5.0.0\n\nAction: failed\n"
    return "Content-Type: text/plain\n\ntexte\n"


def _stdlib_depth(raw: bytes) -> int:
    message = BytesParser(policy=policy.default).parsebytes(raw)
    deepest = 0
    stack: list[tuple[Message, int]] = [(message, 0)]
    while stack:
        part, depth = stack.pop()
        deepest = max(deepest, depth)
        payload = part.get_payload()
        if isinstance(payload, list):
            stack.extend((child, depth + 1) for child in payload if isinstance(child, Message))
    return deepest


@pytest.mark.parametrize("seed", range(60))
def test_prescan_bounds_the_parser_depth(seed: int) -> None:
    rng = random.Random(seed)
    text = HEAD + _random_entity(rng, 0, [25])
    raw = crlf(text) if seed % 3 else text.encode()  # bare LF too
    real = _stdlib_depth(raw)
    _prescan(raw, MailLimits(max_depth=real))  # the real depth passes
    if real >= 1:
        with pytest.raises(MimeTooDeep):
            _prescan(raw, MailLimits(max_depth=real - 1))


def test_html_conversion_is_bounded() -> None:
    raw = crlf(HEAD + "Content-Type: text/html\n\n" + "<b>mot</b> " * 100_000 + "\n")
    started = time.perf_counter()
    body = parse_message(raw, MailLimits(max_html_chars=2_000)).text_body
    assert time.perf_counter() - started < 1.0
    assert body.startswith("mot mot") and len(body) < 2_000


def test_eight_bit_body_kept_exactly() -> None:
    raw = HEAD.replace("\n", "\r\n").encode() + (
        b"Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n"
        b"\r\nR\xe9ponse \xe0 la demande\r\n"
    )
    assert parse_message(raw).text_body == "Réponse à la demande\n"


def test_eight_bit_bytes_in_base64_refused() -> None:
    raw = HEAD.replace("\n", "\r\n").encode() + (
        b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
        b"\r\nJVBE\xe9Ri0x\r\n"
    )
    with pytest.raises(MalformedMessage, match="invalid base64"):
        parse_message(raw)


def test_lenient_quoted_printable_like_every_client() -> None:
    raw = crlf(
        HEAD + "Content-Type: text/plain; charset=utf-8\n"
        "Content-Transfer-Encoding: quoted-printable\n\nfin de ligne=\ncoll=C3=A9e =XY reste\n"
    )
    assert parse_message(raw).text_body == "fin de lignecollée =XY reste\n"


# --- header fields read as policy.default reads them --------------------------------------------


def test_encoded_words_and_rfc2231_parameters_decoded() -> None:
    raw = crlf(
        "From: =?utf-8?q?Dr_Andr=C3=A9_L=C3=A9vy?= <Andre.Levy@Example.org>\n"
        'To: "Martin, Claire" <claire.martin@relais.localhost>,'
        " =?iso-8859-1?q?Equipe_Soins?= <soins@relais.localhost>\n"
        "Subject: =?iso-8859-1?q?R=E9ponse_=E0?= la =?utf-8?b?ZGVtYW5kZSBkJ2F2aXM=?=\n"
        'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="b"\n\n'
        "--b\nContent-Type: text/plain; charset=utf-8\n\nbonjour\n"
        "--b\nContent-Type: application/pdf\nContent-Disposition: attachment;"
        " filename*=utf-8''compte%20rendu%20%C3%A9t%C3%A9.pdf\n"
        "Content-Transfer-Encoding: base64\n\nJVBERg==\n"
        "--b\nContent-Type: application/pdf\nContent-Disposition: attachment;\n"
        " filename*0*=utf-8''r%C3%A9sum; filename*1*=%C3%A9.pdf\n"
        "Content-Transfer-Encoding: base64\n\nJVBERg==\n"
        '--b\nContent-Type: image/jpeg; name="=?utf-8?b?cGxhaWUgw6l0w6kuanBn?="\n'
        "Content-Transfer-Encoding: base64\n\n/9j/\n--b--\n"
    )
    parsed = parse_message(raw)
    assert (parsed.from_name, parsed.from_address) == ("Dr André Lévy", "andre.levy@example.org")
    assert parsed.to == ("claire.martin@relais.localhost", "soins@relais.localhost")
    assert parsed.subject == "Réponse à la demande d'avis"
    assert [a.filename for a in parsed.attachments] == [
        "compte rendu été.pdf",  # RFC 2231 §4
        "résumé.pdf",  # RFC 2231 §4.1 continuations
        "plaie été.jpg",  # RFC 2047 inside a quoted parameter (Outlook, Gmail)
    ]


def test_undeclared_utf8_subject_and_name_recovered() -> None:
    raw = (
        crlf("From: Andre Levy <andre@example.org>\n")
        + ("Subject: Réponse  urgente\r\nCc: Équipe <soins@relais.localhost>\r\n\r\nx\r\n").encode()
    )
    parsed = parse_message(raw)
    assert parsed.subject == "Réponse urgente"
    assert parsed.cc == ("soins@relais.localhost",)


def test_unreadable_fields_are_ignored_not_fatal() -> None:
    # The header registry's own parser raises IndexError on these: a bad receipt request or
    # Message-ID is ignored like a bad Cc, the message itself is accepted.
    for receipt_to in ("<", ':_;"', "#x=@"):
        raw = crlf(HEAD + f"Disposition-Notification-To: {receipt_to}\nMessage-ID: <@h>\n\nx\n")
        parsed = parse_message(raw)
        assert parsed.disposition_notification_to is None
        assert parsed.message_id is None


_FIELD_PIECES = [
    "a", "Zb", "x9", "text/plain", "application/pdf", ";", "; ", " ", "  ", "\t", "=", '"', ".",
    "-", "_", "@", "<", ">", ",", "!", "#", "$", "&", "+", "^", "`", "{", "|", "}", "~", "'",
    "%", "*", "/", "?", "name=", "filename=", 'filename="', "charset=utf-8", "Dr", "x@y.org",
    "<a@b.c>", "a.b", "..", "(", ")", ":", "\\", "é", "=?utf-8?q?a?=",
]  # fmt: skip


def _registry_mime(name: str, value: str) -> tuple[str, dict[str, str]] | str:
    try:
        header = limits._POLICY.header_factory(name, value)
    except Exception as exc:
        return type(exc).__name__
    params = {str(k).lower(): str(v) for k, v in getattr(header, "params", {}).items()}
    return str(header).partition(";")[0].strip().lower(), params


def _read_mime(name: str, value: str) -> tuple[str, dict[str, str]] | str:
    try:
        text, params = limits._mime_value(name, value)
    except Exception as exc:
        return type(exc).__name__
    return text.partition(";")[0].strip().lower(), params


def _registry_mailboxes(name: str, value: str) -> list[tuple[str, str]]:
    header = limits._registry(name, value)
    found = []
    for address in getattr(header, "addresses", ()):
        try:
            found.append((" ".join(str(address.display_name).split()), str(address.addr_spec)))
        except Exception:  # noqa: S112 - the registry's own error recovery
            continue
    return found


@pytest.mark.parametrize("seed", range(8))
def test_plain_field_reading_agrees_with_the_header_registry(seed: int) -> None:
    """The direct reading of plain fields gives what ``policy.default`` gives, on random
    values built from the characters that matter to MIME and address syntax."""
    rng = random.Random(seed)
    plain = 0
    for _ in range(400):

        def value(size: int) -> str:
            return "".join(rng.choice(_FIELD_PIECES) for _ in range(rng.randint(0, size)))

        mime = rng.choice(["text/plain; ", "attachment; ", "", "inline;"]) + value(8)
        structured = rng.choice(["text/plain", "attachment", "Multipart/Mixed", " a/b/c", "x"])
        for _ in range(rng.randint(0, 3)):
            token = "".join(rng.choice("aZ9!#$&+-.^_`{|}~'%*/?@ \t=<>,") for _ in range(4))
            quoted = rng.random() < 0.5
            structured += rng.choice([";", "; ", " ;"]) + rng.choice(["name", "NAME", "charset"])
            structured += "=" + (f'"{token}"' if quoted else token) + rng.choice(["", " "])
        for candidate in (mime, structured):
            for name in ("content-type", "content-disposition"):
                assert _read_mime(name, candidate) == _registry_mime(name, candidate), candidate
            plain += bool(limits._is_plain(candidate) and limits._PLAIN_MIME.fullmatch(candidate))
        listed = rng.choice(["", "Dr ", "a@b.org, ", '"x" <y@z.org>, ', "<a@b.c>"]) + value(6)
        for name in ("from", "to"):
            read = [(" ".join(n.split()), a) for n, a in limits._mailboxes(name, listed)]
            assert read == _registry_mailboxes(name, listed), (name, listed)
        text = value(5)
        for name in ("subject", "message-id"):
            header = limits._registry(name, text)
            expected = str(header) if header is not None else ""
            if name == "message-id":
                assert limits._MSG_ID.findall(limits._text(name, text)) == limits._MSG_ID.findall(
                    expected
                ), text
            else:
                assert limits._text(name, text).split() == expected.split(), text
    assert plain > 20  # the direct path was exercised


def test_parse_message_reads_plain_fields_without_the_registry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The common shape of a message builds no header object at all (the cost issue 4
    measured); an encoded word still goes through the registry."""
    calls: list[str] = []

    class Spy(limits._CachedHeaderRegistry):
        def __call__(self, name: str, value: str) -> Any:
            calls.append(name.lower())
            return super().__call__(name, value)

    monkeypatch.setattr(limits, "_POLICY", limits._POLICY.clone(header_factory=Spy()))
    parse_message(crlf(HEAD + "Subject: Bonjour\nMessage-ID: <a.b@c.d>\n\nx\n"))
    parse_message(many_parts(3))
    assert calls == []
    parse_message(crlf(HEAD + "Subject: =?utf-8?q?Bonjour?=\n\nx\n"))
    assert calls == ["subject"]
