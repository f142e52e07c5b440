"""Which machines need which services' endpoints, as tasks that depend on them come, move and go."""

from __future__ import annotations

import msgspec

from treeherd.manager.dependencies import DependencyFeeds
from treeherd.model.discovery import Dependency
from treeherd.model.services import Task, TaskSpec, TaskStatus
from treeherd.model.states import TaskState
from treeherd.testing.factories import FIXED_NOW

MACHINES = ["m1", "m2", "m3"]


def task(id: str, machine_id: str | None, *needs: str, state: TaskState = TaskState.RUNNING) -> Task:
    return Task(
        id=id,
        created_at=FIXED_NOW,
        updated_at=FIXED_NOW,
        service_id="s1",
        service_name="app",
        slot=0,
        machine_id=machine_id,
        status=TaskStatus(state=state, timestamp=FIXED_NOW),
        spec=TaskSpec(command=["x"], depends_on=[Dependency(service=s) for s in needs]),
    )


def check(feeds: DependencyFeeds) -> None:
    """`machines_of` is `services_of` read the other way round."""
    for service in ("db", "cache", "nope"):
        assert feeds.machines_of(service) == [m for m in MACHINES if service in feeds.services_of(m)]


def test_machines_of_follows_tasks_that_come_move_and_go():
    feeds = DependencyFeeds()
    t1 = task("t1", "m1", "db", "cache")
    assert feeds.note(t1) == [("m1", "db"), ("m1", "cache")]
    assert feeds.note(task("t2", "m2", "db")) == [("m2", "db")]
    assert feeds.note(task("t3", "m1", "db")) == []  # m1 already needs db
    check(feeds)
    assert feeds.machines_of("db") == ["m1", "m2"]
    assert feeds.machines_of("cache") == ["m1"]

    assert feeds.note(msgspec.structs.replace(t1, machine_id="m3")) == [("m3", "db"), ("m3", "cache")]
    check(feeds)
    assert feeds.machines_of("db") == ["m1", "m2", "m3"]  # t3 still needs db on m1
    assert feeds.machines_of("cache") == ["m3"]

    feeds.note(task("t3", "m1", "db", state=TaskState.COMPLETE))
    feeds.note(task("t2", "m2", "db"), deleted=True)
    check(feeds)
    assert feeds.machines_of("db") == ["m3"]
    feeds.note(task("t1", "m3", "db", "cache"), deleted=True)
    check(feeds)
    assert feeds.machines_of("db") == feeds.machines_of("cache") == []
    assert feeds.note(task("t5", "m2", "cache")) == [("m2", "cache")]
    assert feeds.machines_of("cache") == ["m2"]
