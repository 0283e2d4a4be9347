import pytest

from relay.errors import InvalidIdentifier
from relay.identifiers import luhn_valid, nir_key, validate_nir, validate_rpps


def _with_luhn(prefix10: str) -> str:
    for check in "0123456789":
        if luhn_valid(prefix10 + check):
            return prefix10 + check
    raise AssertionError("unreachable")


def test_rpps_valid_with_luhn_key() -> None:
    rpps = _with_luhn("1000000000")
    assert validate_rpps(rpps) == rpps
    assert validate_rpps(f" {rpps[:5]} {rpps[5:]} ") == rpps


@pytest.mark.parametrize("bad", ["123", "1234567890a", "123456789012", ""])
def test_rpps_wrong_format(bad: str) -> None:
    with pytest.raises(InvalidIdentifier, match="11 chiffres"):
        validate_rpps(bad)


def test_rpps_wrong_key() -> None:
    rpps = _with_luhn("1000000000")
    wrong = rpps[:10] + str((int(rpps[10]) + 1) % 10)
    with pytest.raises(InvalidIdentifier, match="clé de contrôle"):
        validate_rpps(wrong)


def test_luhn_known_values() -> None:
    # Classic Luhn examples (ISO/IEC 7812): 79927398713 is valid, ...710 is not.
    assert luhn_valid("79927398713")
    assert not luhn_valid("79927398710")


def test_nir_key_known_example() -> None:
    # INSEE's published example: 1 55 08 75 109 123, key 97 - (1550875109123 mod 97).
    assert nir_key("1550875109123") == 97 - (1550875109123 % 97)
    nir = "1550875109123" + f"{nir_key('1550875109123'):02d}"
    assert validate_nir(nir) == nir


def test_nir_corsica_uses_19_and_18() -> None:
    base_a = "18502" + "2A" + "123456"
    key_a = 97 - (int("18502" + "19" + "123456") % 97)
    assert validate_nir(f"{base_a}{key_a:02d}") == f"{base_a}{key_a:02d}"
    base_b = "28502" + "2B" + "123456"
    key_b = 97 - (int("28502" + "18" + "123456") % 97)
    assert validate_nir(f"{base_b.lower()}{key_b:02d}") == f"{base_b}{key_b:02d}"


def test_nir_wrong_key_and_format() -> None:
    with pytest.raises(InvalidIdentifier, match="clé de contrôle"):
        validate_nir("155087510912300")
    with pytest.raises(InvalidIdentifier, match="13 caractères"):
        validate_nir("1550875")
