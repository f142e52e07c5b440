"""Resource limits: finding the cgroup v1 hierarchies, and real tasks under whatever limits this host
enforces (cgroup v1 or v2), or under the documented fallback (an RLIMIT_AS for memory, a warning on
the task) where it has no controller for them: these tests pass on a v1, hybrid or v2-only host."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from tests.executors.conftest import MakeExecutor
from tests.executors.helpers import collect, make_task, output, run, started
from treeherd.executors.base import Exit
from treeherd.executors.cgroups import CPU, MEMORY, PIDS, find_hierarchies
from treeherd.executors.limits import Limiter, TaskLimits
from treeherd.executors.process import UNKNOWN_EXIT, ProcessExecutor
from treeherd.executors.process_groups import child, forget_child

pytestmark = pytest.mark.timeout(60)

MIB = 1024 * 1024
CGROUP_ROOT = Path("/sys/fs/cgroup")
# Touches every page (b"x" * n writes it), so the memory is really used, not just reserved.
ALLOCATE_200_MIB = "chunks = [b'x' * (1 << 20) for _ in range(200)]; print('survived')"

MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
SELF_CGROUP = """\
4:memory:/process_api/abc
2:cpuacct:/
1:cpu:/
0::/
"""


def test_hierarchies_are_found_below_our_own_cgroup() -> None:
    found = find_hierarchies(CGROUP_ROOT, MOUNTINFO, SELF_CGROUP)
    assert found == {
        MEMORY: Path("/sys/fs/cgroup/memory/process_api/abc"),
        CPU: Path("/sys/fs/cgroup/cpu"),
    }


def test_a_combined_mount_and_a_containers_subtree() -> None:
    mountinfo = (
        "40 31 0:40 /docker/c1 /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
        "41 31 0:41 /docker/c1 /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
    )
    self_cgroup = "5:cpu,cpuacct:/docker/c1/agent\n4:memory:/docker/c1\n"
    assert find_hierarchies(CGROUP_ROOT, mountinfo, self_cgroup) == {
        CPU: Path("/sys/fs/cgroup/cpu,cpuacct/agent"),
        MEMORY: Path("/sys/fs/cgroup/memory"),
    }


def test_escaped_mount_points_and_other_roots() -> None:
    mountinfo = "35 31 0:32 / /sys/fs/my\\040cgroups/memory rw - cgroup cgroup rw,memory\n"
    self_cgroup = "4:memory:/a\n"
    assert find_hierarchies(Path("/sys/fs/my cgroups"), mountinfo, self_cgroup) == {
        MEMORY: Path("/sys/fs/my cgroups/memory/a")
    }
    assert find_hierarchies(CGROUP_ROOT, mountinfo, self_cgroup) == {}


def test_cgroup_v2_only_is_not_used() -> None:
    mountinfo = "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    assert find_hierarchies(CGROUP_ROOT, mountinfo, "0::/user.slice\n") == {}


def test_without_cgroups_memory_falls_back_to_rlimit_and_cpu_is_not_enforced(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limiter = Limiter(None)
    limits = limiter.create("t1", memory_bytes=100 * MIB, cpus=0.5)
    assert limits == TaskLimits(
        memory_bytes=100 * MIB,
        cpus=0.5,
        rlimit_as=100 * MIB,
        warnings=[
            "memory limit is an address-space rlimit, not enforced as resident memory "
            "(no usable memory cgroup controller; cgroups none)",
            "CPU limit not enforced (no usable cpu cgroup controller; cgroups none)",
        ],
    )
    assert not limits.cpu_enforced
    limiter.create("t2", memory_bytes=100 * MIB, cpus=0.5)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2  # once each, not per task
    assert limiter.create("t3", memory_bytes=0, cpus=0) == TaskLimits()


def enforced(controller: str) -> str:
    """How this host enforces a limit: "cgroup v1", "cgroup v2", or another answer (a fallback)."""
    return str(getattr(Limiter(CGROUP_ROOT).support(), controller))


def cgroup_of(limits: TaskLimits, controller: str) -> Path:
    """The task's cgroup that holds a limit, v1 or v2."""
    path = getattr(limits, f"{controller}_cgroup") or limits.unified_cgroup
    assert path is not None
    return Path(path)


def test_the_host_reports_its_cgroups_and_what_it_enforces_with_them() -> None:
    support = Limiter(CGROUP_ROOT).support()
    unified_at_root = (CGROUP_ROOT / "cgroup.controllers").exists()
    if unified_at_root:
        assert support.cgroups == "v2"
    elif any(line.split()[2] == "cgroup2" for line in Path("/proc/mounts").read_text().splitlines()):
        assert support.cgroups == "hybrid"
    else:
        assert support.cgroups in ("v1", "none")
    for how in (support.cpu, support.pids):
        assert how in ("cgroup v1", "cgroup v2", "")
    assert support.memory in ("cgroup v1", "cgroup v2", "rlimit (address space)")
    assert support.task_tree in ("cgroup v2", "process group")
    assert Limiter(None).support().cgroups == "none"


async def test_a_task_over_its_memory_limit_is_killed_as_out_of_memory_or_meets_the_fallback(
    executor: ProcessExecutor,
) -> None:
    controller = await started(executor, make_task(script=ALLOCATE_200_MIB, memory=50 * MIB))
    limits = controller.files.read("limits.json", TaskLimits)
    assert limits is not None
    if not enforced(MEMORY).startswith("cgroup"):  # the documented fallback: an rlimit and a warning
        assert limits.rlimit_as == 50 * MIB
        assert controller.warnings and "address-space rlimit" in controller.warnings[0]
        return
    assert controller.warnings == []
    cgroup = cgroup_of(limits, MEMORY)
    assert cgroup.name == "t1"
    limit_file = "memory.limit_in_bytes" if enforced(MEMORY) == "cgroup v1" else "memory.max"
    assert (cgroup / limit_file).read_text().strip() == str(50 * MIB)
    assert limits.rlimit_as == 0
    async with asyncio.timeout(30):
        exit = await controller.wait()
    assert exit == Exit(signal=9, out_of_memory=True, message=f"out of memory (limit {50 * MIB} bytes)")
    assert b"survived" not in output(executor)
    await controller.remove()
    assert not await asyncio.to_thread(cgroup.exists)


async def test_an_oom_kill_is_seen_even_when_the_exit_status_is_unknown(executor: ProcessExecutor) -> None:
    # Without a memory cgroup (the documented fallback) nothing counts kills: the exit stays unknown.
    expected = Exit(out_of_memory=True, message=f"out of memory (limit {50 * MIB} bytes)")
    if not enforced(MEMORY).startswith("cgroup"):
        expected = Exit(message=UNKNOWN_EXIT)
    # As after an agent restart: the process is not this agent's child, but its cgroup counted the kill.
    script = f"import time; time.sleep(0.5); {ALLOCATE_200_MIB}"
    controller = await started(executor, make_task(script=script, memory=50 * MIB))
    record = controller.record
    assert record is not None
    popen = child(record)
    assert popen is not None
    forget_child(record)  # what a new agent process would know of it: nothing
    try:
        async with asyncio.timeout(30):
            exit = await executor.controller(make_task(script=script, memory=50 * MIB)).wait()
        assert exit == expected
    finally:
        popen.kill()
        async with asyncio.timeout(10):
            while popen.poll() is None:  # noqa: ASYNC110 (a Popen has nothing to await)
                await asyncio.sleep(0.02)


async def test_a_task_runs_in_its_own_cgroups(executor: ProcessExecutor) -> None:
    task = make_task(script="print(open('/proc/self/cgroup').read())", memory=200 * MIB)
    assert await run(executor, task) == Exit(code=0, message="exited with code 0")
    lines = output(executor).decode().splitlines()
    if enforced(MEMORY) == "cgroup v1":
        assert next(line for line in lines if ":memory:" in line).endswith(
            f"/treeherd/{executor.limiter.scope}/t1"
        )
    if Limiter(CGROUP_ROOT).support().task_tree == "cgroup v2":
        assert next(line for line in lines if line.startswith("0::")).endswith(
            f"/treeherd/{executor.limiter.scope}/t1"
        )


async def test_a_cpu_limit_throttles_the_task_or_is_a_warning(executor: ProcessExecutor) -> None:
    # Spins for 1 s of wall-clock time; at 0.2 CPUs it gets about 0.2 s of CPU time.
    script = (
        "import time\n"
        "end = time.monotonic() + 1.0\n"
        "while time.monotonic() < end:\n"
        "    pass\n"
        "print(time.process_time())\n"
    )
    controller = await started(executor, make_task(script=script, cpus=0.2))
    limits = controller.files.read("limits.json", TaskLimits)
    assert limits is not None
    if not enforced(CPU):
        assert not limits.cpu_enforced
        assert controller.warnings == [
            f"CPU limit not enforced (no usable cpu cgroup controller; cgroups {Limiter(CGROUP_ROOT).support().cgroups})"
        ]
        return
    cgroup = cgroup_of(limits, CPU)
    if enforced(CPU) == "cgroup v1":
        assert (cgroup / "cpu.cfs_quota_us").read_text().strip() == "20000"
        assert (cgroup / "cpu.cfs_period_us").read_text().strip() == "100000"
    else:
        assert (cgroup / "cpu.max").read_text().split() == ["20000", "100000"]
    async with asyncio.timeout(30):
        assert (await controller.wait()).success
    assert float(output(executor)) < 0.6
    stat = dict(line.split() for line in (cgroup / "cpu.stat").read_text().splitlines())
    assert int(stat["nr_throttled"]) > 0
    await controller.remove()
    assert not await asyncio.to_thread(cgroup.exists)


async def test_without_cgroups_a_memory_limit_is_an_address_space_rlimit(
    make_executor: MakeExecutor,
) -> None:
    # Allocations fail instead of a kill: the task ends as it chooses, not "out of memory".
    executor = make_executor(cgroup_root=None)
    script = (
        "import resource\n"
        "print(resource.getrlimit(resource.RLIMIT_AS), flush=True)\n"
        "try:\n"
        "    chunks = [b'x' * (1 << 20) for _ in range(300)]\n"
        "except MemoryError:\n"
        "    print('MemoryError', flush=True)\n"
        "    raise SystemExit(1)\n"
    )
    controller = await started(executor, make_task(script=script, memory=150 * MIB))
    async with asyncio.timeout(30):
        assert await controller.wait() == Exit(code=1, message="exited with code 1")
    limit = 150 * MIB
    assert await collect(executor.logs("t1")) == f"({limit}, {limit})\nMemoryError\n".encode()


async def test_a_process_count_limit_stops_forks_or_is_a_warning(executor: ProcessExecutor) -> None:
    script = (
        "import os, time\n"
        "made = 0\n"
        "for _ in range(20):\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(5)\n"
        "            os._exit(0)\n"
        "        made += 1\n"
        "    except OSError:\n"
        "        break\n"
        "print(made)\n"
    )
    base = make_task(script=script)
    resources = msgspec.structs.replace(base.spec.resources, limit_pids=5)
    task = msgspec.structs.replace(base, spec=msgspec.structs.replace(base.spec, resources=resources))
    controller = await started(executor, task)
    async with asyncio.timeout(30):
        assert (await controller.wait()).success
    if enforced(PIDS):
        assert int(output(executor)) == 4  # the task's own process is one of the five
        assert controller.warnings == []
    else:
        assert int(output(executor)) == 20
        assert "process count limit not enforced" in controller.warnings[0]
    await controller.remove()
