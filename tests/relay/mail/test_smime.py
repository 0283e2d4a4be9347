"""S/MIME envelopes: round trips, OpenSSL interoperability, and every failure named."""

from __future__ import annotations

import base64
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from certs.ca import CertifiedKey, create_ca
from certs.issue import issue_client_certificate, issue_server_certificate
from relay.mail.errors import (
    DecryptionFailed,
    EncryptionFailed,
    ForbiddenAttachment,
    MessageTooLarge,
)
from relay.mail.limits import MailLimits, parse_message
from relay.mail.smime import decrypt_message, encrypt_message, open_enveloped
from tests.conftest import require_component

NOW = datetime(2026, 11, 23, 13, 5, tzinfo=UTC)
OUTER_SUBJECT = "[Relais Santé] Nouveau message sécurisé"


@dataclass(frozen=True)
class Pki:
    relay: CertifiedKey
    specialist: CertifiedKey
    other: CertifiedKey


@pytest.fixture(scope="module")
def pki() -> Pki:
    ca = create_ca("Relais Santé CA de test", NOW)

    def client(email: str, name: str) -> CertifiedKey:
        return issue_client_certificate(
            ca, email=email, display_name=name, rpps=None, now=NOW, rsa_key_size=2048
        )

    return Pki(
        relay=client("postmaster@relais.localhost", "Relais Santé"),
        specialist=client("jean.dubois@chu.example.fr", "Jean Dubois"),
        other=client("autre@example.org", "Autre"),
    )


def clinical_message() -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Claire Martin <claire.martin@relais.localhost>"
    message["To"] = "jean.dubois@chu.example.fr"
    message["Subject"] = "Plaie de Mme Dupont"
    message["Message-ID"] = "<m1@relais.localhost>"
    message["Date"] = "Mon, 23 Nov 2026 14:05:00 +0100"
    message.set_content("Ulcère de jambe, voir photo.\n")
    message.add_attachment(b"\xff\xd8\xffphoto", maintype="image", subtype="jpeg", filename="p.jpg")
    return message


def der_of(envelope: EmailMessage) -> bytes:
    payload = envelope.get_payload()
    assert isinstance(payload, str)
    return base64.b64decode(payload)


def raw(message: EmailMessage) -> bytes:
    return message.as_bytes(policy=policy.SMTP)


def test_round_trip_with_attachment(pki: Pki) -> None:
    envelope = encrypt_message(clinical_message(), [pki.relay.certificate], now=NOW)
    assert envelope.get_content_type() == "application/pkcs7-mime"
    assert envelope.get_param("smime-type") == "enveloped-data"
    assert envelope.get_param("name") == "smime.p7m"
    assert envelope["Content-Transfer-Encoding"] == "base64"
    assert envelope.get_filename() == "smime.p7m"
    data = raw(envelope)
    # Needles long enough that random base64 ciphertext cannot hold them by chance ("Ulc"
    # alone did, about once in 200 runs).
    for needle in (b"voir photo", b"Ulc\xc3\xa8re", b"Ulc=C3=A8re", b"p.jpg"):
        assert needle not in data

    parsed = parse_message(data)
    assert parsed.smime_enveloped and parsed.attachments == ()

    clear = decrypt_message(data, pki.relay.key, pki.relay.certificate)
    opened = parse_message(clear)
    assert not opened.smime_enveloped
    assert opened.text_body == "Ulcère de jambe, voir photo.\n"
    assert opened.from_address == "claire.martin@relais.localhost"
    assert opened.message_id == "<m1@relais.localhost>"
    assert [(a.filename, a.data) for a in opened.attachments] == [("p.jpg", b"\xff\xd8\xffphoto")]


def test_protected_subject(pki: Pki) -> None:
    envelope = encrypt_message(
        clinical_message(), [pki.relay.certificate], now=NOW, outer_subject=OUTER_SUBJECT
    )
    data = raw(envelope)
    assert b"Dupont" not in data
    assert envelope["Subject"] == OUTER_SUBJECT
    opened = open_enveloped(data, pki.relay.key, pki.relay.certificate)
    assert opened.subject == "Plaie de Mme Dupont"
    assert opened.text_body == "Ulcère de jambe, voir photo.\n"


def test_several_recipients_each_decrypt(pki: Pki) -> None:
    envelope = encrypt_message(
        clinical_message(), [pki.relay.certificate, pki.specialist.certificate], now=NOW
    )
    for holder in (pki.relay, pki.specialist):
        opened = open_enveloped(raw(envelope), holder.key, holder.certificate)
        assert opened.attachments[0].filename == "p.jpg"


def test_not_for_the_relay(pki: Pki) -> None:
    envelope = encrypt_message(clinical_message(), [pki.specialist.certificate], now=NOW)
    with pytest.raises(DecryptionFailed) as caught:
        decrypt_message(raw(envelope), pki.relay.key, pki.relay.certificate)
    assert caught.value.smtp_reply == (
        "554 5.7.5 The message is not encrypted for the relay's certificate"
    )


def test_altered_ciphertext_gives_one_generic_answer(pki: Pki) -> None:
    envelope = encrypt_message(clinical_message(), [pki.relay.certificate], now=NOW)
    der = der_of(envelope)
    replies = set()
    for offset in (len(der) - 1, len(der) - 17, len(der) - 40):
        altered = bytearray(der)
        altered[offset] ^= 0x55
        message = EmailMessage()
        message["From"] = "x@example.org"
        message.set_content(
            bytes(altered),
            maintype="application",
            subtype="pkcs7-mime",
            params={"smime-type": "enveloped-data"},
        )
        with pytest.raises(DecryptionFailed) as caught:
            open_enveloped(raw(message), pki.relay.key, pki.relay.certificate)
        replies.add(caught.value.smtp_reply)
    # Padding error or garbage that does not parse: the reply must not tell them apart.
    assert replies == {"554 5.7.5 Cannot decrypt the S/MIME message"}


def test_not_smime(pki: Pki) -> None:
    with pytest.raises(DecryptionFailed, match="Not an S/MIME enveloped-data message"):
        decrypt_message(raw(clinical_message()), pki.relay.key, pki.relay.certificate)
    signed = (
        b"From: a@b.org\r\nContent-Type: application/pkcs7-mime; smime-type=signed-data\r\n\r\nx"
    )
    with pytest.raises(DecryptionFailed, match="Not an S/MIME"):
        decrypt_message(signed, pki.relay.key, pki.relay.certificate)
    gcm = (
        b"From: a@b.org\r\n"
        b"Content-Type: application/pkcs7-mime; smime-type=authEnveloped-data\r\n\r\n"
    )
    with pytest.raises(DecryptionFailed, match="authEnveloped"):
        decrypt_message(gcm, pki.relay.key, pki.relay.certificate)


def test_broken_base64_body(pki: Pki) -> None:
    data = (
        b"From: a@b.org\r\nContent-Type: application/pkcs7-mime; smime-type=enveloped-data\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nMIAG*CSqG\r\n"
    )
    with pytest.raises(DecryptionFailed, match="not valid base64"):
        decrypt_message(data, pki.relay.key, pki.relay.certificate)


def test_garbage_der(pki: Pki) -> None:
    data = (
        b"From: a@b.org\r\nContent-Type: application/pkcs7-mime; smime-type=enveloped-data\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.b64encode(b"\x30\x03abc") + b"\r\n"
    )
    with pytest.raises(DecryptionFailed, match="Cannot decrypt"):
        decrypt_message(data, pki.relay.key, pki.relay.certificate)


def test_relay_key_must_be_rsa(pki: Pki) -> None:
    envelope = encrypt_message(clinical_message(), [pki.relay.certificate], now=NOW)
    server = issue_server_certificate(create_ca("ec", NOW), ["relais.localhost"], NOW)
    with pytest.raises(DecryptionFailed, match="RSA"):
        decrypt_message(raw(envelope), server.key, server.certificate)


def test_outer_limits_apply(pki: Pki) -> None:
    envelope = encrypt_message(clinical_message(), [pki.relay.certificate], now=NOW)
    with pytest.raises(MessageTooLarge):
        decrypt_message(
            raw(envelope),
            pki.relay.key,
            pki.relay.certificate,
            limits=MailLimits(max_message_bytes=100),
        )


def test_forbidden_attachment_inside_is_still_named(pki: Pki) -> None:
    message = clinical_message()
    message.add_attachment(b"PK\x03\x04", maintype="application", subtype="zip", filename="a.zip")
    envelope = encrypt_message(message, [pki.relay.certificate], now=NOW)
    with pytest.raises(ForbiddenAttachment):
        open_enveloped(raw(envelope), pki.relay.key, pki.relay.certificate)


def test_unusable_recipient_certificates(pki: Pki) -> None:
    ca = create_ca("CA", NOW)
    ec_server = issue_server_certificate(ca, ["x.example"], NOW)
    rsa_server = issue_server_certificate(ca, ["x.example"], NOW, key_type="rsa")
    message = clinical_message()
    with pytest.raises(EncryptionFailed, match="only RSA"):
        encrypt_message(message, [ec_server.certificate], now=NOW)
    with pytest.raises(EncryptionFailed, match="e-mail protection"):
        encrypt_message(message, [rsa_server.certificate], now=NOW)
    with pytest.raises(EncryptionFailed, match="not valid at this date"):
        encrypt_message(message, [pki.specialist.certificate], now=NOW + timedelta(days=3650))
    with pytest.raises(EncryptionFailed, match="Recipient certificate 2"):
        encrypt_message(message, [pki.specialist.certificate, ec_server.certificate], now=NOW)
    with pytest.raises(EncryptionFailed):
        encrypt_message(message, [], now=NOW)


def test_aes_256_is_used(pki: Pki) -> None:
    envelope = encrypt_message(clinical_message(), [pki.relay.certificate], now=NOW)
    der = der_of(envelope)
    aes256_cbc_oid = bytes.fromhex("060960864801650304012a")  # 2.16.840.1.101.3.4.1.42
    assert aes256_cbc_oid in der


# --- interoperability with OpenSSL's S/MIME implementation --------------------------------------


def _write_pem(directory: Path, holder: CertifiedKey) -> tuple[Path, Path]:
    cert = directory / "cert.pem"
    key = directory / "key.pem"
    cert.write_bytes(holder.certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        holder.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


def test_openssl_decrypts_what_we_encrypt(pki: Pki, tmp_path: Path) -> None:
    require_component("openssl", "openssl")
    cert, key = _write_pem(tmp_path, pki.specialist)
    envelope = encrypt_message(clinical_message(), [pki.specialist.certificate], now=NOW)
    source = tmp_path / "in.eml"
    source.write_bytes(raw(envelope))
    result = subprocess.run(
        ["openssl", "cms", "-decrypt", "-in", str(source), "-recip", str(cert), "-inkey", str(key)],
        capture_output=True,
        check=True,
        timeout=30,
    )
    inner = BytesParser(policy=policy.default).parsebytes(result.stdout)
    assert inner.get_content_type() == "multipart/mixed"
    body = inner.get_body(("plain",))
    assert body is not None
    assert body.get_content().replace("\r\n", "\n") == "Ulcère de jambe, voir photo.\n"
    attachments = list(inner.iter_attachments())
    assert attachments[0].get_payload(decode=True) == b"\xff\xd8\xffphoto"


def test_we_decrypt_what_openssl_encrypts(pki: Pki, tmp_path: Path) -> None:
    require_component("openssl", "openssl")
    cert, _ = _write_pem(tmp_path, pki.relay)
    inner = tmp_path / "inner.txt"
    inner.write_bytes(
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        + "Réponse : pansement gras.\r\n".encode()
    )
    result = subprocess.run(
        [
            "openssl", "cms", "-encrypt", "-aes256", "-binary", "-in", str(inner),
            "-from", "jean.dubois@chu.example.fr", "-to", "postmaster@relais.localhost",
            "-subject", "Re: demande", str(cert),
        ],
        capture_output=True,
        check=True,
        timeout=30,
    )  # fmt: skip
    opened = open_enveloped(result.stdout, pki.relay.key, pki.relay.certificate)
    assert opened.from_address == "jean.dubois@chu.example.fr"
    assert opened.text_body == "Réponse : pansement gras.\n"


def test_pkcs7_module_is_the_one_documented() -> None:
    # Guard: the envelope builder and the DER decrypt used here exist in this cryptography.
    assert hasattr(pkcs7, "PKCS7EnvelopeBuilder") and hasattr(pkcs7, "pkcs7_decrypt_der")


def test_binary_der_body(pki: Pki) -> None:
    der = der_of(encrypt_message(clinical_message(), [pki.relay.certificate], now=NOW))
    data = (
        b"From: jean.dubois@chu.example.fr\r\n"
        b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data\r\n"
        b"Content-Transfer-Encoding: binary\r\n\r\n" + der
    )
    opened = open_enveloped(data, pki.relay.key, pki.relay.certificate)
    assert opened.attachments[0].data == b"\xff\xd8\xffphoto"


def test_naive_now_refused(pki: Pki) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        encrypt_message(clinical_message(), [pki.relay.certificate], now=datetime(2026, 1, 1))
