"""The ``relais`` command line (also ``python -m relay``).

Exit codes: 0 success, 1 the operation failed, 2 bad usage or configuration.
Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from certs.errors import CertificateError
from relay.config import Config, load_config
from relay.datadir import DataDir
from relay.errors import ConfigError, RelayError
from storage.errors import StorageError

DEFAULT_DATA_DIR = "./var/relais"


def _data_dir(args: argparse.Namespace) -> DataDir:
    return DataDir(Path(args.data_dir or os.environ.get("RELAIS_DATA_DIR") or DEFAULT_DATA_DIR))


def _config(data: DataDir) -> Config:
    return load_config(data.config if data.config.exists() else None, os.environ)


def _read_secret_file(path: str, what: str) -> str:
    try:
        value = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what} file: {exc.strerror}") from None
    if not value:
        raise ConfigError(f"{path}: {what} file is empty")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relais", description="Relais Santé: secure relay for primary-care teams."
    )
    parser.add_argument("--data-dir", help=f"data directory (default {DEFAULT_DATA_DIR})")
    commands = parser.add_subparsers(dest="command", required=True)

    init = commands.add_parser("init", help="create a data directory")
    init.add_argument("--domain", default="relais.localhost", help="mail domain served")
    init.add_argument("--admin-email", help="first administrator (default admin@DOMAIN)")
    init.add_argument("--admin-password-file", help="file holding the admin password")

    commands.add_parser("serve", help="run the relay (initialises an empty data directory)")

    user = commands.add_parser("user", help="manage professionals").add_subparsers(
        dest="user_command", required=True
    )
    add = user.add_parser("add", help="create a professional's account")
    add.add_argument("--email", required=True)
    add.add_argument("--name", help="display name (default: the e-mail's local part)")
    add.add_argument(
        "--role",
        required=True,
        choices=["nurse", "physician", "specialist", "coordinator", "admin"],
    )
    add.add_argument("--rpps", help="RPPS number (11 digits, Luhn key)")
    add.add_argument("--specialty", help="required for specialists")
    add.add_argument("--team", action="append", default=[], help="team address to join")
    add.add_argument("--password-file", help="file holding the password")

    team = commands.add_parser("team", help="manage teams").add_subparsers(
        dest="team_command", required=True
    )
    tadd = team.add_parser("add", help="create a team")
    tadd.add_argument("--address", required=True, help="local part of the team's address")
    tadd.add_argument("--name", required=True)
    tadd.add_argument("--kind", required=True, choices=["msp", "cpts", "service", "specialty_pool"])
    tadd.add_argument("--specialty")

    cert = commands.add_parser("cert", help="client certificates").add_subparsers(
        dest="cert_command", required=True
    )
    issue = cert.add_parser("issue", help="issue a client certificate (PKCS#12)")
    issue.add_argument("--email", required=True)
    issue.add_argument("--out", required=True, help="output .p12 file")
    issue.add_argument("--password-file", help="file holding the .p12 password")

    keys = commands.add_parser("keys", help="master keys").add_subparsers(
        dest="keys_command", required=True
    )
    rotate = keys.add_parser("rotate", help="new master key; re-wrap every blob's data key")
    rotate.add_argument(
        "--destroy-old",
        action="store_true",
        help="destroy the previous master keys once nothing uses them",
    )
    audit = commands.add_parser("audit", help="the tamper-evident audit log").add_subparsers(
        dest="audit_command", required=True
    )
    verify = audit.add_parser(
        "verify", help="check every signature, checkpoint and the whole tree; name any damage"
    )
    verify.add_argument("--database", help="a copy of audit.db (default: the data dir's)")
    verify.add_argument("--verifier-key", help="public verifier key file (default: the data dir's)")
    verify.add_argument(
        "--external-checkpoint", help="latest checkpoint held elsewhere (detects truncation)"
    )
    verify.add_argument("--witness-dir", help="witness directory holding the latest checkpoint")
    export = audit.add_parser("export", help="export events as a FHIR Bundle or ATNA XML")
    export.add_argument("--format", required=True, choices=["fhir", "atna"])
    export.add_argument("--out", help="output file (default: standard output)")
    export.add_argument("--since", help="ISO 8601 time (inclusive)")
    export.add_argument("--until", help="ISO 8601 time (exclusive)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Everything we create (database, blobs, keys, certificates) is private to the service.
    os.umask(0o077)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from relay import commands

    handlers: dict[str, Callable[[argparse.Namespace, DataDir], Coroutine[Any, Any, int]]] = {
        "init": commands.init,
        "serve": commands.serve,
        "user": commands.user_add,
        "team": commands.team_add,
        "cert": commands.cert_issue,
        "keys": commands.keys_rotate,
        "audit": commands.audit,
    }
    data = _data_dir(args)
    try:
        return asyncio.run(handlers[args.command](args, data))
    except ConfigError as exc:
        print(f"relais: {exc.message}", file=sys.stderr)
        return 2
    except (RelayError, StorageError, CertificateError) as exc:
        message = exc.message if isinstance(exc, RelayError) else str(exc)
        print(f"relais: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


__all__ = ["_config", "_read_secret_file", "main"]
