"""PKCS#12 export and import."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from certs.errors import CertificateFileError
from certs.pkcs12 import load_pkcs12, to_pkcs12
from tests.certs.conftest import Pki

FAST = 1000  # KDF rounds for tests that are not about the KDF


def test_round_trip_with_default_kdf(pki: Pki) -> None:
    data = to_pkcs12(pki.client, pki.ca.certificate, b"s3cret", "Claire Martin (Relais Santé)")
    contents = load_pkcs12(data, b"s3cret")
    assert contents.certified.certificate == pki.client.certificate
    assert contents.certified.key.public_key() == pki.client.key.public_key()
    assert contents.ca_certificates == (pki.ca.certificate,)
    assert contents.friendly_name == "Claire Martin (Relais Santé)"


def test_round_trip_without_ca(pki: Pki) -> None:
    data = to_pkcs12(pki.client, None, b"pw", "Claire", kdf_rounds=FAST)
    assert load_pkcs12(data, b"pw").ca_certificates == ()


def test_wrong_password_is_a_clear_error(pki: Pki) -> None:
    data = to_pkcs12(pki.client, pki.ca.certificate, b"right", "Claire", kdf_rounds=FAST)
    with pytest.raises(CertificateFileError, match="wrong password"):
        load_pkcs12(data, b"wrong")


def test_not_pkcs12_is_a_clear_error() -> None:
    with pytest.raises(CertificateFileError, match=r"not a PKCS#12 \(\.p12\) file"):
        load_pkcs12(b"-----BEGIN CERTIFICATE-----", b"pw")


def test_empty_password_is_refused(pki: Pki) -> None:
    with pytest.raises(ValueError, match="non-empty password"):
        to_pkcs12(pki.client, pki.ca.certificate, b"", "Claire")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl command not installed")
def test_openssl_reads_it_as_pbes2_aes256(pki: Pki, tmp_path: Path) -> None:
    path = tmp_path / "claire.p12"
    path.write_bytes(to_pkcs12(pki.client, pki.ca.certificate, b"pw", "Claire", kdf_rounds=FAST))
    result = subprocess.run(
        ["openssl", "pkcs12", "-in", str(path), "-info", "-noout", "-passin", "pass:pw"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "MAC: sha256" in result.stderr
    assert "Shrouded Keybag: PBES2, PBKDF2, AES-256-CBC" in result.stderr
    assert "RC2" not in result.stderr
    assert "3DES" not in result.stderr
