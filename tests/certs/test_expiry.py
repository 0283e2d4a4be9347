"""Expiry warning lines."""

from __future__ import annotations

from datetime import timedelta

from certs.ca import create_ca
from certs.expiry import expiry_warnings
from tests.certs.conftest import NOW, Pki


def test_expiring_soon_expired_and_fine(pki: Pki) -> None:
    # The server certificate ends NOW + 397 days = 2027-04-03.
    server = pki.server.certificate
    lines = expiry_warnings(
        [
            ("server certificate", server),
            ("local CA", pki.ca.certificate),  # 10 years: nothing to say
            ("client certificate", pki.client.certificate),
        ],
        NOW + timedelta(days=385),
        warn_within=timedelta(days=30),
    )
    assert lines == ["server certificate 'relais.localhost' expires in 12 days (2027-04-03)"]

    lines = expiry_warnings(
        [("server certificate", server)], NOW + timedelta(days=400), warn_within=timedelta(days=30)
    )
    assert lines == ["server certificate 'relais.localhost' expired on 2027-04-03"]


def test_window_edges(pki: Pki) -> None:
    server = pki.server.certificate
    end = server.not_valid_after_utc
    window = timedelta(days=30)
    assert (
        expiry_warnings([("s", server)], end - window - timedelta(seconds=1), warn_within=window)
        == []
    )
    assert expiry_warnings([("s", server)], end - window, warn_within=window) == [
        "s 'relais.localhost' expires in 30 days (2027-04-03)"
    ]
    assert expiry_warnings([("s", server)], end - timedelta(days=1), warn_within=window) == [
        "s 'relais.localhost' expires in 1 day (2027-04-03)"
    ]
    assert expiry_warnings([("s", server)], end - timedelta(hours=3), warn_within=window) == [
        "s 'relais.localhost' expires in less than a day (2027-04-03)"
    ]
    assert expiry_warnings([("s", server)], end, warn_within=window) == [
        "s 'relais.localhost' expired on 2027-04-03"
    ]


def test_not_yet_valid_and_order_kept() -> None:
    future_ca = create_ca("CA future", NOW + timedelta(days=2), validity_days=5)
    old_ca = create_ca("CA ancienne", NOW - timedelta(days=10), validity_days=5)
    lines = expiry_warnings(
        [("trust anchor", future_ca.certificate), ("trust anchor", old_ca.certificate)],
        NOW,
        warn_within=timedelta(days=30),
    )
    assert lines == [
        "trust anchor 'CA future' is not valid before 2026-03-04 09:25 UTC",
        "trust anchor 'CA ancienne' expired on 2026-02-25",
    ]
