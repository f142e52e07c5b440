"""Tasks stored apart from their specs on a real etcd: a status change writes only the task's small value
and reads back exactly as before (load, follower's feed, history), specs stored once and deleted once
unused, and a prefix of schema 1 (tasks stored whole) upgraded in place."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from aetcd import rpc
from store_helpers import MARK, SPEC, WAIT, commit, machine, node, opening, service, take, task, watching

from conftest import fresh_prefix
from treeherd.model.errors import Refused, VersionConflict
from treeherd.model.events import Change
from treeherd.model.objects import AnyObject, Machine, TreeNode
from treeherd.model.ops import Create, Delete, Update
from treeherd.model.services import Service, Task, TaskSpec, TaskState, TaskStatus
from treeherd.store import etcd_client, etcd_specs
from treeherd.store.codec import SpecKeys, encode
from treeherd.store.etcd import EtcdStore
from treeherd.store.etcd_client import EtcdClient, parse_etcd_url
from treeherd.store.etcd_specs import SPLIT, encode_task
from treeherd.store.etcd_writer import Fenced
from treeherd.testing.waiting import eventually

NOW = datetime(2026, 1, 1, tzinfo=UTC)
OTHER = TaskSpec(command=["sleep", "5"])


def with_status(current: Task, state: TaskState, message: str, *, seconds: int) -> Task:
    status = TaskStatus(timestamp=NOW + timedelta(seconds=seconds), state=state, message=message)
    return msgspec.structs.replace(current, status=status, machine_id="m1")


def everything(store: EtcdStore) -> dict[tuple[str, str], AnyObject]:
    view = store.view()
    return {(obj.kind, obj.id): obj for cls in (TreeNode, Machine, Service, Task) for obj in view.all(cls)}


def history(store: EtcdStore) -> list[tuple[int, str, AnyObject]]:
    return [(c.revision, e.type, e.object) for c in store.history() for e in c.events]


@pytest.fixture
def url(etcd_server) -> str:
    return etcd_server.url(fresh_prefix())


@pytest.fixture
async def stores() -> AsyncIterator[Any]:
    async with opening(EtcdStore) as make:
        yield make


@pytest.fixture
async def raw(url: str) -> AsyncIterator[EtcdClient]:
    """A plain etcd client, to read and write the keys under the test's prefix as they are."""
    client = EtcdClient(parse_etcd_url(url).endpoints)
    await client.connect()
    yield client
    await client.close()


def prefix_of(url: str) -> bytes:
    return parse_etcd_url(url).prefix.encode()


async def keys(client: EtcdClient, url: str, under: str) -> dict[bytes, Any]:
    _, kvs = await client.range_prefix(prefix_of(url) + under.encode())
    return {kv.key: kv for kv in kvs}


async def revision_keys(client: EtcdClient, url: str, revision: int) -> dict[bytes, bytes]:
    """Every key etcd wrote at `revision` under the prefix, with its value."""
    written: dict[bytes, bytes] = {}
    stream = client.watch(prefix_of(url) + b"/", revision)
    async with asyncio.timeout(WAIT):
        async for response in stream:
            for event in response.events:
                if event.kv.mod_revision == revision:
                    written[event.kv.key] = event.kv.value
            if any(event.kv.mod_revision >= revision for event in response.events):
                break
    await stream.aclose()
    return written


async def spec_writes(client: EtcdClient, url: str, through: int) -> tuple[int, int]:
    """How many times a spec was put and deleted under the prefix, through revision `through`."""
    puts = deletes = 0
    meta = (await keys(client, url, "/meta"))[prefix_of(url) + b"/meta"]
    stream = client.watch(prefix_of(url) + b"/spec/", meta.create_revision)
    async with asyncio.timeout(WAIT):
        async for response in stream:
            for event in response.events:
                if event.type == rpc.Event.DELETE:
                    deletes += 1
                else:
                    puts += 1
            if response.header.revision >= through or response.events[-1].kv.mod_revision >= through:
                break
    await stream.aclose()
    return puts, deletes


async def changes_of(iterator: AsyncIterator[Change], n: int) -> list[tuple[int, str, AnyObject]]:
    return [(c.revision, e.type, e.object) for c in await take(iterator, n) for e in c.events]


SETUP = [Create(node("n1")), Create(machine("m1", "web-1")), Create(service())]


async def test_a_status_change_writes_only_the_task_and_reads_back_exactly_as_written(url, stores, raw):
    writer = await stores(url)
    follower = await stores(url)
    setup = await commit(writer, *SETUP)
    await follower.applied(setup.revision)
    async with watching(follower, since=setup.revision) as feed:
        created = await commit(writer, Create(task("t1")), Create(task("t2")))
        written: list[tuple[int, str, AnyObject]] = [
            (created.revision, "created", obj) for obj in created.objects
        ]
        (spec_key,) = await keys(raw, url, "/spec/")
        spec_revision = (await keys(raw, url, "/spec/"))[spec_key].mod_revision
        assert spec_revision == created.revision  # put with the first tasks that name it
        for seconds, (state, message) in enumerate(
            [(TaskState.PREPARING, "preparing"), (TaskState.STARTING, "starting"), (TaskState.RUNNING, "up")],
            start=1,
        ):
            current = writer.view().get(Task, "t1")
            done = await commit(writer, Update(with_status(current, state, message, seconds=seconds)))
            written.append((done.revision, "updated", done.objects[0]))
            # The etcd transaction of a status change holds the task's value and the head, no spec.
            at = await revision_keys(raw, url, done.revision)
            task_key = prefix_of(url) + b"/o/task/t1"
            assert set(at) == {task_key, prefix_of(url) + b"/head"}
            assert at[task_key][:1] == SPLIT and MARK.encode() not in at[task_key]
            # The task's value without the spec: its 16-byte key and a stand-in of 10 bytes instead.
            spec_bytes = len(msgspec.msgpack.encode(SPEC))
            assert len(at[task_key]) <= len(encode(done.objects[0])) - spec_bytes + 1 + 16 + 10
        # The follower's feed gives exactly the tasks written, spec included.
        seen = await changes_of(feed, 4)
    assert sorted(seen, key=lambda e: (e[0], e[2].id)) == sorted(written, key=lambda e: (e[0], e[2].id))
    expected = with_status(task("t1"), TaskState.RUNNING, "up", seconds=3)
    assert writer.view().get(Task, "t1") == msgspec.structs.replace(expected, version=written[-1][0])
    assert everything(follower) == everything(writer)
    # The spec was written once: the status changes did not touch it.
    assert (await keys(raw, url, "/spec/"))[spec_key].mod_revision == spec_revision
    # A store opened afresh loads the same objects, and reads the same history back from etcd.
    fresh = await stores(url)
    assert everything(fresh) == everything(writer) and fresh.revision == writer.revision
    assert history(fresh) == history(writer)
    assert sorted(
        (e for e in history(fresh) if e[2].kind == "task"), key=lambda e: (e[0], e[2].id)
    ) == sorted(written, key=lambda e: (e[0], e[2].id))


async def test_a_split_commit_puts_each_spec_with_or_before_its_first_task(url, stores, raw):
    small = url + "&max-txn-ops=8"
    writer = await stores(small)
    follower = await stores(small)
    await commit(writer, *SETUP, Create(service("s2", OTHER)))
    specs = [SPEC, OTHER, TaskSpec(command=["sleep", "7"])]
    tasks = [task(f"t{i}", specs[i // 10], service_id="s2" if i // 10 == 1 else "s1") for i in range(30)]
    done = await commit(writer, *(Create(t) for t in tasks))
    assert len({obj.version for obj in done.objects}) > 1  # written in several etcd transactions
    stored = await keys(raw, url, "/spec/")
    assert len(stored) == 3
    # Each spec key was created no later than the first task that names it.
    first_use: dict[bytes, int] = {}
    for kv in (await keys(raw, url, "/o/task/")).values():
        spec_key = prefix_of(url) + b"/spec/" + kv.value[1:17].hex().encode()
        first_use[spec_key] = min(first_use.get(spec_key, kv.create_revision), kv.create_revision)
    assert set(first_use) == set(stored)
    assert all(stored[key].create_revision <= revision for key, revision in first_use.items())
    await eventually(lambda: follower.revision >= done.revision, "the follower's feed", timeout_s=WAIT)
    assert everything(follower) == everything(writer)
    assert {t.id: t.spec for t in follower.view().all(Task)} == {t.id: t.spec for t in tasks}
    fresh = await stores(small)
    assert everything(fresh) == everything(writer)


async def test_equal_specs_are_stored_once_and_unused_ones_are_deleted_by_the_writer(url, stores, raw):
    writer = await stores(url)
    await commit(writer, *SETUP, Create(service("s2", OTHER)))
    same = msgspec.structs.replace(SPEC, env=dict(SPEC.env))  # equal, but not the same object
    await commit(writer, Create(task("a")), Create(task("b", same)), Create(task("c", service_id="s2")))
    await commit(writer, Create(task("d", OTHER, service_id="s2")))
    stored = await keys(raw, url, "/spec/")
    assert len(stored) == 2  # a, b and c share one spec; d has the other
    await commit(writer, Delete(writer.view().get(Task, "d")))
    assert len(await keys(raw, url, "/spec/")) == 2  # the writer collects before its first write only
    # Another store (a new leader) collects before its first write: OTHER is named by no task.
    other = await stores(url)
    follower = await stores(url)
    await follower.applied(writer.revision)
    async with watching(follower, since=follower.revision) as feed:
        done = await commit(other, Update(msgspec.structs.replace(other.view().get(Task, "a"), cause="x")))
        assert [(e.type, e.object.id) for c in await take(feed, 1) for e in c.events] == [("updated", "a")]
    left = await keys(raw, url, "/spec/")
    assert len(left) == 1 and MARK.encode() in next(iter(left.values())).value
    assert done.revision > max(kv.mod_revision for kv in stored.values())
    # The first writer still counted on OTHER: its next write is refused by the head compare, checked
    # again once its feed has seen the deletion, and puts the spec again.
    again = await commit(writer, Create(task("e", OTHER, service_id="s2")))
    assert len(await keys(raw, url, "/spec/")) == 2
    fresh = await stores(url)
    assert fresh.view().get(Task, "e") == again.objects[0]
    assert everything(fresh) == everything(writer)


async def test_a_writer_collects_again_once_enough_new_specs_came(url, stores, raw, monkeypatch):
    monkeypatch.setattr(etcd_specs, "COLLECT_AFTER", 2)
    writer = await stores(url)
    await commit(writer, *SETUP, Create(task("a")))
    await commit(writer, Delete(writer.view().get(Task, "a")))
    await commit(writer, Create(task("b", OTHER)))
    assert len(await keys(raw, url, "/spec/")) == 2  # one new spec since the first collection
    await commit(writer, Create(task("c", TaskSpec(command=["sleep", "9"]))))
    assert len(await keys(raw, url, "/spec/")) == 3  # two: due before the next write
    await commit(writer, Update(msgspec.structs.replace(writer.view().get(Task, "b"), cause="x")))
    left = await keys(raw, url, "/spec/")
    assert len(left) == 2 and not any(MARK.encode() in kv.value for kv in left.values())
    fresh = await stores(url)
    assert everything(fresh) == everything(writer)


async def test_two_writers_creating_and_deleting_tasks_never_leave_a_task_without_its_spec(
    url, stores, raw, monkeypatch
):
    monkeypatch.setattr(etcd_specs, "COLLECT_AFTER", 1)  # collect whenever a new spec came
    a, b = await stores(url), await stores(url)
    await b.applied((await commit(a, *SETUP)).revision)
    pool = [TaskSpec(command=["sleep", str(n)]) for n in range(4)]
    rng = random.Random(17)

    async def step(store: EtcdStore, name: str, round: int) -> None:
        # Create a task of a spec from the pool, or delete one of this store's tasks; retried when
        # the other writer got in first (a conflict or a deletion raced by the other's collection).
        for _ in range(20):
            mine = [t for t in store.view().all(Task) if t.id.startswith(name)]
            ops: list[Any] = (
                [Delete(rng.choice(mine))]
                if mine and rng.random() < 0.4
                else [Create(task(f"{name}{round}", rng.choice(pool)))]
            )
            try:
                await store.commit(ops)
                return
            except VersionConflict:
                await asyncio.sleep(0.01)

    for round in range(30):
        await asyncio.wait_for(asyncio.gather(step(a, "a", round), step(b, "b", round)), WAIT * 4)
    await eventually(lambda: a.revision == b.revision, "both stores at the same revision", timeout_s=WAIT)
    assert everything(a) == everything(b)
    fresh = await stores(url)
    assert everything(fresh) == everything(a)
    # Specs were deleted and put again along the way, and every spec a task names is in etcd.
    puts, deletes = await spec_writes(raw, url, a.revision)
    assert deletes >= 1 and puts > len(pool)
    stored = await keys(raw, url, "/spec/")
    for kv in (await keys(raw, url, "/o/task/")).values():
        assert prefix_of(url) + b"/spec/" + kv.value[1:17].hex().encode() in stored


async def test_a_task_naming_a_missing_spec_is_refused_with_what_to_do(url, stores, raw):
    writer = await stores(url)
    await commit(writer, *SETUP, Create(task("t1")))
    (spec_key,) = await keys(raw, url, "/spec/")
    await raw.txn([], [etcd_client.delete(spec_key)])
    with pytest.raises(Refused, match=r"names spec .* restore the cluster from a snapshot"):
        await EtcdStore(url).open()


# ---- a prefix of schema 1 ------------------------------------------------------------------------


async def write_schema_1(client: EtcdClient, url: str, objects: list[AnyObject], **marker: Any) -> None:
    """Lay `objects` out as store schema 1 did: the marker, the head, and each object whole (spec
    included for a task) under `PREFIX/o/KIND/ID`, MessagePack with version 0."""
    prefix = prefix_of(url)
    meta = json.dumps({"schema": 1, "cluster": "c1"} | marker).encode()
    await client.txn([], [etcd_client.put(prefix + b"/meta", meta), etcd_client.put(prefix + b"/head", b"")])
    puts = [etcd_client.put(prefix + f"/o/{obj.kind}/{obj.id}".encode(), encode(obj)) for obj in objects]
    for start in range(0, len(puts), 100):
        await client.txn([], puts[start : start + 100])


def tasks_by_id(store: EtcdStore) -> dict[str, Task]:
    return {t.id: msgspec.structs.replace(t, version=0) for t in store.view().all(Task)}


async def test_a_schema_1_prefix_is_read_then_upgraded_by_its_first_writer(url, stores, raw):
    objects: list[AnyObject] = [node("n1"), machine("m1", "web-1"), service(), service("s2", OTHER)]
    tasks = [
        task(f"t{i}", OTHER if i % 3 == 0 else SPEC, service_id="s2" if i % 3 == 0 else "s1")
        for i in range(300)
    ]
    await write_schema_1(raw, url, objects + tasks)
    reader = await stores(url)
    assert tasks_by_id(reader) == {t.id: t for t in tasks}
    assert json.loads((await keys(raw, url, "/meta"))[prefix_of(url) + b"/meta"].value)["schema"] == 1
    writer = await stores(url)  # reading does not upgrade; the first write does, first
    done = await commit(writer, Create(machine("m2", "web-2")))
    meta = json.loads((await keys(raw, url, "/meta"))[prefix_of(url) + b"/meta"].value)
    assert meta == {"schema": 2, "cluster": "c1"}
    values = await keys(raw, url, "/o/task/")
    assert len(values) == 300 and all(kv.value[:1] == SPLIT for kv in values.values())
    assert len(await keys(raw, url, "/spec/")) == 2
    assert done.revision > max(kv.mod_revision for kv in values.values())
    assert tasks_by_id(writer) == {t.id: t for t in tasks}
    await eventually(lambda: reader.revision >= done.revision, "the reader's feed", timeout_s=WAIT)
    assert everything(reader) == everything(writer)
    fresh = await stores(url)
    assert everything(fresh) == everything(writer)
    # A status change on the upgraded prefix is written without the spec.
    current = writer.view().get(Task, "t1")
    changed = await commit(writer, Update(with_status(current, TaskState.RUNNING, "up", seconds=1)))
    assert set(await revision_keys(raw, url, changed.revision)) == {
        prefix_of(url) + b"/o/task/t1",
        prefix_of(url) + b"/head",
    }


async def test_a_deposed_leader_does_not_upgrade_the_prefix(url, stores, raw):
    tasks = [task(f"t{i}") for i in range(3)]
    await write_schema_1(raw, url, [node("n1"), machine("m1", "web-1"), service(), *tasks])
    store = await stores(url)
    leader_key = prefix_of(url) + b"-leader"
    made = await raw.txn([], [etcd_client.put(leader_key, b"me")])
    store.fence(leader_key, made.header.revision)
    # Another manager took over before this one wrote anything: its key was made again.
    await raw.txn([], [etcd_client.delete(leader_key)])
    await raw.txn([], [etcd_client.put(leader_key, b"someone else")])
    with pytest.raises(Fenced):
        await commit(store, Create(machine("m2", "web-2")))
    assert json.loads((await keys(raw, url, "/meta"))[prefix_of(url) + b"/meta"].value)["schema"] == 1
    assert all(kv.value[:1] != SPLIT for kv in (await keys(raw, url, "/o/task/")).values())
    assert not await keys(raw, url, "/spec/")
    store.fence(None)
    await commit(store, Create(machine("m2", "web-2")))
    assert json.loads((await keys(raw, url, "/meta"))[prefix_of(url) + b"/meta"].value)["schema"] == 2


async def test_an_upgrade_left_halfway_is_read_then_finished_by_the_next_writer(url, stores, raw):
    objects: list[AnyObject] = [node("n1"), machine("m1", "web-1"), service()]
    tasks = [task(f"t{i}") for i in range(5)]
    # A writer stopped halfway: the marker says schema 2, upgrading; t0 and t1 are rewritten already.
    await write_schema_1(raw, url, objects + tasks, schema=2, upgrading=True)
    key, spec_value = SpecKeys().key(tasks[0])
    prefix = prefix_of(url)
    await raw.txn(
        [],
        [etcd_client.put(prefix + b"/spec/" + key.hex().encode(), spec_value)]
        + [etcd_client.put(prefix + f"/o/task/{t.id}".encode(), encode_task(t, key)) for t in tasks[:2]],
    )
    writer = await stores(url)
    assert tasks_by_id(writer) == {t.id: t for t in tasks}
    read_before = writer.view().get(Task, "t0")
    await commit(writer, Create(machine("m2", "web-2")))
    values = await keys(raw, url, "/o/task/")
    assert len(values) == 5 and all(kv.value[:1] == SPLIT for kv in values.values())
    assert len(await keys(raw, url, "/spec/")) == 1
    assert json.loads((await keys(raw, url, "/meta"))[prefix + b"/meta"].value) == {
        "schema": 2,
        "cluster": "c1",
    }
    assert tasks_by_id(writer) == {t.id: t for t in tasks}
    # The upgrade gave every task a new version (as any write does): a write based on a version read
    # before it is refused as after any other change, and goes through once read again.
    with pytest.raises(VersionConflict):
        await commit(writer, Update(with_status(read_before, TaskState.RUNNING, "up", seconds=1)))
    current = writer.view().get(Task, "t0")
    await commit(writer, Update(with_status(current, TaskState.RUNNING, "up", seconds=1)))


async def test_a_newer_schema_is_refused_with_what_to_do(url, raw):
    await write_schema_1(raw, url, [], schema=3)
    with pytest.raises(Refused, match="schema 3, this treeherd reads schema 2"):
        await EtcdStore(url).open()
