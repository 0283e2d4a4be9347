"""Errors raised by the PKI package; each carries its protocol answer (DESIGN.md rule 4)."""

from __future__ import annotations


class CertificateError(Exception):
    """Base class for certificate problems."""

    http_status = 500
    code = "certificate_error"
    smtp_reply = (454, "4.7.0 TLS not available due to a certificate problem")


class CertificateNotTrusted(CertificateError):
    """A presented certificate does not chain to a trust anchor, is expired or is revoked."""

    http_status = 401
    code = "certificate_not_trusted"
    smtp_reply = (535, "5.7.8 Client certificate not trusted")


class CertificateFileError(CertificateError):
    """A certificate or key file is missing, unreadable, or not valid PEM/DER."""

    code = "certificate_file_invalid"


class InvalidCertificateRequest(CertificateError):
    """The data for a certificate to issue is unusable (bad e-mail, RPPS, name, validity)."""

    http_status = 400
    code = "invalid_certificate_request"
