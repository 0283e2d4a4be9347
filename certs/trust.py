"""Trust anchors and client-certificate verification.

`load_trust_anchors` reads the CA certificates a deployment trusts (our local CA, IGC-Santé
roots for MSSanté peers) from a directory. `verify_client_certificate` validates a client
certificate presented for mutual TLS login or found on an S/MIME message and returns who it
identifies. Verification is pure: the caller passes `now`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from certs.ca import common_name_of, require_aware
from certs.errors import CertificateFileError, CertificateNotTrusted
from certs.issue import email_of, rpps_of

TRUST_ANCHOR_SUFFIXES = (".pem", ".crt", ".cer")


@dataclass(frozen=True)
class ClientIdentity:
    """Who a verified client certificate identifies.

    `serial_number` is the certificate serial as lowercase hex (how OpenSSL and audit tools
    print it); `fingerprint_sha256` is the lowercase hex SHA-256 of the DER certificate, the
    value to pin or log to identify one certificate among several of the same person.
    """

    email: str
    display_name: str
    rpps: str | None
    serial_number: str
    fingerprint_sha256: str


def load_trust_anchors(directory: Path) -> list[x509.Certificate]:
    """Load every certificate from the *.pem, *.crt and *.cer files of `directory`.

    Each file may be a PEM bundle (one or more certificates) or a single DER certificate.
    Files are read in name order; other files are ignored. Raises CertificateFileError naming
    the file when one is unreadable or holds no certificate, since silently skipping it would
    make a trusted CA disappear without anyone noticing.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CertificateFileError(f"trust anchor directory {directory} does not exist")
    anchors: list[x509.Certificate] = []
    for path in sorted(directory.iterdir()):
        if path.suffix.lower() in TRUST_ANCHOR_SUFFIXES and path.is_file():
            anchors.extend(load_certificates_file(path))
    return anchors


def load_certificates_file(path: Path) -> list[x509.Certificate]:
    """Read the certificates of one PEM (bundle) or DER file; CertificateFileError names it."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CertificateFileError(
            f"cannot read certificate file {path}: {exc.strerror or exc}"
        ) from exc
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError as exc:
        raise CertificateFileError(
            f"certificate file {path} holds no valid PEM or DER certificate: {exc}"
        ) from exc


def verify_client_certificate(
    certificate: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    now: datetime,
) -> ClientIdentity:
    """Validate `certificate` as a TLS client / S/MIME certificate and return its identity.

    Path validation (RFC 5280 §6) uses cryptography's verifier with the CA/B Forum-style
    defaults: the chain must end at one of `anchors`, every certificate must be valid at
    `now`, and the leaf must carry the clientAuth EKU (so a server certificate cannot log in).
    Raises CertificateNotTrusted with the verifier's reason, or when the certificate names no
    e-mail address (we have nobody to log in).
    """
    require_aware(now)
    if not anchors:
        raise CertificateNotTrusted("no trust anchors are configured for client certificates")
    subject = f"{common_name_of(certificate)!r} (serial {certificate.serial_number:x})"
    # The verifier's own message says *what* failed but not *when*; validity is checked here
    # first to give the dates, which is what an administrator needs.
    if now < certificate.not_valid_before_utc:
        raise CertificateNotTrusted(
            f"client certificate {subject} is not valid before "
            f"{certificate.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        )
    if now > certificate.not_valid_after_utc:
        raise CertificateNotTrusted(
            f"client certificate {subject} expired on "
            f"{certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
        )
    verifier = PolicyBuilder().store(Store(list(anchors))).time(now).build_client_verifier()
    try:
        verifier.verify(certificate, list(intermediates))
    except VerificationError as exc:
        raise CertificateNotTrusted(
            f"client certificate {subject} is not trusted: {_explain(certificate, exc)}"
        ) from exc
    email = email_of(certificate)
    if email is None:
        raise CertificateNotTrusted(
            f"client certificate {subject} has no e-mail address (rfc822Name) to log in with"
        )
    return identity_of(certificate, email=email)


def identity_of(certificate: x509.Certificate, *, email: str | None = None) -> ClientIdentity:
    """Read the identity fields of a certificate WITHOUT verifying it (for display only)."""
    return ClientIdentity(
        email=email if email is not None else (email_of(certificate) or ""),
        display_name=common_name_of(certificate),
        rpps=rpps_of(certificate),
        serial_number=format(certificate.serial_number, "x"),
        fingerprint_sha256=certificate.fingerprint(hashes.SHA256()).hex(),
    )


def _explain(certificate: x509.Certificate, error: VerificationError) -> str:
    """Turn the verifier's terse reasons into what an administrator can act on."""
    reason = str(error)
    if "EKU" in reason:
        return "it is not a client certificate (no clientAuth extended key usage)"
    if "candidates exhausted" in reason:
        issuer = certificate.issuer.rfc4514_string()
        return f"it does not chain to a trusted CA (issuer {issuer!r})"
    if "not valid at validation time" in reason:
        return "a certificate of its chain is expired or not yet valid"
    return reason
