"""The console's writes, each through the same manager services and validation as the API: scale a
service, drain/pause/activate a machine, set or clear a node's labels, add or remove its routes.

A form posts here (htmx, after the page asked the operator to confirm); the answer is the form again,
with the error the API would give shown beside the field it concerns, or with a note of what changed.
Nothing is half-written: each write is one commit of the manager, or none.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import msgspec
from litestar import Controller, Request, Response, post

from treeherd.core.tree.nodes import node_by_path
from treeherd.manager.inventory import Inventory
from treeherd.manager.services import Services
from treeherd.model.errors import Forbidden, InvalidInput, TreeherdError, Unauthenticated
from treeherd.model.objects import Domain
from treeherd.model.requests import MachineUpdate, NodeUpdate, RouteSpec, ServiceUpdate
from treeherd.web.login import refused_here, to_login
from treeherd.web.queries import node_detail
from treeherd.web.render import page

# What a refused write raises: the API's own errors, and a form that does not convert to its request.
Failure = (TreeherdError, msgspec.ValidationError)


class FieldError(msgspec.Struct, frozen=True, kw_only=True):
    """What the form shows: the error's text and the field it sits beside."""

    field: str
    detail: str


def field_error(error: TreeherdError | msgspec.ValidationError, default_field: str) -> FieldError:
    if isinstance(error, TreeherdError):
        field = (error.field or default_field).split(".")[-1].split("[")[0]
        return FieldError(field=field, detail=error.detail)
    text = str(error)
    field = default_field
    if "at `$." in text:
        field = text.rsplit("at `$.", 1)[1].split("`")[0].split(".")[0].split("[")[0]
    return FieldError(field=field, detail=text)


async def action_result(action: Awaitable[object], done: str, field: str) -> Response[str]:
    """Run a confirmed action: the answer says `done`, or the refusal beside `field` (nothing changed)."""
    try:
        await action
    except Failure as failed:
        return page("action_result.html", error=field_error(failed, field), note=None)
    return page("action_result.html", error=None, note=done)


async def read_form(request: Request[Any, Any, Any]) -> dict[str, str]:
    form = await request.form()
    return {key: str(value).strip() for key, value in form.items()}


def whole_number(value: str, field: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise InvalidInput(f"{field} must be a whole number, not {value!r}", field=field) from None


class ConsoleActions(Controller):
    path = "/ui"
    include_in_schema = False
    exception_handlers = {Unauthenticated: to_login, Forbidden: refused_here}

    @post("/services/{name:str}/scale", status_code=200)
    async def scale(self, request: Request[Any, Any, Any], services: Services, name: str) -> Response[str]:
        form = await read_form(request)
        error = note = None
        try:
            replicas = whole_number(form.get("replicas", ""), "replicas")
            update = msgspec.convert({"replicas": replicas}, ServiceUpdate)
            service = await services.update(name, update)
            note = f"{name} scaled to {service.replicas}"
        except Failure as failed:
            error = field_error(failed, "replicas")
        current = services.summary(services.get(name))
        return page("scale_form.html", s=current, error=error, note=note, value=form.get("replicas", ""))

    @post("/machines/{hostname:str}/availability", status_code=200)
    async def availability(
        self, request: Request[Any, Any, Any], inventory: Inventory, hostname: str
    ) -> Response[str]:
        form = await read_form(request)
        error = None
        try:
            update = msgspec.convert({"availability": form.get("availability", "")}, MachineUpdate)
            await inventory.update_machine(hostname, update)
        except Failure as failed:
            error = field_error(failed, "availability")
        return page("availability_form.html", m=inventory.machine(hostname), error=error)

    @post("/nodes/{path:str}/labels", status_code=200)
    async def labels(self, request: Request[Any, Any, Any], inventory: Inventory, path: str) -> Response[str]:
        """Set a label (`key`, `value`), or clear it with an empty value."""
        form = await read_form(request)
        error = note = None
        key, value = form.get("key", ""), form.get("value", "")
        try:
            if not key:
                raise InvalidInput("a label needs a key (e.g. tier)", field="key")
            update = msgspec.convert({"labels": {key: value or None}}, NodeUpdate)
            await inventory.update_node(path, update)
            note = f"label {key} set to {value!r}" if value else f"label {key} cleared"
        except Failure as failed:
            error = field_error(failed, "key")
            if error.field == "labels":
                error = FieldError(field="key", detail=error.detail)
        node = node_by_path(inventory.view, path)
        return page("labels_form.html", node=node, error=error, note=note, form=form)

    @post("/nodes/{path:str}/routes", status_code=200)
    async def routes(self, request: Request[Any, Any, Any], inventory: Inventory, path: str) -> Response[str]:
        """Add a route (`domain`, `uri`), or remove it when `remove` is set."""
        form = await read_form(request)
        error = note = None
        try:
            spec = msgspec.convert({"domain": form.get("domain", ""), "uri": form.get("uri", "")}, RouteSpec)
            if form.get("remove"):
                await inventory.remove_route(path, spec)
                note = f"route {spec.domain}{spec.uri} removed"
            else:
                await inventory.add_route(path, spec)
                note = f"route {spec.domain}{spec.uri} added"
        except Failure as failed:
            error = field_error(failed, "uri")
        view = inventory.view
        node = node_by_path(view, path)
        return page(
            "routes_form.html",
            d=node_detail(view, node, limit=0),
            domains=sorted(d.name for d in view.all(Domain)),
            error=error,
            note=note,
            form=form if error else {},
        )
