"""/api/v1/services and /api/v1/tasks: services on tree nodes, their tasks, and a task's story."""

from __future__ import annotations

from litestar import Controller, delete, get, patch, post

from treeherd.manager.services import Services
from treeherd.model.requests import ServiceCreate, ServiceUpdate
from treeherd.model.services import Service, Task
from treeherd.model.tasks_view import ServiceSummary, StoryEntry, TaskRow


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

    @patch("/{name:str}", summary="Scale or update a service (a new task spec replaces every task)")
    async def update_service(self, services: Services, name: str, data: ServiceUpdate) -> Service:
        return await services.update(name, data)

    @delete("/{name:str}", summary="Remove a service: its tasks are stopped, then it is deleted")
    async def remove_service(self, services: Services, name: str) -> None:
        await services.remove(name)

    @get("/{name:str}/tasks", summary="A service's tasks by slot, current first, then history")
    async def service_tasks(self, services: Services, name: str, all: bool = True) -> list[TaskRow]:
        return services.tasks(name, all_tasks=all)


class TaskController(Controller):
    path = "/api/v1/tasks"
    tags = ["services"]

    @get("/{task_id:str}", summary="One task as stored")
    async def get_task(self, services: Services, task_id: str) -> Task:
        return services.task(task_id)

    @get("/{task_id:str}/story", summary="Every recorded transition of a task and what caused it")
    async def story(self, services: Services, task_id: str) -> list[StoryEntry]:
        return services.story(task_id)
