"""Billing hints: act codes by role, the RQD yearly limit per requester and patient."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from relay.billing import (
    ActCode,
    BillingAct,
    LimitPeriod,
    check_rqd_limit,
    expert_act,
    limit_period_bounds,
    requester_act,
    rqd_count,
)
from relay.cases import Accept, Answer, RecordBillingAct, apply, new_draft
from relay.roles import Role
from tests.relay.cases.helpers import NAMED, REQUESTER, submit_event

PARIS_WINTER = timezone(timedelta(hours=1))


def rqd(case: str, at: datetime, *, nurse: str = "nurse-1", patient: str = "p-1") -> BillingAct:
    return BillingAct(ActCode.RQD, nurse, patient, case, at)


def year_2024(count: int) -> list[BillingAct]:
    return [rqd(f"case-{n}", datetime(2024, 1 + n, 10, tzinfo=UTC)) for n in range(count)]


def test_act_codes_by_role() -> None:
    assert requester_act(Role.NURSE) is ActCode.RQD
    assert requester_act(Role.PHYSICIAN) is None
    assert expert_act(Role.SPECIALIST) is ActCode.TE2
    assert expert_act(Role.PHYSICIAN) is ActCode.TE2
    assert expert_act(Role.NURSE) is None


def test_fourth_rqd_is_fine_fifth_warns() -> None:
    history = year_2024(3)
    assert check_rqd_limit(history, rqd("case-4", datetime(2024, 9, 1, tzinfo=UTC))) is None
    history = year_2024(4)
    warning = check_rqd_limit(history, rqd("case-5", datetime(2024, 9, 1, tzinfo=UTC)))
    assert warning is not None
    assert (warning.code, warning.count, warning.limit) == ("rqd_limit_exceeded", 5, 4)
    assert warning.period_start == datetime(2024, 1, 1, tzinfo=UTC)
    assert warning.period_end == datetime(2025, 1, 1, tzinfo=UTC)
    assert "5e demande" in warning.message and "en 2024" in warning.message
    assert "n'est pas facturable" in warning.message


@pytest.mark.parametrize(
    "other",
    [
        rqd("x", datetime(2024, 9, 1, tzinfo=UTC), nurse="nurse-2"),
        rqd("x", datetime(2024, 9, 1, tzinfo=UTC), patient="p-2"),
        rqd("x", datetime(2023, 12, 31, tzinfo=UTC)),
        BillingAct(ActCode.TE2, "nurse-1", "p-1", "x", datetime(2024, 9, 1, tzinfo=UTC)),
    ],
    ids=["other nurse", "other patient", "other year", "other code"],
)
def test_only_same_nurse_same_patient_same_year_counts(other: BillingAct) -> None:
    act = rqd("case-5", datetime(2024, 9, 1, tzinfo=UTC))
    assert check_rqd_limit([*year_2024(3), other], act) is None
    assert check_rqd_limit([*year_2024(4), other], act) is not None


def test_te2_never_warns() -> None:
    act = BillingAct(ActCode.TE2, "derm-1", "p-1", "c", datetime(2024, 9, 1, tzinfo=UTC))
    history = [
        BillingAct(ActCode.TE2, "derm-1", "p-1", f"c{n}", act.performed_at) for n in range(9)
    ]
    assert check_rqd_limit(history, act) is None


def test_a_case_counts_once() -> None:
    history = year_2024(4)
    again = history[-1]
    # The act is already in the history (retried write): still the 4th, no warning.
    assert check_rqd_limit(history, again) is None
    assert rqd_count([*history, again], "nurse-1", "p-1", again.performed_at) == 4


def test_year_boundary_follows_the_given_time_zone() -> None:
    # 23:30 UTC on 31 December is already 1 January in Paris.
    at = datetime(2024, 12, 31, 23, 30, tzinfo=UTC)
    assert limit_period_bounds(at)[0].year == 2024
    start, end = limit_period_bounds(at, tz=PARIS_WINTER)
    assert start == datetime(2025, 1, 1, tzinfo=PARIS_WINTER) and end.year == 2026
    assert check_rqd_limit(year_2024(4), rqd("new", at)) is not None
    assert check_rqd_limit(year_2024(4), rqd("new", at), tz=PARIS_WINTER) is None


def test_rolling_year_counts_across_new_year() -> None:
    history = [rqd(f"c{n}", datetime(2024, 11, 1 + n, tzinfo=UTC)) for n in range(4)]
    act = rqd("new", datetime(2025, 2, 1, tzinfo=UTC))
    assert check_rqd_limit(history, act) is None
    warning = check_rqd_limit(history, act, period=LimitPeriod.ROLLING_YEAR)
    assert warning is not None and "12 derniers mois" in warning.message
    later = rqd("later", datetime(2025, 11, 2, tzinfo=UTC))
    assert check_rqd_limit(history, later, period=LimitPeriod.ROLLING_YEAR) is None


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError):
        BillingAct(ActCode.RQD, "n", "p", "c", datetime(2024, 1, 1))


def test_acts_from_answered_cases_feed_the_limit() -> None:
    """End to end with the lifecycle core: the fifth answered case of the year warns."""
    history: list[BillingAct] = []
    warnings = []
    for month in range(1, 6):
        now = datetime(2024, month, 15, tzinfo=UTC)
        case = new_draft(f"case-{month}", REQUESTER, now)
        case, _ = apply(case, submit_event(), REQUESTER, now)
        case, _ = apply(case, Accept(), NAMED, now)
        _, effects = apply(case, Answer(), NAMED, now)
        for effect in effects:
            if isinstance(effect, RecordBillingAct):
                act = BillingAct(
                    effect.code,
                    effect.professional_id,
                    effect.patient_key,
                    effect.case_id,
                    effect.at,
                )
                warnings.append(check_rqd_limit(history, act))
                history.append(act)
    rqd_warnings = [w for w in warnings if w is not None]
    assert len(history) == 10  # RQD + TE2 per case
    assert len(rqd_warnings) == 1 and rqd_warnings[0].count == 5
