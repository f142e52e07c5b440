"""Why a machine can no longer keep a task (typed reasons and their messages), and `agent_down`."""

from __future__ import annotations

import pytest

from treeherd.core.tasks.machine_problems import MachineProblem, ProblemKind, agent_down, machine_problem
from treeherd.core.tasks.orchestrate import reconcile
from treeherd.core.tasks.scheduling.constraints import parse_constraint
from treeherd.model.objects import AgentStatus, Machine
from treeherd.model.ops import Create, Update
from treeherd.model.services import RestartPolicy, Service, Task, TaskSpec, TaskStatus
from treeherd.model.states import NodeState, TaskState
from treeherd.testing.factories import FIXED_NOW, Ids, machine

SSD = parse_constraint("node.labels.disk==ssd")


def on(machine_id: str | None) -> Task:
    return Task(
        id="t1",
        created_at=FIXED_NOW,
        updated_at=FIXED_NOW,
        service_id="svc",
        service_name="web",
        slot=1,
        machine_id=machine_id,
        status=TaskStatus(state=TaskState.RUNNING, timestamp=FIXED_NOW),
        spec=TaskSpec(command=["run"]),
    )


def web1(state: NodeState | None = "ready", **fields: object) -> dict[str, Machine]:
    agent = AgentStatus(state=state) if state is not None else None
    fields.setdefault("labels", {"disk": "ssd"})
    return {"m1": machine("web-1", id="m1", agent=agent, **fields)}


@pytest.mark.parametrize(
    ("state", "down"),
    [("down", True), ("ready", False), ("unknown", False), ("disconnected", False), (None, False)],
)
def test_agent_down_means_an_agent_declared_down(state: NodeState | None, down: bool) -> None:
    assert agent_down(web1(state)["m1"]) is down


@pytest.mark.parametrize(
    ("machines", "held", "kind", "message"),
    [
        ({}, frozenset(), ProblemKind.REMOVED, "its machine was removed"),
        (web1("down"), frozenset(), ProblemKind.DOWN, "machine web-1 is down"),
        (web1(availability="drain"), frozenset(), ProblemKind.DRAINED, "machine web-1 is drained"),
        (
            web1(labels={"disk": "hdd"}),
            frozenset(),
            ProblemKind.UNSATISFIED,
            "machine web-1 no longer satisfies node.labels.disk==ssd",
        ),
        (
            web1("down"),
            frozenset({"m1"}),
            ProblemKind.HELD,
            "machine web-1 is down; its tasks are kept until it returns or is replaced",
        ),
        # A held machine that is also drained is drained: its tasks move.
        (
            web1("down", availability="drain"),
            frozenset({"m1"}),
            ProblemKind.DRAINED,
            "machine web-1 is drained",
        ),
    ],
)
def test_each_reason_and_its_message(
    machines: dict[str, Machine], held: frozenset[str], kind: ProblemKind, message: str
) -> None:
    problem = machine_problem(on("m1"), machines, [SSD], held)
    assert problem is not None and problem.kind is kind
    assert problem.message == message and str(problem) == message
    assert problem.replaces_task is (kind is not ProblemKind.HELD)


def test_no_problem_for_a_healthy_machine_or_a_task_not_placed() -> None:
    assert machine_problem(on("m1"), web1(), [SSD]) is None
    assert machine_problem(on(None), {}, [SSD]) is None
    # Not down, so not held either: being in `held` alone changes nothing.
    assert machine_problem(on("m1"), web1(), [SSD], frozenset({"m1"})) is None


def test_reasons_are_structs_that_compare_by_value() -> None:
    assert MachineProblem(kind=ProblemKind.DOWN, hostname="a") == MachineProblem(
        kind=ProblemKind.DOWN, hostname="a"
    )
    assert MachineProblem(kind=ProblemKind.DOWN, hostname="a") != MachineProblem(
        kind=ProblemKind.DRAINED, hostname="a"
    )


def _service(condition: str) -> Service:
    return Service(
        id="svc",
        created_at=FIXED_NOW,
        updated_at=FIXED_NOW,
        name="web",
        node_id="n",
        replicas=1,
        task=TaskSpec(command=["run"], restart=RestartPolicy(condition=condition, delay_s=0)),
    )


@pytest.mark.parametrize(
    ("machines", "replaced"),
    [(web1("down"), False), (web1(availability="drain"), True), ({}, True)],
)
def test_only_a_down_machine_is_not_replaced_under_restart_none(
    machines: dict[str, Machine], replaced: bool
) -> None:
    result = reconcile(_service("none"), [on("m1")], machines, FIXED_NOW, Ids("t"))
    stopped = [op.object for op in result.ops if isinstance(op, Update)]
    created = [op.object for op in result.ops if isinstance(op, Create)]
    assert [t.id for t in stopped] == ["t1"]
    assert bool(created) is replaced


def test_the_replacement_cause_carries_the_message() -> None:
    result = reconcile(_service("any"), [on("m1")], web1("down"), FIXED_NOW, Ids("t"))
    created = [op.object for op in result.ops if isinstance(op, Create)]
    assert [t.cause for t in created] == ["replacement of t1: machine web-1 is down"]
