"""Tasks of one service version share one spec object; unequal specs are never swapped."""

from __future__ import annotations

import msgspec
from agent_helpers import make_task

from treeherd.agent.shared_specs import SharedSpecs
from treeherd.core.tasks.agent_events import StoredTask
from treeherd.model.services import Task


def decoded(task: Task) -> Task:
    """The task as an agent gets it off the wire: objects of its own."""
    return msgspec.msgpack.decode(msgspec.msgpack.encode(task), type=Task)


def test_replicas_of_one_version_share_the_first_spec() -> None:
    shared = SharedSpecs()
    tasks = [decoded(make_task(f"t{i}")) for i in range(3)]
    assert tasks[0].spec is not tasks[1].spec
    out = shared.share_all(tasks)
    assert all(task.spec is out[0].spec for task in out)
    assert out == tasks  # the same tasks, field for field
    assert shared.share(out[1]) is out[1]  # already sharing: not copied again


def test_a_different_spec_under_the_same_version_is_kept_as_it_is() -> None:
    shared = SharedSpecs()
    first = shared.share(decoded(make_task("t1")))
    other = decoded(make_task("t2"))
    other = msgspec.structs.replace(other, spec=msgspec.structs.replace(other.spec, command=["other"]))
    assert shared.share(other).spec.command == ["other"]
    # The newer spec is the one held from then on.
    again = decoded(msgspec.structs.replace(make_task("t3"), spec=other.spec))
    assert shared.share(again).spec is other.spec
    assert first.spec.command != other.spec.command


def test_service_versions_held_are_bounded() -> None:
    shared = SharedSpecs(limit=2)
    for version in range(1, 4):
        shared.share(decoded(msgspec.structs.replace(make_task(f"t{version}"), spec_version=version)))
    # The first version was forgotten: its next task keeps a spec of its own (and is held again).
    task = decoded(msgspec.structs.replace(make_task("t9"), spec_version=1))
    assert shared.share(task) is task


def test_stored_tasks_share_their_specs_too() -> None:
    shared = SharedSpecs()
    rows = [StoredTask(task=decoded(make_task(f"t{i}")), status=make_task("x").status) for i in range(2)]
    out = [shared.share_stored(row) for row in rows]
    assert out[0] is rows[0]
    assert out[1].task.spec is out[0].task.spec
    assert out == rows
