"""The plans of core/tree/inventory.py (machines, bindings, domains, provisioning records), called
directly against a MemoryStore's view.

State is built by committing what the plans return (see `World` in tests/core/conftest.py), so every test
also checks that the operations a plan makes are ones the store accepts.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from treeherd.core.tree import inventory as inv
from treeherd.core.tree import nodes
from treeherd.model.errors import (
    AlreadyExists,
    InvalidInput,
    NotFound,
    Refused,
    VersionConflict,
)
from treeherd.model.objects import Binding, DomainPort, Machine, ProvisioningRecord
from treeherd.model.ops import Assert, Create, Delete, Update
from treeherd.model.requests import (
    BindRequest,
    DomainCreate,
    DomainUpdate,
    MachineCreate,
    MachineUpdate,
    ProvisionCreate,
    RouteSpec,
)
from treeherd.testing.factories import FIXED_NOW, Ids

LATER = FIXED_NOW + timedelta(hours=1)


# ---- machines -------------------------------------------------------------------------------------
async def test_create_machine_normalises(world) -> None:
    request = MachineCreate(
        hostname="Web1.Example.COM",
        ips=["10.0.0.1", "2001:DB8::1", "10.0.0.1"],
        machine_kind="physical",
        labels={"z": "1", "a": "2"},
        cpus=4.5,
        memory_bytes=1 << 30,
    )
    await world.commit(inv.plan_create_machine(world.view, request, FIXED_NOW, world.ids))
    machine = world.get_machine("web1.example.com")
    assert machine is not None
    assert machine.ips == ["10.0.0.1", "2001:db8::1"]
    assert machine.machine_kind == "physical"
    assert list(machine.labels) == ["a", "z"]
    assert (machine.cpus, machine.memory_bytes) == (4.5, 1 << 30)
    assert inv.machine_by_hostname(world.view, " WEB1.example.com ").id == machine.id


async def test_duplicate_hostname_differing_in_case(world) -> None:
    await world.machine("web1.example.com")
    with pytest.raises(AlreadyExists) as caught:
        inv.plan_create_machine(world.view, MachineCreate(hostname="WEB1.Example.com"), FIXED_NOW, world.ids)
    assert caught.value.field == "hostname"


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (MachineCreate(hostname="bad host"), "hostname"),
        (MachineCreate(hostname="m", ips=["10.0.0.300"]), "ips"),
        (MachineCreate(hostname="m", ips=["10.0.0.1", "nope"]), "ips"),
        (MachineCreate(hostname="m", cpus=-1), "cpus"),
        (MachineCreate(hostname="m", memory_bytes=-1), "memory_bytes"),
        (MachineCreate(hostname="m", labels={"k": "a;b"}), "labels"),
    ],
)
async def test_create_machine_refuses_invalid_input(world, request_: MachineCreate, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        inv.plan_create_machine(world.view, request_, FIXED_NOW, world.ids)
    assert caught.value.field == field


async def test_update_machine(world) -> None:
    await world.machine("m1", labels={"a": "1", "b": "2"}, ips=["10.0.0.1"], cpus=1)
    patch = MachineUpdate(labels={"a": None, "c": "3"}, ips=["10.0.0.2"], cpus=2, memory_bytes=5)
    await world.commit(inv.plan_update_machine(world.view, "M1", patch, LATER))
    machine = world.get_machine("m1")
    assert machine.labels == {"b": "2", "c": "3"}
    assert machine.ips == ["10.0.0.2"]
    assert (machine.cpus, machine.memory_bytes) == (2, 5)
    assert machine.updated_at == LATER


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        (MachineUpdate(cpus=-1), "cpus"),
        (MachineUpdate(memory_bytes=-5), "memory_bytes"),
        (MachineUpdate(ips=["x"]), "ips"),
        (MachineUpdate(labels={"bad key": "v"}), "labels"),
        (MachineUpdate(version=999), "version"),
    ],
)
async def test_update_machine_refuses(world, patch: MachineUpdate, field: str) -> None:
    await world.machine("m1")
    with pytest.raises((InvalidInput, VersionConflict)) as caught:
        inv.plan_update_machine(world.view, "m1", patch, LATER)
    assert caught.value.field == field


async def test_unknown_machine_is_not_found(world) -> None:
    with pytest.raises(NotFound) as caught:
        inv.plan_update_machine(world.view, "nope", MachineUpdate(), LATER)
    assert caught.value.field == "hostname"


# ---- bindings -------------------------------------------------------------------------------------
@pytest.mark.parametrize("weight", [0, 1, 256])
async def test_bind_accepts_weights_in_range(world, weight: int) -> None:
    await world.nodes("a")
    await world.machine("m1")
    binding = await world.bind("m1", "a", weight=weight)
    assert binding.weight == weight


@pytest.mark.parametrize("weight", [-1, 257, 300])
async def test_bind_refuses_weights_out_of_range(world, weight: int) -> None:
    await world.nodes("a")
    await world.machine("m1")
    with pytest.raises(InvalidInput) as caught:
        inv.plan_bind(world.view, "m1", BindRequest(node="a", weight=weight), FIXED_NOW, world.ids)
    assert caught.value.field == "weight"


async def test_bind_asserts_the_machine(world) -> None:
    await world.nodes("a")
    machine = await world.machine("m1")
    ops = inv.plan_bind(world.view, "m1", BindRequest(node="a"), FIXED_NOW, world.ids)
    assert isinstance(ops[0], Create)
    assert Assert(machine) in ops


async def test_binding_again_changes_the_weight(world) -> None:
    await world.nodes("a")
    machine = await world.machine("m1")
    first = await world.bind("m1", "a", weight=1)
    ops = inv.plan_bind(world.view, "m1", BindRequest(node="a", weight=7), LATER, world.ids)
    assert isinstance(ops[0], Update)
    assert Assert(machine) in ops
    await world.commit(ops)
    bindings = list(world.view.all(Binding))
    assert [(b.id, b.weight) for b in bindings] == [(first.id, 7)]
    assert bindings[0].created_at == FIXED_NOW
    assert bindings[0].updated_at == LATER


async def test_a_machine_may_be_bound_to_several_nodes(world) -> None:
    await world.nodes("a", "b")
    await world.machine("m1")
    await world.bind("m1", "a")
    await world.bind("m1", "b", weight=3)
    assert sorted((b.node_id, b.weight) for b in world.view.all(Binding)) == sorted(
        [(world.get_node("a").id, 1), (world.get_node("b").id, 3)]
    )


@pytest.mark.parametrize(("held", "new"), [("virtual", "physical"), ("physical", "virtual")])
async def test_bind_never_mixes_machine_kinds(world, held: str, new: str) -> None:
    await world.nodes("a")
    await world.machine("held1", kind=held)
    await world.machine("new1", kind=new)
    await world.bind("held1", "a")
    with pytest.raises(Refused) as caught:
        inv.plan_bind(world.view, "new1", BindRequest(node="a"), FIXED_NOW, world.ids)
    assert caught.value.field == "node"
    assert held in caught.value.detail
    assert "'held1'" in caught.value.detail


async def test_bind_transaction_does_not_grow_with_the_node(world) -> None:
    """The store checks the one-kind-per-node invariant itself, so a bind writes only its binding and
    asserts its machine, however many machines the node already holds."""
    await world.nodes("a")
    for index in range(20):
        await world.machine(f"m{index}")
        await world.bind(f"m{index}", "a")
    await world.machine("new")
    ops = inv.plan_bind(world.view, "new", BindRequest(node="a"), FIXED_NOW, world.ids)
    assert [type(op) for op in ops] == [Create, Assert]
    await world.commit(ops)
    assert world.view.count(Binding) == 21


async def test_bind_unknown_machine_or_node(world) -> None:
    await world.nodes("a")
    await world.machine("m1")
    with pytest.raises(NotFound) as caught:
        inv.plan_bind(world.view, "nope", BindRequest(node="a"), FIXED_NOW, world.ids)
    assert caught.value.field == "hostname"
    with pytest.raises(NotFound) as caught:
        inv.plan_bind(world.view, "m1", BindRequest(node="nope"), FIXED_NOW, world.ids)
    assert caught.value.field == "node"


async def test_unbind(world) -> None:
    await world.nodes("a")
    await world.machine("m1")
    binding = await world.bind("m1", "a")
    assert inv.plan_unbind(world.view, "m1", "a") == [Delete(binding)]
    await world.commit(inv.plan_unbind(world.view, "m1", "a"))
    assert world.view.count(Binding) == 0
    with pytest.raises(NotFound) as caught:
        inv.plan_unbind(world.view, "m1", "a")
    assert caught.value.field == "node"


async def test_changing_a_machine_kind_that_would_mix_a_node_is_refused(world) -> None:
    await world.nodes("a", "b")
    await world.machine("v1")
    await world.machine("v2")
    await world.bind("v1", "a")
    await world.bind("v2", "a")
    await world.bind("v1", "b")
    with pytest.raises(Refused) as caught:
        inv.plan_update_machine(world.view, "v1", MachineUpdate(machine_kind="physical"), LATER)
    assert caught.value.field == "node"
    assert "'a'" in caught.value.detail
    assert world.get_machine("v1").machine_kind == "virtual"


async def test_changing_the_kind_of_a_machine_alone_in_its_nodes_is_fine(world) -> None:
    await world.nodes("a")
    await world.machine("v1")
    await world.machine("free")
    await world.bind("v1", "a")
    await world.commit(
        inv.plan_update_machine(world.view, "v1", MachineUpdate(machine_kind="physical"), LATER)
    )
    await world.commit(
        inv.plan_update_machine(world.view, "free", MachineUpdate(machine_kind="physical"), LATER)
    )
    assert {m.machine_kind for m in world.view.all(Machine)} == {"physical"}


async def test_delete_machine_refused_while_bound_unless_forced(world) -> None:
    await world.nodes("a", "b")
    await world.machine("m1")
    await world.bind("m1", "a")
    await world.bind("m1", "b")
    with pytest.raises(Refused) as caught:
        inv.plan_delete_machine(world.view, "m1", force=False, now=FIXED_NOW, new_id=Ids("revoked"))
    assert "a, b" in caught.value.detail
    ops = inv.plan_delete_machine(world.view, "m1", force=True, now=FIXED_NOW, new_id=Ids("revoked"))
    assert [type(op.object) for op in ops] == [Binding, Binding, Machine]
    await world.commit(ops)
    assert world.view.count(Machine) == 0
    assert world.view.count(Binding) == 0


async def test_delete_unbound_machine(world) -> None:
    machine = await world.machine("m1")
    assert inv.plan_delete_machine(world.view, "m1", force=False, now=FIXED_NOW, new_id=Ids("revoked")) == [
        Delete(machine)
    ]
    with pytest.raises(VersionConflict):
        inv.plan_delete_machine(
            world.view, "m1", force=False, now=FIXED_NOW, new_id=Ids("revoked"), version=machine.version + 1
        )


# ---- concurrency: plans from the same view -----------------------------------------------------------
async def test_physical_and_virtual_bound_concurrently_to_an_empty_node(world) -> None:
    """Two binds planned from one view: the second may not mix kinds in the (then) occupied node."""
    await world.nodes("a")
    await world.machine("p1", kind="physical")
    await world.machine("v1", kind="virtual")
    view = world.view
    first = inv.plan_bind(view, "p1", BindRequest(node="a"), FIXED_NOW, world.ids)
    second = inv.plan_bind(view, "v1", BindRequest(node="a"), FIXED_NOW, world.ids)
    await world.commit(first)
    with pytest.raises((VersionConflict, Refused)):
        await world.commit(second)
    kinds = {world.view.get(Machine, b.machine_id).machine_kind for b in world.view.all(Binding)}
    assert kinds == {"physical"}


async def test_kind_change_and_bind_planned_concurrently_never_mix(world) -> None:
    """A bind guarded by a co-bound machine's kind fails if that machine's kind changed meanwhile."""
    await world.nodes("a")
    await world.machine("v1")
    await world.machine("v2")
    await world.bind("v1", "a")
    view = world.view
    change = inv.plan_update_machine(view, "v1", MachineUpdate(machine_kind="physical"), LATER)
    bind = inv.plan_bind(view, "v2", BindRequest(node="a"), FIXED_NOW, world.ids)
    await world.commit(change)
    with pytest.raises((VersionConflict, Refused)):
        await world.commit(bind)
    kinds = {world.view.get(Machine, b.machine_id).machine_kind for b in world.view.all(Binding)}
    assert len(kinds) == 1


async def test_two_binds_of_the_same_kind_planned_concurrently_both_apply(world) -> None:
    await world.nodes("a")
    await world.machine("v1")
    await world.machine("v2")
    view = world.view
    first = inv.plan_bind(view, "v1", BindRequest(node="a"), FIXED_NOW, world.ids)
    second = inv.plan_bind(view, "v2", BindRequest(node="a"), FIXED_NOW, world.ids)
    await world.commit(first)
    try:
        await world.commit(second)
    except VersionConflict:
        # a retry from the new state must then succeed
        await world.commit(inv.plan_bind(world.view, "v2", BindRequest(node="a"), FIXED_NOW, world.ids))
    assert world.view.count(Binding) == 2


async def test_delete_machine_fails_when_it_was_bound_meanwhile(world) -> None:
    await world.nodes("a")
    await world.machine("m1")
    stale = inv.plan_delete_machine(world.view, "m1", force=True, now=FIXED_NOW, new_id=Ids("revoked"))
    await world.bind("m1", "a")
    with pytest.raises((Refused, VersionConflict)):
        await world.commit(stale)
    assert world.view.count(Machine) == 1


# ---- domains --------------------------------------------------------------------------------------
async def test_create_domain_defaults_and_sorting(world) -> None:
    request = DomainCreate(name="Shop.Example.com", ports=[DomainPort(port=8080), DomainPort(port=80)])
    await world.commit(inv.plan_create_domain(world.view, request, FIXED_NOW, world.ids))
    domain = world.get_domain("shop.example.com")
    assert domain is not None
    assert domain.access_log_path == "shop.example.com_access.log"
    assert domain.error_log_path == "shop.example.com_error.log"
    assert [p.port for p in domain.ports] == [80, 8080]
    assert (domain.ssl_cert_path, domain.ssl_key_path) == (None, None)


async def test_create_domain_keeps_given_log_paths(world) -> None:
    domain = await world.domain(
        "shop.example.com", access_log_path="/var/log/a.log", error_log_path="/var/log/e.log"
    )
    assert (domain.access_log_path, domain.error_log_path) == ("/var/log/a.log", "/var/log/e.log")


async def test_wildcard_domain_log_paths(world) -> None:
    domain = await world.domain("*.example.com")
    assert domain.name == "*.example.com"
    assert "*" not in domain.access_log_path
    assert domain.access_log_path.endswith(".example.com_access.log")
    assert domain.error_log_path.endswith(".example.com_error.log")


@pytest.mark.parametrize(
    ("cert", "key", "field", "named"),
    [
        (None, None, "ssl_cert_path", ["ssl_cert_path", "ssl_key_path"]),
        ("/etc/ssl/c.pem", None, "ssl_key_path", ["ssl_key_path"]),
        (None, "/etc/ssl/k.pem", "ssl_cert_path", ["ssl_cert_path"]),
        ("", "", "ssl_cert_path", ["ssl_cert_path", "ssl_key_path"]),
    ],
)
async def test_ssl_port_needs_cert_and_key(
    world, cert: str | None, key: str | None, field: str, named: list[str]
) -> None:
    request = DomainCreate(
        name="shop.example.com",
        ports=[DomainPort(port=80), DomainPort(port=443, ssl=True)],
        ssl_cert_path=cert,
        ssl_key_path=key,
    )
    with pytest.raises(InvalidInput) as caught:
        inv.plan_create_domain(world.view, request, FIXED_NOW, world.ids)
    assert caught.value.field == field
    for name in named:
        assert name in caught.value.detail
    assert "443" in caught.value.detail


async def test_ssl_port_with_cert_and_key(world) -> None:
    request = DomainCreate(
        name="shop.example.com",
        ports=[DomainPort(port=443, ssl=True)],
        ssl_cert_path="/etc/ssl/c.pem",
        ssl_key_path="/etc/ssl/k.pem",
    )
    await world.commit(inv.plan_create_domain(world.view, request, FIXED_NOW, world.ids))
    assert world.get_domain("shop.example.com").ports == [DomainPort(port=443, ssl=True)]


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (DomainCreate(name="a.example.com", ports=[]), "ports"),
        (
            DomainCreate(name="a.example.com", ports=[DomainPort(port=80), DomainPort(port=80, ssl=True)]),
            "ports",
        ),
        (DomainCreate(name="a.example.com", ports=[DomainPort(port=0)]), "ports"),
        (DomainCreate(name="a.example.com", ports=[DomainPort(port=70000)]), "ports"),
        (DomainCreate(name="bad name", ports=[DomainPort(port=80)]), "name"),
        (
            DomainCreate(name="a.example.com", ports=[DomainPort(port=80)], access_log_path="a b"),
            "access_log_path",
        ),
        (
            DomainCreate(name="a.example.com", ports=[DomainPort(port=80)], error_log_path="a;b"),
            "error_log_path",
        ),
        (
            DomainCreate(
                name="a.example.com",
                ports=[DomainPort(port=443, ssl=True)],
                ssl_cert_path="/c.pem\n",
                ssl_key_path="/k.pem",
            ),
            "ssl_cert_path",
        ),
    ],
)
async def test_create_domain_refuses_invalid_input(world, request_: DomainCreate, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        inv.plan_create_domain(world.view, request_, FIXED_NOW, world.ids)
    assert caught.value.field == field


async def test_duplicate_domain_name(world) -> None:
    await world.domain("shop.example.com")
    request = DomainCreate(name="SHOP.example.com", ports=[DomainPort(port=80)])
    with pytest.raises(AlreadyExists) as caught:
        inv.plan_create_domain(world.view, request, FIXED_NOW, world.ids)
    assert caught.value.field == "name"


async def test_update_domain(world) -> None:
    await world.domain("shop.example.com", access_log_path="/var/log/a.log")
    patch = DomainUpdate(
        ports=[DomainPort(port=443, ssl=True), DomainPort(port=80)],
        ssl_cert_path="/etc/ssl/c.pem",
        ssl_key_path="/etc/ssl/k.pem",
        access_log_path=None,
    )
    await world.commit(inv.plan_update_domain(world.view, "shop.example.com", patch, LATER))
    domain = world.get_domain("shop.example.com")
    assert [p.port for p in domain.ports] == [80, 443]
    assert domain.access_log_path == "shop.example.com_access.log"
    # dropping the key while an ssl port remains is refused
    with pytest.raises(InvalidInput) as caught:
        inv.plan_update_domain(world.view, "shop.example.com", DomainUpdate(ssl_key_path=None), LATER)
    assert caught.value.field == "ssl_key_path"
    # dropping the ssl port and the key together is fine
    patch = DomainUpdate(ports=[DomainPort(port=80)], ssl_key_path=None, ssl_cert_path=None)
    await world.commit(inv.plan_update_domain(world.view, "shop.example.com", patch, LATER))
    assert world.get_domain("shop.example.com").ssl_key_path is None


async def test_delete_domain_refused_while_routes_use_it(world) -> None:
    await world.nodes("corp", "corp.web", "corp.api")
    await world.domain("shop.example.com")
    await world.route("corp.web", "shop.example.com", "/")
    await world.route("corp.api", "shop.example.com", "/api")
    with pytest.raises(Refused) as caught:
        inv.plan_delete_domain(world.view, "shop.example.com")
    assert "corp.api, corp.web" in caught.value.detail
    for path, uri in (("corp.web", "/"), ("corp.api", "/api")):
        spec = RouteSpec(domain="shop.example.com", uri=uri)
        await world.commit(nodes.plan_remove_route(world.view, path, spec, LATER))
    await world.commit(inv.plan_delete_domain(world.view, "shop.example.com"))
    assert world.get_domain("shop.example.com") is None


async def test_delete_unknown_domain(world) -> None:
    with pytest.raises(NotFound) as caught:
        inv.plan_delete_domain(world.view, "nope.example.com")
    assert caught.value.field == "name"


# ---- provisioning ---------------------------------------------------------------------------------
async def test_create_provision_asserts_the_node(world) -> None:
    node = await world.node("a")
    ops = inv.plan_create_provision(
        world.view, ProvisionCreate(hostname="New1", node="a"), FIXED_NOW, world.ids
    )
    assert Assert(node) in ops
    await world.commit(ops)
    record = world.view.lookup(ProvisioningRecord, "hostname", "new1")
    assert record is not None and record.node_id == node.id


async def test_duplicate_provision_hostname_names_the_node(world) -> None:
    await world.nodes("a", "b")
    await world.provision("new1", "a")
    with pytest.raises(AlreadyExists) as caught:
        inv.plan_create_provision(
            world.view, ProvisionCreate(hostname="NEW1", node="b"), FIXED_NOW, world.ids
        )
    assert caught.value.field == "hostname"
    assert "'a'" in caught.value.detail


async def test_provision_for_an_unknown_node(world) -> None:
    with pytest.raises(NotFound) as caught:
        inv.plan_create_provision(
            world.view, ProvisionCreate(hostname="new1", node="nope"), FIXED_NOW, world.ids
        )
    assert caught.value.field == "node"


async def test_provision_with_an_invalid_hostname(world) -> None:
    await world.nodes("a")
    with pytest.raises(InvalidInput) as caught:
        inv.plan_create_provision(world.view, ProvisionCreate(hostname="a b", node="a"), FIXED_NOW, world.ids)
    assert caught.value.field == "hostname"


async def test_delete_provision(world) -> None:
    await world.nodes("a")
    record = await world.provision("new1", "a")
    assert inv.plan_delete_provision(world.view, "NEW1") == [Delete(record)]
    await world.commit(inv.plan_delete_provision(world.view, "new1"))
    with pytest.raises(NotFound) as caught:
        inv.plan_delete_provision(world.view, "new1")
    assert caught.value.field == "hostname"
