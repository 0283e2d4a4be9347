"""End-entity certificates signed by the local CA: the relay's server certificate and the
professionals' client certificates (mutual TLS login and S/MIME).

Pure functions: they generate a key, build and sign a certificate, and return a CertifiedKey.
`now` is passed in; nothing reads the clock.

Where the RPPS number goes
--------------------------
A professional's RPPS number is carried in the subject `serialNumber` attribute (OID 2.5.4.5,
which identifies the subject, the person, unlike the certificate's own serial number), as the
bare 11 digits. It is read back by `rpps_of`. The subject of a client certificate is therefore
`CN=<display name>, serialNumber=<RPPS>`, and the e-mail address is in the SubjectAltName as an
rfc822Name (RFC 5280 §4.2.1.6 asks for addresses there rather than in emailAddress in the DN).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs.ca import (
    CLOCK_SKEW,
    DEFAULT_RSA_KEY_SIZE,
    CertifiedKey,
    KeyType,
    PrivateKey,
    generate_private_key,
    require_aware,
)
from certs.errors import InvalidCertificateRequest

LOOPBACK_ADDRESSES = ("127.0.0.1", "::1")

_RPPS = re.compile(r"[0-9]{11}")
# Enough to catch mistakes (no address, spaces, several @); RFC 5321 is for the mail layer.
_EMAIL = re.compile(r"[^@\s]+@[^@\s.][^@\s]*")
_MAX_COMMON_NAME = 64  # ub-common-name, RFC 5280 appendix A.1


def issue_server_certificate(
    ca: CertifiedKey,
    dns_names: Sequence[str],
    now: datetime,
    *,
    ip_addresses: Sequence[str] = LOOPBACK_ADDRESSES,
    validity_days: int = 397,
    key_type: KeyType = "ec",
    include_localhost: bool = True,
) -> CertifiedKey:
    """Issue the HTTPS/SMTP server certificate.

    `dns_names[0]` (the mail domain, e.g. "relais.localhost") becomes the subject CN; the
    SubjectAltName lists every DNS name, "localhost" (unless `include_localhost` is false) and
    `ip_addresses` (loopback by default), since clients match host names against the SAN only
    (RFC 6125 §6.4.4). EKU is serverAuth. The default 397 days is the longest validity browsers
    accept for a server certificate. `key_type="rsa"` gives an RSA key for peers limited to the
    TLS 1.2 ECDHE-RSA suites named by MSSanté's rules.
    """
    require_aware(now)
    names = list(dict.fromkeys(name.strip().lower() for name in dns_names if name.strip()))
    if include_localhost and "localhost" not in names:
        names.append("localhost")
    if not names:
        raise InvalidCertificateRequest("a server certificate needs at least one DNS name")
    try:
        addresses = [ipaddress.ip_address(address) for address in ip_addresses]
    except ValueError as exc:
        raise InvalidCertificateRequest(
            f"invalid IP address for the server certificate: {exc}"
        ) from exc
    general_names: list[x509.GeneralName] = [x509.DNSName(name) for name in names]
    general_names += [x509.IPAddress(address) for address in addresses]

    key = generate_private_key(key_type)
    builder = (
        _leaf_builder(ca, key, now, validity_days)
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .add_extension(x509.SubjectAlternativeName(general_names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        # RSA keeps keyEncipherment for TLS 1.2 peers that still check it; ECDSA only signs.
        .add_extension(
            _key_usage(key_encipherment=isinstance(key, rsa.RSAPrivateKey)), critical=True
        )
    )
    return CertifiedKey(key=key, certificate=builder.sign(ca.key, hashes.SHA256()))


def issue_client_certificate(
    ca: CertifiedKey,
    *,
    email: str,
    display_name: str,
    rpps: str | None,
    now: datetime,
    validity_days: int = 730,
    rsa_key_size: int = DEFAULT_RSA_KEY_SIZE,
) -> CertifiedKey:
    """Issue a professional's certificate for mutual TLS login and S/MIME.

    Subject `CN=display_name` (+ `serialNumber=rpps` when given, see the module docstring),
    SAN rfc822Name=email, EKU clientAuth + emailProtection (RFC 8550 §4.4.4 for S/MIME), and
    KeyUsage digitalSignature + keyEncipherment: signing (TLS client auth, S/MIME signatures)
    and RSA key transport for S/MIME envelopes (RFC 8551), which is why the key is RSA.
    """
    require_aware(now)
    email = email.strip()
    display_name = display_name.strip()
    if not _EMAIL.fullmatch(email) or not email.isascii():
        raise InvalidCertificateRequest(
            f"{email!r} is not a usable e-mail address for a certificate "
            "(ASCII address with a single @ expected)"
        )
    if not display_name or len(display_name) > _MAX_COMMON_NAME:
        raise InvalidCertificateRequest(
            f"display name must be 1 to {_MAX_COMMON_NAME} characters long"
        )
    # Format only: the Luhn key is checked where users are created (relay), not duplicated here.
    if rpps is not None and not _RPPS.fullmatch(rpps):
        raise InvalidCertificateRequest(f"RPPS number {rpps!r} must be exactly 11 digits")

    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, display_name)]
    if rpps is not None:
        attributes.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, rpps))
    key = generate_private_key("rsa", rsa_key_size=rsa_key_size)
    builder = (
        _leaf_builder(ca, key, now, validity_days)
        .subject_name(x509.Name(attributes))
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.EMAIL_PROTECTION]
            ),
            critical=False,
        )
        .add_extension(_key_usage(key_encipherment=True), critical=True)
    )
    return CertifiedKey(key=key, certificate=builder.sign(ca.key, hashes.SHA256()))


def rpps_of(certificate: x509.Certificate) -> str | None:
    """The RPPS number stored in the subject serialNumber attribute, or None."""
    attributes = certificate.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
    if not attributes:
        return None
    value = attributes[0].value
    return value if isinstance(value, str) else value.decode("ascii", "replace")


def email_of(certificate: x509.Certificate) -> str | None:
    """The first rfc822Name of the SubjectAltName, or None."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    emails = san.value.get_values_for_type(x509.RFC822Name)
    return emails[0] if emails else None


def _leaf_builder(
    ca: CertifiedKey, key: PrivateKey, now: datetime, validity_days: int
) -> x509.CertificateBuilder:
    """Common part of every end-entity certificate signed by `ca`."""
    if validity_days < 1:
        raise InvalidCertificateRequest("validity must be at least one day")
    not_after = now + timedelta(days=validity_days)
    # A leaf outliving its CA would be rejected by every verifier (RFC 5280 §6.1.3 (a)(2)).
    not_after = min(not_after, ca.certificate.not_valid_after_utc)
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    return (
        x509.CertificateBuilder()
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski.value),
            critical=False,
        )
    )


def _key_usage(*, key_encipherment: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
