"""What the task decisions read off a machine: whether its agent is down (`agent_down`, the one
definition every decision uses), and why a machine can no longer keep a task placed on it
(`MachineProblem`, a typed reason from which the message tasks and users read is derived)."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet

import msgspec

from treeherd.core.tasks.scheduling.constraints import Constraint
from treeherd.model.objects import Machine
from treeherd.model.services import Task


def agent_down(machine: Machine) -> bool:
    """Whether the machine's agent was declared down (it missed its heartbeats). A machine that never
    had an agent is not down: callers that also exclude those say so (`machine.agent is None`)."""
    return machine.agent is not None and machine.agent.state == "down"


class ProblemKind(enum.Enum):
    """Why a machine can no longer keep a task placed on it."""

    REMOVED = "removed"  # the machine record is gone
    DOWN = "down"  # its agent is down
    DRAINED = "drained"  # an operator drained it
    UNSATISFIED = "unsatisfied"  # it no longer satisfies one of the service's constraints
    # Its agent is down, but its tasks are kept for now: the brake on mass node loss, or a service that
    # waits for its machines (`on_node_down="wait"`).
    HELD = "held"


class MachineProblem(msgspec.Struct, frozen=True, kw_only=True):
    """One reason, with what its message names (the machine's hostname, the constraint not met)."""

    kind: ProblemKind
    hostname: str = ""
    constraint: str = ""

    @property
    def replaces_task(self) -> bool:
        """Whether the task is stopped and replaced; a held machine keeps its tasks."""
        return self.kind is not ProblemKind.HELD

    @property
    def message(self) -> str:
        """The words recorded on the task and shown to users."""
        match self.kind:
            case ProblemKind.REMOVED:
                return "its machine was removed"
            case ProblemKind.DOWN:
                return f"machine {self.hostname} is down"
            case ProblemKind.DRAINED:
                return f"machine {self.hostname} is drained"
            case ProblemKind.UNSATISFIED:
                return f"machine {self.hostname} no longer satisfies {self.constraint}"
            case ProblemKind.HELD:
                return f"machine {self.hostname} is down; its tasks are kept until it returns or is replaced"

    def __str__(self) -> str:
        return self.message


def machine_problem(
    task: Task,
    machines: Mapping[str, Machine],
    constraints: Sequence[Constraint],
    held: AbstractSet[str] = frozenset(),
) -> MachineProblem | None:
    """Why the machine of a placed task can no longer keep it, if it cannot (None for a task not placed
    or a machine with nothing wrong). A down machine in `held` (the brake on mass node loss) keeps its
    tasks unless it is also drained or fails a constraint: then the reason is HELD."""
    if task.machine_id is None:
        return None
    machine = machines.get(task.machine_id)
    if machine is None:
        return MachineProblem(kind=ProblemKind.REMOVED)
    hostname = machine.hostname
    down = agent_down(machine)
    if down and machine.id not in held:
        return MachineProblem(kind=ProblemKind.DOWN, hostname=hostname)
    if machine.availability == "drain":
        return MachineProblem(kind=ProblemKind.DRAINED, hostname=hostname)
    for constraint in constraints:
        if not constraint.matches(machine):
            return MachineProblem(kind=ProblemKind.UNSATISFIED, hostname=hostname, constraint=str(constraint))
    if down:
        return MachineProblem(kind=ProblemKind.HELD, hostname=hostname)
    return None
