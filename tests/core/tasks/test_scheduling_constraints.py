"""Constraint expressions: what parses, what is refused (and how it says so), and what matches."""

from __future__ import annotations

import pytest
from test_scheduling_support import machine

from treeherd.core.tasks.scheduling.constraints import Constraint, parse_constraint, parse_constraints
from treeherd.model.errors import InvalidInput


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("node.id==m1", Constraint(attribute="id", operator="==", value="m1")),
        ("node.hostname!=web-1", Constraint(attribute="hostname", operator="!=", value="web-1")),
        ("node.role==manager", Constraint(attribute="role", operator="==", value="manager")),
        ("node.role != worker", Constraint(attribute="role", operator="!=", value="worker")),
        ("node.kind==physical", Constraint(attribute="kind", operator="==", value="physical")),
        ("node.kind==Virtual", Constraint(attribute="kind", operator="==", value="virtual")),
        ("node.labels.disk==ssd", Constraint(attribute="labels", operator="==", value="ssd", label="disk")),
        (
            "  node.labels.team.io/owner  !=  web ops  ",
            Constraint(attribute="labels", operator="!=", value="web ops", label="team.io/owner"),
        ),
        ("Node.Labels.Disk==SSD", Constraint(attribute="labels", operator="==", value="SSD", label="Disk")),
        ("NODE.HOSTNAME==a", Constraint(attribute="hostname", operator="==", value="a")),
        ("node.labels.k==a=b", Constraint(attribute="labels", operator="==", value="a=b", label="k")),
    ],
)
def test_parse_accepts(text: str, expected: Constraint) -> None:
    assert parse_constraint(text) == expected


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("node.labels.disk == ssd", "node.labels.disk==ssd"),
        (" node.role!= manager", "node.role!=manager"),
        ("NODE.KIND==PHYSICAL", "node.kind==physical"),
        ("node.id==M1", "node.id==M1"),
    ],
)
def test_str_is_canonical(text: str, canonical: str) -> None:
    constraint = parse_constraint(text)
    assert str(constraint) == canonical
    assert parse_constraint(str(constraint)) == constraint


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "it is empty"),
        ("   ", "it is empty"),
        ("node.role", "no operator"),
        ("node.role=manager", "use '==', not '='"),
        ("node.role ~ manager", "no operator"),
        ("==ssd", "attribute before the operator is missing"),
        ("node.labels.disk==", "value after '==' is missing"),
        ("node.labels.disk!=  ", "value after '!=' is missing"),
        ("node.labels.disk==ssd==hdd", "one operator per constraint"),
        ("node.labels.disk==ssd!=hdd", "one operator per constraint"),
        ("node.labels.==ssd", "invalid label key ''"),
        ("node.labels.a b==ssd", "invalid label key 'a b'"),
        ("node.labels.-x==ssd", "invalid label key '-x'"),
        ("node.platform.os==linux", "unknown attribute 'node.platform.os'"),
        ("engine.labels.x==y", "unknown attribute 'engine.labels.x'"),
        ("node.name==a", "unknown attribute 'node.name'"),
        ("node.role==boss", "node.role is manager or worker, not 'boss'"),
        ("node.kind==container", "node.kind is physical or virtual, not 'container'"),
        ("node.labels.x==a\x00b", "control characters"),
    ],
)
def test_parse_refuses_with_a_reason_and_the_accepted_forms(text: str, problem: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_constraint(text)
    error = caught.value
    assert error.field == "constraints"
    assert problem in error.detail
    assert repr(text) in error.detail
    assert "node.labels.KEY==VALUE" in error.detail
    assert "node.role==manager|worker" in error.detail


def test_parse_constraints_parses_each_and_stops_at_the_first_bad_one() -> None:
    assert [str(c) for c in parse_constraints(["node.role==worker", "node.labels.a!=b"])] == [
        "node.role==worker",
        "node.labels.a!=b",
    ]
    with pytest.raises(InvalidInput, match=r"node\.colour"):
        parse_constraints(["node.role==worker", "node.colour==red"])


HOST = machine(
    "m-1",
    hostname="web-1.example.com",
    machine_kind="physical",
    role="manager",
    labels={"disk": "ssd", "zone": "Eu-West"},
)


@pytest.mark.parametrize(
    ("text", "matches"),
    [
        ("node.id==m-1", True),
        ("node.id==M-1", True),
        ("node.id!=m-1", False),
        ("node.id==m-2", False),
        ("node.hostname==web-1.example.com", True),
        ("node.hostname==WEB-1.example.com", True),
        ("node.hostname!=web-2", True),
        ("node.role==manager", True),
        ("node.role==worker", False),
        ("node.role!=worker", True),
        ("node.kind==physical", True),
        ("node.kind!=physical", False),
        ("node.labels.disk==ssd", True),
        ("node.labels.disk==SSD", True),
        ("node.labels.disk!=ssd", False),
        ("node.labels.disk==hdd", False),
        ("node.labels.zone==eu-west", True),
        # A missing label never equals a value, and so always differs from one (as in SwarmKit).
        ("node.labels.gpu==true", False),
        ("node.labels.gpu!=true", True),
        # Label keys are matched exactly.
        ("node.labels.Disk==ssd", False),
    ],
)
def test_matches(text: str, matches: bool) -> None:
    assert parse_constraint(text).matches(HOST) is matches


def test_virtual_worker_defaults() -> None:
    plain = machine("m-2")
    assert parse_constraint("node.kind==virtual").matches(plain)
    assert parse_constraint("node.role==worker").matches(plain)
    assert not parse_constraint("node.role==manager").matches(plain)
