"""Registration: the rate limit per hostname and the machine record a registration leads to."""

from __future__ import annotations

from datetime import timedelta

import pytest

from treeherd.core.tasks.dispatch.registration import RegistrationLimiter, plan_register
from treeherd.model.errors import InvalidInput
from treeherd.model.objects import AgentStatus, Machine
from treeherd.model.ops import Create, Update
from treeherd.model.wire import Register
from treeherd.store.memory import MemoryStore
from treeherd.testing.factories import FIXED_NOW, Ids, machine


def test_rate_limiter_refuses_the_fourth_registration_within_the_window() -> None:
    limiter = RegistrationLimiter()
    for now in (0.0, 1.0, 2.0):
        assert limiter.admit("h", now, limit=3, window_s=8.0) is None
    assert limiter.admit("h", 3.0, limit=3, window_s=8.0) == pytest.approx(5.0)
    assert limiter.admit("other", 3.0, limit=3, window_s=8.0) is None  # per hostname
    assert limiter.admit("h", 7.9, limit=3, window_s=8.0) == pytest.approx(0.1)
    # Refusals are not counted: once the first one leaves the window, the next one gets in.
    assert limiter.admit("h", 8.0, limit=3, window_s=8.0) is None
    assert limiter.admit("h", 8.5, limit=3, window_s=8.0) is not None


def test_rate_limiter_prunes_idle_keys_and_zero_disables_it() -> None:
    limiter = RegistrationLimiter()
    limiter.admit("a", 0.0, limit=3, window_s=8.0)
    limiter.admit("b", 5.0, limit=3, window_s=8.0)
    limiter.prune(9.0, 8.0)
    assert len(limiter) == 1
    assert all(limiter.admit("c", 0.0, limit=0, window_s=8.0) is None for _ in range(10))


async def test_register_creates_a_machine_with_the_agents_report(store: MemoryStore) -> None:
    report = Register(
        hostname="Web-1.Example.com",
        ips=["10.0.0.5", "10.0.0.5"],
        machine_kind="physical",
        labels={"zone": "b"},
        cpus=8,
        memory_bytes=2**30,
        version="0.1.0",
    )
    ops, machine_id = plan_register(store.view(), report, address="10.0.0.5", now=FIXED_NOW, new_id=Ids("m"))
    assert machine_id == "m-1" and isinstance(ops[0], Create)
    await store.commit(ops)
    created = store.view().get(Machine, machine_id)
    assert created is not None
    assert created.hostname == "web-1.example.com" and created.ips == ["10.0.0.5"]
    assert created.machine_kind == "physical" and created.labels == {"zone": "b"}
    assert created.agent == AgentStatus(state="ready", address="10.0.0.5", version="0.1.0", since=FIXED_NOW)


async def test_register_updates_resources_but_keeps_what_operators_own(store: MemoryStore) -> None:
    await store.commit(
        [Create(machine("web-1", id="m1", labels={"tier": "front"}, ips=["10.0.0.1"], cpus=2))]
    )
    report = Register(hostname="web-1", labels={"tier": "agent-says"}, cpus=4, machine_kind="physical")
    later = FIXED_NOW + timedelta(minutes=1)
    ops, machine_id = plan_register(store.view(), report, address="", now=later, new_id=Ids("x"))
    assert machine_id == "m1" and isinstance(ops[0], Update)
    await store.commit(ops)
    updated = store.view().get(Machine, "m1")
    assert updated is not None
    assert updated.labels == {"tier": "front"} and updated.machine_kind == "virtual"
    assert updated.cpus == 4 and updated.ips == ["10.0.0.1"]  # an empty report keeps the stored ips
    assert updated.agent is not None and updated.agent.state == "ready" and updated.agent.since == later
    # Registering again while ready keeps `since`.
    ops, _ = plan_register(
        store.view(), report, address="", now=later + timedelta(minutes=1), new_id=Ids("x")
    )
    await store.commit(ops)
    again = store.view().get(Machine, "m1")
    assert again is not None and again.agent is not None and again.agent.since == later


def test_register_refuses_a_malformed_report() -> None:
    view = MemoryStore().view()
    with pytest.raises(InvalidInput):
        plan_register(view, Register(hostname="not a host"), address="", now=FIXED_NOW, new_id=Ids())
    with pytest.raises(InvalidInput):
        plan_register(view, Register(hostname="ok", ips=["nope"]), address="", now=FIXED_NOW, new_id=Ids())


async def test_a_certificate_binds_its_machine_and_opens_no_other(store: MemoryStore) -> None:
    from treeherd.core.tree.inventory import plan_delete_machine
    from treeherd.model.errors import Forbidden

    def register(hostname: str, identity: str | None) -> tuple[list, str]:  # type: ignore[type-arg]
        return plan_register(
            store.view(),
            Register(hostname=hostname),
            address="",
            now=FIXED_NOW,
            new_id=Ids(hostname),
            identity=identity,
        )

    ops, machine_id = register("web-1", "node-a")
    await store.commit(ops)
    bound = store.view().get(Machine, machine_id)
    assert bound is not None and bound.node_identity == "node-a"
    await store.commit(register("web-1", "node-a")[0])  # its own certificate again: fine
    cases = [
        ("web-2", "node-a", "this node's certificate belongs to web-1"),
        ("web-1", "node-b", "bound to another node's certificate"),
        ("web-1", None, "bound to a node certificate"),
    ]
    for hostname, identity, says in cases:
        with pytest.raises(Forbidden, match=says):
            register(hostname, identity)
    # An unbound machine is bound by the first certificate that opens its session.
    await store.commit(register("web-3", None)[0])
    ops, _ = register("web-3", "node-c")
    await store.commit(ops)
    assert store.view().lookup(Machine, "hostname", "web-3").node_identity == "node-c"  # type: ignore[union-attr]
    # Removing the machine revokes its certificate, whatever hostname it claims next.
    await store.commit(plan_delete_machine(store.view(), "web-1", force=True, now=FIXED_NOW, new_id=Ids("r")))
    for hostname in ("web-1", "web-9"):
        with pytest.raises(Forbidden, match="revoked when web-1 was removed"):
            register(hostname, "node-a")
