"""The authorization table as a matrix (role x action x relation), and its use by routes."""

from __future__ import annotations

import itertools

import pytest

from relay.errors import Forbidden
from relay.http.app import all_routes
from relay.policy import POLICY, Action, Relation, authorize, is_allowed, may_ever
from relay.roles import Role

N, P, S, C, A = Role.NURSE, Role.PHYSICIAN, Role.SPECIALIST, Role.COORDINATOR, Role.ADMIN
OWN, TEAM, NO = Relation.OWNER, Relation.TEAM, Relation.NONE

# The expected matrix, written out by hand: a change to the policy must change this too.
EXPECTED: dict[Action, dict[Relation, set[Role]]] = {
    Action.VIEW_SELF: {OWN: {N, P, S, C, A}, TEAM: {N, P, S, C, A}, NO: {N, P, S, C, A}},
    Action.MANAGE_OWN_SECURITY: {OWN: {N, P, S, C, A}, TEAM: {N, P, S, C, A}, NO: {N, P, S, C, A}},
    Action.SEARCH_DIRECTORY: {OWN: {N, P, S, C, A}, TEAM: {N, P, S, C, A}, NO: {N, P, S, C, A}},
    Action.UPLOAD_FILE: {OWN: {N, P, S, C}, TEAM: {N, P, S, C}, NO: {N, P, S, C}},
    Action.DOWNLOAD_FILE: {OWN: {N, P, S, C}, TEAM: set(), NO: set()},
    Action.MANAGE_ACCOUNTS: {OWN: {A}, TEAM: {A}, NO: {A}},
    Action.READ_OWN_AUDIT: {OWN: {N, P, S, C, A}, TEAM: {N, P, S, C, A}, NO: {N, P, S, C, A}},
    Action.SEARCH_AUDIT: {OWN: {A}, TEAM: {A}, NO: {A}},
    Action.READ_AUDIT_PROOFS: {OWN: {N, P, S, C, A}, TEAM: {N, P, S, C, A}, NO: {N, P, S, C, A}},
    Action.SCHEDULE_CONSULTATION: {OWN: {N, P, S, C}, TEAM: {N, P, S, C}, NO: {N, P, S, C}},
    Action.VIEW_CONSULTATION: {OWN: {N, P, S, C}, TEAM: {N, P, S, C}, NO: set()},
    Action.MANAGE_CONSULTATION: {OWN: {N, P, S, C}, TEAM: {N, P, S, C}, NO: set()},
    Action.JOIN_CONSULTATION: {OWN: {N, P, S}, TEAM: {N, P, S}, NO: set()},
    Action.VIEW_RECORDING: {OWN: {N, P, S}, TEAM: {N, P, S}, NO: set()},
    Action.DELETE_RECORDING: {OWN: {N, P, S}, TEAM: set(), NO: set()},
    Action.START_THREAD: {OWN: {N, P, S, C}, TEAM: {N, P, S, C}, NO: {N, P, S, C}},
    Action.VIEW_THREAD: {OWN: {N, P, S, C}, TEAM: {N, P, S, C}, NO: set()},
    Action.POST_MESSAGE: {OWN: {N, P, S, C}, TEAM: {N, P, S, C}, NO: set()},
    Action.CREATE_CASE: {OWN: {N, P, S}, TEAM: {N, P, S}, NO: {N, P, S}},
    Action.VIEW_CASE: {OWN: {N, P, S}, TEAM: {N, P, S}, NO: set()},
    Action.ACT_ON_CASE: {OWN: {N, P, S}, TEAM: {N, P, S}, NO: set()},
    Action.VIEW_CASE_QUEUE: {OWN: {P, S}, TEAM: {P, S}, NO: {P, S}},
}


@pytest.mark.parametrize(
    ("role", "action", "relation"),
    list(itertools.product(Role, [a for a in Action if a is not Action.PUBLIC], Relation)),
)
def test_matrix(role: Role, action: Action, relation: Relation) -> None:
    expected = role in EXPECTED[action][relation]
    assert is_allowed(role, action, relation) is expected
    if expected:
        authorize(role, action, relation)
    else:
        with pytest.raises(Forbidden):
            authorize(role, action, relation)


def test_every_action_has_a_row() -> None:
    assert set(POLICY) == {a for a in Action if a is not Action.PUBLIC} == set(EXPECTED)


def test_public_is_open_to_all() -> None:
    assert all(is_allowed(role, Action.PUBLIC) and may_ever(role, Action.PUBLIC) for role in Role)


def test_every_api_route_declares_an_action() -> None:
    for route in all_routes():
        assert isinstance(route.action, Action), route.path
        if route.path.startswith("/api/") and route.action is Action.PUBLIC:
            # Only these API routes may be reached without a session.
            assert route.path in {
                "/api/login",
                "/api/login/certificate",
                "/api/logout",
                "/api/openapi.json",
                "/api/consultations/protocol.json",
                "/api/consultations/{id}/join",
                # The guest view authenticates by its own one-time code and cookie.
                "/api/guest/{id}/code",
                "/api/guest/{id}/session",
                "/api/guest/thread",
                "/api/guest/attachments/{id}",
                "/api/guest/messages",
                "/api/mail/certificate",
            }, route.path
