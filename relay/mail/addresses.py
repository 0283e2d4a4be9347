"""The relay's address space for its mail domain D, and address normalisation (pure).

Addresses the relay serves, all at D (compared case-insensitively, RFC 5321 §2.4):

* ``name@D`` — a professional or a team (``cardiologie@D``); which one is for the directory to
  say, so both are :attr:`AddressKind.MAILBOX`;
* ``r+<token>@D`` — a reply address of one thread or case, bound to one recipient
  (:mod:`relay.mail.reply_tokens` checks the token);
* ``postmaster@D`` — RFC 5321 §4.5.1 requires it to be accepted;
* ``notifications@D`` — the From of outbound notifications; nobody reads it, so mail to it is
  refused with a clear text rather than lost.

Anything else is :attr:`AddressKind.FOREIGN`: accepting it would make the relay an open relay.

Local parts at D use a strict charset ``[a-z0-9._-]`` (dot-atom rules: no leading, trailing or
double dot); ``+`` only in the ``r+`` prefix. This refuses, as syntax errors, the old relay
tricks ``user%other.org@D``, ``other.org!user@D`` and quoted local parts ``"a@b"@D``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from relay.mail.errors import InvalidAddress, InvalidSenderAddress

__all__ = [
    "NOTIFICATIONS_LOCAL_PART",
    "POSTMASTER_LOCAL_PART",
    "REPLY_PREFIX",
    "AddressKind",
    "RelayAddress",
    "classify",
    "normalize_address",
    "normalize_domain",
    "notifications_address",
    "reply_address",
]

REPLY_PREFIX = "r+"
POSTMASTER_LOCAL_PART = "postmaster"
NOTIFICATIONS_LOCAL_PART = "notifications"

# RFC 5321 §4.5.3.1.1-3: local part ≤ 64 octets, domain ≤ 255; a path ≤ 256 with the
# brackets, hence 254 for the bare address (RFC 3696 errata 1690).
_MAX_LOCAL = 64
_MAX_ADDRESS = 254

# RFC 5322 §3.2.3 atext, dot-atom form: what we accept from foreign senders and recipients.
_FOREIGN_LOCAL = re.compile(r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_LOCAL_AT_D = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_ADDRESS_LITERAL = re.compile(r"\[[0-9a-f:.]{2,45}\]|\[ipv6:[0-9a-f:.]{2,45}\]")
_TOKEN_CHARS = re.compile(r"[a-z2-7]+")


class AddressKind(StrEnum):
    """What an address means to the relay (see the module docstring)."""

    MAILBOX = "mailbox"
    REPLY = "reply"
    POSTMASTER = "postmaster"
    NOTIFICATIONS = "notifications"
    FOREIGN = "foreign"


@dataclass(frozen=True)
class RelayAddress:
    """A classified, normalised address. ``reply_token`` is set for REPLY only."""

    address: str
    local_part: str
    domain: str
    kind: AddressKind
    reply_token: str | None = None


def normalize_domain(domain: str) -> str:
    """Lower-case ASCII domain without a trailing dot; ValueError if it is not a host name."""
    name = domain.strip().lower().removesuffix(".")
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"{domain!r} is not a valid mail domain")
    return name


def normalize_address(address: str, *, sender: bool = False) -> str:
    """Return ``local@domain`` lower-cased, or raise InvalidAddress (InvalidSenderAddress).

    Lower-casing the local part too is a deliberate choice: RFC 5321 §2.4 lets a receiving
    host treat local parts case-sensitively, but no mail service in practice does, and the
    relay compares addresses as identities (reply-token binding, accounts store lower case).
    Only ASCII dot-atom addresses are accepted (no SMTPUTF8, no quoted local parts).
    """
    error = InvalidSenderAddress if sender else InvalidAddress
    text = address.strip().lower()
    if not text.isascii() or len(text) > _MAX_ADDRESS or text.count("@") != 1:
        raise error()
    local, _, domain = text.rpartition("@")
    if not 0 < len(local) <= _MAX_LOCAL or not _FOREIGN_LOCAL.fullmatch(local):
        raise error()
    if _ADDRESS_LITERAL.fullmatch(domain):
        return f"{local}@{domain}"
    try:
        domain = normalize_domain(domain)
    except ValueError:
        raise error() from None
    return f"{local}@{domain}"


def classify(address: str, domain: str) -> RelayAddress:
    """Classify a recipient address against the relay's domain.

    Raises InvalidAddress (553 5.1.3) for an address that is not a plain ASCII ``local@domain``
    or, at the relay's domain, whose local part breaks the strict charset. A reply token is only
    checked for its alphabet here; its authenticity is for ``reply_tokens.verify``.
    """
    normalized = normalize_address(address)
    own_domain = normalize_domain(domain)
    local, _, address_domain = normalized.rpartition("@")
    if address_domain != own_domain:
        return RelayAddress(normalized, local, address_domain, AddressKind.FOREIGN)
    if local.startswith(REPLY_PREFIX):
        token = local.removeprefix(REPLY_PREFIX)
        if not _TOKEN_CHARS.fullmatch(token):
            raise InvalidAddress()
        return RelayAddress(normalized, local, own_domain, AddressKind.REPLY, reply_token=token)
    if not _LOCAL_AT_D.fullmatch(local):
        raise InvalidAddress()
    if local == POSTMASTER_LOCAL_PART:
        return RelayAddress(normalized, local, own_domain, AddressKind.POSTMASTER)
    if local == NOTIFICATIONS_LOCAL_PART:
        return RelayAddress(normalized, local, own_domain, AddressKind.NOTIFICATIONS)
    return RelayAddress(normalized, local, own_domain, AddressKind.MAILBOX)


def reply_address(token: str, domain: str) -> str:
    """The reply address ``r+<token>@<domain>`` carried by outbound mail."""
    return f"{REPLY_PREFIX}{token}@{normalize_domain(domain)}"


def notifications_address(domain: str) -> str:
    """The From address of the relay's notification mails."""
    return f"{NOTIFICATIONS_LOCAL_PART}@{normalize_domain(domain)}"
