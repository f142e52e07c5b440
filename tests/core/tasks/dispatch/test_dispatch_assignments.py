"""The tasks an agent is told about: which ones, the full list, and the increments."""

from __future__ import annotations

from typing import Any

from test_dispatch_support import S, task

from treeherd.core.tasks.dispatch.assignments import AssignmentSet, agent_should_know
from treeherd.model.events import Event
from treeherd.testing.factories import machine


def test_agent_knows_assigned_tasks_until_they_ended_and_should_stop() -> None:
    assert agent_should_know(task(state=S.ASSIGNED), "m1")
    assert agent_should_know(task(state=S.RUNNING, desired=S.SHUTDOWN), "m1")  # must stop it
    assert agent_should_know(task(state=S.FAILED), "m1")  # ended, but the manager has not decided yet
    assert not agent_should_know(task(state=S.FAILED, desired=S.SHUTDOWN), "m1")
    assert not agent_should_know(task(state=S.PENDING), "m1")
    assert not agent_should_know(task(), "m2")


def ev(kind: str, obj: Any, revision: int = 1) -> Event:
    return Event(revision=revision, type=kind, object=obj)  # type: ignore[arg-type]


def test_assignment_set_full_then_increments() -> None:
    aset = AssignmentSet("m1")
    full = aset.full([task("b"), task("a"), task("p", state=S.PENDING), task("o", machine_id="m2")])
    assert full.full and full.sequence == 1 and [t.id for t in full.updated] == ["a", "b"]
    assert aset.increment() is None

    assert aset.apply(ev("updated", task("c")))  # newly assigned
    assert aset.apply(ev("updated", task("a", desired=S.SHUTDOWN)))  # the manager wants it stopped
    assert not aset.apply(ev("updated", task("x", state=S.PENDING)))  # not assigned yet
    assert not aset.apply(ev("created", machine("m1")))  # not a task
    message = aset.increment()
    assert message is not None and not message.full and message.sequence == 2
    assert [t.id for t in message.updated] == ["c", "a"] and message.removed == []

    assert aset.apply(ev("deleted", task("b")))
    assert not aset.apply(ev("deleted", task("never-known")))
    message = aset.increment()
    assert (
        message is not None and message.sequence == 3 and message.removed == ["b"] and message.updated == []
    )


def test_status_only_changes_from_the_agent_are_not_echoed() -> None:
    aset = AssignmentSet("m1")
    aset.full([task("a")])
    assert not aset.apply(ev("updated", task("a", state=S.RUNNING, version=7)))
    assert aset.increment() is None
    # Ended and asked to shut down: the agent may forget it.
    assert aset.apply(ev("updated", task("a", state=S.SHUTDOWN, desired=S.SHUTDOWN)))
    message = aset.increment()
    assert message is not None and message.removed == ["a"]


def test_a_task_moving_to_another_machine_is_removed() -> None:
    aset = AssignmentSet("m1")
    aset.full([task("a")])
    assert aset.apply(ev("updated", task("a", machine_id="m2")))
    message = aset.increment()
    assert message is not None and message.removed == ["a"] and len(aset) == 0
