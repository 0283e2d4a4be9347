"""Trust-anchor loading and client-certificate verification."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs.errors import CertificateFileError, CertificateNotTrusted
from certs.issue import issue_client_certificate
from certs.trust import ClientIdentity, identity_of, load_trust_anchors, verify_client_certificate
from tests.certs.conftest import EMAIL, NOW, RPPS, Pki


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.PEM)


def test_load_pem_bundle_der_and_crt(pki: Pki, tmp_path: Path) -> None:
    (tmp_path / "bundle.pem").write_bytes(_pem(pki.ca.certificate) + _pem(pki.other_ca.certificate))
    (tmp_path / "igc-sante.cer").write_bytes(pki.other_ca.certificate.public_bytes(Encoding.DER))
    (tmp_path / "local.CRT").write_bytes(_pem(pki.ca.certificate))
    (tmp_path / "README.txt").write_text("not a certificate, not loaded")
    (tmp_path / "sub.pem").mkdir()  # a directory with a matching name is skipped
    anchors = load_trust_anchors(tmp_path)
    assert anchors == [
        pki.ca.certificate,
        pki.other_ca.certificate,
        pki.other_ca.certificate,
        pki.ca.certificate,
    ]


@pytest.mark.parametrize("content", [b"garbage", b"", b"-----BEGIN CERTIFICATE-----\nxx\n"])
def test_bad_anchor_file_is_named(pki: Pki, tmp_path: Path, content: bytes) -> None:
    (tmp_path / "good.pem").write_bytes(_pem(pki.ca.certificate))
    (tmp_path / "broken.crt").write_bytes(content)
    with pytest.raises(CertificateFileError, match=r"broken\.crt holds no valid PEM or DER"):
        load_trust_anchors(tmp_path)


def test_missing_anchor_directory(tmp_path: Path) -> None:
    with pytest.raises(CertificateFileError, match=r"nowhere does not exist"):
        load_trust_anchors(tmp_path / "nowhere")


def test_valid_client_certificate_gives_identity(pki: Pki) -> None:
    identity = verify_client_certificate(
        pki.client.certificate, [], [pki.other_ca.certificate, pki.ca.certificate], NOW
    )
    assert identity == ClientIdentity(
        email=EMAIL,
        display_name="Claire Martin",
        rpps=RPPS,
        serial_number=format(pki.client.certificate.serial_number, "x"),
        fingerprint_sha256=pki.client.certificate.fingerprint(hashes.SHA256()).hex(),
    )
    assert len(identity.fingerprint_sha256) == 64
    assert identity_of(pki.client.certificate) == identity


def test_expired_client_certificate_is_refused(pki: Pki) -> None:
    later = NOW + timedelta(days=731)
    with pytest.raises(CertificateNotTrusted, match=r"'Claire Martin' .* expired on 2028-03-01"):
        verify_client_certificate(pki.client.certificate, [], [pki.ca.certificate], later)


def test_not_yet_valid_client_certificate_is_refused(pki: Pki) -> None:
    earlier = NOW - timedelta(days=1)
    with pytest.raises(CertificateNotTrusted, match="is not valid before 2026-03-02 09:25 UTC"):
        verify_client_certificate(pki.client.certificate, [], [pki.ca.certificate], earlier)


def test_certificate_of_another_ca_is_refused(pki: Pki) -> None:
    with pytest.raises(CertificateNotTrusted, match=r"does not chain to a trusted CA.*Autre CA"):
        verify_client_certificate(pki.other_client.certificate, [], [pki.ca.certificate], NOW)


def test_server_certificate_cannot_log_in(pki: Pki) -> None:
    with pytest.raises(CertificateNotTrusted, match="not a client certificate"):
        verify_client_certificate(pki.server.certificate, [], [pki.ca.certificate], NOW)


def test_no_anchors_means_nothing_is_trusted(pki: Pki) -> None:
    with pytest.raises(CertificateNotTrusted, match="no trust anchors"):
        verify_client_certificate(pki.client.certificate, [], [], NOW)


def test_certificate_from_an_expired_ca_is_refused(pki: Pki) -> None:
    from certs.ca import create_ca

    short_ca = create_ca("CA courte", NOW, validity_days=3)
    client = issue_client_certificate(
        short_ca, email=EMAIL, display_name="Claire", rpps=None, now=NOW, rsa_key_size=2048
    )
    # The leaf is capped at the CA's end, so both are expired a week later.
    with pytest.raises(CertificateNotTrusted, match="expired"):
        verify_client_certificate(
            client.certificate, [], [short_ca.certificate], NOW + timedelta(days=7)
        )


def test_client_certificate_without_email_is_refused(pki: Pki) -> None:
    key = pki.client.key
    ca_ski = pki.ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Sans courriel")]))
        .issuer_name(pki.ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(minutes=1))
        .not_valid_after(NOW + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("poste.example")]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski.value),
            critical=False,
        )
        .sign(pki.ca.key, hashes.SHA256())
    )
    with pytest.raises(CertificateNotTrusted, match=r"no e-mail address \(rfc822Name\)"):
        verify_client_certificate(cert, [], [pki.ca.certificate], NOW)
