"""Shared PKI for the certs tests: generated once per session (RSA key generation is slow)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from certs.ca import CertifiedKey, create_ca
from certs.issue import issue_client_certificate, issue_server_certificate

NOW = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
RPPS = "10003456786"  # valid Luhn key
EMAIL = "claire.martin@relais.localhost"


@dataclass(frozen=True)
class Pki:
    """A local CA, an unrelated CA, and certificates issued at NOW."""

    ca: CertifiedKey
    other_ca: CertifiedKey
    server: CertifiedKey
    client: CertifiedKey
    other_client: CertifiedKey  # issued by other_ca


@dataclass(frozen=True)
class PkiFiles:
    """The Pki written as PEM files, as a deployment would have them."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_client_cert: Path
    other_client_key: Path


@pytest.fixture(scope="session")
def pki() -> Pki:
    ca = create_ca("Relais Santé CA de test", NOW)
    other_ca = create_ca("Autre CA", NOW)
    return Pki(
        ca=ca,
        other_ca=other_ca,
        server=issue_server_certificate(ca, ["relais.localhost"], NOW),
        client=issue_client_certificate(
            ca, email=EMAIL, display_name="Claire Martin", rpps=RPPS, now=NOW, rsa_key_size=2048
        ),
        other_client=issue_client_certificate(
            other_ca,
            email="intrus@example.org",
            display_name="Intrus",
            rpps=None,
            now=NOW,
            rsa_key_size=2048,
        ),
    )


@pytest.fixture(scope="session")
def pki_files(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> PkiFiles:
    directory = tmp_path_factory.mktemp("pki")
    files = PkiFiles(
        ca_cert=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        other_client_cert=directory / "other-client.pem",
        other_client_key=directory / "other-client.key",
    )
    pki.ca.to_pem_files(files.ca_cert, directory / "ca.key")
    pki.server.to_pem_files(files.server_cert, files.server_key)
    pki.client.to_pem_files(files.client_cert, files.client_key)
    pki.other_client.to_pem_files(files.other_client_cert, files.other_client_key)
    return files
