"""French health identifiers: RPPS (professionals) and NIR/INS (patients).

Pure functions: parse, validate, normalise. Invalid input raises
:class:`InvalidIdentifier` with a message a person can act on.
"""

from __future__ import annotations

import re

from relay.errors import InvalidIdentifier

_CORSICA = {"2A": "19", "2B": "18"}
_RPPS_RE = re.compile(r"^\d{11}$")
# NIR: sex(1) year(2) month(2) department(2, may be 2A/2B) commune(3) order(3) + key(2).
_NIR_RE = re.compile(r"^[1-478]\d{4}(?:\d{2}|2[AB])\d{6}\d{2}$")


def luhn_valid(digits: str) -> bool:
    """Return True when ``digits`` passes the Luhn (mod 10) check."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def validate_rpps(value: str) -> str:
    """Return the normalised RPPS number (11 digits, last one a Luhn key) or raise."""
    rpps = value.replace(" ", "").strip()
    if not _RPPS_RE.fullmatch(rpps):
        raise InvalidIdentifier("Le numéro RPPS doit comporter exactement 11 chiffres.")
    if not luhn_valid(rpps):
        raise InvalidIdentifier(
            "Le numéro RPPS est invalide : la clé de contrôle ne correspond pas."
        )
    return rpps


def nir_key(first13: str) -> int:
    """Compute the NIR control key: 97 - (n mod 97).

    Corsican departments 2A and 2B are replaced by 19 and 18 for the computation
    (INSEE rule), since the number must be numeric.
    """
    department = first13[5:7].upper()
    numeric = first13[:5] + _CORSICA.get(department, department) + first13[7:]
    return 97 - (int(numeric) % 97)


def validate_nir(value: str) -> str:
    """Return the normalised NIR/INS (15 characters, upper case) or raise."""
    nir = value.replace(" ", "").strip().upper()
    if not _NIR_RE.fullmatch(nir):
        raise InvalidIdentifier(
            "Le NIR doit comporter 13 caractères (département 2A/2B accepté) suivis d'une clé "
            "de 2 chiffres."
        )
    if nir_key(nir[:13]) != int(nir[13:]):
        raise InvalidIdentifier("Le NIR est invalide : la clé de contrôle ne correspond pas.")
    return nir
