"""Decisions about inbound mail, without I/O: the trusted-sender policy and what each accepted
recipient means (issue 4 item 3). The SMTP adapter asks, then answers what is decided here.

Trusted senders: a peer is *trusted* when it presented, during STARTTLS, a client
certificate that OpenSSL verified against the relay's CA and trust anchors (mutual TLS, as
between MSSanté operators), and — when fingerprints are configured — one of those. Mail to
users and teams is accepted from a trusted peer, or from a sender whose domain is in the
allowed list (any domain when the list is empty). Reply addresses ``r+<token>`` accept only
the address their token is bound to, whatever the list says; that check is the token's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from relay.mail.dsn import Bounce
from relay.mail.errors import SenderNotAllowed, StartTlsRequired
from relay.mail.limits import ParsedMessage


class TargetKind(StrEnum):
    """What an accepted recipient address leads to."""

    PROFESSIONAL = "professional"  # name@D of an account
    TEAM = "team"  # team@D
    REPLY = "reply"  # r+<token>@D: one thread, one bound sender
    POSTMASTER = "postmaster"  # RFC 5321 §4.5.1


@dataclass(frozen=True)
class InboundTarget:
    """One accepted RCPT TO, resolved. For REPLY, ``participant_id`` is the participant the
    token is bound to (the only sender allowed) and ``thread_id`` its thread. For POSTMASTER,
    ``reader`` is the professional's mailbox that postmaster mail goes to, if one is set."""

    kind: TargetKind
    address: str
    professional_id: str | None = None
    team_id: str | None = None
    display_name: str = ""
    thread_id: str | None = None
    participant_id: str | None = None
    bound_sender: str | None = None
    reader: InboundTarget | None = None


@dataclass(frozen=True)
class PeerTls:
    """The TLS state of an SMTP session. ``certificate_fingerprint`` (SHA-256 hex of the DER)
    is set only when the peer presented a certificate that the handshake verified."""

    version: str
    cipher: str
    certificate_fingerprint: str | None = None


@dataclass(frozen=True)
class SenderPolicy:
    """The trusted-sender policy (see the module docstring)."""

    allowed_domains: frozenset[str] = frozenset()
    require_certificate: bool = False
    fingerprints: frozenset[str] = frozenset()

    @classmethod
    def from_lists(
        cls, domains: str, *, require_certificate: bool, fingerprints: str
    ) -> SenderPolicy:
        """From the comma-separated configuration values."""
        return cls(
            allowed_domains=frozenset(_items(domains)),
            require_certificate=require_certificate,
            fingerprints=frozenset(f.replace(":", "") for f in _items(fingerprints)),
        )

    def trusts_peer(self, tls: PeerTls | None) -> bool:
        """Whether the peer authenticated with an accepted certificate."""
        if tls is None or tls.certificate_fingerprint is None:
            return False
        return not self.fingerprints or tls.certificate_fingerprint in self.fingerprints

    def check_mail_from(self, tls: PeerTls | None) -> None:
        """At MAIL: TLS first (RFC 3207 §4), then the certificate when one is required."""
        if tls is None:
            raise StartTlsRequired()
        if self.require_certificate and not self.trusts_peer(tls):
            raise SenderNotAllowed("A trusted client certificate is required to send here")

    def accepts_report(self, sender: str, author: str, tls: PeerTls | None) -> bool:
        """Whether a delivery report may change delivery states: the rule for mail to a
        mailbox, applied to the envelope sender or, for the null reverse-path that reports
        carry (RFC 5321 §4.5.5), to the report's From (MAILER-DAEMON@their.mta). Postmaster
        itself takes mail from anyone (RFC 5321 §4.5.1); this is no wider door."""
        try:
            self.check_sender_for_mailbox(sender or author, tls)
        except SenderNotAllowed:
            return False
        return True

    def check_sender_for_mailbox(self, sender: str, tls: PeerTls | None) -> None:
        """At RCPT for a user, team or postmaster: the sender's domain or the peer's
        certificate must be trusted."""
        if self.trusts_peer(tls) or not self.allowed_domains:
            return
        domain = sender.rpartition("@")[2].lower()
        if domain not in self.allowed_domains:
            raise SenderNotAllowed()


def _items(text: str) -> Iterable[str]:
    return (item.strip().lower() for item in text.split(",") if item.strip())


@dataclass(frozen=True)
class InboundMail:
    """A message accepted at end of DATA, parsed (and decrypted when it was S/MIME)."""

    parsed: ParsedMessage
    raw: bytes = field(repr=False)
    envelope_from: str
    targets: tuple[InboundTarget, ...]
    decrypted: bool = False
    bounce: Bounce | None = None
    """A delivery report (RFC 3464) read from it, from a sender the policy accepts for one."""
