"""The environment a task's commands see: the task's own process and any command run beside it (a
health check), so both find the same ports, dependencies and identity.

From the agent only PATH, HOME and LANG (not its whole environment), then the spec's `env`, then
TREEHERD_TASK_ID, TREEHERD_SERVICE, TREEHERD_SLOT, TREEHERD_NODE_PATH, TREEHERD_PORT_<NAME> per allocated
port and TREEHERD_DEP_<SVC>=127.0.0.1:<local port> per dependency reached through the host's haproxy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from treeherd.model.services import Task

__all__ = ["INHERITED", "env_var_name", "task_environment"]

INHERITED = ("PATH", "HOME", "LANG")

_NOT_IN_A_NAME = re.compile(r"[^A-Z0-9_]")


def env_var_name(name: str) -> str:
    """A port or service name as it appears in a variable name: upper-cased, other characters than
    letters, digits and _ made _ (`api-v2` -> `API_V2`)."""
    return _NOT_IN_A_NAME.sub("_", name.upper())


def task_environment(task: Task, inherited: Mapping[str, str], default_path: str) -> dict[str, str]:
    """The task's environment; `inherited` is the agent's own, `default_path` the PATH without one."""
    env = {name: inherited[name] for name in INHERITED if name in inherited}
    env.setdefault("PATH", default_path)
    env.update(task.spec.env)
    env["TREEHERD_TASK_ID"] = task.id
    env["TREEHERD_SERVICE"] = task.service_name
    env["TREEHERD_SLOT"] = str(task.slot)
    env["TREEHERD_NODE_PATH"] = task.node_path
    for name, port in task.ports.items():
        env[f"TREEHERD_PORT_{env_var_name(name)}"] = str(port)
    for dependency in task.spec.depends_on:
        if dependency.local_port is not None:
            env[f"TREEHERD_DEP_{env_var_name(dependency.service)}"] = f"127.0.0.1:{dependency.local_port}"
    return env
