"""The hollow executor's controllers: `wait` until shut down (every wait under way, or at once after),
exit by themselves after a delay, a cancelled wait leaves nothing behind, and the exit as a future
ends as `wait` does."""

from __future__ import annotations

import asyncio

import pytest

from tests.executors.helpers import make_task
from treeherd.executors.base import Exit
from treeherd.executors.hollow import SHUTDOWN_SIGNAL, HollowExecutor

pytestmark = pytest.mark.timeout(10)


async def test_shutdown_ends_every_wait_under_way_and_later_waits_at_once() -> None:
    controller = HollowExecutor().controller(make_task("t1"))
    await controller.prepare()
    await controller.start()
    waits = [asyncio.ensure_future(controller.wait()) for _ in range(2)]
    await asyncio.sleep(0.01)
    assert not any(w.done() for w in waits)
    await controller.shutdown(1.0)
    results = await asyncio.wait_for(asyncio.gather(*waits), 2.0)
    assert results == [Exit(code=0, message="shutdown")] * 2
    assert await asyncio.wait_for(controller.wait(), 1.0) == Exit(code=0, message="shutdown")


async def test_a_task_exits_by_itself_after_its_delay_unless_shut_down_first() -> None:
    executor = HollowExecutor(exit_after_s=0.05, exit_code=3)
    exited = await asyncio.wait_for(executor.controller(make_task("t1")).wait(), 2.0)
    assert exited.code == 3 and "exited by itself" in exited.message
    signalled = HollowExecutor(exit_after_s=5.0, shutdown_exit_code=None).controller(make_task("t2"))
    waiting = asyncio.ensure_future(signalled.wait())
    await asyncio.sleep(0.01)
    await signalled.remove()
    assert (await asyncio.wait_for(waiting, 2.0)).signal == SHUTDOWN_SIGNAL


async def test_a_cancelled_wait_leaves_no_waiter_and_the_next_wait_still_ends() -> None:
    controller = HollowExecutor().controller(make_task("t1"))
    first = asyncio.ensure_future(controller.wait())
    await asyncio.sleep(0.01)
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    second = asyncio.ensure_future(controller.wait())
    await asyncio.sleep(0.01)
    await controller.shutdown(1.0)
    assert (await asyncio.wait_for(second, 2.0)).code == 0
    assert controller.calls == ["wait", "wait", "shutdown"]


async def test_the_exit_as_a_future_ends_with_the_shutdown_as_wait_does() -> None:
    controller = HollowExecutor(shutdown_exit_code=None).controller(make_task("t1"))
    future = controller.exit_future()
    assert future is not None and not future.done()
    waiting = asyncio.ensure_future(controller.wait())
    await asyncio.sleep(0.01)
    await controller.shutdown(1.0)
    assert future.done() and future.result() == await asyncio.wait_for(waiting, 2.0)
    assert future.result().signal == SHUTDOWN_SIGNAL
    later = controller.exit_future()  # asked for after the end: already resolved
    assert later is not None and later.result() == future.result()


@pytest.mark.parametrize("settings", [{"exit_after_s": 1.0}, {"fail_in": "wait"}])
async def test_a_task_that_ends_by_itself_or_fails_in_wait_offers_no_exit_future(
    settings: dict[str, object],
) -> None:
    controller = HollowExecutor(**settings).controller(make_task("t1"))  # type: ignore[arg-type]
    assert controller.exit_future() is None
