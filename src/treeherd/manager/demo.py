"""A small example for `treeherd up --demo`: a web tier with routes, a database tier, machines, and a
service of two replicas."""

from __future__ import annotations

from treeherd.manager.inventory import Inventory
from treeherd.manager.services import Services
from treeherd.model.objects import DomainPort, TreeNode
from treeherd.model.requests import (
    BindRequest,
    DomainCreate,
    MachineCreate,
    NodeCreate,
    ProvisionCreate,
    RouteSpec,
    ServiceCreate,
)
from treeherd.model.services import PortSpec, RestartPolicy, TaskSpec


async def load_demo(inventory: Inventory) -> bool:
    """Load the demo tree into an empty store; returns False (and changes nothing) if it is not empty."""
    if inventory.view.count(TreeNode) > 0:
        return False
    for node in (
        NodeCreate(
            path="corp",
            labels={"owner": "platform"},
            puppet_classes={"base": {}},
            puppet_environment="production",
        ),
        NodeCreate(path="corp.web", labels={"tier": "web"}, puppet_classes={"profile::nginx": {}}, port=8080),
        NodeCreate(path="corp.web.api", puppet_classes={"profile::api": {"workers": 4}}, port=8081),
        NodeCreate(path="corp.web.frontend", ip_hash=True),
        NodeCreate(path="corp.db", labels={"tier": "db"}, puppet_classes={"profile::mysql": {}}),
        NodeCreate(path="corp.db.mysql", port=3306),
    ):
        await inventory.create_node(node)
    await inventory.create_domain(DomainCreate(name="shop.example.com", ports=[DomainPort(port=80)]))
    await inventory.create_domain(DomainCreate(name="api.corp.internal", ports=[DomainPort(port=8000)]))
    for path, domain, uri in (
        ("corp.web.frontend", "shop.example.com", "/"),
        ("corp.web.api", "shop.example.com", "/api"),
        ("corp.web.api", "api.corp.internal", "/"),
    ):
        await inventory.add_route(path, RouteSpec(domain=domain, uri=uri))
    for hostname, ip, kind, cpus, memory in (
        ("web-01", "127.0.0.11", "virtual", 4.0, 8 << 30),
        ("web-02", "127.0.0.12", "virtual", 4.0, 8 << 30),
        ("web-03", "127.0.0.13", "virtual", 4.0, 8 << 30),
        ("db-01", "127.0.0.21", "physical", 32.0, 128 << 30),
    ):
        await inventory.create_machine(
            MachineCreate(hostname=hostname, ips=[ip], machine_kind=kind, cpus=cpus, memory_bytes=memory)  # type: ignore[arg-type]
        )
    for hostname, path, weight in (
        ("web-01", "corp.web.frontend", 5),
        ("web-02", "corp.web.frontend", 5),
        ("web-02", "corp.web.api", 3),
        ("web-03", "corp.web.api", 3),
        ("db-01", "corp.db.mysql", 1),
    ):
        await inventory.bind(hostname, BindRequest(node=path, weight=weight))
    await inventory.create_provision(ProvisionCreate(hostname="web-04", node="corp.web.api"))
    await Services(inventory.store).create(
        ServiceCreate(
            name="frontend",
            node="corp.web.frontend",
            replicas=2,
            task=TaskSpec(
                # A tiny web server on the port the allocator hands each task (no shell needed).
                command=[
                    "python3",
                    "-c",
                    "import os, runpy, sys; sys.argv = ['http.server', '--bind', '127.0.0.1',"
                    " os.environ['TREEHERD_PORT_HTTP']]; runpy.run_module('http.server', run_name='__main__')",
                ],
                env={"PYTHONUNBUFFERED": "1"},  # so `treeherd service logs` shows its lines at once
                ports=[PortSpec(name="http")],
                restart=RestartPolicy(delay_s=1.0),
            ),
        )
    )
    return True
