"""Resource limits: finding the cgroup v1 hierarchies, and real tasks under cgroup and RLIMIT_AS limits.

The cgroup tests need cgroup v1 memory and cpu hierarchies this process may write to (root); they fail,
never skip, where those are missing: the machines these tests run on have them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.executors.conftest import MakeExecutor
from tests.executors.helpers import collect, make_task, output, run, started
from treeherd.executors.base import Exit
from treeherd.executors.limits import CPU, MEMORY, Limiter, TaskLimits, find_hierarchies
from treeherd.executors.process import ProcessExecutor
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
    assert limits == TaskLimits(memory_bytes=100 * MIB, cpus=0.5, rlimit_as=100 * MIB)
    assert not limits.cpu_enforced
    limiter.create("t2", memory_bytes=100 * MIB, cpus=0.5)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2  # once each, not per task
    assert limiter.create("t3", memory_bytes=0, cpus=0) == TaskLimits()


def test_this_machine_has_writable_cgroup_v1_memory_and_cpu() -> None:
    bases = Limiter(CGROUP_ROOT).bases
    assert set(bases) == {MEMORY, CPU}, f"cgroup v1 memory and cpu not usable here: {bases}"


async def test_a_task_over_its_memory_cgroup_limit_is_killed_as_out_of_memory(
    executor: ProcessExecutor,
) -> None:
    controller = await started(executor, make_task(script=ALLOCATE_200_MIB, memory=50 * MIB))
    limits = controller.files.read("limits.json", TaskLimits)
    assert limits is not None
    assert limits.memory_cgroup is not None, "no memory cgroup: cgroup v1 memory not usable here"
    cgroup = Path(limits.memory_cgroup)
    assert cgroup.name == "t1"
    assert (cgroup / "memory.limit_in_bytes").read_text().strip() == str(50 * MIB)
    assert limits.rlimit_as == 0
    async with asyncio.timeout(30):
        exit = await controller.wait()
    assert exit == Exit(signal=9, out_of_memory=True, message=f"out of memory (limit {50 * MIB} bytes)")
    assert b"survived" not in output(executor)
    await controller.remove()
    assert not await asyncio.to_thread(cgroup.exists)


async def test_an_oom_kill_is_seen_even_when_the_exit_status_is_unknown(executor: ProcessExecutor) -> None:
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
        assert exit == Exit(out_of_memory=True, message=f"out of memory (limit {50 * MIB} bytes)")
    finally:
        popen.kill()
        async with asyncio.timeout(10):
            while popen.poll() is None:  # noqa: ASYNC110 (a Popen has nothing to await)
                await asyncio.sleep(0.02)


async def test_a_task_within_its_memory_limit_runs_in_its_cgroup(executor: ProcessExecutor) -> None:
    task = make_task(script="print(open('/proc/self/cgroup').read())", memory=200 * MIB)
    assert await run(executor, task) == Exit(code=0, message="exited with code 0")
    memory_line = next(line for line in output(executor).decode().splitlines() if ":memory:" in line)
    assert memory_line.endswith("/treeherd/t1")


async def test_a_cpu_limit_throttles_the_task(executor: ProcessExecutor) -> None:
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
    assert limits.cpu_cgroup is not None, "no cpu cgroup: cgroup v1 cpu not usable here"
    cgroup = Path(limits.cpu_cgroup)
    assert (cgroup / "cpu.cfs_quota_us").read_text().strip() == "20000"
    assert (cgroup / "cpu.cfs_period_us").read_text().strip() == "100000"
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
