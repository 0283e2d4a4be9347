"""S/MIME envelopes (RFC 8551 §3.3 enveloped-data) with cryptography's PKCS#7 builder (pure).

Content encryption: AES-256-CBC. cryptography's ``PKCS7EnvelopeBuilder`` offers AES-128-CBC and
AES-256-CBC only (no AES-GCM authEnveloped-data yet). RFC 8551 §2.7 keeps AES-128-CBC as a
SHOULD+ for interoperability and every S/MIME client (Thunderbird, Outlook, Apple Mail) reads
AES-256-CBC; 256-bit keys follow ANSSI's RGS advice for data kept long term. Key transport:
RSA PKCS#1 v1.5 (the builder's only choice; RFC 8551 §2.4 still requires it of receivers).
CBC enveloped-data is not integrity-protected: only confidentiality is claimed here.

Only the body is protected (RFC 8551 §3.1): headers travel in clear. ``encrypt_message`` can
therefore move the real Subject into the encrypted part ("protected headers", as Thunderbird
does: ``protected-headers="v1"``) and put a generic one outside.

Decryption errors deliberately collapse into one reply: telling "bad RSA padding" from "bad
CBC padding" from "decrypted but not a message" would give a padding oracle over SMTP
(the attacker replays a captured ciphertext, altered, and reads the reply code). Only "this
was not encrypted for the relay's certificate" (decided on the recipient identifiers, before
any decryption) and "not an S/MIME message" are told apart. :func:`open_enveloped` extends
that to the parse of the decrypted content.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Sequence
from datetime import datetime
from email import policy as email_policy
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID

from certs.ca import require_aware
from relay.mail.errors import (
    ContentRefused,
    DecryptionFailed,
    EncryptionFailed,
    ForbiddenAttachment,
)
from relay.mail.limits import MailLimits, ParsedMessage, parse_message, parse_tree

__all__ = ["decrypt_message", "encrypt_message", "open_enveloped"]

_SMIME_TYPES = frozenset({"application/pkcs7-mime", "application/x-pkcs7-mime"})
_SMTP = email_policy.SMTP
# Headers that may be protected inside the envelope and take precedence after decryption.
_PROTECTED = ("subject", "from", "to", "cc", "reply-to", "date", "message-id", "in-reply-to",
              "references")  # fmt: skip
_GENERIC_FAILURE = "Cannot decrypt the S/MIME message"


def encrypt_message(
    message: EmailMessage,
    recipient_certs: Sequence[x509.Certificate],
    *,
    now: datetime,
    outer_subject: str | None = None,
) -> EmailMessage:
    """Return ``message`` with its body S/MIME-encrypted for every certificate.

    The result is ``application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m``,
    base64, with the original non-content headers. With ``outer_subject``, the original
    Subject is moved inside the envelope (protected headers) and ``outer_subject`` replaces it
    outside: give a generic one, the outside is plain text. Raises EncryptionFailed when a
    certificate is unusable (not RSA, not valid at ``now``, not for e-mail encryption).
    """
    require_aware(now)
    if not recipient_certs:
        raise EncryptionFailed("No recipient certificate")
    for number, certificate in enumerate(recipient_certs, 1):
        _check_recipient(certificate, now, number)

    inner = Message(policy=_SMTP)
    # items(), not raw_items(): header objects keep their own folding when re-serialised.
    for name, value in message.items():
        if name.lower().startswith("content-"):
            inner[name] = value
    if "content-type" not in inner:
        inner["Content-Type"] = "text/plain; charset=us-ascii"
    inner.set_payload(message.get_payload())
    if outer_subject is not None and message.get("subject") is not None:
        inner.set_param("protected-headers", "v1")
        inner["Subject"] = str(message["subject"])
    # RFC 8551 §3.1.1: canonical form (CRLF) before encryption; as_bytes does no "From "
    # mangling, which would alter the content.
    clear = inner.as_bytes(policy=_SMTP)

    builder = (
        pkcs7.PKCS7EnvelopeBuilder()
        .set_data(clear)
        .set_content_encryption_algorithm(algorithms.AES256)
    )
    for certificate in recipient_certs:
        builder = builder.add_recipient(certificate)
    der = builder.encrypt(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])

    outer = EmailMessage()
    for name, value in message.items():
        lowered = name.lower()
        if lowered.startswith("content-") or lowered == "mime-version":
            continue
        if lowered == "subject" and outer_subject is not None:
            continue
        outer[name] = value
    if outer_subject is not None:
        outer["Subject"] = outer_subject
    outer.set_content(
        der,
        maintype="application",
        subtype="pkcs7-mime",
        params={"smime-type": "enveloped-data", "name": "smime.p7m"},
        disposition="attachment",
        filename="smime.p7m",
        cte="base64",
    )
    return outer


def _check_recipient(certificate: x509.Certificate, now: datetime, number: int) -> None:
    where = f"Recipient certificate {number}"
    if not isinstance(certificate.public_key(), rsa.RSAPublicKey):
        raise EncryptionFailed(f"{where}: only RSA keys can receive S/MIME envelopes here")
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        raise EncryptionFailed(f"{where}: not valid at this date")
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
        if not usage.key_encipherment:
            raise EncryptionFailed(f"{where}: key usage does not allow key encipherment")
    except x509.ExtensionNotFound:
        pass
    try:
        purposes = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    # RFC 8550 §4.4.4: with an EKU extension, emailProtection (or anyExtendedKeyUsage) is needed.
    allowed = {ExtendedKeyUsageOID.EMAIL_PROTECTION, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE}
    if not allowed.intersection(purposes):
        raise EncryptionFailed(f"{where}: not issued for e-mail protection")


def decrypt_message(
    raw: bytes,
    relay_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    relay_cert: x509.Certificate,
    *,
    limits: MailLimits | None = None,
) -> bytes:
    """Decrypt an S/MIME enveloped message sent to the relay; return the whole clear message.

    The result is the outer headers (without the content headers) followed by the decrypted
    MIME entity; protected headers found inside replace their outer copies. Raises
    DecryptionFailed (554 5.7.5) with a message that tells only: not S/MIME enveloped, not
    encrypted for the relay's certificate, or cannot be decrypted. Size and structure limits
    of ``limits`` apply to the outer message (MessageTooLarge etc. may be raised).
    """
    message = parse_tree(raw, limits)
    content_type = message.get_content_type()
    smime_type = str(message.get_param("smime-type", "") or "").lower()
    if content_type in _SMIME_TYPES and smime_type == "authenveloped-data":
        raise DecryptionFailed("S/MIME authEnveloped-data (AES-GCM) is not supported here")
    if content_type not in _SMIME_TYPES or smime_type not in ("", "enveloped-data"):
        raise DecryptionFailed("Not an S/MIME enveloped-data message")
    encoding = str(message.get("content-transfer-encoding", "")).strip().lower()
    payload = message.get_payload() if encoding == "base64" else message.get_payload(decode=True)
    if encoding == "base64":
        compact = re.sub(r"\s+", "", payload) if isinstance(payload, str) else ""
        try:
            if not compact.isascii() or len(compact) % 4:
                raise ValueError("not base64")
            data = binascii.a2b_base64(compact.encode("ascii"), strict_mode=True)
        except (binascii.Error, ValueError):
            raise DecryptionFailed("The S/MIME body is not valid base64") from None
    elif isinstance(payload, bytes):
        data = payload  # binary DER (RFC 3030 BINARYMIME): the exact received bytes
    else:
        raise DecryptionFailed("Not an S/MIME enveloped-data message")
    if not isinstance(relay_key, rsa.RSAPrivateKey):
        raise DecryptionFailed("The relay has no RSA key to decrypt S/MIME messages")
    try:
        clear = pkcs7.pkcs7_decrypt_der(data, relay_cert, relay_key, [])
    except ValueError as exc:
        if "no recipient" in str(exc).lower():
            raise DecryptionFailed(
                "The message is not encrypted for the relay's certificate"
            ) from None
        raise DecryptionFailed(_GENERIC_FAILURE) from None
    except UnsupportedAlgorithm:
        raise DecryptionFailed(_GENERIC_FAILURE) from None
    return _reassemble(message, clear)


def _reassemble(outer: Message, inner: bytes) -> bytes:
    inner_headers = BytesHeaderParser(policy=_SMTP).parsebytes(inner)
    protected = (
        {name for name in _PROTECTED if inner_headers.get(name) is not None}
        if inner_headers.get_param("protected-headers")
        else set()
    )
    lines = []
    for name, value in outer.raw_items():
        lowered = name.lower()
        if lowered.startswith("content-") or lowered == "mime-version" or lowered in protected:
            continue
        lines.append(f"{name}: {value}\r\n".encode("ascii", "surrogateescape"))
    lines.append(b"MIME-Version: 1.0\r\n")
    return b"".join(lines) + inner


def open_enveloped(
    raw: bytes,
    relay_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    relay_cert: x509.Certificate,
    limits: MailLimits | None = None,
) -> ParsedMessage:
    """Decrypt and parse. Any content refusal of the decrypted message becomes the generic
    DecryptionFailed, so that the reply never reveals whether an altered ciphertext
    decrypted (see the module docstring); oversized content still gets MessageTooLarge."""
    clear = decrypt_message(raw, relay_key, relay_cert, limits=limits)
    try:
        parsed = parse_message(clear, limits)
    except ForbiddenAttachment:
        raise  # needs a well-formed message with a From: not what altered ciphertext yields
    except ContentRefused:
        raise DecryptionFailed(_GENERIC_FAILURE) from None
    if parsed.smime_enveloped:
        raise DecryptionFailed(_GENERIC_FAILURE)
    return parsed
