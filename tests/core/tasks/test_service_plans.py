"""Service plans: every bad input refused with the field to fix, nothing else written."""

from __future__ import annotations

import itertools

import pytest

from treeherd.core.tasks.services import plan_create_service, plan_remove_service, plan_update_service
from treeherd.core.tree.nodes import plan_create_node
from treeherd.model.errors import AlreadyExists, InvalidInput, NotFound
from treeherd.model.requests import NodeCreate, ServiceCreate, ServiceUpdate
from treeherd.model.services import Placement, PortSpec, Resources, RestartPolicy, Service, TaskSpec
from treeherd.store.memory import MemoryStore
from treeherd.testing.factories import FIXED_NOW

_counter = itertools.count()


def new_id() -> str:
    return f"id{next(_counter)}"


@pytest.fixture
async def store():
    store = MemoryStore()
    await store.open()
    await store.commit(plan_create_node(store.view(), NodeCreate(path="corp"), FIXED_NOW, new_id))
    yield store
    await store.close()


def spec(**fields) -> TaskSpec:
    return TaskSpec(command=["sleep", "1"], **fields)


async def create(store, name="web", **fields):
    request = ServiceCreate(
        name=name, node=fields.pop("node", "corp"), task=fields.pop("task", spec()), **fields
    )
    committed = await store.commit(plan_create_service(store.view(), request, FIXED_NOW, new_id))
    return committed.objects[0]


async def test_create_and_update(store):
    service = await create(store, replicas=3)
    assert isinstance(service, Service) and service.replicas == 3 and service.spec_version == 1
    ops = plan_update_service(store.view(), "web", ServiceUpdate(replicas=5), FIXED_NOW)
    assert ops[0].object.replicas == 5 and ops[0].object.spec_version == 1
    ops = plan_update_service(store.view(), "web", ServiceUpdate(task=spec(env={"A": "1"})), FIXED_NOW)
    assert ops[0].object.spec_version == 2


@pytest.mark.parametrize(
    ("fields", "error", "field"),
    [
        ({"node": "nope"}, NotFound, "node"),
        ({"replicas": -1}, InvalidInput, "replicas"),
        (
            {"task": spec(placement=Placement(constraints=["node.labels.disk=ssd"]))},
            InvalidInput,
            "constraints",
        ),
        ({"task": spec(placement=Placement(conflicts=["ghost"]))}, NotFound, "task.placement.conflicts"),
        ({"task": spec(placement=Placement(machine_of="ghost"))}, NotFound, "task.placement.machine_of"),
        (
            {"task": spec(resources=Resources(reserve_memory=100, limit_memory=50))},
            InvalidInput,
            "task.resources.limit_memory",
        ),
        (
            {"task": spec(resources=Resources(reserve_cpus=2, limit_cpus=1))},
            InvalidInput,
            "task.resources.limit_cpus",
        ),
        ({"task": spec(ports=[PortSpec(name="a"), PortSpec(name="a")])}, InvalidInput, "task.ports"),
        ({"task": spec(ports=[PortSpec(name="A-b")])}, InvalidInput, "task.ports"),
        ({"task": spec(restart=RestartPolicy(delay_s=-1))}, InvalidInput, "task.restart.delay_s"),
        ({"task": TaskSpec(command=[])}, InvalidInput, "task.command"),
        ({"task": spec(workdir="relative")}, InvalidInput, "task.workdir"),
        ({"task": spec(env={"1BAD": "x"})}, InvalidInput, "task.env"),
    ],
)
async def test_bad_input_writes_nothing(store, fields, error, field):
    before = store.revision
    with pytest.raises(error) as caught:
        await create(store, **fields)
    assert caught.value.field == field
    assert caught.value.detail
    assert store.revision == before


async def test_duplicate_name_and_bad_name(store):
    await create(store)
    with pytest.raises(AlreadyExists):
        await create(store)
    with pytest.raises(InvalidInput):
        await create(store, name="Bad Name")


async def test_unsatisfiable_constraint_is_accepted(store):
    service = await create(store, task=spec(placement=Placement(constraints=["node.labels.gpu==yes"])))
    assert service.task.placement.constraints == ["node.labels.gpu==yes"]


async def test_conflicts_with_itself_and_with_others(store):
    await create(store, name="db")
    await create(store, name="web", task=spec(placement=Placement(conflicts=["web", "db"], machine_of=None)))
    await create(store, name="side", task=spec(placement=Placement(machine_of="web")))
    with pytest.raises(InvalidInput):  # web still has a MachineOf user
        plan_remove_service(store.view(), "web", FIXED_NOW)


async def test_global_service_cannot_scale(store):
    await create(store, mode="global")
    with pytest.raises(InvalidInput) as caught:
        plan_update_service(store.view(), "web", ServiceUpdate(replicas=3), FIXED_NOW)
    assert caught.value.field == "replicas"


async def test_remove_marks_the_service(store):
    await create(store)
    (op,) = plan_remove_service(store.view(), "web", FIXED_NOW)
    assert op.object.removing
