"""Gateway plans: the root health policy (built-in default until set, `--no-eject` switches it off),
and backend states of endpoints (tasks) as well as bound machines."""

from __future__ import annotations

import pytest

from treeherd.core.edge import gateway_plans as plans
from treeherd.core.edge.routing import SnapshotIndex, policy_for, routing_table
from treeherd.model.discovery import Endpoint
from treeherd.model.errors import NotFound
from treeherd.model.gateway import DEFAULT_POLICY, BackendState
from treeherd.model.gateway_requests import BackendUpdate, PolicySet
from treeherd.model.objects import DomainUri
from treeherd.model.ops import Create
from treeherd.store.memory import MemoryStore
from treeherd.testing.factories import FIXED_NOW, Ids, binding, domain, machine, node, service


@pytest.fixture
async def store():
    store = MemoryStore()
    await store.open()
    root = node("shop", id="n-shop", port=8080)
    child = node(
        "shop.api", parent_id="n-shop", id="n-api", domain_uris=[DomainUri(domain_id="d-1", uri="/api")]
    )
    web = machine("web-1", id="m-web", ips=["10.0.0.1"])
    api = service("api", "n-api", id="s-api")
    task_endpoint = Endpoint(
        id="e-1", created_at=FIXED_NOW, updated_at=FIXED_NOW, service="api", address="10.0.0.9",
        port=30001, host="web-1", source="task", task_id="t-1", machine_id="m-web",
    )  # fmt: skip
    await store.commit(
        [
            Create(o)
            for o in (
                domain("shop.test", id="d-1"),
                root,
                child,
                web,
                binding("m-web", "n-shop", id="b-1"),
                api,
                task_endpoint,
            )
        ]
    )
    yield store
    await store.close()


async def test_every_node_follows_the_built_in_root_default_until_the_root_policy_is_set(store) -> None:
    view = store.view()
    index = SnapshotIndex(plans.routing_snapshot(view))
    assert policy_for(index, index.nodes["n-api"]) == DEFAULT_POLICY
    assert DEFAULT_POLICY.eject_below == 0.5 and DEFAULT_POLICY.eject_window == "1m"
    assert DEFAULT_POLICY.eject_min_requests == 20 and DEFAULT_POLICY.alert_below is None
    assert plans.policies(view) == [DEFAULT_POLICY]

    await store.commit(plans.plan_set_policy(view, "/", PolicySet(eject_below=None), FIXED_NOW, Ids("p")))
    view = store.view()
    index = SnapshotIndex(plans.routing_snapshot(view))
    root = policy_for(index, index.nodes["n-api"])
    assert root.node_id == "" and root.eject_below is None and root.id != DEFAULT_POLICY.id
    assert [p.id for p in plans.policies(view)] == [root.id]

    # A node's own policy wins over the root's; removing the root's brings the default back.
    await store.commit(plans.plan_set_policy(view, "shop", PolicySet(eject_cap=0.5), FIXED_NOW, Ids("q")))
    view = store.view()
    index = SnapshotIndex(plans.routing_snapshot(view))
    assert policy_for(index, index.nodes["n-api"]).eject_below == 0.5
    await store.commit(plans.plan_delete_policy(view, "_root"))
    assert plans.policies(store.view())[0] == DEFAULT_POLICY
    with pytest.raises(NotFound, match="the root has no health policy"):
        plans.plan_delete_policy(store.view(), "/")


@pytest.mark.parametrize("name", ["e-1", "t-1", "10.0.0.9:30001"])
async def test_an_endpoint_of_a_service_on_the_node_takes_a_pin_or_an_ejection(store, name: str) -> None:
    ops = plans.plan_set_backend(
        store.view(), "shop.api", name, BackendUpdate(ejected=True, reason="failing"), FIXED_NOW, Ids("b")
    )
    await store.commit(ops)
    [state] = store.view().all(BackendState)
    assert (state.node_id, state.machine_id, state.ejected) == ("n-api", "e-1", True)
    table = routing_table(plans.routing_snapshot(store.view()))
    [upstream] = [u for u in table.upstreams if u.node_id == "n-api"]
    assert [(s.endpoint, s.down) for s in upstream.servers] == [("10.0.0.9:30001", "ejected")]


def test_a_backend_must_be_bound_or_an_endpoint_of_the_node(store) -> None:
    view = store.view()
    with pytest.raises(NotFound, match=r"no backend of shop\.api"):
        plans.plan_set_backend(view, "shop.api", "t-2", BackendUpdate(pin="in"), FIXED_NOW, Ids("b"))
    with pytest.raises(NotFound, match=r"not bound to shop\.api"):
        plans.plan_set_backend(view, "shop.api", "web-1", BackendUpdate(pin="in"), FIXED_NOW, Ids("b"))
    with pytest.raises(NotFound, match="no backend of shop"):
        plans.plan_set_backend(view, "shop", "e-1", BackendUpdate(pin="in"), FIXED_NOW, Ids("b"))
    assert isinstance(
        plans.plan_set_backend(view, "shop", "web-1", BackendUpdate(pin="in"), FIXED_NOW, Ids("b"))[0], Create
    )
