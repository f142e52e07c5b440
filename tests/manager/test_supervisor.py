"""The supervisor: components run together, stop together, and one that dies takes the rest down."""

from __future__ import annotations

import asyncio
import logging

import pytest

from treeherd.manager import supervisor as supervisor_module
from treeherd.manager.supervisor import ComponentExited, Supervisor

WAIT = 5.0


class Waiter:
    """Runs until stopped; `linger_s` makes it take that long to stop."""

    def __init__(self, name: str, *, linger_s: float = 0.0) -> None:
        self.name = name
        self.linger_s = linger_s
        self.started = asyncio.Event()
        self.stopped = False
        self._stop = asyncio.Event()

    async def run(self) -> None:
        self.started.set()
        await self._stop.wait()
        await asyncio.sleep(self.linger_s)

    def stop(self) -> None:
        self.stopped = True
        self._stop.set()


class Failing:
    def __init__(self, name: str, error: Exception | None) -> None:
        self.name = name
        self.error = error

    async def run(self) -> None:
        await asyncio.sleep(0.01)
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        pass


async def test_stop_stops_every_component_and_run_returns() -> None:
    components = [Waiter("a"), Waiter("b")]
    supervisor = Supervisor(components)
    running = asyncio.create_task(supervisor.run())
    for component in components:
        async with asyncio.timeout(WAIT):
            await component.started.wait()
    supervisor.stop()
    async with asyncio.timeout(WAIT):
        await running
    assert all(component.stopped for component in components)


async def test_a_failing_component_stops_the_others_and_its_error_surfaces() -> None:
    other = Waiter("other")
    supervisor = Supervisor([other, Failing("broken", ValueError("disk gone"))])
    with pytest.raises(ExceptionGroup) as caught:
        async with asyncio.timeout(WAIT):
            await supervisor.run()
    assert other.stopped
    assert caught.group_contains(ValueError, match="disk gone")


async def test_a_component_that_returns_on_its_own_is_a_failure() -> None:
    other = Waiter("other")
    supervisor = Supervisor([other, Failing("quitter", None)])
    with pytest.raises(ExceptionGroup) as caught:
        async with asyncio.timeout(WAIT):
            await supervisor.run()
    assert other.stopped
    assert caught.group_contains(ComponentExited, match="quitter")


async def test_a_slow_stop_is_explained_in_the_log(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(supervisor_module, "SLOW_STOP_S", 0.05)
    slow, quick = Waiter("slow", linger_s=0.3), Waiter("quick")
    supervisor = Supervisor([slow, quick])
    running = asyncio.create_task(supervisor.run())
    async with asyncio.timeout(WAIT):
        await slow.started.wait()
    with caplog.at_level(logging.INFO, logger="treeherd.manager.supervisor"):
        supervisor.stop()
        async with asyncio.timeout(WAIT):
            await running
    messages = [record.getMessage() for record in caplog.records]
    assert "still stopping: slow" in messages
    assert not any("still stopping" in m and "quick" in m for m in messages)
    assert any(m.startswith("slow stopped (") for m in messages)
    assert any(m.startswith("quick stopped (") for m in messages)


class PlainError(Exception):
    """An error whose message is the whole story."""


async def test_a_plain_error_is_logged_without_a_traceback_and_still_stops_everything(
    caplog: pytest.LogCaptureFixture,
) -> None:
    other = Waiter("other")
    supervisor = Supervisor(
        [other, Failing("agent", PlainError("cannot use its DB"))], plain_errors=(PlainError,)
    )
    with (
        caplog.at_level(logging.ERROR, logger="treeherd.manager.supervisor"),
        pytest.raises(ExceptionGroup) as raised,
    ):
        async with asyncio.timeout(WAIT):
            await supervisor.run()
    assert [type(error) for error in raised.value.exceptions] == [PlainError]
    assert other.stopped
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.getMessage() == "component agent cannot run: cannot use its DB; stopping the process"
    assert record.exc_info is None
    # Any other error keeps its traceback in the log.
    caplog.clear()
    supervisor = Supervisor(
        [Waiter("other"), Failing("agent", RuntimeError("a bug"))], plain_errors=(PlainError,)
    )
    with caplog.at_level(logging.ERROR, logger="treeherd.manager.supervisor"), pytest.raises(ExceptionGroup):
        async with asyncio.timeout(WAIT):
            await supervisor.run()
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.exc_info is not None
