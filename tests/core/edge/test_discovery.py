"""Discovery plans: external registrations (create, refresh without a write, change), the agent's
endpoint set made exact, expiry by version, static endpoints from the tree, bad input."""

from __future__ import annotations

import msgspec
import pytest

from treeherd.core.edge.discovery import (
    plan_agent_endpoints,
    plan_deregister,
    plan_expire,
    plan_register,
    service_endpoints,
)
from treeherd.model.discovery import Endpoint
from treeherd.model.errors import InvalidInput, NotFound
from treeherd.model.objects import AgentStatus
from treeherd.model.ops import Create, Delete, Update
from treeherd.model.services import Task, TaskSpec, TaskStatus
from treeherd.model.states import TaskState
from treeherd.model.wire import TaskEndpoint
from treeherd.store.memory import MemoryStore
from treeherd.testing.factories import FIXED_NOW, Ids, binding, machine, node
from treeherd.testing.factories import service as make_service


def register(view, address="10.0.0.5", port=5432, **kw):
    args = {"ttl_s": 30.0, "weight": 1, "host": "db-1", "now": FIXED_NOW, "new_id": Ids("e")}
    args.update(kw)
    return plan_register(view, "db", address, port, **args)


async def test_register_creates_then_a_refresh_writes_nothing_and_a_change_updates(store):
    ops, endpoint_id = register(store.view())
    assert [type(op) for op in ops] == [Create]
    await store.commit(ops)
    assert register(store.view()) == ([], endpoint_id)
    ops, same = register(store.view(), weight=5)
    assert same == endpoint_id and isinstance(ops[0], Update) and ops[0].object.weight == 5


@pytest.mark.parametrize(
    ("address", "port", "ttl", "weight", "field"),
    [
        ("db.local", 1, 30, 1, "address"),
        ("10.0.0.1", 0, 30, 1, "port"),
        ("10.0.0.1", 1, 0, 1, "ttl_s"),
        ("10.0.0.1", 1, 30, 300, "weight"),
    ],
)
def test_bad_registrations_are_refused(address, port, ttl, weight, field):
    with pytest.raises(InvalidInput) as error:
        plan_register(
            MemoryStore().view(),
            "db",
            address,
            port,
            ttl_s=ttl,
            weight=weight,
            host="",
            now=FIXED_NOW,
            new_id=Ids(),
        )
    assert error.value.field == field


async def test_deregister_unknown_is_not_found(store):
    with pytest.raises(NotFound):
        plan_deregister(store.view(), "db", "10.0.0.5", 1)


async def test_expire_only_the_version_that_expired(store):
    ops, endpoint_id = register(store.view())
    await store.commit(ops)
    stored = store.view().get(Endpoint, endpoint_id)
    assert plan_expire(store.view(), [(endpoint_id, stored.version + 1)]) == []
    assert [type(op) for op in plan_expire(store.view(), [(endpoint_id, stored.version)])] == [Delete]


async def world(store):
    corp = node("corp", id="n1", port=8080)
    host = machine("h1", id="m1", ips=["10.0.0.7"], agent=AgentStatus(state="ready", address="127.0.0.1"))
    service = make_service("api", "n1", id="s1")
    tasks = [
        Task(
            id=f"t{i}",
            created_at=FIXED_NOW,
            updated_at=FIXED_NOW,
            service_id="s1",
            service_name="api",
            slot=i,
            machine_id="m1",
            status=TaskStatus(state=TaskState.RUNNING, timestamp=FIXED_NOW),
            spec=TaskSpec(command=["x"]),
            ports={"http": 30000 + i},
        )
        for i in (1, 2)
    ]
    await store.commit([Create(corp), Create(host), Create(service), *(Create(t) for t in tasks)])
    return host


async def test_agent_set_is_made_exact(store):
    host = await world(store)
    view = store.view()
    ops, held = plan_agent_endpoints(
        view,
        host,
        [TaskEndpoint(task_id="t1", port=30001), TaskEndpoint(task_id="gone", port=1)],
        [],
        address="127.0.0.1",
        ttl_s=30,
        now=FIXED_NOW,
        new_id=Ids("e"),
    )
    assert [(op.object.address, op.object.port, op.object.task_id) for op in ops] == [
        ("127.0.0.1", 30001, "t1")
    ]
    await store.commit(ops)
    current = list(store.view().all(Endpoint))
    # t1 stops being an endpoint, t2 becomes one.
    ops, held = plan_agent_endpoints(
        store.view(),
        host,
        [TaskEndpoint(task_id="t2", port=30002)],
        current,
        address="127.0.0.1",
        ttl_s=30,
        now=FIXED_NOW,
        new_id=Ids("f"),
    )
    assert sorted((type(op).__name__, op.object.task_id) for op in ops) == [
        ("Create", "t2"),
        ("Delete", "t1"),
    ]
    await store.commit(ops)
    ops, again = plan_agent_endpoints(
        store.view(),
        host,
        [TaskEndpoint(task_id="t2", port=30002)],
        list(store.view().all(Endpoint)),
        address="127.0.0.1",
        ttl_s=30,
        now=FIXED_NOW,
        new_id=Ids("g"),
    )
    assert ops == [] and again == held


async def test_service_endpoints_include_bound_machines_on_the_node_port(store):
    await world(store)
    other = machine("h2", id="m2", ips=["10.0.0.8"])
    await store.commit([Create(other), Create(binding("m2", "n1", weight=3))])
    ops, _ = register(store.view(), address="10.0.0.1", port=9)  # another service's: not listed
    await store.commit(ops)
    found = service_endpoints(store.view(), "api")
    assert [(e.source, e.address, e.port, e.weight) for e in found] == [("static", "10.0.0.8", 8080, 3)]


class NoEndpointScan:
    """A view that refuses to scan every endpoint: a service's must be read through the index."""

    def __init__(self, view):
        self._view = view

    def __getattr__(self, name):
        return getattr(self._view, name)

    def all(self, cls):
        assert cls is not Endpoint, "every endpoint was scanned"
        return self._view.all(cls)


async def test_service_endpoints_reads_the_service_index_in_address_order(store):
    await world(store)  # api on n1 (port 8080); m1 (10.0.0.7) is not bound yet
    await store.commit([Create(binding("m1", "n1"))])
    ids = Ids("e")
    for service, address, port in [
        ("api", "10.0.0.10", 80),
        ("api", "::1", 80),
        ("db", "10.0.0.8", 80),
        ("api", "10.0.0.9", 80),
        ("api", "10.0.0.9", 70),
    ]:
        args = {"ttl_s": 30.0, "weight": 1, "host": "", "now": FIXED_NOW, "new_id": ids}
        ops, _ = plan_register(store.view(), service, address, port, **args)
        await store.commit(ops)
    view = NoEndpointScan(store.view())
    # registrations and static machines together, by address (numerically, IPv4 first), then port
    assert [(e.source, e.address, e.port) for e in service_endpoints(view, "api")] == [
        ("static", "10.0.0.7", 8080),
        ("external", "10.0.0.9", 70),
        ("external", "10.0.0.9", 80),
        ("external", "10.0.0.10", 80),
        ("external", "::1", 80),
    ]
    assert [e.address for e in service_endpoints(view, "db")] == ["10.0.0.8"]  # not a service: no static
    assert service_endpoints(view, "nope") == []
    await store.commit(plan_deregister(store.view(), "api", "10.0.0.9", 70))
    assert [(e.address, e.port) for e in service_endpoints(view, "api")][:2] == [
        ("10.0.0.7", 8080),
        ("10.0.0.9", 80),
    ]


async def test_a_task_being_drained_or_stopped_is_no_endpoint_whatever_its_agent_says(store):
    host = await world(store)
    t1, t2 = (store.view().get(Task, f"t{i}") for i in (1, 2))
    assert t1 is not None and t2 is not None
    await store.commit(
        [
            Update(msgspec.structs.replace(t1, drain_until=FIXED_NOW)),
            Update(msgspec.structs.replace(t2, desired_state=TaskState.SHUTDOWN)),
        ]
    )
    ops, held = plan_agent_endpoints(
        store.view(),
        host,
        [TaskEndpoint(task_id="t1", port=30001), TaskEndpoint(task_id="t2", port=30002)],
        [],
        address="127.0.0.1",
        ttl_s=30,
        now=FIXED_NOW,
        new_id=Ids("e"),
    )
    assert ops == [] and held == []
