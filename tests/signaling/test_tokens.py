"""Join-link tokens: issue/verify and each exact refusal."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from types import MappingProxyType

import pytest

from signaling.errors import (
    CloseCode,
    TokenError,
    TokenExpired,
    TokenForged,
    TokenMalformed,
    TokenRevoked,
    TokenWrongConsultation,
)
from signaling.messages import Role
from signaling.tokens import JoinGrant, issue_join_token, verify_join_token

SECRET = bytes(range(32))
OTHER_SECRET = bytes(range(1, 33))
NOW = 1_700_000_000.0
EXPIRES = 1_700_003_600


def _issue(
    *,
    consultation_id: str = "c0nsult-8Jx2",
    participant_id: str = "pat_Q7",
    role: Role = Role.PATIENT,
    expires_at: int = EXPIRES,
    version: int = 3,
    birth_date_check: bool = False,
) -> str:
    return issue_join_token(
        SECRET,
        consultation_id=consultation_id,
        participant_id=participant_id,
        role=role,
        expires_at=expires_at,
        version=version,
        birth_date_check=birth_date_check,
    )


def _verify(
    token: str,
    *,
    consultation_id: str = "c0nsult-8Jx2",
    now: float = NOW,
    current_versions: Mapping[str, int] | int = MappingProxyType({"pat_Q7": 3}),
) -> JoinGrant:
    return verify_join_token(
        SECRET,
        token,
        consultation_id=consultation_id,
        now=now,
        current_versions=current_versions,
    )


def test_issue_then_verify_gives_the_grant() -> None:
    grant = _verify(_issue(birth_date_check=True))
    assert grant == JoinGrant(
        consultation_id="c0nsult-8Jx2",
        participant_id="pat_Q7",
        role=Role.PATIENT,
        expires_at=EXPIRES,
        version=3,
        birth_date_check=True,
    )
    assert _verify(_issue()).birth_date_check is False


def test_token_is_url_safe_short_and_free_of_personal_data() -> None:
    # Realistic ids: 22-character random ones (128 bits, base64url).
    token = _issue(consultation_id="A" * 22, participant_id="B" * 22)
    assert re.fullmatch(r"[A-Za-z0-9._-]+", token)
    assert len(token) < 140
    # The issuing API takes no name or birth date at all; the payload is ids, role, times.
    assert token.split(".")[:7] == ["j1", "A" * 22, "B" * 22, "patient", str(EXPIRES), "3", "0"]


def test_one_version_for_all_participants_is_accepted() -> None:
    assert _verify(_issue(), current_versions=3).version == 3


def test_professional_roles_round_trip() -> None:
    for role in Role:
        assert _verify(_issue(role=role)).role is role


@pytest.mark.parametrize(
    "tamper",
    [
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # MAC edited
        lambda t: t.replace("pat_Q7", "pat_Q8"),  # another participant
        lambda t: t.replace(".patient.", ".physician."),  # role escalation
        lambda t: t.replace(f".{EXPIRES}.", f".{EXPIRES + 86400}."),  # longer life
        lambda t: t.replace(".3.0.", ".3.1."),  # flags
        lambda t: t.replace(".3.0.", ".4.0."),  # version
    ],
)
def test_any_edit_is_forged(tamper: Callable[[str], str]) -> None:
    token = tamper(_issue())
    with pytest.raises(TokenForged) as caught:
        _verify(token, current_versions=4 if ".4.0." in token else 3)
    assert caught.value.code == "token_forged"
    assert caught.value.http_status == 401
    assert caught.value.ws_close == CloseCode.POLICY_VIOLATION


def test_token_from_another_secret_is_forged() -> None:
    token = issue_join_token(
        OTHER_SECRET,
        consultation_id="c0nsult-8Jx2",
        participant_id="pat_Q7",
        role=Role.PATIENT,
        expires_at=EXPIRES,
        version=3,
    )
    with pytest.raises(TokenForged):
        _verify(token)


def test_mac_is_checked_before_anything_else() -> None:
    # A forged token for another consultation, expired and revoked: still just "forged".
    token = _issue(consultation_id="other", expires_at=1, version=0)[:-2] + "xx"
    with pytest.raises(TokenForged):
        _verify(token)


def test_patient_token_on_another_consultation() -> None:
    with pytest.raises(TokenWrongConsultation) as caught:
        _verify(_issue(), consultation_id="another-consult")
    assert caught.value.code == "token_wrong_consultation"
    assert caught.value.http_status == 403


def test_expired_at_the_expiry_second() -> None:
    token = _issue(expires_at=int(NOW) + 10)
    assert _verify(token, now=NOW + 9.999).expires_at == int(NOW) + 10
    with pytest.raises(TokenExpired) as caught:
        _verify(token, now=NOW + 10)
    assert caught.value.code == "token_expired"


def test_revoked_when_reissued_or_participant_gone() -> None:
    token = _issue(version=3)
    with pytest.raises(TokenRevoked) as caught:
        _verify(token, current_versions={"pat_Q7": 4})
    assert caught.value.code == "token_revoked"
    assert caught.value.http_status == 403
    with pytest.raises(TokenRevoked):
        _verify(token, current_versions={"someone-else": 3})
    with pytest.raises(TokenRevoked):
        _verify(token, current_versions=2)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "j2.c.p.patient.1.0.0." + "A" * 43,  # unknown format version
        "j1.c.p.patient.01.0.0." + "A" * 43,  # non-canonical number
        "j1.c.p.patient.1.0.0." + "A" * 42,  # truncated MAC
        "j1.c.p.patient.1.0.0." + "A" * 43 + ".x",  # trailing field
        "j1.c:x.p.patient.1.0.0." + "A" * 43,  # unsafe id
        "j1." + "c" * 65 + ".p.patient.1.0.0." + "A" * 43,  # id too long
        "j1.c.p.patient.1.0.0." + "A" * 43 + "A" * 400,  # too long
        " j1.c.p.patient.1.0.0." + "A" * 43,
    ],
)
def test_malformed(token: str) -> None:
    with pytest.raises(TokenMalformed) as caught:
        _verify(token)
    assert caught.value.code == "token_malformed"
    assert isinstance(caught.value, TokenError)


def test_issue_refuses_unsafe_inputs_and_short_secrets() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        issue_join_token(
            b"short",
            consultation_id="c",
            participant_id="p",
            role=Role.GUEST,
            expires_at=1,
            version=0,
        )
    with pytest.raises(ValueError, match="at least 32 bytes"):
        verify_join_token(b"short", "x", consultation_id="c", now=0, current_versions=0)
    with pytest.raises(ValueError, match="participant id"):
        _issue(participant_id="a.b")
    with pytest.raises(ValueError, match="consultation id"):
        _issue(consultation_id="")
    with pytest.raises(ValueError, match="Unix time"):
        _issue(expires_at=-1)
    with pytest.raises(ValueError, match="version"):
        _issue(version=-1)
