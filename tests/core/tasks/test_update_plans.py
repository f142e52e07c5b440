"""Plans of updates and rollbacks: a new spec keeps the old one and starts an update, --force replaces
without a spec change, an update resumes a paused one, a rollback swaps the specs; bad policies and a
rollback with nothing to return to are refused with the field."""

from __future__ import annotations

import itertools

import msgspec
import pytest

from treeherd.core.tasks.services import (
    plan_create_service,
    plan_remove_service,
    plan_rollback_service,
    plan_update_service,
    rollback_refusal,
)
from treeherd.core.tree.nodes import plan_create_node
from treeherd.model.errors import InvalidInput, NotFound
from treeherd.model.ops import Delete, Update
from treeherd.model.requests import NodeCreate, ServiceCreate, ServiceUpdate
from treeherd.model.services import Placement, Service, TaskSpec, UpdatePolicy, UpdateStatus
from treeherd.store.memory import MemoryStore
from treeherd.testing.factories import FIXED_NOW

_counter = itertools.count()
V1 = TaskSpec(command=["v1"])
V2 = TaskSpec(command=["v2"])


def new_id() -> str:
    return f"id{next(_counter)}"


@pytest.fixture
async def store():
    store = MemoryStore()
    await store.open()
    await store.commit(plan_create_node(store.view(), NodeCreate(path="corp"), FIXED_NOW, new_id))
    request = ServiceCreate(name="web", node="corp", replicas=3, task=V1)
    await store.commit(plan_create_service(store.view(), request, FIXED_NOW, new_id))
    yield store
    await store.close()


def web(store: MemoryStore) -> Service:
    found = store.view().lookup(Service, "name", "web")
    assert found is not None
    return found


async def update(store: MemoryStore, request: ServiceUpdate) -> Service:
    committed = await store.commit(plan_update_service(store.view(), "web", request, FIXED_NOW))
    service = committed.objects[0]
    assert isinstance(service, Service)
    return service


async def test_a_new_spec_keeps_the_old_one_and_starts_an_update(store):
    service = await update(store, ServiceUpdate(task=V2))
    assert service.task == V2 and service.previous_task == V1 and service.spec_version == 2
    assert service.update_status == UpdateStatus(
        state="updating", started_at=FIXED_NOW, message="update in progress"
    )
    scaled = await update(store, ServiceUpdate(replicas=4))
    assert scaled.update_status == service.update_status  # a scale leaves an update under way alone


async def test_force_replaces_every_task_without_a_spec_change(store):
    service = await update(store, ServiceUpdate(force=True))
    assert service.task == msgspec.structs.replace(V1, force_update=1) and service.spec_version == 2
    assert service.previous_task == V1 and service.update_status is not None


async def test_an_update_resumes_a_paused_update_or_rollback(store):
    for paused, resumed in (("paused", "updating"), ("rollback_paused", "rollback_started")):
        service = web(store)
        status = UpdateStatus(state=paused, started_at=FIXED_NOW, message="why", failed=["1"])  # type: ignore[arg-type]
        await store.commit([Update(msgspec.structs.replace(service, update_status=status))])
        after = await update(store, ServiceUpdate())
        assert after.update_status is not None and after.update_status.state == resumed
        assert after.update_status.failed == [] and after.spec_version == service.spec_version


async def test_rollback_swaps_the_specs(store):
    await update(store, ServiceUpdate(task=V2))
    committed = await store.commit(plan_rollback_service(store.view(), "web", FIXED_NOW))
    service = committed.objects[0]
    assert isinstance(service, Service)
    assert service.task == V1 and service.previous_task == V2 and service.spec_version == 3
    assert service.update_status is not None and service.update_status.state == "rollback_started"
    with pytest.raises(InvalidInput, match="being rolled back already"):
        plan_rollback_service(store.view(), "web", FIXED_NOW)


async def test_a_rollback_re_validates_the_previous_spec(store):
    db = ServiceCreate(name="db", node="corp", task=V1)
    await store.commit(plan_create_service(store.view(), db, FIXED_NOW, new_id))
    beside_db = msgspec.structs.replace(V1, placement=Placement(conflicts=["db"]))
    await update(store, ServiceUpdate(task=beside_db))
    await update(store, ServiceUpdate(task=V2, update=UpdatePolicy(failure_action="rollback")))
    assert rollback_refusal(store.view(), web(store)) is None
    await store.commit(plan_remove_service(store.view(), "db", FIXED_NOW))
    removing = store.view().lookup(Service, "name", "db")
    assert removing is not None
    await store.commit([Delete(removing)])  # the orchestrator deletes it once its tasks stopped
    before = web(store)
    with pytest.raises(InvalidInput, match="no longer validates") as raised:
        plan_rollback_service(store.view(), "web", FIXED_NOW)
    assert "unknown service 'db'" in raised.value.detail and "treeherd service update" in raised.value.detail
    assert raised.value.field == "task.placement.conflicts"
    assert web(store) == before  # nothing changed
    refusal = rollback_refusal(store.view(), before)
    assert refusal is not None and "unknown service 'db'" in refusal


async def test_rollback_with_nothing_to_return_to(store):
    with pytest.raises(InvalidInput, match="no previous spec") as raised:
        plan_rollback_service(store.view(), "web", FIXED_NOW)
    assert raised.value.field == "name"
    with pytest.raises(NotFound):
        plan_rollback_service(store.view(), "nope", FIXED_NOW)


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        (UpdatePolicy(parallelism=-1), "update.parallelism"),
        (UpdatePolicy(max_failure_ratio=1.5), "update.max_failure_ratio"),
        (UpdatePolicy(max_failure_ratio=-0.5), "update.max_failure_ratio"),
        (UpdatePolicy(delay_s=-1), "update.delay_s"),
        (UpdatePolicy(monitor_s=-1), "update.monitor_s"),
    ],
)
async def test_out_of_range_policies_are_refused(store, policy, field):
    with pytest.raises(InvalidInput) as raised:
        plan_update_service(store.view(), "web", ServiceUpdate(update=policy), FIXED_NOW)
    assert raised.value.field == field
    request = ServiceCreate(name="api", node="corp", task=V1, rollback=policy)
    with pytest.raises(InvalidInput) as raised:
        plan_create_service(store.view(), request, FIXED_NOW, new_id)
    assert raised.value.field == field.replace("update", "rollback")
