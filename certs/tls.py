"""`ssl.SSLContext` factories for the HTTPS and SMTP listeners and for outbound TLS.

Policy, following MSSanté's client rules and ANSSI's TLS recommendations: TLS 1.2 and 1.3
only; for TLS 1.2 only ECDHE key exchange (forward secrecy) with AEAD ciphers (AES-GCM,
ChaCha20-Poly1305); TLS 1.3 keeps OpenSSL's suites, which are all AEAD. No compression (CRIME),
no renegotiation, server cipher order.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from certs.errors import CertificateFileError
from certs.trust import load_certificates_file, load_trust_anchors

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"
"""OpenSSL cipher string for TLS 1.2: ECDHE-ECDSA and ECDHE-RSA with AES-GCM or ChaCha20.
It covers ECDHE-RSA-AES256-GCM-SHA384 / ECDHE-RSA-AES128-GCM-SHA256 named by MSSanté."""


def server_ssl_context(
    cert_path: Path,
    key_path: Path,
    *,
    client_ca_paths: Sequence[Path] = (),
    require_client_cert: bool = False,
) -> ssl.SSLContext:
    """TLS server context with our certificate, optionally asking for client certificates.

    With `client_ca_paths` (PEM/DER files or trust-anchor directories) the server asks for a
    client certificate: CERT_OPTIONAL, because mutual-TLS login is optional and a password
    login must still work; CERT_REQUIRED when `require_client_cert` (e.g. SMTP between
    operators). OpenSSL then checks the chain and the clientAuth purpose during the handshake;
    the application still calls `verify_client_certificate` to get the identity.
    """
    if require_client_cert and not client_ca_paths:
        raise ValueError("require_client_cert needs client_ca_paths to verify certificates")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(context)
    # Server preference: our AEAD order wins over a client that lists weaker suites first.
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        context.load_cert_chain(certfile=cert_path, keyfile=key_path)
    except (OSError, ssl.SSLError) as exc:
        raise CertificateFileError(
            f"cannot load TLS certificate {cert_path} with key {key_path}: {exc}"
        ) from exc
    if client_ca_paths:
        _load_cas(context, client_ca_paths)
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return context


def client_ssl_context(
    ca_paths: Sequence[Path],
    *,
    cert_path: Path | None = None,
    key_path: Path | None = None,
) -> ssl.SSLContext:
    """TLS client context: same protocol policy, server certificate and host name checked.

    `ca_paths` are PEM/DER files or trust-anchor directories; when empty the system's trust
    store is used. `cert_path`/`key_path` give a client certificate for mutual TLS (SMTP to
    another operator, tests of the mutual-TLS login).
    """
    if (cert_path is None) != (key_path is None):
        raise ValueError("cert_path and key_path go together")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED + check_hostname
    _harden(context)
    if ca_paths:
        _load_cas(context, ca_paths)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if cert_path is not None and key_path is not None:
        try:
            context.load_cert_chain(certfile=cert_path, keyfile=key_path)
        except (OSError, ssl.SSLError) as exc:
            raise CertificateFileError(
                f"cannot load TLS client certificate {cert_path} with key {key_path}: {exc}"
            ) from exc
    return context


def _harden(context: ssl.SSLContext) -> None:
    """Protocol policy shared by server and client contexts."""
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    # Python already sets OP_NO_COMPRESSION; stating it keeps the policy in one readable place.
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION


def _load_cas(context: ssl.SSLContext, paths: Sequence[Path]) -> None:
    """Add CA certificates from files or directories (read by our loader, so DER works too
    and a bad file is reported by name rather than as an anonymous OpenSSL error)."""
    pem_blocks: list[str] = []
    for path in paths:
        certificates = (
            load_trust_anchors(path) if Path(path).is_dir() else load_certificates_file(path)
        )
        pem_blocks += [cert.public_bytes(Encoding.PEM).decode("ascii") for cert in certificates]
    if not pem_blocks:
        raise CertificateFileError(f"no CA certificate found in {', '.join(map(str, paths))}")
    try:
        context.load_verify_locations(cadata="".join(pem_blocks))
    except ssl.SSLError as exc:
        raise CertificateFileError(f"OpenSSL refused a CA certificate from {paths}: {exc}") from exc
