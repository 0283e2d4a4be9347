"""Billing hints for tele-expertise: which act codes a case records, and the RQD yearly limit.

Information only: the relay computes no amounts and sends nothing to the health insurance.
It records, when a case is first answered, the acts the professionals may bill and warns a
requester who goes past the yearly limit, so the act is not billed by mistake:

- **RQD** — "demande de télé-expertise", billed by the *requesting* nurse (avenant 9 to the
  nurses' national convention, in force since 23 March 2023): at most **4 per year, per nurse,
  for the same patient**.
- **TE2** — the tele-expertise act of the *answering* (requested) physician.

Which roles bill which act is a table (:data:`REQUESTER_ACTS`, :data:`EXPERT_ACTS`). Requesting
physicians also bill RQD under the physicians' convention; that mapping is left out until the
product decides to show it (add ``Role.PHYSICIAN`` to :data:`REQUESTER_ACTS`).

"Per year" is read as the calendar year by default (how the insurance counts yearly act
limits); :attr:`LimitPeriod.ROLLING_YEAR` (the 365 days before the act) is available for a
stricter reading. The year boundary depends on the time zone: pass ``tz`` (the adapter gives
``Europe/Paris``); the default is UTC so this module never reads the tz database itself.

Pure functions over frozen values; no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from enum import StrEnum
from typing import Final

from relay.roles import Role

__all__ = [
    "ACT_LABELS_FR",
    "EXPERT_ACTS",
    "REQUESTER_ACTS",
    "RQD_YEARLY_LIMIT",
    "ActCode",
    "BillingAct",
    "BillingWarning",
    "LimitPeriod",
    "check_rqd_limit",
    "expert_act",
    "limit_period_bounds",
    "requester_act",
    "rqd_count",
]


class ActCode(StrEnum):
    """Act codes ("lettres clés") recorded on a tele-expertise case."""

    RQD = "RQD"
    TE2 = "TE2"


ACT_LABELS_FR: Final[Mapping[ActCode, str]] = {
    ActCode.RQD: "Demande de télé-expertise (professionnel requérant)",
    ActCode.TE2: "Télé-expertise (médecin requis)",
}

REQUESTER_ACTS: Final[Mapping[Role, ActCode]] = {Role.NURSE: ActCode.RQD}
"""Act billed by the requester, by role (see the module docstring for physicians)."""

EXPERT_ACTS: Final[Mapping[Role, ActCode]] = {
    Role.PHYSICIAN: ActCode.TE2,
    Role.SPECIALIST: ActCode.TE2,
}
"""Act billed by the professional who answers, by role."""

RQD_YEARLY_LIMIT: Final = 4


class LimitPeriod(StrEnum):
    """How "per year" is counted for the RQD limit."""

    CALENDAR_YEAR = "calendar_year"
    ROLLING_YEAR = "rolling_year"


@dataclass(frozen=True)
class BillingAct:
    """One act recorded on a case: who may bill it, for which patient, when.

    ``patient_key`` is the opaque key the case core was given (the adapter's keyed hash of
    the INS or the pseudonymous local id): acts are counted per key, never by name.
    """

    code: ActCode
    professional_id: str
    patient_key: str
    case_id: str
    performed_at: datetime

    def __post_init__(self) -> None:
        if self.performed_at.tzinfo is None:
            raise ValueError("performed_at must be timezone-aware")


@dataclass(frozen=True)
class BillingWarning:
    """The act is recorded but should not be billed: the yearly limit is exceeded."""

    code: str
    message: str
    count: int
    limit: int
    period_start: datetime
    period_end: datetime


def requester_act(role: Role) -> ActCode | None:
    """The act the requester bills when the case is answered, or None for that role."""
    return REQUESTER_ACTS.get(role)


def expert_act(role: Role) -> ActCode | None:
    """The act the answering professional bills, or None for that role."""
    return EXPERT_ACTS.get(role)


def limit_period_bounds(
    at: datetime, period: LimitPeriod = LimitPeriod.CALENDAR_YEAR, tz: tzinfo = UTC
) -> tuple[datetime, datetime]:
    """The half-open interval ``[start, end)`` of the yearly period that contains ``at``."""
    if at.tzinfo is None:
        raise ValueError("at must be timezone-aware")
    if period is LimitPeriod.ROLLING_YEAR:
        # The act itself must fall inside, so the end is just after it.
        return at - timedelta(days=365), at + timedelta(microseconds=1)
    local = at.astimezone(tz)
    start = datetime(local.year, 1, 1, tzinfo=tz)
    end = datetime(local.year + 1, 1, 1, tzinfo=tz)
    return start, end


def rqd_count(
    acts: Iterable[BillingAct],
    professional_id: str,
    patient_key: str,
    at: datetime,
    *,
    period: LimitPeriod = LimitPeriod.CALENDAR_YEAR,
    tz: tzinfo = UTC,
) -> int:
    """How many RQD acts ``professional_id`` recorded for ``patient_key`` in the period of ``at``.

    A case counts once even if its act was recorded twice (a retried write), since the
    limit is on tele-expertises, not on rows.
    """
    start, end = limit_period_bounds(at, period, tz)
    cases = {
        act.case_id
        for act in acts
        if act.code is ActCode.RQD
        and act.professional_id == professional_id
        and act.patient_key == patient_key
        and start <= act.performed_at < end
    }
    return len(cases)


def check_rqd_limit(
    history: Iterable[BillingAct],
    act: BillingAct,
    *,
    limit: int = RQD_YEARLY_LIMIT,
    period: LimitPeriod = LimitPeriod.CALENDAR_YEAR,
    tz: tzinfo = UTC,
) -> BillingWarning | None:
    """Warn when ``act`` takes its requester past ``limit`` RQD for the patient in the period.

    ``history`` is the acts already recorded (it may or may not contain ``act``). Acts of
    other codes never warn. The warning is information for the requester: the act stays
    recorded (it documents that the tele-expertise took place), it is just not billable.
    """
    if act.code is not ActCode.RQD:
        return None
    count = rqd_count(
        [*history, act],
        act.professional_id,
        act.patient_key,
        act.performed_at,
        period=period,
        tz=tz,
    )
    if count <= limit:
        return None
    start, end = limit_period_bounds(act.performed_at, period, tz)
    calendar = period is LimitPeriod.CALENDAR_YEAR
    span = f"en {start.year}" if calendar else "sur les 12 derniers mois"
    message = (
        f"Limite dépassée : c'est la {count}e demande de télé-expertise (RQD) pour ce patient "
        f"{span}. Au-delà de {limit} par an et par professionnel requérant pour un même "
        "patient, l'acte RQD n'est pas facturable."
    )
    return BillingWarning(
        code="rqd_limit_exceeded",
        message=message,
        count=count,
        limit=limit,
        period_start=start,
        period_end=end,
    )
