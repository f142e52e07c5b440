"""Factories shared by the dispatcher's decision tests (task statuses, tasks, default settings); no tests."""

from __future__ import annotations

from typing import Any

from treeherd.model.services import ClusterSettings, Task, TaskSpec, TaskStatus
from treeherd.model.states import TaskState
from treeherd.testing.factories import FIXED_NOW

S = TaskState
DEFAULTS = ClusterSettings(id="c", created_at=FIXED_NOW, updated_at=FIXED_NOW)


def status(state: TaskState, message: str = "") -> TaskStatus:
    return TaskStatus(state=state, timestamp=FIXED_NOW, message=message)


def task(
    id: str = "t1",
    *,
    machine_id: str | None = "m1",
    state: TaskState = S.ASSIGNED,
    desired: TaskState = S.RUNNING,
    **fields: Any,
) -> Task:
    return Task(
        id=id,
        created_at=FIXED_NOW,
        updated_at=FIXED_NOW,
        service_id="svc",
        service_name="web",
        machine_id=machine_id,
        desired_state=desired,
        status=status(state),
        spec=TaskSpec(command=["sleep", "1"]),
        **fields,
    )
