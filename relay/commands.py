"""What each ``relais`` sub-command does (argument parsing lives in cli.py)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import hashlib
import secrets
import sys
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from certs.ca import CertifiedKey, write_file_atomically
from certs.issue import issue_client_certificate
from certs.pkcs12 import to_pkcs12
from relay.accounts import AccountStore, validate_email, validate_new_professional
from relay.audit import inbox as audit_inbox
from relay.audit.events import (
    Actor,
    ActorKind,
    AuditAction,
    AuditRecord,
    EntityRef,
    Outcome,
    ResourceKind,
)
from relay.cli import _config, _read_secret_file
from relay.config import Config
from relay.datadir import DataDir, create_pki, generate_password, make_root, render_config
from relay.errors import ConfigError, Conflict, NotFound, RelayError
from relay.passwords import Passwords
from relay.roles import Role, TeamKind
from relay.runtime import open_audit
from storage.blobs import BlobStore
from storage.database import Database
from storage.keys import Keyring
from storage.sealed import SealedDocuments


def _operator() -> Actor:
    """The person at the command line, as the operating system knows them."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    safe = "".join(c if c.isalnum() or c in "._-" else "-" for c in user)[:60] or "unknown"
    return Actor(ActorKind.SYSTEM, f"cli:{safe}")


async def _trace(
    data: DataDir,
    action: AuditAction,
    *,
    entities: tuple[EntityRef, ...] = (),
    detail: tuple[tuple[str, str], ...] = (),
) -> None:
    """Hand an admin action to the audit log (via its inbox: the server may hold the log)."""
    config = _config(data)
    record = AuditRecord(
        action=action,
        outcome=Outcome.SUCCESS,
        now=datetime.now(UTC),
        actor=_operator(),
        observer=config.server.node_name,
        entities=entities,
        detail=detail,
    )
    await audit_inbox.submit(data.audit, record)


def _passwords(config: Config) -> Passwords:
    acc = config.accounts
    return Passwords(
        time_cost=acc.argon2_time_cost,
        memory_kib=acc.argon2_memory_kib,
        parallelism=acc.argon2_parallelism,
        min_length=acc.password_min_length,
    )


async def initialise(
    data: DataDir, *, domain: str, admin_email: str | None, admin_password: str | None
) -> str | None:
    """Create the data directory; return the generated admin password (None if given)."""
    from relay.datadir import validate_domain

    try:
        domain = validate_domain(domain)
    except ValueError as exc:
        raise RelayError(str(exc), code="invalid_domain") from None
    if data.is_initialised():
        raise Conflict(f"{data.root} is already initialised (relais.toml exists)")
    make_root(data)
    now = datetime.now(UTC)
    # The config is written last: its presence marks an initialised data dir, so an
    # interrupted init can simply be run again.
    if not data.keys.exists():
        Keyring.create(data.keys)
    create_pki(data, domain, now)
    data.blobs.mkdir(mode=0o700, exist_ok=True)
    data.audit.mkdir(mode=0o700, exist_ok=True)
    write_file_atomically(data.config, render_config(domain).encode("utf-8"), mode=0o600)
    config = _config(data)
    generated = None
    if admin_password is None:
        admin_password = generated = generate_password()
    passwords = _passwords(config)
    passwords.check_strength(admin_password)
    new = validate_new_professional(
        email=admin_email or f"admin@{domain}",
        display_name="Administrateur",
        role="admin",
        rpps=None,
        specialty=None,
    )
    db = await Database.open(data.database(config))
    try:
        accounts = AccountStore(db)
        admin = None
        if await accounts.credentials(new.email) is None:
            admin = await accounts.create_professional(
                new, await passwords.hash(admin_password), now
            )
    finally:
        await db.close()
    # Creates the audit database and its signing and patient keys, and traces the first
    # account: the log starts with the relay.
    log = await open_audit(data, config)
    try:
        if admin is not None:
            await log.record(
                AuditRecord(
                    action=AuditAction.ACCOUNT_CREATED,
                    outcome=Outcome.SUCCESS,
                    now=now,
                    actor=_operator(),
                    observer=config.server.node_name,
                    entities=(EntityRef(ResourceKind.ACCOUNT, admin.id),),
                    detail=(("new_role", "admin"),),
                )
            )
    finally:
        await log.close()
    return generated


async def init(args: argparse.Namespace, data: DataDir) -> int:
    password = (
        _read_secret_file(args.admin_password_file, "password")
        if args.admin_password_file
        else None
    )
    generated = await initialise(
        data, domain=args.domain, admin_email=args.admin_email, admin_password=password
    )
    _print_initialised(data, args.admin_email or f"admin@{args.domain}", generated)
    return 0


def _print_initialised(data: DataDir, admin: str, generated: str | None) -> None:
    print(f"Relais Santé initialisé dans {data.root}")
    print(f"  Compte administrateur : {admin}")
    if generated:
        print(f"  Mot de passe à usage unique : {generated}")
        print("  (affiché une seule fois ; changez-le après la première connexion)")


async def serve(args: argparse.Namespace, data: DataDir) -> int:
    from relay.http.server import serve as run_server

    if not data.is_initialised():
        generated = await initialise(
            data, domain="relais.localhost", admin_email=None, admin_password=None
        )
        _print_initialised(data, "admin@relais.localhost", generated)
    await run_server(data, _config(data))
    return 0


async def user_add(args: argparse.Namespace, data: DataDir) -> int:
    config = _config(data)
    new = validate_new_professional(
        email=args.email,
        display_name=args.name or args.email.split("@")[0],
        role=args.role,
        rpps=args.rpps,
        specialty=args.specialty,
    )
    passwords = _passwords(config)
    generated = None
    password = _read_secret_file(args.password_file, "password") if args.password_file else None
    if password is None:
        password = generated = generate_password()
    passwords.check_strength(password)
    db = await Database.open(data.database(config))
    try:
        accounts = AccountStore(db)
        now = datetime.now(UTC)
        teams = []
        for address in args.team:
            team = await accounts.team_by_address(address)
            if team is None:
                raise NotFound(f"no team with address {address!r}")
            teams.append(team)
        pro = await accounts.create_professional(new, await passwords.hash(password), now)
        await _trace(
            data,
            AuditAction.ACCOUNT_CREATED,
            entities=(EntityRef(ResourceKind.ACCOUNT, pro.id),),
            detail=(("new_role", pro.role.value),),
        )
        for team in teams:
            await _trace(
                data,
                AuditAction.TEAM_CHANGED,
                entities=(
                    EntityRef(ResourceKind.TEAM, team.id),
                    EntityRef(ResourceKind.ACCOUNT, pro.id),
                ),
                detail=(("reason", "member_added"),),
            )
            await accounts.add_member(team.id, pro.id, now)
    finally:
        await db.close()
    print(f"Compte créé : {pro.email} ({Role(pro.role).value})")
    if generated:
        print(f"  Mot de passe à usage unique : {generated}")
    return 0


async def team_add(args: argparse.Namespace, data: DataDir) -> int:
    config = _config(data)
    db = await Database.open(data.database(config))
    try:
        team = await AccountStore(db).create_team(
            address=args.address,
            name=args.name,
            kind=TeamKind(args.kind),
            specialty=args.specialty,
            now=datetime.now(UTC),
        )
    finally:
        await db.close()
    await _trace(
        data,
        AuditAction.TEAM_CHANGED,
        entities=(EntityRef(ResourceKind.TEAM, team.id),),
        detail=(("reason", "team_created"),),
    )
    print(f"Équipe créée : {team.name} <{team.address}@{config.server.domain}>")
    return 0


async def cert_issue(args: argparse.Namespace, data: DataDir) -> int:
    config = _config(data)
    email = validate_email(args.email)
    ca = CertifiedKey.load(data.ca_cert, data.ca_key)
    db = await Database.open(data.database(config))
    try:
        accounts = AccountStore(db)
        creds = await accounts.credentials(email)
        if creds is None:
            raise NotFound(f"no active account for {email}")
        pro = creds.professional
        now = datetime.now(UTC)
        certified = await asyncio.to_thread(
            issue_client_certificate,
            ca,
            email=pro.email,
            display_name=pro.display_name[:64],
            rpps=pro.rpps,
            now=now,
        )
        generated = None
        if args.password_file:
            password = _read_secret_file(args.password_file, "password")
        else:
            password = generated = secrets.token_urlsafe(12)
        p12 = await asyncio.to_thread(
            to_pkcs12, certified, ca.certificate, password.encode(), pro.display_name
        )
        der = certified.certificate.public_bytes(serialization.Encoding.DER)
        serial = f"{certified.certificate.serial_number:x}"
        await _trace(
            data,
            AuditAction.CREDENTIALS_CHANGED,
            entities=(EntityRef(ResourceKind.ACCOUNT, pro.id),),
            detail=(("setting", "client_certificate"), ("certificate_serial", serial)),
        )
        await accounts.record_client_certificate(
            serial=serial,
            pro_id=pro.id,
            fingerprint=hashlib.sha256(der).hexdigest(),
            not_after=certified.certificate.not_valid_after_utc,
            now=now,
        )
    finally:
        await db.close()
    write_file_atomically(Path(args.out), p12, mode=0o600)
    print(f"Certificat délivré pour {email} : {args.out}")
    if generated:
        print(f"  Mot de passe du fichier .p12 : {generated}")
    return 0


async def keys_rotate(args: argparse.Namespace, data: DataDir) -> int:
    config = _config(data)
    keyring = Keyring.load(data.keys)
    old_ids = keyring.key_ids()
    new_id = keyring.rotate()
    await _trace(
        data,
        AuditAction.KEY_ROTATED,
        entities=(EntityRef(ResourceKind.KEY, new_id),),
        detail=(("key_id", new_id),),
    )
    blobs = BlobStore(data.blobs, keyring, chunk_size=config.storage.blob_chunk_kib * 1024)
    count = await blobs.rewrap_all()
    # Message contents are sealed in SQL rows (storage/sealed.py): same keys, re-wrapped too.
    db = await Database.open(data.database(config))
    try:
        documents = SealedDocuments(db, blobs)
        count += await documents.rewrap_all()
    finally:
        await db.close()
    print(f"Nouvelle clé maîtresse {new_id} ; {count} clés de données re-chiffrées.")
    if args.destroy_old:
        for key_id in sorted(old_ids):
            keyring.destroy(key_id, users=[blobs, documents])
            await _trace(
                data,
                AuditAction.KEY_ROTATED,
                entities=(EntityRef(ResourceKind.KEY, key_id),),
                detail=(("key_id", key_id), ("reason", "destroyed")),
            )
            print(f"  Ancienne clé {key_id} détruite.")
    else:
        print("  Les anciennes clés peuvent être détruites avec : relais keys rotate --destroy-old")
    return 0


def _iso(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"--{name}: not an ISO 8601 time: {value!r}") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


async def audit(args: argparse.Namespace, data: DataDir) -> int:
    from relay.audit.commands import export_command, verify_command

    if args.audit_command == "verify":
        ok, lines = await verify_command(
            data.audit,
            database=Path(args.database) if args.database else None,
            verifier_key_file=Path(args.verifier_key) if args.verifier_key else None,
            external_checkpoint=(
                Path(args.external_checkpoint) if args.external_checkpoint else None
            ),
            witness_dir=Path(args.witness_dir) if args.witness_dir else _witness(data),
        )
        for line in lines:
            print(line)
        waiting = await audit_inbox.pending(data.audit) if args.database is None else 0
        if waiting:
            print(
                f"{waiting} event(s) handed over by the command line wait in the inbox;"
                " the running relay appends them within a second (or at its next start)."
            )
        return 0 if ok else 1
    since, until = _iso(args.since, "since"), _iso(args.until, "until")
    await _trace(
        data,
        AuditAction.EXPORT,
        entities=(EntityRef(ResourceKind.AUDIT_LOG, "export"),),
        detail=(("format", args.format),),
    )
    if args.out:
        # The export streams to a local file the operator named; a short blocking write
        # in a one-shot CLI command is fine.
        with Path(args.out).open("wb") as out:  # noqa: ASYNC230
            count = await export_command(
                data.audit, fmt=args.format, out=out, since=since, until=until
            )
        print(f"{count} événements exportés vers {args.out}", file=sys.stderr)
    else:
        count = await export_command(
            data.audit, fmt=args.format, out=sys.stdout.buffer, since=since, until=until
        )
    return 0


def _witness(data: DataDir) -> Path | None:
    if not data.config.exists():
        return None
    return data.resolve(_config(data).audit.witness_dir)
