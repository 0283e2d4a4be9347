"""Server and client certificates: subject, SAN, EKU, key usage, chaining, refused input."""

from __future__ import annotations

import ipaddress
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from certs.ca import create_ca
from certs.errors import InvalidCertificateRequest
from certs.issue import (
    email_of,
    issue_client_certificate,
    issue_server_certificate,
    rpps_of,
)
from tests.certs.conftest import EMAIL, NOW, RPPS, Pki


def test_server_certificate_san(pki: Pki) -> None:
    san = pki.server.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == ["relais.localhost", "localhost"]
    assert san.value.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert pki.server.common_name == "relais.localhost"


def test_server_certificate_usage_and_chaining(pki: Pki) -> None:
    cert = pki.server.certificate
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    assert not usage.key_encipherment  # ECDSA key: signing only
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = pki.ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert aki.key_identifier == ca_ski.value.digest
    cert.verify_directly_issued_by(pki.ca.certificate)
    assert cert.not_valid_after_utc == NOW + timedelta(days=397)
    assert isinstance(pki.server.key, ec.EllipticCurvePrivateKey)


@pytest.mark.parametrize(
    "subject", [x509.DNSName("relais.localhost"), x509.IPAddress(ipaddress.ip_address("::1"))]
)
def test_server_certificate_passes_a_tls_server_verifier(
    pki: Pki, subject: x509.DNSName | x509.IPAddress
) -> None:
    verifier = (
        PolicyBuilder().store(Store([pki.ca.certificate])).time(NOW).build_server_verifier(subject)
    )
    chain = verifier.verify(pki.server.certificate, [])
    assert chain[-1] == pki.ca.certificate


def test_rsa_server_certificate_for_ecdhe_rsa_peers(pki: Pki) -> None:
    server = issue_server_certificate(
        pki.ca, ["mail.example.org"], NOW, key_type="rsa", include_localhost=False
    )
    assert isinstance(server.key, rsa.RSAPrivateKey)
    usage = server.certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_encipherment
    san = server.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == ["mail.example.org"]


def test_leaf_never_outlives_its_ca() -> None:
    short_ca = create_ca("Short CA", NOW, validity_days=30)
    server = issue_server_certificate(short_ca, ["relais.localhost"], NOW)
    assert server.certificate.not_valid_after_utc == short_ca.certificate.not_valid_after_utc


def test_server_certificate_needs_a_name(pki: Pki) -> None:
    with pytest.raises(InvalidCertificateRequest, match="at least one DNS name"):
        issue_server_certificate(pki.ca, [" "], NOW, include_localhost=False)
    with pytest.raises(InvalidCertificateRequest, match="invalid IP address"):
        issue_server_certificate(pki.ca, ["a.example"], NOW, ip_addresses=["999.1.1.1"])


def test_client_certificate_content(pki: Pki) -> None:
    cert = pki.client.certificate
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Claire Martin"
    assert rpps_of(cert) == RPPS
    assert email_of(cert) == EMAIL
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.EMAIL_PROTECTION}
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert usage.value.key_encipherment
    assert not usage.value.key_cert_sign
    assert isinstance(pki.client.key, rsa.RSAPrivateKey)
    assert cert.not_valid_after_utc == NOW + timedelta(days=730)
    cert.verify_directly_issued_by(pki.ca.certificate)


def test_client_certificate_defaults_to_rsa_3072_without_rpps(pki: Pki) -> None:
    client = issue_client_certificate(
        pki.ca, email="accueil@msp.example", display_name="Accueil MSP", rpps=None, now=NOW
    )
    assert isinstance(client.key, rsa.RSAPrivateKey)
    assert client.key.key_size == 3072
    assert rpps_of(client.certificate) is None


@pytest.mark.parametrize(
    ("email", "display_name", "rpps", "message"),
    [
        ("not-an-address", "Claire", None, "not a usable e-mail address"),
        ("a@b@c.fr", "Claire", None, "not a usable e-mail address"),
        ("élodie@msp.fr", "Élodie", None, "not a usable e-mail address"),
        ("a@b.fr", "", None, "display name must be 1 to 64"),
        ("a@b.fr", "x" * 65, None, "display name must be 1 to 64"),
        ("a@b.fr", "Claire", "1234", "must be exactly 11 digits"),
        ("a@b.fr", "Claire", "1000345678A", "must be exactly 11 digits"),
    ],
)
def test_client_certificate_refuses_bad_input(
    pki: Pki, email: str, display_name: str, rpps: str | None, message: str
) -> None:
    with pytest.raises(InvalidCertificateRequest, match=message) as caught:
        issue_client_certificate(pki.ca, email=email, display_name=display_name, rpps=rpps, now=NOW)
    assert caught.value.http_status == 400


def test_client_certificate_serves_for_s_mime(pki: Pki) -> None:
    """The RSA key lets cryptography's PKCS#7 code envelope to and sign with the certificate."""
    assert isinstance(pki.client.key, rsa.RSAPrivateKey)
    envelope = (
        pkcs7.PKCS7EnvelopeBuilder()
        .set_data(b"Compte rendu de tele-expertise")
        .add_recipient(pki.client.certificate)
        .encrypt(Encoding.DER, [])
    )
    assert (
        pkcs7.pkcs7_decrypt_der(envelope, pki.client.certificate, pki.client.key, [])
        == b"Compte rendu de tele-expertise"
    )
    signed = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(b"Avis")
        .add_signer(pki.client.certificate, pki.client.key, hashes.SHA256())
        .sign(Encoding.SMIME, [pkcs7.PKCS7Options.DetachedSignature])
    )
    assert b"Content-Type: multipart/signed" in signed
    assert b"pkcs7-signature" in signed
