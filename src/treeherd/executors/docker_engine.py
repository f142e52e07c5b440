"""The docker executor's Engine API client: one connection pool to dockerd, its errors in plain words,
and the calls the executor makes (image lookup, containers, logs, exec, health events, the daemon's facts).

Why aiodocker (aio-libs, on aiohttp): the agent is one asyncio process that waits on hundreds of
containers at once (one `POST /containers/ID/wait` each). aiodocker speaks the Engine API in asyncio, so
each wait is an idle socket; the `docker` SDK is blocking and would need a worker thread per waiting
container. Its connection pool is unlimited here for the same reason (aiohttp's default of 100 would
stall the 101st container). Nothing here pulls: an image is looked up locally and containers are
created from its ID (the Engine API's create never pulls; only clients do).

dockerd unreachable (not running, stopped mid-task) raises `DockerUnavailable` with what to do; an
object that does not exist is None (or `LookupError` for logs), never a stack trace. Removals go
through one remover, a few at a time and retried (`remove_soon`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiodocker
import aiohttp

__all__ = ["DEFAULT_HOST", "DockerUnavailable", "Engine", "EngineError"]

log = logging.getLogger(__name__)

DEFAULT_HOST = "unix:///var/run/docker.sock"
# Calls other than the long ones (wait, stop, logs) that take longer than this mean dockerd is stuck.
CALL_TIMEOUT_S = 60.0
CANNOT_CONNECT = 900
RETRY_S = 1.0
REMOVING_AT_ONCE = 8
REMOVE_ATTEMPTS = 60  # aiodocker's status for a connection that failed


class DockerUnavailable(Exception):
    """dockerd cannot be reached (not running, or stopped mid-call)."""


class EngineError(Exception):
    """dockerd refused a call: its own message (e.g. a user the image does not have)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Engine:
    """One dockerd, at `host` (default: DOCKER_HOST, else the standard socket). The client is made in
    the event loop that first uses it; `close` lets it go."""

    def __init__(self, host: str | None = None) -> None:
        self.host = host or os.environ.get("DOCKER_HOST") or DEFAULT_HOST
        self._client: aiodocker.Docker | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Containers being removed (name -> done), and the one task removing them, a few at a time.
        self._removals: dict[str, asyncio.Future[None]] = {}
        self._remover: asyncio.Task[None] | None = None

    def _docker(self) -> aiodocker.Docker:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT_S, sock_connect=5.0)
            connector: aiohttp.BaseConnector
            if self.host.startswith("unix://"):
                connector = aiohttp.UnixConnector(self.host.removeprefix("unix://"), limit=0)
                url = "unix://localhost"
            elif self.host.startswith(("tcp://", "http://")):
                connector = aiohttp.TCPConnector(limit=0)
                url = "http://" + self.host.split("://", 1)[1]
            else:
                raise DockerUnavailable(
                    f"cannot use docker host {self.host!r}: give unix://PATH or tcp://HOST:PORT"
                )
            self._client = aiodocker.Docker(url=url, connector=connector, timeout=timeout)
            self._loop = loop
        return self._client

    async def close(self) -> None:
        if self._remover is not None:  # what is left is an unknown task's container for the next agent
            self._remover.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._remover
        self._remover = None
        self._removals.clear()
        client, self._client, self._loop = self._client, None, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()
            with contextlib.suppress(Exception):
                await client.connector.close()  # ours: aiodocker closes only a connector it made

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except aiodocker.DockerError as error:
            if error.status == CANNOT_CONNECT:
                raise self._unavailable() from None
            raise EngineError(error.status, _message(error)) from None
        except (
            aiohttp.ClientConnectionError,
            aiohttp.ClientPayloadError,
            ConnectionError,
            FileNotFoundError,
        ):
            raise self._unavailable() from None  # a payload cut short: dockerd stopped mid-answer
        except TimeoutError:
            raise DockerUnavailable(
                f"dockerd at {self.host} did not answer within {CALL_TIMEOUT_S:g}s"
            ) from None

    def _unavailable(self) -> DockerUnavailable:
        return DockerUnavailable(
            f"cannot reach dockerd at {self.host}: is it running? (start it, or set DOCKER_HOST)"
        )

    # --- the daemon and images ----------------------------------------------------------------------

    async def info(self) -> dict[str, Any]:
        with self._errors():
            return dict(await self._docker().system.info())

    async def image(self, reference: str) -> dict[str, Any] | None:
        """A local image's inspect document (None: not on this host). Never pulls."""
        try:
            with self._errors():
                return dict(await self._docker().images.inspect(reference))
        except EngineError as error:
            if error.status == 404:
                return None
            raise

    # --- containers ---------------------------------------------------------------------------------

    async def inspect(self, name: str) -> dict[str, Any] | None:
        """The container's inspect document (None: no such container)."""
        try:
            with self._errors():
                return dict(await self._docker().containers.container(name).show())
        except EngineError as error:
            if error.status == 404:
                return None
            raise

    async def create(self, name: str, config: dict[str, Any]) -> str:
        with self._errors():
            container = await self._docker().containers.create(config, name=name)
        return str(container.id)

    async def start(self, name: str) -> None:
        with self._errors():
            await self._docker().containers.container(name).start()

    async def wait(self, name: str) -> int | None:
        """Until the container is not running: its exit code (None: it is gone)."""
        try:
            with self._errors():
                result = await self._docker().containers.container(name).wait(timeout=None)
        except EngineError as error:
            if error.status == 404:
                return None
            raise
        return int(result["StatusCode"])

    async def stop(self, name: str, grace_s: float) -> None:
        """SIGTERM (the image's stop signal), SIGKILL after `grace_s`; a stopped or missing one is fine."""
        try:
            with self._errors():
                await self._docker().containers.container(name).stop(t=max(0, round(grace_s)), timeout=None)
        except EngineError as error:
            if error.status not in (304, 404):
                raise

    async def remove(self, name: str) -> None:
        """Kill and remove the container (gone already is fine)."""
        try:
            with self._errors():
                await self._docker().containers.container(name).delete(force=True)
        except EngineError as error:
            if error.status != 404 and "already in progress" not in str(error):
                raise

    async def remove_soon(self, name: str) -> None:
        """Remove a container, through the remover: a few removals at a time (dockerd does them one by
        one: hundreds at once would each take long), each retried until it is done. Waiting for it can
        be cancelled (a bounded removal): the removal itself goes on."""
        done = self._removals.get(name)
        if done is None:
            done = self._removals[name] = asyncio.get_running_loop().create_future()
        if self._remover is None or self._remover.done():
            self._remover = asyncio.create_task(self._remove_all(), name="docker-remover")
        await asyncio.shield(done)

    async def _remove_all(self) -> None:
        limit = asyncio.Semaphore(REMOVING_AT_ONCE)

        async def remove(name: str, done: asyncio.Future[None]) -> None:
            async with limit:
                for attempt in range(1, REMOVE_ATTEMPTS + 1):
                    try:
                        await self.remove(name)
                        break
                    except (DockerUnavailable, EngineError) as error:
                        log.warning("removing container %s failed (attempt %d): %s", name, attempt, error)
                        await asyncio.sleep(RETRY_S)
            self._removals.pop(name, None)
            if not done.done():
                done.set_result(None)

        running: dict[str, asyncio.Task[None]] = {}
        try:
            while self._removals or running:
                for name, done in list(self._removals.items()):
                    if name not in running:
                        running[name] = asyncio.create_task(remove(name, done))
                finished, _ = await asyncio.wait(running.values(), timeout=RETRY_S)
                running = {name: task for name, task in running.items() if task not in finished}
        finally:
            for task in running.values():
                task.cancel()
            await asyncio.gather(*running.values(), return_exceptions=True)

    async def containers(self, label: str) -> list[dict[str, Any]]:
        """Every container (running or not) with this label (`KEY` or `KEY=VALUE`)."""
        with self._errors():
            found = await self._docker().containers.list(all=True, filters=json.dumps({"label": [label]}))
        return [dict(container._container) for container in found]

    async def health_events(self, label: str) -> AsyncIterator[str]:
        """The name of a container with this label each time Docker's health check changes its
        status or the container ends (`health_status`, `die` and `destroy` events), until dockerd goes
        away (then `DockerUnavailable`)."""
        events = self._docker().events
        filters = {"type": ["container"], "event": ["health_status", "die", "destroy"], "label": [label]}
        subscriber = events.subscribe(filters=json.dumps(filters))  # type: ignore[no-untyped-call]
        try:
            while (event := await subscriber.get()) is not None:
                name = event.get("Actor", {}).get("Attributes", {}).get("name")
                if name:
                    yield str(name)
        finally:
            with contextlib.suppress(Exception):
                await events.stop()  # type: ignore[no-untyped-call]
        raise self._unavailable()

    async def logs(self, name: str, *, follow: bool, tail: int | None) -> AsyncIterator[bytes]:
        """The container's output (stdout and stderr, as the log driver keeps it)."""
        if await self.inspect(name) is None:
            raise LookupError(f"no container {name}")
        container = self._docker().containers.container(name)
        options: dict[str, Any] = {"tail": "all" if tail is None else str(tail)}
        with self._errors():
            if not follow:
                for text in await container.log(stdout=True, stderr=True, follow=False, **options):
                    yield text.encode()
                return
            async for text in container.log(stdout=True, stderr=True, follow=True, **options):
                yield text.encode()

    async def last_line(self, name: str) -> str:
        """The last line the container wrote ("" when none, or it is gone)."""
        with contextlib.suppress(DockerUnavailable, EngineError, LookupError):
            lines = [chunk async for chunk in self.logs(name, follow=False, tail=1)]
            return b"".join(lines).decode(errors="replace").strip()[-200:]
        return ""

    async def run(self, name: str, command: list[str], user: str | None) -> tuple[int, str]:
        """Run `command` inside the running container (`docker exec`): its exit code and output."""
        with self._errors():
            container = self._docker().containers.container(name)
            execution = await container.exec(command, user=user or "")
            output = bytearray()
            async with execution.start(detach=False) as stream:
                while (message := await stream.read_out()) is not None:
                    output += message.data
            code = (await execution.inspect())["ExitCode"]
        return int(code) if code is not None else -1, output.decode(errors="replace")


def _message(error: aiodocker.DockerError) -> str:
    message = error.message
    if isinstance(message, dict):
        message = message.get("message", str(message))
    return str(message).strip()
