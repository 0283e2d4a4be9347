"""Local CA creation and the PEM save/load round trip of CertifiedKey."""

from __future__ import annotations

import stat
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from certs.ca import CertifiedKey, create_ca, generate_private_key
from certs.errors import CertificateFileError
from tests.certs.conftest import NOW, Pki


def test_ca_has_ca_extensions(pki: Pki) -> None:
    cert = pki.ca.certificate
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    assert constraints.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    assert not usage.value.digital_signature
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert ski.value == x509.SubjectKeyIdentifier.from_public_key(pki.ca.key.public_key())


def test_ca_is_self_signed_p256_by_default(pki: Pki) -> None:
    cert = pki.ca.certificate
    assert cert.subject == cert.issuer
    assert pki.ca.common_name == "Relais Santé CA de test"
    cert.verify_directly_issued_by(cert)
    assert isinstance(pki.ca.key, ec.EllipticCurvePrivateKey)
    assert pki.ca.key.curve.name == "secp256r1"


def test_ca_validity_follows_now() -> None:
    ca = create_ca("CA", NOW, validity_days=10)
    assert ca.certificate.not_valid_after_utc == NOW + timedelta(days=10)
    # Backdated a little for peers whose clock is behind.
    assert NOW - timedelta(hours=1) < ca.certificate.not_valid_before_utc < NOW


def test_rsa_ca() -> None:
    ca = create_ca("CA RSA", NOW, key_type="rsa")
    assert isinstance(ca.key, rsa.RSAPrivateKey)
    assert ca.key.key_size == 3072


def test_naive_now_is_refused() -> None:
    naive_now = datetime(2026, 1, 1)  # naive on purpose
    with pytest.raises(ValueError, match="timezone-aware"):
        create_ca("CA", naive_now)


def test_short_rsa_key_is_refused() -> None:
    with pytest.raises(ValueError, match="2048"):
        generate_private_key("rsa", rsa_key_size=1024)


def test_pem_round_trip_and_modes(pki: Pki, tmp_path: Path) -> None:
    cert_path, key_path = tmp_path / "server.pem", tmp_path / "server.key"
    pki.server.to_pem_files(cert_path, key_path)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert_path.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["server.key", "server.pem"]

    loaded = CertifiedKey.load(cert_path, key_path)
    assert loaded.certificate == pki.server.certificate
    assert loaded.key.public_key() == pki.server.key.public_key()


def test_pem_files_are_replaced_and_keep_private_mode(pki: Pki, tmp_path: Path) -> None:
    cert_path, key_path = tmp_path / "c.pem", tmp_path / "c.key"
    key_path.write_text("old")
    key_path.chmod(0o644)
    pki.client.to_pem_files(cert_path, key_path)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert CertifiedKey.load(cert_path, key_path).certificate == pki.client.certificate


def test_load_names_the_missing_file(pki: Pki, tmp_path: Path) -> None:
    pki.ca.to_pem_files(tmp_path / "ca.pem", tmp_path / "ca.key")
    with pytest.raises(CertificateFileError, match=r"cannot read certificate file .*nope\.pem"):
        CertifiedKey.load(tmp_path / "nope.pem", tmp_path / "ca.key")
    with pytest.raises(CertificateFileError, match=r"cannot read private key file .*nope\.key"):
        CertifiedKey.load(tmp_path / "ca.pem", tmp_path / "nope.key")


def test_load_names_the_garbage_file(pki: Pki, tmp_path: Path) -> None:
    pki.ca.to_pem_files(tmp_path / "ca.pem", tmp_path / "ca.key")
    (tmp_path / "garbage").write_bytes(b"not a PEM file")
    with pytest.raises(CertificateFileError, match=r"certificate file .*garbage is not a valid"):
        CertifiedKey.load(tmp_path / "garbage", tmp_path / "ca.key")
    with pytest.raises(CertificateFileError, match=r"private key file .*garbage is not an"):
        CertifiedKey.load(tmp_path / "ca.pem", tmp_path / "garbage")


def test_load_refuses_a_key_of_another_certificate(pki: Pki, tmp_path: Path) -> None:
    pki.ca.to_pem_files(tmp_path / "ca.pem", tmp_path / "ca.key")
    pki.server.to_pem_files(tmp_path / "server.pem", tmp_path / "server.key")
    with pytest.raises(CertificateFileError, match=r"server\.key does not match .*ca\.pem"):
        CertifiedKey.load(tmp_path / "ca.pem", tmp_path / "server.key")
