"""A small tree to look at: nodes with inherited attributes, a domain and its routes, bound machines and
a service, written through the API as an operator would."""

from __future__ import annotations

from treeherd.model.objects import DomainPort
from treeherd.model.requests import (
    BindRequest,
    DomainCreate,
    MachineCreate,
    NodeCreate,
    RouteSpec,
    ServiceCreate,
)
from treeherd.model.services import TaskSpec
from treeherd.transport.client import Client


def seed(url: str, *, token: str | None = None) -> None:
    client = Client(url, token=token)
    try:
        client.request("POST", "/api/v1/nodes", NodeCreate(path="corp", labels={"owner": "platform"}))
        client.request(
            "POST", "/api/v1/nodes", NodeCreate(path="corp.web", labels={"tier": "web"}, port=8080)
        )
        client.request("POST", "/api/v1/nodes", NodeCreate(path="corp.web.shop"))
        client.request("POST", "/api/v1/nodes", NodeCreate(path="corp.web.api"))
        client.request(
            "POST", "/api/v1/domains", DomainCreate(name="shop.example.com", ports=[DomainPort(port=8080)])
        )
        client.request(
            "POST", "/api/v1/nodes/corp.web.shop/routes", RouteSpec(domain="shop.example.com", uri="/")
        )
        client.request(
            "POST", "/api/v1/nodes/corp.web.api/routes", RouteSpec(domain="shop.example.com", uri="/api")
        )
        for index in (1, 2):
            hostname = f"web-0{index}"
            client.request(
                "POST", "/api/v1/machines", MachineCreate(hostname=hostname, ips=[f"127.0.0.{10 + index}"])
            )
            client.request(
                "POST", f"/api/v1/machines/{hostname}/bindings", BindRequest(node="corp.web.shop", weight=5)
            )
        client.request(
            "POST",
            "/api/v1/services",
            ServiceCreate(name="shop", node="corp.web.shop", replicas=1, task=TaskSpec(command=["serve"])),
        )
    finally:
        client.close()
