"""Professionals, teams and sessions: validation (pure) and the SQL adapter.

Validation functions take raw input and return frozen values or raise a
:class:`BadRequest` naming the field in French. :class:`AccountStore` only turns
those values into SQL and rows back into values.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from dataclasses import dataclass
from datetime import datetime

from relay.errors import BadRequest, Conflict
from relay.identifiers import validate_rpps
from relay.roles import Role, TeamKind
from storage.database import Database
from storage.ids import new_id as new_id  # re-exported: the relay's identifiers

_EMAIL = re.compile(r"^[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(\.[A-Za-z0-9\-]+)+$")
_TEAM_ADDRESS = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,62}$")


def token_digest(token: str) -> str:
    """Sessions are stored by the SHA-256 of their token, so a database copy grants nothing."""
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


@dataclass(frozen=True)
class Professional:
    id: str
    email: str
    display_name: str
    role: Role
    specialty: str | None
    rpps: str | None
    totp_enabled: bool
    active: bool


@dataclass(frozen=True)
class Team:
    id: str
    address: str
    name: str
    kind: TeamKind
    specialty: str | None


@dataclass(frozen=True)
class NewProfessional:
    email: str
    display_name: str
    role: Role
    specialty: str | None
    rpps: str | None


@dataclass(frozen=True)
class Credentials:
    """What a login checks: the account (if any) and its secrets."""

    professional: Professional
    password_hash: str | None
    totp_secret: str | None


@dataclass(frozen=True)
class Session:
    professional: Professional
    method: str
    expires_at: datetime


def validate_email(value: str) -> str:
    email = value.strip().lower()
    if len(email) > 254 or not _EMAIL.fullmatch(email):
        raise BadRequest("L'adresse e-mail n'est pas valide.", code="invalid_email")
    return email


def validate_new_professional(
    *, email: str, display_name: str, role: str, rpps: str | None, specialty: str | None
) -> NewProfessional:
    """Check a new account's fields; raise BadRequest naming the first problem."""
    try:
        parsed_role = Role(role)
    except ValueError:
        roles = ", ".join(r.value for r in Role)
        raise BadRequest(f"Rôle inconnu « {role} » (attendu : {roles}).") from None
    name = " ".join(display_name.split())
    if not 1 <= len(name) <= 120:
        raise BadRequest("Le nom affiché doit comporter entre 1 et 120 caractères.")
    spec = specialty.strip() if specialty else None
    if parsed_role is Role.SPECIALIST and not spec:
        raise BadRequest("Un médecin spécialiste doit avoir une spécialité.")
    return NewProfessional(
        email=validate_email(email),
        display_name=name,
        role=parsed_role,
        specialty=spec,
        rpps=validate_rpps(rpps) if rpps else None,
    )


def validate_team_address(value: str) -> str:
    address = value.strip().lower()
    if not _TEAM_ADDRESS.fullmatch(address):
        raise BadRequest(
            "L'adresse d'équipe ne peut contenir que des minuscules, chiffres, points et tirets."
        )
    return address


def _professional(row: sqlite3.Row) -> Professional:
    return Professional(
        id=row["id"],
        email=row["email"],
        display_name=row["display_name"],
        role=Role(row["role"]),
        specialty=row["specialty"],
        rpps=row["rpps"],
        totp_enabled=bool(row["totp_enabled"]),
        active=bool(row["active"]),
    )


def _team(row: sqlite3.Row) -> Team:
    return Team(
        id=row["id"],
        address=row["address"],
        name=row["name"],
        kind=TeamKind(row["kind"]),
        specialty=row["specialty"],
    )


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class AccountStore:
    """SQL adapter for professionals, teams, sessions and client certificates."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def create_professional(
        self, new: NewProfessional, password_hash: str | None, now: datetime
    ) -> Professional:
        pro_id = new_id()

        def insert(conn: sqlite3.Connection) -> None:
            clash = conn.execute(
                "SELECT email, rpps FROM professionals WHERE email = ? OR rpps = ?",
                (new.email, new.rpps),
            ).fetchone()
            if clash is not None:
                field = "adresse e-mail" if clash["email"] == new.email else "numéro RPPS"
                raise Conflict(f"Un compte existe déjà avec cette {field}.")
            conn.execute(
                "INSERT INTO professionals (id, email, display_name, role, specialty, rpps,"
                " password_hash, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    pro_id,
                    new.email,
                    new.display_name,
                    new.role.value,
                    new.specialty,
                    new.rpps,
                    password_hash,
                    now.isoformat(),
                ),
            )

        await self.db.transaction(insert)
        created = await self.by_id(pro_id)
        assert created is not None
        return created

    async def by_id(self, pro_id: str) -> Professional | None:
        row = await self.db.fetchone("SELECT * FROM professionals WHERE id = ?", (pro_id,))
        return _professional(row) if row is not None else None

    async def credentials(self, email: str) -> Credentials | None:
        row = await self.db.fetchone(
            "SELECT * FROM professionals WHERE email = ? AND active = 1", (email.strip().lower(),)
        )
        if row is None:
            return None
        return Credentials(_professional(row), row["password_hash"], row["totp_secret"])

    async def set_password(self, pro_id: str, password_hash: str) -> None:
        await self.db.execute(
            "UPDATE professionals SET password_hash = ? WHERE id = ?", (password_hash, pro_id)
        )

    async def set_totp(self, pro_id: str, secret: str | None, *, enabled: bool) -> None:
        await self.db.execute(
            "UPDATE professionals SET totp_secret = ?, totp_enabled = ? WHERE id = ?",
            (secret, int(enabled), pro_id),
        )

    async def totp_secret(self, pro_id: str) -> str | None:
        row = await self.db.fetchone(
            "SELECT totp_secret FROM professionals WHERE id = ?", (pro_id,)
        )
        return None if row is None else row["totp_secret"]

    async def create_team(
        self, *, address: str, name: str, kind: TeamKind, specialty: str | None, now: datetime
    ) -> Team:
        team = Team(new_id(), validate_team_address(address), name.strip(), kind, specialty)

        def insert(conn: sqlite3.Connection) -> None:
            taken = conn.execute(
                "SELECT 1 FROM teams WHERE address = ?", (team.address,)
            ).fetchone()
            if taken is not None:
                raise Conflict("Une équipe existe déjà avec cette adresse.")
            conn.execute(
                "INSERT INTO teams (id, address, name, kind, specialty, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (team.id, team.address, team.name, kind.value, specialty, now.isoformat()),
            )

        await self.db.transaction(insert)
        return team

    async def team_by_address(self, address: str) -> Team | None:
        row = await self.db.fetchone(
            "SELECT * FROM teams WHERE address = ?", (address.strip().lower(),)
        )
        return _team(row) if row is not None else None

    async def team_by_id(self, team_id: str) -> Team | None:
        row = await self.db.fetchone("SELECT * FROM teams WHERE id = ?", (team_id,))
        return _team(row) if row is not None else None

    async def add_member(self, team_id: str, pro_id: str, now: datetime) -> None:
        await self.db.execute(
            "INSERT INTO team_members (team_id, professional_id, added_at) VALUES (?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            (team_id, pro_id, now.isoformat()),
        )

    async def teams_of(self, pro_id: str) -> list[Team]:
        rows = await self.db.fetchall(
            "SELECT t.* FROM teams t JOIN team_members m ON m.team_id = t.id"
            " WHERE m.professional_id = ? ORDER BY t.name",
            (pro_id,),
        )
        return [_team(row) for row in rows]

    async def search_directory(
        self, query: str, limit: int
    ) -> tuple[list[Professional], list[tuple[Team, int]]]:
        """Active professionals and teams whose name, address or specialty contains ``query``."""
        pattern = f"%{_escape_like(query.strip().lower())}%"
        pros = await self.db.fetchall(
            "SELECT * FROM professionals WHERE active = 1 AND ("
            " lower(display_name) LIKE ? ESCAPE '\\' OR lower(email) LIKE ? ESCAPE '\\'"
            " OR lower(coalesce(specialty, '')) LIKE ? ESCAPE '\\')"
            " ORDER BY display_name LIMIT ?",
            (pattern, pattern, pattern, limit),
        )
        teams = await self.db.fetchall(
            "SELECT t.*, (SELECT count(*) FROM team_members m WHERE m.team_id = t.id) AS members"
            " FROM teams t WHERE lower(t.name) LIKE ? ESCAPE '\\' OR t.address LIKE ? ESCAPE '\\'"
            " OR lower(coalesce(t.specialty, '')) LIKE ? ESCAPE '\\' ORDER BY t.name LIMIT ?",
            (pattern, pattern, pattern, limit),
        )
        return [_professional(r) for r in pros], [(_team(r), int(r["members"])) for r in teams]

    async def create_session(
        self, token: str, pro_id: str, method: str, now: datetime, expires_at: datetime
    ) -> None:
        await self.db.execute(
            "INSERT INTO sessions (token_hash, professional_id, method, created_at, expires_at,"
            " last_seen_at) VALUES (?, ?, ?, ?, ?, ?)",
            (
                token_digest(token),
                pro_id,
                method,
                now.isoformat(),
                expires_at.isoformat(),
                now.isoformat(),
            ),
        )

    async def session(
        self, token: str, now: datetime, idle_seconds: float, *, touch: bool = True
    ) -> Session | None:
        """The live session for ``token``, refreshing its last-seen time; None if expired.

        ``touch=False`` checks without counting as activity (background re-checks of an open
        push socket must not keep an idle session alive).
        """
        digest = token_digest(token)

        def lookup(conn: sqlite3.Connection) -> Session | None:
            row = conn.execute(
                "SELECT s.method, s.expires_at, s.last_seen_at, p.* FROM sessions s"
                " JOIN professionals p ON p.id = s.professional_id"
                " WHERE s.token_hash = ? AND p.active = 1",
                (digest,),
            ).fetchone()
            if row is None:
                return None
            expires_at = datetime.fromisoformat(row["expires_at"])
            last_seen = datetime.fromisoformat(row["last_seen_at"])
            if now >= expires_at or (now - last_seen).total_seconds() > idle_seconds:
                conn.execute("DELETE FROM sessions WHERE token_hash = ?", (digest,))
                return None
            # Refresh at most once a minute: each refresh is a durable write.
            if touch and (now - last_seen).total_seconds() > 60:
                conn.execute(
                    "UPDATE sessions SET last_seen_at = ? WHERE token_hash = ?",
                    (now.isoformat(), digest),
                )
            return Session(_professional(row), row["method"], expires_at)

        return await self.db.transaction(lookup)

    async def delete_session(self, token: str) -> None:
        await self.db.execute("DELETE FROM sessions WHERE token_hash = ?", (token_digest(token),))

    async def record_client_certificate(
        self, *, serial: str, pro_id: str, fingerprint: str, not_after: datetime, now: datetime
    ) -> None:
        await self.db.execute(
            "INSERT INTO client_certificates (serial, professional_id, fingerprint_sha256,"
            " not_after, issued_at) VALUES (?, ?, ?, ?, ?)",
            (serial, pro_id, fingerprint, not_after.isoformat(), now.isoformat()),
        )

    async def by_client_certificate(self, fingerprint: str) -> Professional | None:
        row = await self.db.fetchone(
            "SELECT p.* FROM client_certificates c JOIN professionals p ON p.id = c.professional_id"
            " WHERE c.fingerprint_sha256 = ? AND c.revoked_at IS NULL AND p.active = 1",
            (fingerprint,),
        )
        return _professional(row) if row is not None else None
