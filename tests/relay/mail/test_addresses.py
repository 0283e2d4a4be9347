"""The relay's address space: classification, normalisation, relay tricks refused."""

from __future__ import annotations

import pytest

from relay.mail.addresses import (
    AddressKind,
    classify,
    normalize_address,
    normalize_domain,
    notifications_address,
    reply_address,
)
from relay.mail.errors import InvalidAddress, InvalidSenderAddress

DOMAIN = "relais.localhost"


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("claire.martin@relais.localhost", AddressKind.MAILBOX),
        ("cardiologie@relais.localhost", AddressKind.MAILBOX),
        ("Claire.Martin@RELAIS.Localhost", AddressKind.MAILBOX),
        ("claire.martin@relais.localhost.", AddressKind.MAILBOX),
        ("r+tabc234@relais.localhost", AddressKind.REPLY),
        ("Postmaster@relais.localhost", AddressKind.POSTMASTER),
        ("notifications@relais.localhost", AddressKind.NOTIFICATIONS),
        ("someone@example.org", AddressKind.FOREIGN),
        ("claire@sub.relais.localhost", AddressKind.FOREIGN),
        ("claire@relais.localhost.example.org", AddressKind.FOREIGN),
        ("user%x@example.org", AddressKind.FOREIGN),
        ("a@[127.0.0.1]", AddressKind.FOREIGN),
    ],
)
def test_kinds(address: str, kind: AddressKind) -> None:
    assert classify(address, DOMAIN).kind is kind


def test_classified_fields_are_normalised() -> None:
    classified = classify(" Claire.Martin@RELAIS.localhost ", "Relais.Localhost.")
    assert classified.address == "claire.martin@relais.localhost"
    assert classified.local_part == "claire.martin"
    assert classified.domain == "relais.localhost"
    assert classified.reply_token is None


def test_reply_token_extracted_lower_case() -> None:
    classified = classify("R+TABC234@relais.localhost", DOMAIN)
    assert classified.kind is AddressKind.REPLY
    assert classified.reply_token == "tabc234"


@pytest.mark.parametrize(
    "address",
    [
        # Old open-relay tricks through the served domain: refused as syntax, never routed.
        "someone%example.org@relais.localhost",
        "example.org!someone@relais.localhost",
        '"someone@example.org"@relais.localhost',
        "@relais.localhost,@example.org:someone@example.org",
        # Sub-addressing and odd characters are not part of the relay's address space.
        "claire+tag@relais.localhost",
        "claire/x@relais.localhost",
        ".claire@relais.localhost",
        "claire..martin@relais.localhost",
        "r+abc1@relais.localhost",  # "1" is not a base32 character
        "r+@relais.localhost",
    ],
)
def test_strict_local_part_at_the_relay_domain(address: str) -> None:
    with pytest.raises(InvalidAddress) as caught:
        classify(address, DOMAIN)
    assert caught.value.smtp_reply.startswith("553 5.1.3 ")


@pytest.mark.parametrize(
    "address",
    [
        "",
        "no-at-sign",
        "a@b@c",
        "é@example.org",
        "a@exämple.org",
        "a b@example.org",
        "a@-example.org",
        "a@example..org",
        "x" * 65 + "@example.org",
        "a@" + "b" * 250 + ".org",
        "a\r\nRCPT TO:<x@y>@example.org",
    ],
)
def test_invalid_syntax(address: str) -> None:
    with pytest.raises(InvalidAddress):
        normalize_address(address)


def test_sender_variant_uses_sender_code() -> None:
    with pytest.raises(InvalidSenderAddress) as caught:
        normalize_address("nope", sender=True)
    assert caught.value.smtp_reply.startswith("553 5.1.7 ")


def test_builders() -> None:
    assert reply_address("tabc", "Relais.Localhost") == "r+tabc@relais.localhost"
    assert notifications_address(DOMAIN) == "notifications@relais.localhost"
    assert classify(reply_address("tabc", DOMAIN), DOMAIN).reply_token == "tabc"


def test_normalize_domain_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        normalize_domain("not a domain")
    assert normalize_domain("EXAMPLE.org.") == "example.org"
