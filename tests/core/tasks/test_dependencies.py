"""Dependencies' local ports: chosen per cluster and kept on the depended-upon service; bad input."""

from __future__ import annotations

import pytest

from treeherd.core.tasks.services import LOCAL_PORTS, resolve_dependencies
from treeherd.model.discovery import Dependency
from treeherd.model.errors import InvalidInput, NotFound
from treeherd.model.ops import Create, Update
from treeherd.model.services import Service, TaskSpec
from treeherd.store.memory import MemoryStore
from treeherd.testing.factories import FIXED_NOW, node


def service(name: str, local_port: int | None = None) -> Service:
    return Service(
        id=f"s-{name}",
        created_at=FIXED_NOW,
        updated_at=FIXED_NOW,
        name=name,
        node_id="n",
        task=TaskSpec(command=["x"]),
        local_port=local_port,
    )


@pytest.fixture
async def view():
    store = MemoryStore()
    await store.open()
    await store.commit([Create(node("corp", id="n")), Create(service("db")), Create(service("cache", 20000))])
    yield store.view()
    await store.close()


def spec(*deps: Dependency) -> TaskSpec:
    return TaskSpec(command=["x"], depends_on=list(deps))


async def test_a_port_is_chosen_once_and_recorded_on_the_service(view):
    resolved, ops = resolve_dependencies(view, spec(Dependency(service="db")), own_name="app")
    assert resolved.depends_on == [
        Dependency(service="db", local_port=LOCAL_PORTS[0] + 1)
    ]  # 20000 is cache's
    assert [(type(op), op.object.name, op.object.local_port) for op in ops] == [(Update, "db", 20001)]


async def test_a_known_port_is_reused_and_a_different_one_refused(view):
    resolved, ops = resolve_dependencies(view, spec(Dependency(service="cache")), own_name="app")
    assert resolved.depends_on[0].local_port == 20000 and ops == []
    with pytest.raises(InvalidInput, match=r"127\.0\.0\.1:20000 on every host"):
        resolve_dependencies(view, spec(Dependency(service="cache", local_port=20005)), own_name="app")


async def test_bad_dependencies(view):
    with pytest.raises(NotFound, match="unknown service 'nope'"):
        resolve_dependencies(view, spec(Dependency(service="nope")), own_name="app")
    with pytest.raises(InvalidInput, match="itself"):
        resolve_dependencies(view, spec(Dependency(service="app")), own_name="app")
    with pytest.raises(InvalidInput, match="already taken by cache"):
        resolve_dependencies(view, spec(Dependency(service="db", local_port=20000)), own_name="app")
    with pytest.raises(InvalidInput, match="listed twice"):
        resolve_dependencies(view, spec(Dependency(service="db"), Dependency(service="db")), own_name="app")
