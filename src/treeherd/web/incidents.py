"""The console's incident actions, each confirmed on the page and done through the same manager
services and plans as the API: pin a node's backend in or out (or clear the pin), and start, promote
or abort a service's canary.

The answer is a short note of what changed, or the API's error beside the field it concerns; the
page's live part shows the new state once the event stream reports it.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, Response, post

from treeherd.core.edge import gateway_plans as plans
from treeherd.manager.inventory import Inventory
from treeherd.manager.services import Services
from treeherd.model.errors import Forbidden, InvalidInput, Unauthenticated
from treeherd.model.gateway_requests import BackendUpdate
from treeherd.model.requests import ServiceUpdate
from treeherd.web.actions import Failure, FieldError, action_result, field_error, read_form, whole_number
from treeherd.web.login import refused_here, to_login
from treeherd.web.render import page

PINS = {"in": "in", "out": "out", "none": None}


def _env(text: str) -> dict[str, str]:
    """`KEY=VALUE` pairs, one per line or separated by spaces."""
    found = {}
    for item in text.split():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"environment is KEY=VALUE, not {item!r}", field="env")
        found[key] = value
    return found


class ConsoleIncidents(Controller):
    path = "/ui"
    include_in_schema = False
    exception_handlers = {Unauthenticated: to_login, Forbidden: refused_here}

    @post("/nodes/{path:str}/pins", status_code=200)
    async def pin(self, request: Request[Any, Any, Any], inventory: Inventory, path: str) -> Response[str]:
        """Pin a backend (a bound machine's hostname, or an endpoint's task id or ADDRESS:PORT)."""
        form = await read_form(request)
        backend, wanted = form.get("backend", ""), form.get("pin", "")
        error = note = None
        try:
            if wanted not in PINS:
                raise InvalidInput(f"a pin is in, out or none, not {wanted!r}", field="pin")
            update = msgspec.convert({"pin": PINS[wanted]}, BackendUpdate)
            await inventory.apply(
                lambda v: plans.plan_set_backend(v, path, backend, update, inventory.clock(), inventory.ids)
            )
            note = f"{backend} of {path}: pin cleared" if wanted == "none" else f"{backend} pinned {wanted}"
        except Failure as failed:
            error = field_error(failed, "backend")
        return page("action_result.html", error=error, note=note)

    @post("/services/{name:str}/canary", status_code=200)
    async def canary(self, request: Request[Any, Any, Any], services: Services, name: str) -> Response[str]:
        """Start a canary: the service's spec with the given environment (and image) on `tasks` slots."""
        form = await read_form(request)
        error = note = None
        try:
            service = services.get(name)
            env = _env(form.get("env", ""))
            changes: dict[str, Any] = {"env": {**service.task.env, **env}}
            if form.get("image"):
                changes["image"] = form["image"]
            task = msgspec.structs.replace(service.task, **changes)
            tasks = whole_number(form.get("tasks", "1") or "1", "tasks")
            update = msgspec.convert(
                {"task": msgspec.to_builtins(task), "canary": {"tasks": tasks}}, ServiceUpdate
            )
            await services.update(name, update)
            note = f"canary of {name} started on {tasks} task(s)"
        except Failure as failed:
            error = field_error(failed, "env")
            if error.field not in ("env", "image", "tasks"):
                error = FieldError(field="env", detail=error.detail)
        return page(
            "canary_form.html", s=services.summary(services.get(name)), error=error, note=note, form=form
        )

    @post("/services/{name:str}/promote", status_code=200)
    async def promote(self, services: Services, name: str) -> Response[str]:
        return await action_result(
            services.promote(name), f"canary of {name} promoted: the other tasks follow", "service"
        )

    @post("/services/{name:str}/abort", status_code=200)
    async def abort(self, services: Services, name: str) -> Response[str]:
        return await action_result(
            services.abort(name),
            f"canary of {name} aborted: the previous spec returns to its slots",
            "service",
        )
