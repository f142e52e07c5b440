"""The environment every command of a task sees (its process, a health check beside it)."""

from __future__ import annotations

from datetime import UTC, datetime

from treeherd.core.tasks.task_env import env_var_name, task_environment
from treeherd.model.discovery import Dependency
from treeherd.model.services import Task, TaskSpec, TaskStatus
from treeherd.model.states import TaskState

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def task(**spec: object) -> Task:
    return Task(
        id="t1",
        created_at=NOW,
        updated_at=NOW,
        service_id="svc-1",
        service_name="web",
        node_path="/shop/frontend",
        slot=3,
        status=TaskStatus(state=TaskState.RUNNING, timestamp=NOW),
        spec=TaskSpec(command=["app"], **spec),  # type: ignore[arg-type]
        ports={"http": 8080},
    )


def test_names_become_variable_names() -> None:
    assert env_var_name("http") == "HTTP"
    assert env_var_name("api-v2.internal") == "API_V2_INTERNAL"


def test_only_path_home_and_lang_come_from_the_agent() -> None:
    inherited = {"PATH": "/usr/bin", "HOME": "/root", "LANG": "C.UTF-8", "AGENT_SECRET": "x"}
    env = task_environment(task(), inherited, "/bin")
    assert env == {
        "PATH": "/usr/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "TREEHERD_TASK_ID": "t1",
        "TREEHERD_SERVICE": "web",
        "TREEHERD_SLOT": "3",
        "TREEHERD_NODE_PATH": "/shop/frontend",
        "TREEHERD_PORT_HTTP": "8080",
    }


def test_the_spec_overrides_the_agent_but_not_treeherd_and_dependencies_get_local_addresses() -> None:
    spec_task = task(
        env={"PATH": "/opt/bin", "TREEHERD_SLOT": "forged"},
        depends_on=[Dependency(service="user-api", local_port=20001), Dependency(service="later")],
    )
    env = task_environment(spec_task, {}, "/bin")
    assert env["PATH"] == "/opt/bin"
    assert env["TREEHERD_SLOT"] == "3"
    assert env["TREEHERD_DEP_USER_API"] == "127.0.0.1:20001"
    assert "TREEHERD_DEP_LATER" not in env  # no local port allocated yet


def test_without_a_path_the_default_one() -> None:
    assert task_environment(task(), {}, "/bin:/usr/bin")["PATH"] == "/bin:/usr/bin"
