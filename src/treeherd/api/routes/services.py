"""/api/v1/services and /api/v1/tasks: services on tree nodes, their tasks, a task's story, and the
logs of both, streamed from the agents."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
from litestar import Controller, MediaType, delete, get, patch, post
from litestar.openapi import ResponseSpec
from litestar.params import Parameter
from litestar.response import Stream

from treeherd.manager.dispatcher import Dispatcher
from treeherd.manager.service_logs import current_tasks, merge_task_logs, task_label
from treeherd.manager.services import Services
from treeherd.model.errors import TreeherdError
from treeherd.model.requests import ServiceCreate, ServiceUpdate
from treeherd.model.services import Service, Task
from treeherd.model.tasks_view import ServiceSummary, StoryEntry, TaskRow

TAIL = Parameter(default=None, ge=0, description="only the last N lines (default: all the agent kept)")


class ServiceController(Controller):
    path = "/api/v1/services"
    tags = ["services"]

    @get("/", summary="Services with their node and running/desired counts")
    async def list_services(self, services: Services) -> list[ServiceSummary]:
        return services.overview()

    @post("/", summary="Create a service on a tree node")
    async def create_service(self, services: Services, data: ServiceCreate) -> Service:
        return await services.create(data)

    @get("/{name:str}", summary="One service")
    async def get_service(self, services: Services, name: str) -> ServiceSummary:
        return services.summary(services.get(name))

    @patch(
        "/{name:str}",
        summary="Scale or update a service (a new task spec is rolled out as its update policy says)",
    )
    async def update_service(self, services: Services, name: str, data: ServiceUpdate) -> Service:
        return await services.update(name, data)

    @post(
        "/{name:str}/rollback",
        summary="Return a service to its previous spec, replacing its tasks with the rollback policy",
        status_code=200,
    )
    async def rollback_service(self, services: Services, name: str) -> Service:
        return await services.rollback(name)

    @post(
        "/{name:str}/promote",
        summary="Promote a service's canary: its other slots get the new spec with the update policy",
        status_code=200,
    )
    async def promote_service(self, services: Services, name: str) -> Service:
        return await services.promote(name)

    @post(
        "/{name:str}/abort",
        summary="Abort a service's canary: its slots get the previous spec back with the rollback policy",
        status_code=200,
    )
    async def abort_service(self, services: Services, name: str) -> Service:
        return await services.abort(name)

    @delete("/{name:str}", summary="Remove a service: its tasks are stopped, then it is deleted")
    async def remove_service(self, services: Services, name: str) -> None:
        await services.remove(name)

    @get(
        "/{name:str}/tasks",
        summary="A service's tasks by slot, current first, then history",
        # The body is streamed (below); the document still says what it holds.
        responses={
            200: ResponseSpec(
                list[TaskRow], description="Request fulfilled, document follows", generate_examples=False
            )
        },
    )
    async def service_tasks(self, services: Services, name: str, all: bool = True) -> Stream:
        # Made and sent a few thousand rows at a time, the loop let run between them: a list of a
        # million tasks neither holds the manager's loop for seconds nor sits whole in its memory.
        return Stream(_json_array(services.task_pages(name, all_tasks=all)), media_type=MediaType.JSON)

    @get(
        "/{name:str}/logs",
        summary="What the service's current tasks print, line by line, each line prefixed with its task",
        media_type="text/plain",
    )
    async def service_logs(
        self,
        services: Services,
        dispatcher: Dispatcher,
        name: str,
        follow: bool = False,
        tail: int | None = TAIL,
    ) -> Stream:
        service = services.get(name)
        view = services.store.view()
        labelled = [(task_label(view, t), t) for t in current_tasks(view, service)]
        return Stream(
            merge_task_logs(labelled, lambda t: dispatcher.task_logs(t, follow=follow, tail=tail)),
            media_type="text/plain",
        )


class TaskController(Controller):
    path = "/api/v1/tasks"
    tags = ["services"]

    @get("/{task_id:str}", summary="One task as stored")
    async def get_task(self, services: Services, task_id: str) -> Task:
        return services.task(task_id)

    @get("/{task_id:str}/story", summary="Every recorded transition of a task and what caused it")
    async def story(self, services: Services, task_id: str) -> list[StoryEntry]:
        return services.story(task_id)

    @get("/{task_id:str}/logs", summary="What a task prints, from its agent", media_type="text/plain")
    async def task_logs(
        self,
        services: Services,
        dispatcher: Dispatcher,
        task_id: str,
        follow: bool = False,
        tail: int | None = TAIL,
    ) -> Stream:
        chunks = dispatcher.task_logs(services.task(task_id), follow=follow, tail=tail)
        return Stream(_noting_breaks(chunks), media_type="text/plain")


async def _json_array(pages: AsyncIterator[list[TaskRow]]) -> AsyncIterator[bytes]:
    """The rows of `pages` as one JSON array, sent a page at a time."""
    encoder = msgspec.json.Encoder()
    opening = b"["
    async for rows in pages:
        yield opening + encoder.encode(rows)[1:-1]
        opening = b","
    yield b"]" if opening == b"," else b"[]"


async def _noting_breaks(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The chunks, then a last line saying why if the stream broke off (the status is sent already)."""
    try:
        async for chunk in chunks:
            yield chunk
    except TreeherdError as error:
        yield f"\n[treeherd: the log stream broke off: {error.detail}]\n".encode()
