"""The role table's invariants, and when a certificate is renewed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from treeherd.core.security.renewal import needs_renewal, renewal_time
from treeherd.core.security.roles import Role, Scope, allows, parse_role


def test_admin_may_do_everything_but_speak_as_an_agent() -> None:
    assert all(allows(Role.ADMIN, scope) for scope in Scope if scope is not Scope.SESSION)
    assert not allows(Role.ADMIN, Scope.SESSION)


def test_viewer_only_reads() -> None:
    allowed = {scope for scope in Scope if allows(Role.VIEWER, scope)}
    assert allowed == {Scope.READ, Scope.WATCH, Scope.PUBLIC}


def test_of_the_components_only_gateways_follow_the_event_stream() -> None:
    assert allows(Role.GATEWAY, Scope.WATCH)
    assert not allows(Role.AGENT, Scope.WATCH) and not allows(Role.ENC, Scope.WATCH)


def test_operator_cannot_administer() -> None:
    assert allows(Role.OPERATOR, Scope.OPERATE)
    assert not allows(Role.OPERATOR, Scope.ADMINISTER)


@pytest.mark.parametrize("role", [Role.AGENT, Role.GATEWAY, Role.ENC])
def test_component_roles_cannot_read_or_change_the_tree(role: Role) -> None:
    assert not allows(role, Scope.READ)
    assert not allows(role, Scope.OPERATE)
    assert not allows(role, Scope.ADMINISTER)


def test_role_names_are_parsed_and_unknown_ones_listed() -> None:
    assert parse_role(" Operator ") is Role.OPERATOR
    with pytest.raises(ValueError, match="use one of admin, operator, viewer"):
        parse_role("root")


START = datetime(2026, 1, 1, tzinfo=UTC)


@given(st.floats(min_value=0, max_value=1, exclude_max=True), st.integers(min_value=60, max_value=10**8))
def test_renewal_falls_in_the_last_third(fraction: float, seconds: int) -> None:
    end = START + timedelta(seconds=seconds)
    when = renewal_time(START, end, fraction)
    assert START + (end - START) * 2 / 3 - timedelta(microseconds=1) <= when < end


def test_needs_renewal_turns_true_at_the_chosen_point() -> None:
    end = START + timedelta(days=90)
    when = renewal_time(START, end, 0.5)
    assert not needs_renewal(START, end, 0.5, when - timedelta(seconds=1))
    assert needs_renewal(START, end, 0.5, when)
