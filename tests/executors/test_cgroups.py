"""cgroup detection (a pure function of what /proc/self/mountinfo, /proc/self/cgroup and
cgroup.controllers say), cgroup v2 limits against a directory laid out like a v2 hierarchy, strict
limits, and the real unified hierarchy where this host has one (placement and `cgroup.kill`)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import msgspec
import psutil
import pytest

from tests.executors.conftest import MakeExecutor
from tests.executors.helpers import eventually, make_task, started, until_ready
from treeherd.agent.progress import Progress
from treeherd.agent.taskrunner import TaskRunner
from treeherd.executors.base import FatalError
from treeherd.executors.cgroup_host import HostCgroups
from treeherd.executors.cgroups import CPU, MEMORY, PIDS, CgroupHost, detect
from treeherd.executors.limits import Limiter, TaskLimits
from treeherd.executors.process import ProcessExecutor, exit_of
from treeherd.executors.taskfiles import remove_tree
from treeherd.model.states import TaskState as S

pytestmark = pytest.mark.timeout(60)

ROOT = Path("/sys/fs/cgroup")
MIB = 1024 * 1024
HYBRID_MOUNTS = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
HYBRID_SELF = "8:pids:/\n4:memory:/process_api/abc\n1:cpu:/\n0::/\n"
V2_MOUNTS = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"


# --- detection ---------------------------------------------------------------------------------------


def test_a_hybrid_host_uses_v1_controllers_and_the_empty_unified_hierarchy() -> None:
    host = detect(ROOT, HYBRID_MOUNTS, HYBRID_SELF, "")
    assert host == CgroupHost(
        mode="hybrid",
        v1={
            MEMORY: Path("/sys/fs/cgroup/memory/process_api/abc"),
            CPU: Path("/sys/fs/cgroup/cpu"),
            PIDS: Path("/sys/fs/cgroup/pids"),
        },
        unified=Path("/sys/fs/cgroup/unified"),
        unified_controllers=[],
    )


def test_a_v2_only_host_has_its_controllers_in_the_unified_hierarchy() -> None:
    host = detect(
        ROOT, V2_MOUNTS, "0::/system.slice/treeherd.service\n", "cpuset cpu io memory hugetlb pids rdma"
    )
    assert host == CgroupHost(
        mode="v2",
        unified=Path("/sys/fs/cgroup/system.slice/treeherd.service"),
        unified_controllers=[CPU, MEMORY, PIDS],
    )


def test_a_v1_only_host_and_a_host_without_cgroups() -> None:
    v1_only = "".join(line + "\n" for line in HYBRID_MOUNTS.splitlines() if "cgroup2" not in line)
    host = detect(ROOT, v1_only, HYBRID_SELF, None)
    assert host.mode == "v1" and set(host.v1) == {MEMORY, CPU, PIDS} and host.unified is None
    assert (
        detect(ROOT, "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n", HYBRID_SELF, None) == CgroupHost()
    )
    # Mounted elsewhere than where we look: not ours to use.
    assert detect(Path("/elsewhere"), V2_MOUNTS, "0::/a\n", "memory").mode == "none"


def test_a_containers_unified_subtree() -> None:
    mounts = "40 31 0:40 /docker/c1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    host = detect(ROOT, mounts, "0::/docker/c1/agent\n", "memory pids")
    assert host.unified == Path("/sys/fs/cgroup/agent")
    assert host.unified_controllers == [MEMORY, PIDS]
    assert detect(ROOT, mounts, "0::/other\n", "memory").unified is None  # outside the mount's root


# --- cgroup v2 limits, on a directory laid out like a v2 hierarchy ------------------------------------


def v2_layout(tmp_path: Path, controllers: list[str]) -> Limiter:
    own = tmp_path / "system.slice" / "treeherd.service"
    own.mkdir(parents=True)
    (own / "cgroup.controllers").write_text(" ".join(controllers))
    (own / "cgroup.subtree_control").write_text("")
    host = HostCgroups(CgroupHost(mode="v2", unified=own, unified_controllers=controllers))
    host._set_up()
    limiter = Limiter(None)
    limiter._host = host
    return limiter


def test_v2_limits_are_written_to_the_tasks_unified_cgroup(tmp_path: Path) -> None:
    limiter = v2_layout(tmp_path, [CPU, MEMORY, PIDS])
    base = tmp_path / "system.slice" / "treeherd.service" / "treeherd"
    assert limiter.unified_base == base and limiter.unified_enabled == [CPU, MEMORY, PIDS]
    assert limiter.support().cpu == limiter.support().memory == limiter.support().pids == "cgroup v2"
    (base / "t1").mkdir(parents=True)
    (base / "t1" / "memory.swap.max").write_text("max")  # the kernel makes it with swap accounting on
    limits = limiter.create("t1", memory_bytes=64 * MIB, cpus=0.25, pids=50)
    cgroup = base / "t1"
    assert limits.unified_cgroup == str(cgroup) and limits.warnings == [] and limits.rlimit_as == 0
    assert limits.unified_limits == [MEMORY, CPU, PIDS] and limits.cpu_enforced
    assert (cgroup / "memory.max").read_text() == str(64 * MIB)
    assert (cgroup / "memory.swap.max").read_text() == "0"
    assert (cgroup / "cpu.max").read_text() == "25000 100000"
    assert (cgroup / "pids.max").read_text() == "50"
    # An OOM kill is read from memory.events; the whole tree is ended by cgroup.kill.
    (cgroup / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 0\n")
    assert not limits.oom_killed(signal.SIGKILL)
    (cgroup / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\n")
    assert exit_of(-9, limits).out_of_memory
    limits.kill_all()
    assert (cgroup / "cgroup.kill").read_text() == "1"


def test_v2_without_a_controller_runs_with_a_warning_or_is_refused_when_strict(tmp_path: Path) -> None:
    limiter = v2_layout(tmp_path, [MEMORY])
    limits = limiter.create("t1", memory_bytes=64 * MIB, cpus=0.5, pids=10)
    assert limits.unified_limits == [MEMORY]
    assert limits.warnings == [
        "CPU limit not enforced (no usable cpu cgroup controller; cgroups v2)",
        "process count limit not enforced (no usable pids cgroup controller; cgroups v2)",
    ]
    with pytest.raises(FatalError, match="strict limits cannot be enforced here: CPU limit not enforced"):
        limiter.create("t2", memory_bytes=64 * MIB, cpus=0.5, strict=True)
    assert not (limiter.unified_base or tmp_path / "none").joinpath("t2").exists()  # nothing left made
    assert limiter.create("t3", memory_bytes=64 * MIB, cpus=0, strict=True).warnings == []


def test_strict_limits_without_cgroups_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FatalError, match="memory limit is an address-space rlimit"):
        Limiter(None).create("t1", memory_bytes=64 * MIB, cpus=0, strict=True)
    assert Limiter(None).create("t1", memory_bytes=0, cpus=0, strict=True) == TaskLimits()


# --- the real unified hierarchy, where this host has one ----------------------------------------------

ESCAPES = (
    "import os, sys, time\n"
    "if os.fork() == 0:\n"
    "    os.setsid()  # leaves the task's process group and session\n"
    "    print('escaped', os.getpid(), flush=True)\n"
    "    time.sleep(60)\n"
    "else:\n"
    "    print('ready', flush=True)\n"
    "    time.sleep(60)\n"
)


async def test_a_tasks_whole_tree_is_in_its_cgroup_and_ended_with_it(executor: ProcessExecutor) -> None:
    controller = await started(executor, make_task(command=[sys.executable, "-c", ESCAPES]))
    await until_ready(executor)
    log = executor.root / "tasks" / "t1" / "output.log"
    await eventually(lambda: b"escaped" in log.read_bytes(), "the escaped child")
    escaped = int(log.read_text().split("escaped ")[1].split()[0])
    assert os.getsid(escaped) == escaped  # in no group the task's shutdown signals
    limits = controller.files.read("limits.json", TaskLimits)
    assert limits is not None
    if executor.limit_support().task_tree == "cgroup v2":
        assert limits.unified_cgroup is not None
        procs = {int(pid) for pid in (Path(limits.unified_cgroup) / "cgroup.procs").read_text().split()}
        assert controller.record is not None and {controller.record.pid, escaped} <= procs
    else:  # the fallback: the process group, and the marker for what leaves it
        assert limits.unified_cgroup is None
    async with asyncio.timeout(20):
        await controller.remove()
    await eventually(lambda: not psutil.pid_exists(escaped) or _zombie(escaped), "the escaped child ended")


def _zombie(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


# --- a limit the host cannot enforce: a warning on the task, or REJECTED when strict ------------------


async def test_an_unenforced_limit_is_in_the_running_message_or_rejects_a_strict_task(
    make_executor: MakeExecutor,
) -> None:
    executor = make_executor(cgroup_root=None)  # as on a host without cgroups
    progress: list[Progress] = []
    task = make_task(script="pass", cpus=0.5)
    runner = TaskRunner(task, S.ASSIGNED, executor, lambda _id, p: progress.append(p), grace_s=1)
    async with asyncio.timeout(15):
        await runner.run()
    running = next(p for p in progress if p.state == S.RUNNING)
    assert running.message == (
        "started; warning: CPU limit not enforced (no usable cpu cgroup controller; cgroups none)"
    )
    assert progress[-1].state == S.COMPLETE

    progress.clear()
    resources = msgspec.structs.replace(task.spec.resources, limits="strict")
    strict = msgspec.structs.replace(
        task, id="t2", spec=msgspec.structs.replace(task.spec, resources=resources)
    )
    runner = TaskRunner(strict, S.ASSIGNED, executor, lambda _id, p: progress.append(p), grace_s=1)
    async with asyncio.timeout(15):
        await runner.run()
    assert [p.state for p in progress] == [S.ACCEPTED, S.PREPARING, S.REJECTED]
    assert progress[-1].error == (
        "strict limits cannot be enforced here: "
        "CPU limit not enforced (no usable cpu cgroup controller; cgroups none)"
    )


async def test_cgroups_a_lost_task_left_are_found_and_removed(make_executor: MakeExecutor) -> None:
    # As when an agent dies in the middle of removing a task: its directory is gone, its cgroups not.
    first = make_executor()
    controller = await started(first, make_task(script="pass", memory=100 * MIB))
    async with asyncio.timeout(15):
        await controller.wait()
    limits = controller.files.read("limits.json", TaskLimits)
    assert limits is not None
    remove_tree(controller.files.dir)
    second = make_executor()  # the next agent on the same directory
    other = make_executor(first.root.parent / "other-agent")  # another agent on this machine
    assert other.task_ids() == []
    expected = ["t1"] if limits.cgroups else []  # none where the host has no usable cgroups
    assert second.task_ids() == expected
    assert all(cgroup.exists() for cgroup in limits.cgroups)
    await second.purge("t1")
    assert not any(cgroup.exists() for cgroup in limits.cgroups)
    assert second.task_ids() == []
