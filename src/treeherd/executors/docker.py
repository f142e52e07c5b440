"""The docker executor: each task is one container of dockerd on this host, which outlives the agent
and is adopted again, by its name and labels, after a restart.

Responsibility: create, start, watch, stop and remove one container per task (the Engine API calls
are `docker_engine`'s). The container is named `treeherd-<scope>-<task id>` and labelled with the task
id, service, slot, node path and the executor's scope (a hash of its directory, so agents sharing a
dockerd never take each other's containers). It runs the task's image (`service create --image REF`:
a local ID or tag, looked up on this host and never pulled; a missing image rejects the task with
"image REF is not on HOST: docker load it there"), its command as the container's command (the
image's entrypoint, if any, stays), the environment of `core.tasks.task_env` (the spec's env and the
TREEHERD_* variables, nothing of the agent's own), its working directory and user, on the host's
network (the allocated ports are the host's, and `--depends-on` services are at 127.0.0.1 through
the host's haproxy), with the memory, CPU and process limits as Docker's own, no restart policy
(restarts are the orchestrator's: a container that ends is a FAILED or COMPLETE task) and a bounded
json-file log. The image's own HEALTHCHECK, if it has one, is the task's health when the service has
no treeherd check (`docker_health`): the task is reported RUNNING with health "starting" (as SwarmKit
holds such a task until healthy, nothing takes it for ready before Docker's check passes). `shutdown`
is `docker stop` with the task's grace period (SIGTERM, then SIGKILL).

Steps, each idempotent: `prepare` checks the spec and that the image is here (`docker_images`: one
lookup for a burst of tasks); `start` creates the container (an existing one of the task is reused)
and starts it unless it runs or ran already (adoption), as one step, at most 8 at once (as `docker
run`: dockerd is no faster with more, measured from 4 to 32 at once); a container made here is not
asked about its health when its image has no check. `wait` blocks on the Engine API's wait, then reads
the exit code and the OOM flag; a container removed from outside is a failed task. While dockerd is
away `wait` keeps trying, and the task's status message says so (and, once it is back, that the
container was adopted again), so a task whose container survives a dockerd restart (live restore) is
adopted again; one dockerd stopped ends as it ended. `remove` force-removes the container.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import signal
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from treeherd.core.tasks.images import image_reference_problem
from treeherd.core.tasks.task_env import task_environment
from treeherd.executors.base import Exit, FatalError
from treeherd.executors.docker_engine import DockerUnavailable, Engine, EngineError
from treeherd.executors.docker_health import ImageHealth, has_check, verdict
from treeherd.executors.docker_images import LocalImage, LocalImages
from treeherd.model.discovery import Health
from treeherd.model.objects import LimitSupport
from treeherd.model.services import Task

__all__ = ["LABEL_SCOPE", "LABEL_TASK", "DockerController", "DockerExecutor", "container_config", "exit_of"]

log = logging.getLogger(__name__)

LABEL_SCOPE = "treeherd.scope"
LABEL_TASK = "treeherd.task"
# How long `wait` waits before asking again a dockerd it could not reach.
RETRY_S = 1.0
LAUNCHES_AT_ONCE = 8
NEVER = "0001-01-01T00:00:00Z"  # the Engine API's "not yet" for StartedAt and FinishedAt


def scope_of(root: Path) -> str:
    """The label value that marks the containers of the agent whose data directory is `root`."""
    return hashlib.sha256(str(root).encode()).hexdigest()[:12]


def container_config(task: Task, image_id: str, scope: str) -> dict[str, Any]:
    """The Engine API's create body for the task (see the module's description)."""
    spec = task.spec
    env = task_environment(task, {}, "")
    if not env.get("PATH"):
        env.pop("PATH", None)  # the image's own PATH, or Docker's default
    resources = spec.resources
    host: dict[str, Any] = {
        "NetworkMode": "host",
        "RestartPolicy": {"Name": "no"},
        "LogConfig": {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}},
    }
    if resources.limit_memory:
        host["Memory"] = resources.limit_memory
        host["MemorySwap"] = resources.limit_memory  # no swap beyond the limit: over it is an OOM kill
    if resources.limit_cpus:
        host["NanoCpus"] = int(resources.limit_cpus * 1e9)
    if resources.limit_pids:
        host["PidsLimit"] = resources.limit_pids
    config: dict[str, Any] = {
        "Image": image_id,
        "Env": [f"{name}={value}" for name, value in env.items()],
        "Labels": {
            LABEL_SCOPE: scope,
            LABEL_TASK: task.id,
            "treeherd.service": task.service_name,
            "treeherd.slot": str(task.slot),
            "treeherd.node-path": task.node_path,
            "treeherd.image": spec.image or "",
        },
        "StopTimeout": math.ceil(spec.stop_grace_s),
        "HostConfig": host,
    }
    if spec.command:
        config["Cmd"] = list(spec.command)
    if spec.workdir:
        config["WorkingDir"] = spec.workdir
    if spec.user:
        config["User"] = spec.user
    return config


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_of(state: dict[str, Any], limit_memory: int) -> Exit:
    """The Exit for a container's inspected State (exit code 128+N: killed by signal N)."""
    code = int(state.get("ExitCode", 0))
    error = f" ({state['Error']})" if state.get("Error") else ""
    if state.get("OOMKilled"):
        message = f"out of memory (limit {limit_memory} bytes){error}"
        return Exit(code=code, out_of_memory=True, message=message)
    if 128 < code < 128 + 65 and code - 128 in {int(s) for s in signal.Signals}:
        return Exit(signal=code - 128, message=f"killed by {_signal_name(code - 128)}{error}")
    return Exit(code=code, message=f"exited with code {code}{error}")


class DockerController:
    """One task's container: the executor protocol's steps, each idempotent."""

    def __init__(self, executor: DockerExecutor, task: Task) -> None:
        self.task = task
        self.name = executor.container_name(task.id)
        self._executor = executor
        self._engine = executor.engine
        self._exit: Exit | None = None
        # Started by this controller: `wait` goes straight to the Engine API's wait.
        self._started = False
        self._away = False  # dockerd could not be reached while waiting: said in the task's status
        # The health the started task has (its image's own check, when the spec has none of treeherd's).
        self._start_health: Health = ""
        self.on_note: Callable[[str], None] | None = None  # set by the task's runner

    @property
    def start_health(self) -> Health:
        """The health the task starts with: "starting" once a container whose image has a health check
        started (the engine's verdict for one adopted running), "" without one: reported with RUNNING."""
        return self._start_health

    @property
    def warnings(self) -> list[str]:
        """Limits the spec asks for that this dockerd does not enforce."""
        return self._executor.unenforced(self.task)

    async def prepare(self) -> None:
        spec = self.task.spec
        if spec.image is None:
            raise FatalError("the docker executor runs images: give the service one with --image REF")
        if problem := image_reference_problem(spec.image):
            raise FatalError(problem)
        if spec.workdir is not None and not spec.workdir.startswith("/"):
            raise FatalError(f"working directory {spec.workdir!r} is not an absolute path")
        missing = self._executor.unenforced(self.task)
        if missing and spec.resources.limits == "strict":
            raise FatalError(f"strict limits, but {'; '.join(missing)}")
        if await self._executor.image(spec.image) is None and await self._engine.inspect(self.name) is None:
            raise FatalError(f"image {spec.image} is not on {self._executor.hostname}: docker load it there")

    async def start(self) -> None:
        if self._exit is not None or self._started:
            return
        async with self._executor.launching():
            await self._launch()

    async def _launch(self) -> None:
        """Create the container if need be and start it, as one step (`docker run`): a few at a time."""
        info = await self._container()  # {}: created just now
        state = info.get("State", {})
        if state.get("Running"):
            log.info("task %s: adopted its running container %s", self.task.id, self.name)
            if self.task.spec.health is None and has_check(info):
                self._start_health = verdict(info)[0]
            return
        if state.get("StartedAt", NEVER) != NEVER:
            log.info("task %s: its container ended while the agent was away", self.task.id)
            return
        if info and self.task.spec.health is None and has_check(info):
            self._start_health = "starting"  # made earlier, never started
        try:
            await self._engine.start(self.name)
        except EngineError as error:
            raise FatalError(f"docker could not start the container: {error}") from None
        self._started = True

    async def wait(self) -> Exit:
        while self._exit is None:
            try:
                self._exit = await self._wait_once()
            except DockerUnavailable as error:
                if not self._away:
                    log.warning("task %s: %s; trying again", self.task.id, error)
                    self._note(
                        f"dockerd unreachable ({error}); the container is looked for again when it is back"
                    )
                self._away = True
                self._started = False  # look at the container first when dockerd is back
                await asyncio.sleep(RETRY_S)
        return self._exit

    def _note(self, message: str) -> None:
        if self.on_note is not None:
            self.on_note(message)

    async def shutdown(self, grace_s: float) -> None:
        await self._engine.stop(self.name, grace_s)

    async def remove(self) -> None:
        await self._executor.purge(self.task.id)

    def logs(self, *, follow: bool, tail: int | None) -> AsyncIterator[bytes]:
        return self._engine.logs(self.name, follow=follow, tail=tail)

    async def _container(self) -> dict[str, Any]:
        """The task's container (its inspect document; {} when just created), created if it does not
        exist yet. Created first and looked at only when it exists: the usual path is one call."""
        image = self.task.spec.image or ""
        found = await self._executor.image(image)
        if found is None:
            if (info := await self._engine.inspect(self.name)) is not None:
                return info  # made before its image went: adopted all the same
            raise FatalError(f"image {image} is not on {self._executor.hostname}: docker load it there")
        image_id, checks = found
        config = container_config(self.task, image_id, self._executor.scope)
        try:
            await self._engine.create(self.name, config)
        except EngineError as error:
            if error.status != 409:  # 409: it exists (an earlier agent, or another controller, made it)
                raise FatalError(f"docker could not create the container: {error}") from None
        else:
            self._executor.made(self.task.id, checks=checks)
            if checks and self.task.spec.health is None:
                self._start_health = "starting"
            return {}
        info = await self._engine.inspect(self.name)
        if info is None:
            raise FatalError(f"container {self.name} vanished while it was being created")
        return info

    async def _wait_once(self) -> Exit:
        code: int | None = None
        if self._started:  # started here: straight to the wait
            code = await self._engine.wait(self.name)
            self._started = False  # if dockerd goes away now, look again when it is back
        else:
            info = await self._engine.inspect(self.name)
            if info is None:
                return Exit(message=f"its container {self.name} was removed from outside")
            if info["State"].get("Status") == "created":
                return Exit(message=f"its container {self.name} was never started")
            if info["State"].get("Running"):
                if self._away:
                    self._away = False
                    log.warning(
                        "task %s: dockerd is back; its container %s still runs", self.task.id, self.name
                    )
                    self._note(f"dockerd is back: container {self.name} adopted again, still running")
                code = await self._engine.wait(self.name)
        info = await self._engine.inspect(self.name)
        if info is None:
            exit = exit_of({"ExitCode": code or 0}, 0) if code is not None else Exit()
            gone = f"its container {self.name} was removed from outside"
            return Exit(code=exit.code, signal=exit.signal, message=f"{exit.message}; {gone}".lstrip("; "))
        exit = exit_of(info["State"], self.task.spec.resources.limit_memory)
        if not exit.success and (line := await self._engine.last_line(self.name)):
            return Exit(
                code=exit.code,
                signal=exit.signal,
                out_of_memory=exit.out_of_memory,
                message=f"{exit.message}: {line}",
            )
        return exit


class DockerExecutor:
    """Runs tasks as containers of the dockerd at `host`; see the module's description."""

    name = "docker"
    binds_host_ports = True

    def __init__(self, root: Path, *, host: str | None = None, hostname: str | None = None) -> None:
        self.root = root
        self.engine = Engine(host)
        self.hostname = hostname or socket.gethostname()
        self.scope = scope_of(root)
        self._info: dict[str, Any] = {}
        self._images = LocalImages(self.engine)
        # Task id -> whether its container runs its image's health check, for the containers made here.
        self._checks: dict[str, bool] = {}
        self._launches: tuple[asyncio.Semaphore, asyncio.AbstractEventLoop] | None = None
        self._health = ImageHealth(self.engine, f"{LABEL_SCOPE}={self.scope}")

    def container_name(self, task_id: str) -> str:
        return f"treeherd-{self.scope}-{task_id}"

    def controller(self, task: Task) -> DockerController:
        return DockerController(self, task)

    def launching(self) -> asyncio.Semaphore:
        """The bound on containers being created and started at once (dockerd is no faster past it)."""
        loop = asyncio.get_running_loop()
        if self._launches is None or self._launches[1] is not loop:
            self._launches = (asyncio.Semaphore(LAUNCHES_AT_ONCE), loop)
        return self._launches[0]

    async def image(self, reference: str) -> LocalImage | None:
        """A local image's ID and whether it has a health check of its own (`docker_images`); None: not
        on this host."""
        return await self._images.get(reference)

    async def check(self) -> str | None:
        """What keeps this executor from working (None: dockerd answers); learns its limits."""
        try:
            self._info = await self.engine.info()
        except (DockerUnavailable, EngineError) as error:
            return str(error)
        return None

    async def close(self) -> None:
        await self.engine.close()

    def limit_support(self) -> LimitSupport:
        info = self._info
        cgroups = f"v{info.get('CgroupVersion', '1')}" if info else "unknown"
        how = f"docker (cgroup {cgroups})"
        return LimitSupport(
            cgroups=cgroups,
            memory=how if info.get("MemoryLimit", True) else "",
            cpu=how if info.get("CpuCfsQuota", True) else "",
            pids=how if info.get("PidsLimit", True) else "",
            task_tree="container",
        )

    def unenforced(self, task: Task) -> list[str]:
        """The task's limits this dockerd says it cannot enforce."""
        support, resources = self.limit_support(), task.spec.resources
        return [
            f"dockerd here cannot limit {what}"
            for what, asked, how in (
                ("memory", resources.limit_memory, support.memory),
                ("CPU", resources.limit_cpus, support.cpu),
                ("processes", resources.limit_pids, support.pids),
            )
            if asked and not how
        ]

    async def run_beside(self, task: Task, command: list[str]) -> tuple[int, str]:
        """A command run in the task's container (`docker exec`, as the task's user)."""
        try:
            return await self.engine.run(self.container_name(task.id), command, task.spec.user)
        except (DockerUnavailable, EngineError) as error:
            return -1, str(error)

    def made(self, task_id: str, *, checks: bool) -> None:
        """A container was made here for the task, its image with a health check of its own or not."""
        self._checks[task_id] = checks

    def image_health(self, task: Task) -> AsyncIterator[tuple[Health, str]]:
        """The task's health as its image's own HEALTHCHECK says (`docker_health`); nothing without one
        (known without asking dockerd for a container made here)."""
        if self._checks.get(task.id) is False:
            return _nothing()
        return self._health.follow(self.container_name(task.id))

    async def task_ids(self) -> list[str]:
        """Every task with a container of this executor's scope (running or not)."""
        found = await self.engine.containers(f"{LABEL_SCOPE}={self.scope}")
        return sorted({c.get("Labels", {}).get(LABEL_TASK, "") for c in found} - {""})

    async def stop_orphan(self, task_id: str, grace_s: float) -> None:
        await self.engine.stop(self.container_name(task_id), grace_s)

    async def purge(self, task_id: str) -> None:
        self._checks.pop(task_id, None)
        await self.engine.remove_soon(self.container_name(task_id))

    def logs(self, task_id: str, *, follow: bool = False, tail: int | None = None) -> AsyncIterator[bytes]:
        """A task's output from Docker's log API (`LookupError` on first use: no such container)."""
        return self._logs(task_id, follow=follow, tail=tail)

    async def _logs(self, task_id: str, *, follow: bool, tail: int | None) -> AsyncIterator[bytes]:
        chunks = self.engine.logs(self.container_name(task_id), follow=follow, tail=tail)
        try:
            async for chunk in chunks:
                yield chunk
        except LookupError:
            raise LookupError(f"no container of task {task_id!r} here") from None
        finally:
            with contextlib.suppress(Exception):
                await chunks.aclose()  # type: ignore[attr-defined]


async def _nothing() -> AsyncIterator[tuple[Health, str]]:
    return
    yield  # an async generator that says nothing
