"""What an agent says of its machine when it opens a session: with the process executor, which task
limits the host enforces and how (shown by `node inspect`); nothing of limits with the hollow one."""

from __future__ import annotations

from pathlib import Path

from treeherd.agent import Agent
from treeherd.executors.hollow import HollowExecutor
from treeherd.executors.process import ProcessExecutor
from treeherd.model.objects import LimitSupport


def test_the_node_description_says_which_limits_the_host_enforces(tmp_path: Path) -> None:
    without = ProcessExecutor(tmp_path / "a", cgroup_root=None)
    described = Agent("http://127.0.0.1:1", tmp_path / "a", executor=without, hostname="h1").describe()
    assert described.limits == LimitSupport(
        cgroups="none", memory="rlimit (address space)", cpu="", pids="", task_tree="process group"
    )
    real = ProcessExecutor(tmp_path / "b")
    limits = Agent("http://127.0.0.1:1", tmp_path / "b", executor=real, hostname="h2").describe().limits
    assert limits == real.limiter.support()
    assert limits is not None and limits.cgroups in ("v1", "hybrid", "v2", "none")
    hollow = Agent("http://127.0.0.1:1", tmp_path / "c", executor=HollowExecutor(), hostname="h3")
    assert hollow.describe().limits is None
