"""The asset agent's report: register or update, bind to the provisioned node, drop the record, once."""

from __future__ import annotations

import pytest
from tests.core.conftest import World

from treeherd.core.tree.provisioning import plan_report
from treeherd.model.errors import InvalidInput, Refused
from treeherd.model.objects import Binding, Machine, ProvisioningRecord
from treeherd.model.ops import Assert, Create, Delete, Update
from treeherd.model.provisioning import MachineReport

REPORT = MachineReport(
    hostname="new-1", ips=["10.0.0.7", "10.0.0.7"], machine_kind="physical", cpus=8, memory_bytes=2**34
)


async def test_a_new_host_is_registered_bound_and_its_record_removed_at_once(world: World) -> None:
    await world.nodes("corp", "corp.db")
    await world.provision("new-1", "corp.db")
    ops = plan_report(world.view, REPORT, world.now, world.ids)
    assert [type(op) for op in ops] == [Create, Create, Delete, Assert]
    await world.commit(ops)
    machine = world.get_machine("new-1")
    assert machine is not None
    assert (machine.ips, machine.machine_kind, machine.cpus, machine.memory_bytes) == (
        ["10.0.0.7"],
        "physical",
        8,
        2**34,
    )
    [binding] = world.view.referrers(Binding, "machine", machine.id)
    node = world.get_node("corp.db")
    assert node is not None and binding.node_id == node.id
    assert world.view.count(ProvisioningRecord) == 0
    # Run again: nothing to do.
    again = plan_report(world.view, REPORT, world.now, world.ids)
    assert [type(op) for op in again] == [Assert]


async def test_a_known_host_is_updated_and_keeps_its_labels(world: World) -> None:
    await world.nodes("corp")
    await world.machine("new-1", kind="physical", labels={"rack": "a"}, ips=["10.0.0.1"])
    await world.bind("new-1", "corp")
    report = MachineReport(
        hostname="new-1", ips=["10.0.0.2"], machine_kind="physical", labels={"os": "debian"}
    )
    ops = plan_report(world.view, report, world.now, world.ids)
    assert [type(op) for op in ops] == [Update]
    await world.commit(ops)
    machine = world.get_machine("new-1")
    assert machine is not None
    assert machine.labels == {"os": "debian", "rack": "a"}
    assert machine.ips == ["10.0.0.2"]


async def test_an_already_bound_host_just_drops_its_record(world: World) -> None:
    await world.nodes("corp")
    await world.machine("new-1", kind="physical", ips=["10.0.0.7"], cpus=8, memory_bytes=2**34)
    await world.bind("new-1", "corp")
    await world.provision("new-1", "corp")
    ops = plan_report(world.view, REPORT, world.now, world.ids)
    assert [type(op) for op in ops] == [Assert, Delete, Assert]


async def test_kinds_are_never_mixed_and_nothing_is_written(world: World) -> None:
    await world.nodes("corp")
    await world.machine("vm-1", kind="virtual")
    await world.bind("vm-1", "corp")
    await world.provision("new-1", "corp")
    revision = world.view.revision
    with pytest.raises(Refused, match="'new-1' reports itself physical, but 'corp' holds virtual machines"):
        plan_report(world.view, REPORT, world.now, world.ids)
    assert world.view.revision == revision
    assert world.view.count(Machine) == 1


@pytest.mark.parametrize(
    ("report", "message"),
    [
        (MachineReport(hostname="bad host"), "invalid hostname"),
        (MachineReport(hostname="h", ips=["300.1.1.1"]), "invalid IP address"),
        (MachineReport(hostname="h", cpus=-1), "cpus must not be negative"),
        (MachineReport(hostname="h", labels={"bad key!": "x"}), "invalid label key"),
    ],
)
async def test_bad_reports_are_refused(world: World, report: MachineReport, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        plan_report(world.view, report, world.now, world.ids)
