"""Local certificate authority and the key + certificate pair used everywhere in `certs`.

A fresh relay has no certificate from a public CA: `relais init` creates a small local CA that
signs the HTTPS/SMTP server certificate and the professionals' client certificates (mutual TLS
login, S/MIME). Everything here is pure except `CertifiedKey.to_pem_files` / `CertifiedKey.load`,
and nothing reads the clock: callers pass `now`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from certs.errors import CertificateFileError

KeyType = Literal["ec", "rsa"]
"""`ec` = ECDSA P-256 (fast, TLS 1.3 and TLS 1.2 ECDHE-ECDSA); `rsa` = RSA (TLS 1.2 ECDHE-RSA
suites named by MSSanté's client rules, and S/MIME key transport)."""

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

DEFAULT_RSA_KEY_SIZE = 3072
"""ANSSI's RGS (annex B1) accepts 2048-bit RSA until 2030 and asks for 3072 beyond."""

CLOCK_SKEW = timedelta(minutes=5)
"""notBefore is backdated by this much so a peer whose clock is a little behind ours still
accepts a certificate issued a moment ago."""


def require_aware(now: datetime) -> datetime:
    """Return `now` unchanged; refuse naive datetimes, which X.509 would silently read as UTC."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("`now` must be a timezone-aware datetime (e.g. datetime.now(UTC))")
    return now


def generate_private_key(
    key_type: KeyType, *, rsa_key_size: int = DEFAULT_RSA_KEY_SIZE
) -> PrivateKey:
    """Generate a private key of the requested type (P-256 for `ec`)."""
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        if rsa_key_size < 2048:
            raise ValueError("RSA keys shorter than 2048 bits are refused (ANSSI RGS B1)")
        # 65537 = 2^16 + 1: the smallest exponent RGS B1 allows; every verifier supports it.
        return rsa.generate_private_key(public_exponent=65537, key_size=rsa_key_size)
    raise ValueError(f"unknown key type {key_type!r}; expected 'ec' or 'rsa'")


@dataclass(frozen=True)
class CertifiedKey:
    """A private key and the certificate that certifies its public key."""

    key: PrivateKey
    certificate: x509.Certificate

    @property
    def common_name(self) -> str:
        """The subject CN (the CA name, server host name or professional's display name)."""
        return common_name_of(self.certificate)

    def to_pem_files(self, cert_path: Path, key_path: Path) -> None:
        """Write the certificate (mode 0644) and the unencrypted PKCS#8 key (mode 0600).

        Each file is written to a temporary file in the same directory, fsynced and renamed,
        so a crash never leaves a half-written key that `load` would choke on at next start.
        """
        cert_pem = self.certificate.public_bytes(serialization.Encoding.PEM)
        key_pem = self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # Key first: a certificate on disk without its key would be useless anyway.
        write_file_atomically(key_path, key_pem, mode=0o600)
        write_file_atomically(cert_path, cert_pem, mode=0o644)

    @classmethod
    def load(cls, cert_path: Path, key_path: Path) -> CertifiedKey:
        """Read a PEM certificate and its PEM private key written by `to_pem_files` (or OpenSSL).

        Raises CertificateFileError naming the offending file when a file is missing, is not
        PEM, holds an unsupported key type, or when the key does not match the certificate.
        """
        cert_data = _read(cert_path, "certificate")
        key_data = _read(key_path, "private key")
        try:
            certificate = x509.load_pem_x509_certificate(cert_data)
        except ValueError as exc:
            raise CertificateFileError(
                f"certificate file {cert_path} is not a valid PEM certificate: {exc}"
            ) from exc
        try:
            key = serialization.load_pem_private_key(key_data, password=None)
        except (ValueError, TypeError) as exc:
            # TypeError: the key is encrypted; we only write unencrypted keys (mode 0600).
            raise CertificateFileError(
                f"private key file {key_path} is not an unencrypted PEM private key: {exc}"
            ) from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise CertificateFileError(
                f"private key file {key_path} holds a {type(key).__name__}; "
                "only RSA and ECDSA keys are supported"
            )
        if key.public_key() != certificate.public_key():
            raise CertificateFileError(
                f"private key file {key_path} does not match certificate file {cert_path}"
            )
        return cls(key=key, certificate=certificate)


def create_ca(
    common_name: str,
    now: datetime,
    *,
    validity_days: int = 3650,
    key_type: KeyType = "ec",
) -> CertifiedKey:
    """Create a self-signed root CA that may sign end-entity certificates only.

    BasicConstraints(ca=True, path_length=0) is critical (RFC 5280 §4.2.1.9): the local CA signs
    leaves directly, never a sub-CA. KeyUsage keyCertSign + cRLSign is critical (§4.2.1.3) so the
    CA key is never accepted as a TLS or S/MIME key. SubjectKeyIdentifier (§4.2.1.2) lets
    verifiers match the leaves' AuthorityKeyIdentifier to this CA.
    """
    require_aware(now)
    key = generate_private_key(key_type)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    public_key = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + timedelta(days=validity_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertifiedKey(key=key, certificate=certificate)


def common_name_of(certificate: x509.Certificate) -> str:
    """The first subject CN as text, or "" when the subject has none."""
    attributes = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attributes:
        return ""
    value = attributes[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def write_file_atomically(path: Path, data: bytes, *, mode: int) -> None:
    """Write `data` to `path` via temp file + fsync + rename, the file created with `mode`.

    The temporary file is created with the final mode from the start (O_CREAT with `mode`),
    so a private key is never readable by others, not even for an instant.
    """
    path = Path(path)
    # A random suffix: a temp file left by a crash never blocks the next write.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except OSError as exc:
        raise CertificateFileError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        # The umask may have removed bits from `mode` (e.g. 0644 -> 0600): set it exactly.
        tmp.chmod(mode)
        tmp.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise CertificateFileError(f"cannot write {path}: {exc.strerror or exc}") from exc
    # fsync the directory so the rename itself survives a power loss.
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CertificateFileError(
            f"cannot read {what} file {path}: {exc.strerror or exc}"
        ) from exc
