"""Decoded tasks share their spec: fewer copies, the same objects."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from store_helpers import node

from treeherd.model.ops import Create
from treeherd.model.services import Service, Task, TaskSpec, TaskStatus
from treeherd.store.codec import SharedSpecs, decode, encode
from treeherd.store.sqlite import SqliteStore

NOW = datetime(2026, 1, 1, tzinfo=UTC)
SPEC = TaskSpec(command=["sleep", "60"], env={"MODE": "one"})
OTHER = TaskSpec(command=["sleep", "60"], env={"MODE": "two"})


def task(
    id: str, spec: TaskSpec, *, service: str = "s1", version: int = 1, machine: str | None = None
) -> Task:
    return Task(
        machine_id=machine,
        id=id,
        created_at=NOW,
        updated_at=NOW,
        service_id=service,
        service_name="web",
        spec=spec,
        spec_version=version,
        status=TaskStatus(timestamp=NOW),
        cause="new slot",
    )


def test_tasks_of_one_service_and_version_share_the_first_copy():
    specs = SharedSpecs()
    first, second = (specs.share(decode(encode(task(id, SPEC)))) for id in ("t1", "t2"))
    assert first.spec is second.spec
    assert second == task("t2", SPEC)


def test_repeated_strings_are_shared_and_the_task_is_unchanged():
    specs = SharedSpecs()
    first, second = (specs.share(decode(encode(task(id, SPEC, machine="m1")))) for id in ("t1", "t2"))
    assert first.machine_id is second.machine_id
    assert first.service_id is second.service_id and first.service_name is second.service_name
    assert first.cause is second.cause
    assert second == task("t2", SPEC, machine="m1")
    odd = specs.share(decode(encode(task("t3", OTHER, machine="m1"))))
    assert odd.machine_id is first.machine_id and odd == task("t3", OTHER, machine="m1")


def test_a_different_spec_under_the_same_service_and_version_keeps_its_own():
    specs = SharedSpecs()
    first = specs.share(decode(encode(task("t1", SPEC))))
    odd = specs.share(decode(encode(task("t2", OTHER))))
    assert odd.spec == OTHER and odd.spec is not first.spec
    later = specs.share(decode(encode(task("t3", SPEC, version=2))))
    assert later.spec is not first.spec  # another version: not checked against version 1's copy


def test_a_task_that_shares_the_copies_already_is_not_copied_again():
    specs = SharedSpecs()
    first, second = (specs.share(decode(encode(task(id, SPEC, machine="m1")))) for id in ("t1", "t2"))
    assert second is not first and specs.share(second) is second


def test_a_task_whose_spec_differs_is_held_from_then_on():
    specs = SharedSpecs()
    specs.share(decode(encode(task("t1", SPEC))))
    odd = specs.share(decode(encode(task("t2", OTHER))))
    later = specs.share(decode(encode(task("t3", OTHER))))
    assert later.spec is odd.spec and later == task("t3", OTHER)


def test_the_service_versions_held_are_bounded():
    specs = SharedSpecs(limit=2)
    first = [specs.share(decode(encode(task(f"t{version}", SPEC, version=version)))) for version in (1, 2, 3)]
    # Version 1 was forgotten: its next task keeps the copies it has (and is held again).
    again = decode(encode(task("t9", SPEC, version=1)))
    assert specs.share(again) is again
    held = specs.share(decode(encode(task("t10", SPEC, version=3))))  # version 3 still is
    assert held.spec is first[2].spec and held == task("t10", SPEC, version=3)


def test_other_kinds_pass_through_unchanged():
    specs = SharedSpecs()
    obj = node("n1")
    assert specs.share(obj) is obj


async def test_tasks_reloaded_from_sqlite_share_their_spec(tmp_path: Path):
    path = tmp_path / "treeherd.db"
    store = SqliteStore(path)
    await store.open()
    service = Service(id="s1", created_at=NOW, updated_at=NOW, name="web", node_id="n1", task=SPEC)
    await store.commit([Create(node("n1")), Create(service)])
    tasks = [task(f"t{i}", SPEC) for i in range(5)] + [task("odd", OTHER)]
    await store.commit([Create(t) for t in tasks])
    before = {t.id: store.view().get(Task, t.id) for t in tasks}
    await store.close()

    reopened = SqliteStore(path)
    await reopened.open()
    try:
        after = {t.id: reopened.view().get(Task, t.id) for t in tasks}
        assert after == before
        assert len({id(after[f"t{i}"].spec) for i in range(5)}) == 1
        assert after["odd"].spec == OTHER
        # the retained history's copies are the live objects (same version), so they share too
        history = [event.object for change in reopened.history() for event in change.events]
        assert any(obj is after["t3"] for obj in history)
    finally:
        await reopened.close()
