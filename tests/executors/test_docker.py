"""The docker executor against the real dockerd: one container per task, named and labelled, with the
spec's environment, directory, user and limits; exits, OOM kills, grace then kill, adoption by a new
executor, removal from outside, exec, logs; bad input and a dockerd that cannot be reached."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from treeherd.executors.base import FatalError
from treeherd.executors.docker import DockerExecutor, exit_of
from treeherd.executors.docker_engine import DockerUnavailable
from treeherd.model.discovery import HealthCheck
from treeherd.model.services import Resources, Task, TaskSpec, TaskStatus
from treeherd.model.states import TaskState
from treeherd.testing.docker import Dockerd, busybox_image, image_with_healthcheck
from treeherd.testing.waiting import eventually

NOW = datetime(2026, 1, 1, tzinfo=UTC)
MIB = 1024 * 1024
CHECK = HealthCheck(kind="cmd", command=["true"])


def make_task(task_id: str, image: str, command: list[str], **spec: Any) -> Task:
    return Task(
        id=task_id,
        created_at=NOW,
        updated_at=NOW,
        service_id="svc-1",
        service_name="web",
        node_path="/shop/frontend",
        slot=2,
        machine_id="m-1",
        status=TaskStatus(state=TaskState.ASSIGNED, timestamp=NOW),
        ports={"http": 18080},
        spec=TaskSpec(command=command, image=image, **spec),
    )


@pytest.fixture
async def executor(docker_host: str, tmp_path: Path) -> AsyncIterator[DockerExecutor]:
    executor = DockerExecutor(tmp_path / "docker", hostname="node-1")
    assert await executor.check() is None
    yield executor
    for task_id in await executor.task_ids():
        await executor.purge(task_id)
    await executor.close()


def inspect(dockerd: Dockerd, name: str) -> dict[str, Any]:
    return dict(json.loads(dockerd.docker("inspect", name))[0])


def containers(dockerd: Dockerd, executor: DockerExecutor) -> list[str]:
    return dockerd.docker("ps", "-aq", "--filter", f"label=treeherd.scope={executor.scope}").split()


async def logs(executor: DockerExecutor, task_id: str) -> str:
    return b"".join([chunk async for chunk in executor.logs(task_id)]).decode()


async def test_a_task_runs_in_a_labelled_container_with_its_spec(
    executor: DockerExecutor, dockerd: Dockerd, busybox: str
) -> None:
    script = 'id -u; pwd; echo "slot=$TREEHERD_SLOT port=$TREEHERD_PORT_HTTP color=$COLOR"; exit 3'
    task = make_task(
        "t1",
        busybox,
        ["sh", "-c", script],
        env={"COLOR": "blue"},
        workdir="/tmp",
        user="nobody",
        resources=Resources(limit_memory=64 * MIB, limit_cpus=0.5, limit_pids=50),
    )
    controller = executor.controller(task)
    await controller.prepare()
    await controller.start()
    async with asyncio.timeout(20):
        exit = await controller.wait()
    assert (exit.code, exit.success) == (3, False)
    assert "exited with code 3" in exit.message
    output = await logs(executor, "t1")
    assert output.splitlines() == ["65534", "/tmp", "slot=2 port=18080 color=blue"]
    info = inspect(dockerd, controller.name)
    assert controller.name == f"treeherd-{executor.scope}-t1"
    labels = info["Config"]["Labels"]
    assert labels["treeherd.task"] == "t1"
    assert (labels["treeherd.service"], labels["treeherd.slot"]) == ("web", "2")
    assert labels["treeherd.node-path"] == "/shop/frontend"
    host = info["HostConfig"]
    assert (host["Memory"], host["NanoCpus"], host["PidsLimit"]) == (64 * MIB, 500_000_000, 50)
    assert host["NetworkMode"] == "host"
    assert host["RestartPolicy"]["Name"] == "no"
    assert "TREEHERD_TASK_ID=t1" in info["Config"]["Env"]
    assert not any(var.startswith("HOME=/root") for var in info["Config"]["Env"])  # nothing of the agent's
    await controller.remove()
    assert containers(dockerd, executor) == []


async def test_a_clean_exit_is_a_success(executor: DockerExecutor, busybox: str) -> None:
    controller = executor.controller(make_task("t-ok", busybox, ["true"]))
    await controller.prepare()
    await controller.start()
    async with asyncio.timeout(20):
        exit = await controller.wait()
    assert exit.success


async def test_an_image_that_is_not_here_rejects_the_task_and_leaves_nothing(
    executor: DockerExecutor, dockerd: Dockerd
) -> None:
    controller = executor.controller(make_task("t2", "local/not-here:1", ["true"]))
    with pytest.raises(FatalError, match=r"^image local/not-here:1 is not on node-1: docker load it there$"):
        await controller.prepare()
    assert containers(dockerd, executor) == []


async def test_a_malformed_reference_rejects_the_task(executor: DockerExecutor) -> None:
    controller = executor.controller(make_task("t3", "Bad//Ref", ["true"]))
    with pytest.raises(FatalError, match="is not an image reference"):
        await controller.prepare()


async def test_a_user_the_image_lacks_fails_the_start_with_dockers_reason(
    executor: DockerExecutor, dockerd: Dockerd, busybox: str
) -> None:
    controller = executor.controller(make_task("t4", busybox, ["true"], user="nosuch"))
    await controller.prepare()
    with pytest.raises(FatalError, match="unable to find user nosuch"):
        await controller.start()
    await controller.remove()
    assert containers(dockerd, executor) == []


async def test_over_its_memory_limit_a_task_is_reported_out_of_memory(
    executor: DockerExecutor, busybox: str
) -> None:
    grow = "x=aaaaaaaaaaaaaaaa; while true; do x=$x$x; done"
    task = make_task("t5", busybox, ["sh", "-c", grow], resources=Resources(limit_memory=16 * MIB))
    controller = executor.controller(task)
    await controller.prepare()
    await controller.start()
    async with asyncio.timeout(30):
        exit = await controller.wait()
    assert exit.out_of_memory
    assert f"out of memory (limit {16 * MIB} bytes)" in exit.message


async def test_shutdown_waits_the_grace_then_kills(executor: DockerExecutor, busybox: str) -> None:
    # sleep as PID 1 ignores SIGTERM: only the kill after the grace period ends it.
    controller = executor.controller(make_task("t6", busybox, ["sleep", "300"], stop_grace_s=1.0))
    await controller.prepare()
    await controller.start()
    waiter = asyncio.ensure_future(controller.wait())
    async with asyncio.timeout(20):
        await controller.shutdown(1.0)
        exit = await waiter
    assert exit.signal == signal.SIGKILL
    assert "killed by SIGKILL" in exit.message


async def test_a_new_executor_adopts_the_running_container(
    executor: DockerExecutor, dockerd: Dockerd, busybox: str, tmp_path: Path
) -> None:
    task = make_task("t7", busybox, ["sleep", "300"], stop_grace_s=0.0)
    first = executor.controller(task)
    await first.prepare()
    await first.start()
    container_id = inspect(dockerd, first.name)["Id"]
    # The agent restarts: a new executor on the same directory finds the container by its name.
    again = DockerExecutor(tmp_path / "docker")
    try:
        assert await again.task_ids() == ["t7"]
        second = again.controller(task)
        await second.prepare()
        await second.start()
        assert inspect(dockerd, second.name)["Id"] == container_id
        assert containers(dockerd, again) == [container_id[:12]]
        waiter = asyncio.ensure_future(second.wait())
        await asyncio.sleep(0.2)
        assert not waiter.done()
        await again.stop_orphan("t7", 0)
        async with asyncio.timeout(20):
            assert not (await waiter).success
        await again.purge("t7")
        assert containers(dockerd, again) == []
    finally:
        await again.close()


async def test_a_container_removed_from_outside_is_a_failed_task(
    executor: DockerExecutor, dockerd: Dockerd, busybox: str
) -> None:
    controller = executor.controller(make_task("t8", busybox, ["sleep", "300"]))
    await controller.prepare()
    await controller.start()
    waiter = asyncio.ensure_future(controller.wait())
    await asyncio.sleep(0.2)
    dockerd.docker("rm", "-f", controller.name)
    async with asyncio.timeout(20):
        exit = await waiter
    assert not exit.success
    assert "removed from outside" in exit.message


async def test_a_process_killed_inside_the_container_ends_the_task(
    executor: DockerExecutor, dockerd: Dockerd, busybox: str
) -> None:
    controller = executor.controller(make_task("t9", busybox, ["sleep", "300"]))
    await controller.prepare()
    await controller.start()
    waiter = asyncio.ensure_future(controller.wait())
    os.kill(inspect(dockerd, controller.name)["State"]["Pid"], signal.SIGKILL)
    async with asyncio.timeout(20):
        exit = await waiter
    assert exit.signal == signal.SIGKILL


async def test_a_command_runs_beside_the_task_in_its_container(
    executor: DockerExecutor, busybox: str
) -> None:
    task = make_task("t10", busybox, ["sleep", "300"], stop_grace_s=0.0)
    controller = executor.controller(task)
    await controller.prepare()
    await controller.start()
    code, output = await executor.run_beside(task, ["sh", "-c", "echo in $TREEHERD_TASK_ID; exit 4"])
    assert (code, output) == (4, "in t10\n")


async def test_a_dockerd_that_cannot_be_reached_is_said_so(tmp_path: Path) -> None:
    executor = DockerExecutor(tmp_path / "docker", host=f"unix://{tmp_path}/no.sock")
    try:
        problem = await executor.check()
        assert (
            problem
            == f"cannot reach dockerd at unix://{tmp_path}/no.sock: is it running? (start it, or set DOCKER_HOST)"
        )
        with pytest.raises(DockerUnavailable, match="cannot reach dockerd"):
            await executor.controller(make_task("t11", "local/x:1", ["true"])).prepare()
    finally:
        await executor.close()


async def test_the_images_own_healthcheck_is_followed_as_the_tasks_health(
    executor: DockerExecutor, dockerd: Dockerd, busybox: str
) -> None:
    image = image_with_healthcheck(dockerd, busybox, "test -f /tmp/ok || (echo no /tmp/ok; exit 1)")
    try:
        task = make_task("t12", image, ["sleep", "300"], stop_grace_s=0.0)
        controller = executor.controller(task)
        await controller.prepare()
        assert controller.start_health == ""
        await controller.start()
        # Reported with RUNNING: nothing takes the task for ready before Docker's check passes.
        assert controller.start_health == "starting"
        verdicts = executor.image_health(task)
        async with asyncio.timeout(20):
            assert await anext(verdicts) == ("starting", "image health check: not run yet")
            health, message = await anext(verdicts)
            assert (health, message) == ("unhealthy", "image health check: no /tmp/ok")
            await executor.run_beside(task, ["touch", "/tmp/ok"])
            health, message = await anext(verdicts)
            assert (health, message) == ("healthy", "image health check: exit code 0")
            # A restarted agent adopting the running container starts from Docker's verdict.
            adopted = DockerExecutor(executor.root)
            try:
                again = adopted.controller(task)
                await again.start()
                assert again.start_health == "healthy"
            finally:
                await adopted.close()
            # A treeherd check of the service's own is the task's health instead: none at start.
            checked = make_task("t12b", image, ["sleep", "300"], stop_grace_s=0.0, health=CHECK)
            other = executor.controller(checked)
            await other.start()
            assert other.start_health == ""
            await other.shutdown(0)
            await other.remove()
            await controller.shutdown(0)
            await controller.remove()
            with pytest.raises(StopAsyncIteration):  # the container is gone: nothing more to follow
                await anext(verdicts)
    finally:
        dockerd.docker("rmi", "--no-prune", image, check=False)  # keeps the base image


async def test_an_image_without_a_healthcheck_has_no_health_to_follow(
    executor: DockerExecutor, busybox: str
) -> None:
    task = make_task("t13", busybox, ["sleep", "300"], stop_grace_s=0.0)
    controller = executor.controller(task)
    await controller.prepare()
    await controller.start()
    assert controller.start_health == ""
    async with asyncio.timeout(10):
        assert [verdict async for verdict in executor.image_health(task)] == []


async def test_a_burst_of_tasks_looks_its_image_up_once_and_makes_two_calls_each(
    executor: DockerExecutor, busybox: str
) -> None:
    """Launching is dockerd's work: per task a create and a start, the image looked up once for all,
    and no look at the containers' health when their image has no check."""
    calls: collections.Counter[str] = collections.Counter()
    engine = executor.engine
    for name in ("image", "inspect", "create", "start"):
        method = getattr(engine, name)

        def counted(*args: Any, _method: Any = method, _name: str = name, **kwargs: Any) -> Any:
            calls[_name] += 1
            return _method(*args, **kwargs)

        setattr(engine, name, counted)  # the instance's attribute: the executor's calls go through it
    tasks = [make_task(f"b{n}", busybox, ["sleep", "300"], stop_grace_s=0.0) for n in range(12)]
    controllers = [executor.controller(task) for task in tasks]
    async with asyncio.timeout(60):
        await asyncio.gather(*(controller.prepare() for controller in controllers))
        await asyncio.gather(*(controller.start() for controller in controllers))
        assert [[v async for v in executor.image_health(task)] for task in tasks] == [[]] * 12
    assert calls == {"image": 1, "create": 12, "start": 12}


async def test_a_dockerd_stopped_mid_task_is_said_and_the_container_adopted_when_it_is_back(
    docker_host: str, tmp_path: Path
) -> None:
    # A dockerd of this test's own, with live restore (containers outlive it), stopped and started again.
    with Dockerd(own=True, live_restore=True) as private:
        executor = DockerExecutor(tmp_path / "docker", host=private.host)
        try:
            image = busybox_image(private, tmp_path / "image")
            controller = executor.controller(make_task("t14", image, ["sleep", "300"], stop_grace_s=0.0))
            notes: list[str] = []
            controller.on_note = notes.append
            await controller.prepare()
            await controller.start()
            pid = inspect(private, controller.name)["State"]["Pid"]
            waiter = asyncio.ensure_future(controller.wait())
            await asyncio.sleep(0.2)
            await asyncio.to_thread(private.pause)
            await eventually(lambda: notes, "the task told dockerd is away", timeout_s=10)
            assert notes == [
                f"dockerd unreachable (cannot reach dockerd at {private.host}: is it running? (start it, or set"
                " DOCKER_HOST)); the container is looked for again when it is back"
            ]
            os.kill(pid, 0)  # the container's process runs on
            assert not waiter.done()
            await asyncio.to_thread(private.resume)
            await eventually(lambda: len(notes) == 2, "the task told dockerd is back", timeout_s=20)
            assert notes[1] == f"dockerd is back: container {controller.name} adopted again, still running"
            assert not waiter.done()
            os.kill(pid, signal.SIGKILL)  # followed again: its end is the task's
            async with asyncio.timeout(20):
                assert (await waiter).signal == signal.SIGKILL
            await controller.remove()
        finally:
            if private.process is not None and private.process.poll() is not None:
                private.resume()
            await executor.close()


def test_exit_codes_above_128_are_signals() -> None:
    assert exit_of({"ExitCode": 137}, 0).signal == signal.SIGKILL
    assert exit_of({"ExitCode": 2}, 0).code == 2
    oom = exit_of({"ExitCode": 137, "OOMKilled": True}, 1024)
    assert oom.out_of_memory and oom.message == "out of memory (limit 1024 bytes)"
