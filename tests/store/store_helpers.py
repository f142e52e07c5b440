"""Small factories and watch helpers shared by the store tests (fixed timestamps, short ids)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec

from treeherd.model.discovery import Endpoint
from treeherd.model.events import Change
from treeherd.model.kinds import KINDS
from treeherd.model.objects import (
    AnyObject,
    Binding,
    Domain,
    DomainUri,
    Machine,
    ProvisioningRecord,
    TreeNode,
)
from treeherd.model.ops import Create
from treeherd.model.services import Service, Task, TaskSpec, TaskStatus
from treeherd.store.base import Committed, Store
from treeherd.store.state import State

T0 = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
WAIT = 3.0  # seconds: the bound on every wait in the store tests
S = TypeVar("S", bound=Store)


@contextlib.asynccontextmanager
async def opening(create: Callable[..., S]) -> AsyncIterator[Callable[..., Awaitable[S]]]:
    """A function that makes a store with `create(...)` and opens it; every store it opened is closed
    on exit, the last opened first."""
    opened: list[S] = []

    async def open_(*args: Any, **kwargs: Any) -> S:
        store = create(*args, **kwargs)
        await store.open()
        opened.append(store)
        return store

    try:
        yield open_
    finally:
        for store in reversed(opened):
            await store.close()


def node(id: str, path: str | None = None, *, parent: str | None = None, **kw: Any) -> TreeNode:
    return TreeNode(id=id, path=path or id, parent_id=parent, created_at=T0, updated_at=T0, **kw)


def machine(id: str, hostname: str | None = None, **kw: Any) -> Machine:
    return Machine(id=id, hostname=hostname or f"{id}.example", created_at=T0, updated_at=T0, **kw)


def binding(id: str, machine_id: str, node_id: str, **kw: Any) -> Binding:
    return Binding(id=id, machine_id=machine_id, node_id=node_id, created_at=T0, updated_at=T0, **kw)


def domain(id: str, name: str | None = None, **kw: Any) -> Domain:
    return Domain(
        id=id,
        name=name or f"{id}.example",
        access_log_path="/var/log/access.log",
        error_log_path="/var/log/error.log",
        created_at=T0,
        updated_at=T0,
        **kw,
    )


def provision(id: str, hostname: str, node_id: str) -> ProvisioningRecord:
    return ProvisioningRecord(id=id, hostname=hostname, node_id=node_id, created_at=T0, updated_at=T0)


def endpoint(id: str, service: str, port: int, *, machine_id: str | None = None, **kw: Any) -> Endpoint:
    """A registration of `service` at 10.0.0.1:`port`: a task's on `machine_id` if given, else external."""
    return Endpoint(
        id=id,
        service=service,
        address="10.0.0.1",
        port=port,
        source="external" if machine_id is None else "task",
        machine_id=machine_id,
        created_at=T0,
        updated_at=T0,
        **kw,
    )


def route(domain_id: str, uri: str) -> DomainUri:
    return DomainUri(domain_id=domain_id, uri=uri)


def replace(obj: AnyObject, **changes: Any) -> AnyObject:
    return msgspec.structs.replace(obj, **changes)


def snapshot(store: Store) -> tuple[int, dict[tuple[str, str], AnyObject]]:
    """The revision and every object by (kind, id): equal snapshots mean an unchanged store."""
    view = store.view()
    objects = {
        (cls.kind, obj.id): obj
        for cls in (TreeNode, Machine, Binding, Domain, ProvisioningRecord, Endpoint)
        for obj in view.all(cls)
    }
    return store.revision, objects


@contextlib.asynccontextmanager
async def watching(store: Store, since: int | None = None) -> AsyncIterator[AsyncIterator[Change]]:
    """A watch's iterator, closed (watch and generator) on exit."""
    watch = store.watch(since)
    iterator = aiter(watch)
    try:
        yield iterator
    finally:
        watch.close()
        with contextlib.suppress(Exception):
            await iterator.aclose()  # type: ignore[attr-defined]


async def take(iterator: AsyncIterator[Change], n: int) -> list[Change]:
    """The next `n` changes, each awaited for at most WAIT seconds."""
    return [await asyncio.wait_for(anext(iterator), WAIT) for _ in range(n)]


async def nothing_pending(iterator: AsyncIterator[Change], delay: float = 0.05) -> bool:
    """True when no change arrives within `delay` (ends the iterator: use it as a last check)."""
    try:
        await asyncio.wait_for(anext(iterator), delay)
    except TimeoutError:
        return True
    return False


async def commit(store: Store, *ops: Any) -> Committed:
    return await asyncio.wait_for(store.commit(list(ops)), WAIT)


async def seed(store: Store) -> dict[str, AnyObject]:
    """A small tree: root > web (bound to m1, routed on d1) and root > db; returns the stored objects."""
    done = await commit(
        store,
        Create(domain("d1", "example.com")),
        Create(node("root")),
        Create(node("web", "root.web", parent="root", domain_uris=[route("d1", "/")])),
        Create(node("db", "root.db", parent="root")),
        Create(machine("m1", "host1")),
        Create(machine("m2", "host2")),
        Create(binding("b1", "m1", "web")),
        Create(provision("p1", "host3", "db")),
    )
    return {obj.id: obj for obj in done.objects}


# Tasks of a service whose spec carries a value found nowhere else in their bytes: the spec-split tests
# of both backends look for it to see where a spec is written.
SPEC_NOW = datetime(2026, 1, 1, tzinfo=UTC)
MARK = "spec-only-marker-7f3a"
SPEC = TaskSpec(command=["sleep", "60"], env={"MODE": MARK})


def service(id: str = "s1", spec: TaskSpec = SPEC) -> Service:
    return Service(id=id, created_at=SPEC_NOW, updated_at=SPEC_NOW, name=f"svc-{id}", node_id="n1", task=spec)


def task(id: str, spec: TaskSpec = SPEC, *, service_id: str = "s1") -> Task:
    return Task(
        id=id,
        created_at=SPEC_NOW,
        updated_at=SPEC_NOW,
        service_id=service_id,
        service_name=f"svc-{service_id}",
        node_path="/web",
        spec=spec,
        status=TaskStatus(timestamp=SPEC_NOW),
    )


def reads_of(*states: State) -> list[tuple[Any, ...]]:
    """Every read of the View protocol worth asking of these states: each id, key and target any of
    them holds, and one nobody does."""
    questions: list[tuple[Any, ...]] = []
    for info in KINDS.values():
        kind, cls = info.name, info.type
        ids = {id for state in states for id in state._objects[kind]} | {"nope"}
        questions += [("get", cls, id) for id in ids] + [("all", cls), ("count", cls)]
        for key in info.unique:
            held = {value for state in states for value in state._unique[(kind, key.name)]} | {"nope"}
            questions += [("lookup", cls, key.name, value) for value in held]
        for index in info.indexes:
            filed = {value for state in states for value in state._indexes[(kind, index.name)]} | {"nope"}
            questions += [("where", cls, index.name, value) for value in filed]
        for ref in info.references:
            targets = {value for state in states for value in state._refs[(kind, ref.name)]} | {"nope"}
            questions += [(how, cls, ref.name, t) for t in targets for how in ("referrers", "referrer_ids")]
        for tally in info.tallies:
            counted = {value for state in states for value in state._tallies[(kind, tally.name)]} | {"nope"}
            questions += [("tally", cls, tally.name, value) for value in counted]
    return questions


def answers(view: Any, questions: list[tuple[Any, ...]]) -> list[Any]:
    """Each question's answer; lists (in no particular order) sorted by id."""
    out: list[Any] = [view.revision, sorted(view.objects(), key=lambda o: (o.kind, o.id))]
    for how, *args in questions:
        answer = getattr(view, how)(*args)
        if how in ("all", "where", "referrers"):
            answer = sorted(answer, key=lambda o: o.id)
        elif how == "referrer_ids":
            answer = sorted(answer)
        out.append(answer)
    return out
