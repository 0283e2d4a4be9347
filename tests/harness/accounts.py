"""The accounts every end-to-end test can rely on (created once per test run)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.harness.relay_process import relais

PASSWORD = "correct horse battery staple"


def luhn_complete(prefix10: str) -> str:
    """Append the Luhn check digit (RPPS numbers are 10 digits + Luhn key)."""
    for check in "0123456789":
        candidate = prefix10 + check
        total = 0
        for position, char in enumerate(reversed(candidate)):
            value = int(char) * (2 if position % 2 else 1)
            total += value - 9 if value > 9 else value
        if total % 10 == 0:
            return candidate
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Account:
    email: str
    role: str
    name: str
    rpps: str | None = None
    specialty: str | None = None
    teams: tuple[str, ...] = ()


NURSE = Account(
    "ide.martin@relais.localhost",
    "nurse",
    "Claire Martin",
    luhn_complete("1000000001"),
    teams=("msp-belleville",),
)
OTHER_NURSE = Account(
    "ide.durand@relais.localhost", "nurse", "Paul Durand", luhn_complete("1000000002")
)
PHYSICIAN = Account(
    "dr.bernard@relais.localhost",
    "physician",
    "Sophie Bernard",
    luhn_complete("1000000003"),
    teams=("msp-belleville",),
)
SPECIALIST = Account(
    "dr.petit@relais.localhost",
    "specialist",
    "Hugo Petit",
    luhn_complete("1000000004"),
    "Dermatologie",
    teams=("dermato-cpts",),
)
COORDINATOR = Account("coord@relais.localhost", "coordinator", "Nadia Roux")
ADMIN = Account("admin@relais.localhost", "admin", "Administrateur")
ALL = (NURSE, OTHER_NURSE, PHYSICIAN, SPECIALIST, COORDINATOR)
TEAMS = (
    ("msp-belleville", "MSP de Belleville", "msp", None),
    ("dermato-cpts", "Dermatologues de la CPTS Est", "specialty_pool", "Dermatologie"),
)


def add_account(data_dir: Path, account: Account, *, teams: bool = True) -> None:
    """Create one professional through the real CLI (password ``PASSWORD``); ``teams=False``
    on a relay without the standard teams."""
    password_file = data_dir.parent / "user-password"
    password_file.write_text(PASSWORD)
    args = ["user", "add", "--email", account.email, "--role", account.role]
    args += ["--name", account.name, "--password-file", str(password_file)]
    if account.rpps:
        args += ["--rpps", account.rpps]
    if account.specialty:
        args += ["--specialty", account.specialty]
    for team in account.teams if teams else ():
        args += ["--team", team]
    relais(data_dir, *args)


def seed(data_dir: Path, root: Path) -> None:
    """Create the standard teams and professionals through the real CLI."""
    for address, name, kind, specialty in TEAMS:
        args = ["team", "add", "--address", address, "--name", name, "--kind", kind]
        if specialty:
            args += ["--specialty", specialty]
        relais(data_dir, *args)
    for account in ALL:
        add_account(data_dir, account)
