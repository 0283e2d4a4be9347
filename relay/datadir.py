"""The data directory: where each file lives, and ``relais init``.

Layout (all under one directory, mode 0700)::

    relais.toml          configuration (copied from config/relais.toml at init)
    relais.db            SQLite database (WAL)
    keys/                master keys (mode 0600) for the encrypted blob store
    blobs/               encrypted blobs
    certs/               local CA, server certificate, their keys (0600)
    audit/               audit log database and its signing key
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from certs.ca import CertifiedKey, create_ca
from certs.issue import issue_server_certificate
from relay.config import Config

_LABEL = r"[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})+")
TEMPLATE = Path(__file__).resolve().parent.parent / "config" / "relais.toml"


@dataclass(frozen=True)
class DataDir:
    """Paths inside one data directory."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "relais.toml"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def blobs(self) -> Path:
        return self.root / "blobs"

    @property
    def certs(self) -> Path:
        return self.root / "certs"

    @property
    def audit(self) -> Path:
        return self.root / "audit"

    @property
    def ca_cert(self) -> Path:
        return self.certs / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.certs / "ca.key"

    def database(self, config: Config) -> Path:
        return self._resolve(config.database.path) or self.root / "relais.db"

    def server_cert(self, config: Config) -> Path:
        return self._resolve(config.tls.cert_file) or self.certs / "server.pem"

    def server_key(self, config: Config) -> Path:
        return self._resolve(config.tls.key_file) or self.certs / "server.key"

    def trust_anchors(self, config: Config) -> Path | None:
        return self._resolve(config.tls.trust_anchors_dir)

    def resolve(self, value: str) -> Path | None:
        """A configured path: empty means none, relative means inside the data dir."""
        return self._resolve(value)

    def _resolve(self, value: str) -> Path | None:
        if not value:
            return None
        path = Path(value)
        return path if path.is_absolute() else self.root / path

    def is_initialised(self) -> bool:
        return self.config.exists()


def render_config(domain: str) -> str:
    """The annotated default configuration with the chosen mail domain."""
    text = TEMPLATE.read_text(encoding="utf-8") if TEMPLATE.exists() else "[server]\n"
    if re.search(r'(?m)^domain = ".*"$', text):
        return re.sub(r'(?m)^domain = ".*"$', f'domain = "{domain}"', text, count=1)
    return text.replace("[server]\n", f'[server]\ndomain = "{domain}"\n', 1)


def validate_domain(domain: str) -> str:
    value = domain.strip().lower()
    if not _DOMAIN.fullmatch(value):
        raise ValueError(f"invalid mail domain {domain!r}")
    return value


def generate_password() -> str:
    """A one-time administrator password: 20 characters, about 119 bits."""
    return secrets.token_urlsafe(15)


def create_pki(data: DataDir, domain: str, now: datetime) -> None:
    """Create the local CA and the server certificate for ``domain`` and localhost."""
    data.certs.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca = create_ca(f"Relais Santé — AC locale ({domain})", now)
    ca.to_pem_files(data.ca_cert, data.ca_key)
    renew_server_certificate(data, ca, domain, now)


def renew_server_certificate(data: DataDir, ca: CertifiedKey, domain: str, now: datetime) -> None:
    server = issue_server_certificate(ca, [domain], now)
    server.to_pem_files(data.certs / "server.pem", data.certs / "server.key")


def make_root(data: DataDir) -> None:
    data.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    data.root.chmod(0o700)


def utcnow() -> datetime:
    return datetime.now(UTC)
