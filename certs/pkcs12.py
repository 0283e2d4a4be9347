"""PKCS#12 (.p12) export of a professional's key + certificate, for browsers and mail clients.

`relais cert issue --out FILE.p12` hands this file to a professional, who imports it into the
browser (mutual TLS login) and the mail client (S/MIME). Pure: bytes in, bytes out.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import PrivateFormat, pkcs12

from certs.ca import CertifiedKey
from certs.errors import CertificateFileError

KDF_ROUNDS = 600_000
"""PBKDF2-HMAC-SHA256 iterations; OWASP's 2023 figure for that KDF. Takes ~0.2 s per export
or import, once, which is nothing next to the cost of a stolen .p12 being brute-forced."""


@dataclass(frozen=True)
class Pkcs12Contents:
    """What a .p12 file holds: the professional's key + certificate and the CA chain."""

    certified: CertifiedKey
    ca_certificates: tuple[x509.Certificate, ...]
    friendly_name: str | None


def to_pkcs12(
    certified: CertifiedKey,
    ca_cert: x509.Certificate | None,
    password: bytes,
    friendly_name: str,
    *,
    kdf_rounds: int = KDF_ROUNDS,
) -> bytes:
    """Serialise key, certificate and CA certificate into a password-protected PKCS#12.

    Uses PBES2 with AES-256-CBC and PBKDF2-HMAC-SHA256 for the key and certificate bags and an
    HMAC-SHA256 MAC (RFC 8018, RFC 7292), instead of the legacy RC2/3DES + SHA-1 defaults.
    Current Windows, Firefox, Chrome, Thunderbird and OpenSSL 3 import it; very old macOS
    Keychain versions do not.
    """
    if not password:
        # An unprotected .p12 would hand the private key to anyone who finds the file.
        raise ValueError("a PKCS#12 export needs a non-empty password")
    encryption = (
        PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(kdf_rounds)
        .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
        .hmac_hash(hashes.SHA256())
        .build(password)
    )
    return pkcs12.serialize_key_and_certificates(
        name=friendly_name.encode("utf-8"),
        key=certified.key,
        cert=certified.certificate,
        cas=[ca_cert] if ca_cert is not None else None,
        encryption_algorithm=encryption,
    )


def load_pkcs12(data: bytes, password: bytes) -> Pkcs12Contents:
    """Open a .p12 produced by `to_pkcs12` (or any PKCS#12 holding an RSA/EC key + certificate).

    Raises CertificateFileError saying whether the password is wrong (or the file damaged) or
    the data is not PKCS#12 at all.
    """
    try:
        contents = pkcs12.load_pkcs12(data, password)
    except ValueError as exc:
        # cryptography cannot tell a wrong password from a corrupted MAC: both fail the MAC.
        if "password" in str(exc).lower():
            raise CertificateFileError(
                "cannot open the PKCS#12 file: wrong password (or damaged file)"
            ) from exc
        raise CertificateFileError("the data is not a PKCS#12 (.p12) file") from exc
    key, cert = contents.key, contents.cert
    if cert is None or not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CertificateFileError("the PKCS#12 file holds no RSA/ECDSA key with its certificate")
    if key.public_key() != cert.certificate.public_key():
        raise CertificateFileError("the PKCS#12 file's key does not match its certificate")
    name = cert.friendly_name.decode("utf-8", "replace") if cert.friendly_name else None
    return Pkcs12Contents(
        certified=CertifiedKey(key=key, certificate=cert.certificate),
        ca_certificates=tuple(extra.certificate for extra in contents.additional_certs),
        friendly_name=name,
    )
