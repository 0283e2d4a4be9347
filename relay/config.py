"""Configuration: ``relais.toml`` loaded into frozen dataclasses, with environment overrides.

Every setting lives in a section dataclass below; ``config/relais.toml`` documents
each one. ``RELAIS_<SECTION>_<KEY>`` overrides a value (e.g. ``RELAIS_HTTP_PORT=9443``).
Any problem raises :class:`ConfigError` with one line naming the key, so ``serve``
can stop with a message an operator can act on.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from relay.errors import ConfigError


@dataclass(frozen=True)
class ServerSettings:
    domain: str = "relais.localhost"
    public_url: str = ""
    node_name: str = "relais-1"
    log_level: str = "info"
    shutdown_timeout_seconds: float = 15.0


@dataclass(frozen=True)
class HttpSettings:
    host: str = "127.0.0.1"
    port: int = 8443
    max_json_bytes: int = 1_048_576
    max_upload_bytes: int = 31_457_280
    client_certificates: bool = True


@dataclass(frozen=True)
class SmtpSettings:
    host: str = "127.0.0.1"
    port: int = 2525
    max_message_bytes: int = 44_040_192
    max_recipients: int = 50
    allowed_sender_domains: str = ""
    require_peer_certificate: bool = False
    peer_certificate_fingerprints: str = ""
    parser_workers: int = 0
    smime_cert_file: str = ""
    smime_key_file: str = ""
    timeout_seconds: float = 300.0
    postmaster_reader: str = ""


@dataclass(frozen=True)
class OutboxSettings:
    smarthost: str = ""
    smarthost_port: int = 25
    smarthost_ca_file: str = ""
    client_cert_file: str = ""
    client_key_file: str = ""
    retry_initial_seconds: float = 60.0
    retry_max_seconds: float = 3600.0
    give_up_hours: float = 72.0
    timeout_seconds: float = 60.0


@dataclass(frozen=True)
class MessagingSettings:
    max_message_bytes: int = 31_457_280
    guest_code_minutes: float = 15.0
    guest_session_hours: float = 8.0


@dataclass(frozen=True)
class TlsSettings:
    cert_file: str = ""
    key_file: str = ""
    trust_anchors_dir: str = ""
    expiry_warning_days: int = 30


@dataclass(frozen=True)
class DatabaseSettings:
    path: str = ""


@dataclass(frozen=True)
class StorageSettings:
    blob_chunk_kib: int = 1024


@dataclass(frozen=True)
class AccountSettings:
    session_hours: float = 12.0
    session_idle_minutes: float = 60.0
    password_min_length: int = 12
    login_window_minutes: float = 15.0
    login_max_failures_per_account: int = 5
    login_max_failures_per_address: int = 20
    argon2_time_cost: int = 3
    argon2_memory_kib: int = 65_536
    argon2_parallelism: int = 2
    totp_issuer: str = "Relais Santé"


@dataclass(frozen=True)
class BusSettings:
    backend: str = "memory"
    redis_url: str = ""
    stream_max_len: int = 10_000


@dataclass(frozen=True)
class AuditSettings:
    checkpoint_every_events: int = 1000
    checkpoint_every_seconds: float = 60.0
    witness_dir: str = ""
    retention_access_days: int = 365
    retention_security_days: int = 1095
    syslog_host: str = ""
    syslog_port: int = 6514
    syslog_ca_file: str = ""


@dataclass(frozen=True)
class TeleconsultationConfig:
    turn_urls: str = ""
    stun_urls: str = ""
    turn_secret: str = ""
    turn_lifetime_seconds: int = 600
    grace_seconds: float = 30.0
    max_participants: int = 6
    max_waiting: int = 10
    rate_per_second: float = 50.0
    rate_burst: int = 200
    link_hours_after_end: float = 4.0
    guest_pass_minutes: float = 10.0
    birth_date_max_failures: int = 5
    birth_date_window_minutes: float = 15.0
    recording: bool = True
    recording_max_megabytes: int = 2048
    recording_retention_days: int = 0


@dataclass(frozen=True)
class PacsSettings:
    dicomweb_url: str = ""
    username: str = ""
    password_file: str = ""
    timeout_seconds: float = 60.0


@dataclass(frozen=True)
class Config:
    """The whole configuration; one attribute per ``[section]`` of relais.toml."""

    server: ServerSettings = field(default_factory=ServerSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    outbox: OutboxSettings = field(default_factory=OutboxSettings)
    messaging: MessagingSettings = field(default_factory=MessagingSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    accounts: AccountSettings = field(default_factory=AccountSettings)
    bus: BusSettings = field(default_factory=BusSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    teleconsultation: TeleconsultationConfig = field(default_factory=TeleconsultationConfig)
    pacs: PacsSettings = field(default_factory=PacsSettings)


# Values that are not just "of the right type": checked after parsing.
_CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("server", "log_level"): ("debug", "info", "warning", "error"),
    ("bus", "backend"): ("memory", "redis"),
}
_PORTS = {
    ("http", "port"),
    ("smtp", "port"),
    ("audit", "syslog_port"),
    ("outbox", "smarthost_port"),
}


def _coerce(section: str, key: str, expected: Any, value: Any, *, from_env: bool) -> Any:
    where = f"{section}.{key}"
    if expected is bool:
        if from_env and isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if expected is int:
        if from_env and isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if expected is float:
        if from_env and isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if expected is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported setting type {expected!r}")  # pragma: no cover


def _check(section: str, key: str, value: Any) -> None:
    where = f"{section}.{key}"
    choices = _CHOICES.get((section, key))
    if choices is not None and value not in choices:
        raise ConfigError(f"{where}: must be one of {', '.join(choices)}, got {value!r}")
    if (section, key) in _PORTS and not 0 <= value <= 65535:
        raise ConfigError(f"{where}: must be a port number between 0 and 65535, got {value}")
    if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
        raise ConfigError(f"{where}: must not be negative, got {value}")


def _section_types(cls: type[Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def load_config(path: Path | None, environ: Mapping[str, str]) -> Config:
    """Read ``path`` (if given) and apply ``RELAIS_<SECTION>_<KEY>`` overrides from ``environ``."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: configuration file not found") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read configuration file: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    config_types = _section_types(Config)
    for section_name, value in raw.items():
        if section_name not in config_types:
            raise ConfigError(f"{section_name}: unknown section")
        if not isinstance(value, dict):
            raise ConfigError(f"{section_name}: expected a [section] table")
    sections: dict[str, Any] = {}
    for section_name, section_cls in config_types.items():
        types_by_key = _section_types(section_cls)
        values: dict[str, Any] = {}
        for key, value in raw.get(section_name, {}).items():
            if key not in types_by_key:
                raise ConfigError(f"{section_name}.{key}: unknown setting")
            values[key] = _coerce(section_name, key, types_by_key[key], value, from_env=False)
        for key, expected in types_by_key.items():
            env_name = f"RELAIS_{section_name.upper()}_{key.upper()}"
            if env_name in environ:
                values[key] = _coerce(section_name, key, expected, environ[env_name], from_env=True)
        for key, value in values.items():
            _check(section_name, key, value)
        sections[section_name] = section_cls(**values)
    if sections["bus"].backend == "redis" and not sections["bus"].redis_url:
        raise ConfigError("bus.redis_url: required when bus.backend is redis")
    unknown_env = sorted(
        name
        for name in environ
        if name.startswith("RELAIS_") and not _is_known_env(name, config_types)
    )
    if unknown_env:
        raise ConfigError(f"{unknown_env[0]}: unknown setting in environment override")
    return Config(**sections)


# Environment variables of ours that are not settings overrides.
_NON_SETTING_ENV = frozenset({"RELAIS_DATA_DIR"})


def _is_known_env(name: str, config_types: dict[str, Any]) -> bool:
    if name in _NON_SETTING_ENV:
        return True
    for section_name, section_cls in config_types.items():
        for key in _section_types(section_cls):
            if name == f"RELAIS_{section_name.upper()}_{key.upper()}":
                return True
    return False


def defaults_as_dict() -> dict[str, dict[str, Any]]:
    """Every setting's default, by section (used to keep relais.toml true by a test)."""
    return {name: dataclasses.asdict(getattr(Config(), name)) for name in _section_types(Config)}


__all__ = ["Config", "ConfigError", "defaults_as_dict", "load_config"]
