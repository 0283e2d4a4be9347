"""Expiry warnings for the certificates a relay depends on (CA, server, trust anchors).

Pure: the caller passes `now` and logs the returned lines (at start-up and once a day), e.g.
"server certificate 'relais.localhost' expires in 12 days (2026-12-05)".
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from cryptography import x509

from certs.ca import common_name_of, require_aware


def expiry_warnings(
    certs: Iterable[tuple[str, x509.Certificate]],
    now: datetime,
    *,
    warn_within: timedelta,
) -> list[str]:
    """One English log line per certificate that is expired, not yet valid, or expires soon.

    `certs` pairs a label saying what the certificate is for ("server certificate", "local CA")
    with the certificate; the line names it by its subject CN. Certificates expiring later than
    `now + warn_within` produce nothing. Lines come in the order of `certs`.
    """
    require_aware(now)
    lines: list[str] = []
    for label, certificate in certs:
        name = f"{label} {common_name_of(certificate)!r}"
        not_after = certificate.not_valid_after_utc
        not_before = certificate.not_valid_before_utc
        if not_after <= now:
            lines.append(f"{name} expired on {not_after:%Y-%m-%d}")
        elif now < not_before:
            lines.append(f"{name} is not valid before {not_before:%Y-%m-%d %H:%M} UTC")
        elif not_after - now <= warn_within:
            lines.append(f"{name} {_expires_in(not_after - now)} ({not_after:%Y-%m-%d})")
    return lines


def _expires_in(remaining: timedelta) -> str:
    days = remaining.days  # whole days left, rounded down
    if days == 0:
        return "expires in less than a day"
    return f"expires in {days} day{'s' if days != 1 else ''}"
