"""The console's edits of the tree's configuration, each through the manager's own services and their
validation, as the API does: a node's routing attributes (port, upstream, ip_hash, Puppet
environment), its machines (bind, unbind, weight), its Puppet classes, and domains (ports, ssl files,
log paths; add and delete).

Each form posts here after the page asked the operator to confirm; the answer is the form again, with
the API's error beside the field it concerns (nothing written) or a note of what changed.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
from litestar import Controller, Request, Response, post

from treeherd.core.tree.nodes import node_by_path
from treeherd.manager.inventory import Inventory
from treeherd.model.errors import Forbidden, InvalidInput, Unauthenticated
from treeherd.model.objects import Domain
from treeherd.model.requests import BindRequest, DomainCreate, DomainUpdate, NodeUpdate
from treeherd.web.actions import Failure, FieldError, action_result, field_error, read_form, whole_number
from treeherd.web.login import refused_here, to_login
from treeherd.web.queries import node_detail
from treeherd.web.render import page


def _optional_int(value: str, field: str) -> int | None:
    return None if value == "" else whole_number(value, field)


def _ip_hash(value: str) -> bool | None:
    choices = {"": None, "inherit": None, "on": True, "off": False}
    if value not in choices:
        raise InvalidInput(f"ip_hash is inherit, on or off, not {value!r}", field="ip_hash")
    return choices[value]


def parse_ports(text: str) -> list[dict[str, Any]]:
    """`80, 443:ssl` (spaces or commas between) as the API's list of ports."""
    ports = []
    for item in text.replace(",", " ").split():
        number, _, suffix = item.partition(":")
        if suffix not in ("", "ssl"):
            raise InvalidInput(f"a port is PORT or PORT:ssl, not {item!r}", field="ports")
        ports.append({"port": whole_number(number, "ports"), "ssl": suffix == "ssl"})
    if not ports:
        raise InvalidInput("a domain needs at least one port (e.g. 80, 443:ssl)", field="ports")
    return ports


def _class_params(text: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        params = json.loads(text)
    except ValueError as error:
        raise InvalidInput(
            f'parameters are a JSON object, e.g. {{"workers": 4}}: {error}', field="params"
        ) from None
    if not isinstance(params, dict):
        raise InvalidInput('parameters are a JSON object, e.g. {"workers": 4}', field="params")
    return params


def _domain_fields(form: dict[str, str]) -> dict[str, Any]:
    fields: dict[str, Any] = {"ports": parse_ports(form.get("ports", ""))}
    for name in ("ssl_cert_path", "ssl_key_path", "access_log_path", "error_log_path"):
        fields[name] = form.get(name) or None
    return fields


class ConsoleEdits(Controller):
    path = "/ui"
    include_in_schema = False
    exception_handlers = {Unauthenticated: to_login, Forbidden: refused_here}

    def _node_form(
        self,
        template: str,
        inventory: Inventory,
        path: str,
        error: FieldError | None,
        note: str | None,
        form: dict[str, str],
    ) -> Response[str]:
        view = inventory.view
        detail = node_detail(view, node_by_path(view, path))
        return page(template, d=detail, error=error, note=note, form=form if error else {})

    @post("/nodes/{path:str}/attributes", status_code=200)
    async def attributes(
        self, request: Request[Any, Any, Any], inventory: Inventory, path: str
    ) -> Response[str]:
        """Set the node's own port, upstream, ip_hash and Puppet environment (empty: inherited)."""
        form = await read_form(request)
        error = note = None
        try:
            changes = {
                "port": _optional_int(form.get("port", ""), "port"),
                "upstream": form.get("upstream") or None,
                "ip_hash": _ip_hash(form.get("ip_hash", "")),
                "puppet_environment": form.get("puppet_environment") or None,
            }
            await inventory.update_node(path, msgspec.convert(changes, NodeUpdate))
            note = f"attributes of {path} saved"
        except Failure as failed:
            error = field_error(failed, "port")
        return self._node_form("attributes_form.html", inventory, path, error, note, form)

    @post("/nodes/{path:str}/machines", status_code=200)
    async def machines(
        self, request: Request[Any, Any, Any], inventory: Inventory, path: str
    ) -> Response[str]:
        """Bind a machine with a weight (binding a bound one changes its weight), or unbind it."""
        form = await read_form(request)
        error = note = None
        hostname = form.get("hostname", "")
        try:
            if not hostname:
                raise InvalidInput("name the machine's hostname (treeherd machine ls)", field="hostname")
            if form.get("remove"):
                await inventory.unbind(hostname, path)
                note = f"{hostname} unbound from {path}"
            else:
                weight = whole_number(form.get("weight", "1") or "1", "weight")
                await inventory.bind(hostname, msgspec.convert({"node": path, "weight": weight}, BindRequest))
                note = f"{hostname} bound to {path} with weight {weight}"
        except Failure as failed:
            error = field_error(failed, "hostname")
            if error.field not in ("hostname", "weight"):
                error = FieldError(field="hostname", detail=error.detail)
        return self._node_form("bind_form.html", inventory, path, error, note, form)

    @post("/nodes/{path:str}/classes", status_code=200)
    async def classes(
        self, request: Request[Any, Any, Any], inventory: Inventory, path: str
    ) -> Response[str]:
        """Add or change one of the node's own Puppet classes (`name`, JSON `params`), or remove it."""
        form = await read_form(request)
        error = note = None
        name = form.get("name", "")
        try:
            if not name:
                raise InvalidInput("a class needs a name (e.g. profile::web)", field="name")
            params = None if form.get("remove") else _class_params(form.get("params", ""))
            await inventory.update_node(path, msgspec.convert({"puppet_classes": {name: params}}, NodeUpdate))
            note = f"class {name} removed" if params is None else f"class {name} set"
        except Failure as failed:
            error = field_error(failed, "name")
            if error.field not in ("name", "params"):
                error = FieldError(field="name", detail=error.detail)
        return self._node_form("classes_form.html", inventory, path, error, note, form)

    @post("/domains", status_code=200)
    async def add_domain(self, request: Request[Any, Any, Any], inventory: Inventory) -> Response[str]:
        form = await read_form(request)
        error = note = None
        try:
            fields = {"name": form.get("name", ""), **_domain_fields(form)}
            await inventory.create_domain(msgspec.convert(fields, DomainCreate))
            note = f"domain {fields['name']} added"
        except Failure as failed:
            error = field_error(failed, "name")
        return page("domain_add_form.html", error=error, note=note, form=form if error else {})

    @post("/domains/{name:str}/settings", status_code=200)
    async def change_domain(
        self, request: Request[Any, Any, Any], inventory: Inventory, name: str
    ) -> Response[str]:
        form = await read_form(request)
        error = note = None
        try:
            await inventory.update_domain(name, msgspec.convert(_domain_fields(form), DomainUpdate))
            note = f"domain {name} saved"
        except Failure as failed:
            error = field_error(failed, "ports")
        domain = inventory.view.lookup(Domain, "name", name)
        return page("domain_form.html", domain=domain, error=error, note=note, form=form if error else {})

    @post("/domains/{name:str}/delete", status_code=200)
    async def delete_domain(self, inventory: Inventory, name: str) -> Response[str]:
        """Delete a domain; refused (nothing changed) while a node still routes to it."""
        return await action_result(inventory.delete_domain(name), f"domain {name} deleted", "domain")
