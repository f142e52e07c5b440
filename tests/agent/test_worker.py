"""The worker: assignments start runners, their states reach the manager in order and survive restarts."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from types import TracebackType

import pytest
from agent_helpers import NOW, eventually, make_task

from treeherd.agent.db import TaskDB
from treeherd.agent.progress import Progress
from treeherd.agent.worker import Worker
from treeherd.core.tasks.agent_state import InvalidTransition, RunnerProgressed
from treeherd.executors.hollow import HollowExecutor
from treeherd.model.services import Task
from treeherd.model.states import TaskState as S
from treeherd.model.wire import Assignments, TaskStatusUpdate


class Harness:
    """A worker on a real local DB and the hollow executor; reports are recorded (and acknowledged)."""

    def __init__(self, path: Path, *, ack: bool = True, live_restore: bool = True) -> None:
        self.db = TaskDB(path / "agent.db")
        self.executor = HollowExecutor()
        self.worker = Worker(self.executor, self.db, grace_s=1.0, live_restore=live_restore)
        self.worker.set_sender(self.send)
        self.ack = ack
        self.reports: list[tuple[int, list[TaskStatusUpdate]]] = []
        self.sequence = 0
        self._run: asyncio.Task[None] | None = None

    async def send(self, report_id: int, updates: list[TaskStatusUpdate]) -> None:
        self.reports.append((report_id, updates))
        if self.ack:
            self.worker.acknowledged(report_id)

    def states(self, task_id: str) -> list[S]:
        return [u.status.state for _, updates in self.reports for u in updates if u.task_id == task_id]

    def assign(self, *tasks: Task, full: bool = False, removed: tuple[str, ...] = ()) -> None:
        self.sequence += 1
        message = Assignments(full=full, sequence=self.sequence, updated=list(tasks), removed=list(removed))
        self.worker.assignments(message)

    async def stored(self) -> dict[str, S]:
        return {stored.task.id: stored.status.state for stored in await self.db.load()}

    async def __aenter__(self) -> Harness:
        await self.db.open()
        self._run = asyncio.create_task(self.worker.run())
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.worker.stop()
        try:
            async with asyncio.timeout(3):
                assert self._run is not None
                await self._run
        finally:
            await self.db.close()


async def test_an_assignment_runs_a_task_and_reports_its_states_in_order(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        h.worker.session_started("s1")
        h.assign(make_task("t1"), full=True)
        await eventually(lambda: h.states("t1")[-1:] == [S.RUNNING], "RUNNING reported")
        states = h.states("t1")
        assert states == sorted(set(states)), f"not strictly forward: {states}"
        assert states[0] >= S.ACCEPTED
        assert await h.stored() == {"t1": S.RUNNING}
        assert h.worker.state.unacknowledged() == 0


async def test_a_full_set_without_a_task_shuts_its_runner_down(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        h.worker.session_started("s1")
        h.assign(make_task("t1"), make_task("t2"), full=True)
        await eventually(lambda: h.states("t1")[-1:] == h.states("t2")[-1:] == [S.RUNNING])
        h.assign(make_task("t2"), full=True)
        gone = h.executor.controllers["t1"]
        await eventually(lambda: gone.removed, "t1 removed")
        assert gone.calls == ["prepare", "start", "wait", "shutdown", "remove"]
        assert await h.stored() == {"t2": S.RUNNING}
        assert "shutdown" not in h.executor.controllers["t2"].calls
        assert h.worker.state.story("t1")[-1].message == "forgotten: missing from the full assignment set"


async def test_desired_shutdown_stops_the_task_and_reports_it(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        h.worker.session_started("s1")
        h.assign(make_task("t1"), full=True)
        await eventually(lambda: h.states("t1")[-1:] == [S.RUNNING])
        h.assign(make_task("t1", desired=S.SHUTDOWN))
        await eventually(lambda: h.states("t1")[-1:] == [S.SHUTDOWN], "SHUTDOWN reported")
        assert await h.stored() == {"t1": S.SHUTDOWN}
        assert not h.executor.controllers["t1"].removed  # still assigned: kept until the manager lets go


async def test_a_restarted_worker_resumes_known_tasks_and_drops_unassigned_ones(tmp_path: Path) -> None:
    async with Harness(tmp_path) as first:
        first.worker.session_started("s1")
        first.assign(make_task("t1"), make_task("t2"), full=True)
        await eventually(lambda: first.states("t1")[-1:] == first.states("t2")[-1:] == [S.RUNNING])
    # Stopping detached from the tasks instead of stopping them.
    assert all("shutdown" not in c.calls for c in first.executor.controllers.values())

    async with Harness(tmp_path) as second:
        controllers = second.executor.controllers
        await eventually(lambda: set(controllers) == {"t1", "t2"}, "runners resumed")
        await eventually(lambda: all(c.calls == ["wait"] for c in controllers.values()), "resumed at wait")
        second.worker.session_started("s2")
        # The statuses are said again: the old agent may have died before they were acknowledged.
        await eventually(lambda: second.states("t1") == second.states("t2") == [S.RUNNING])
        second.assign(make_task("t1"), full=True)
        await eventually(lambda: controllers["t2"].removed, "t2 removed")
        assert controllers["t2"].calls == ["wait", "shutdown", "remove"]
        assert await second.stored() == {"t1": S.RUNNING}


async def test_a_stop_without_live_restore_stops_every_task_and_records_it(tmp_path: Path) -> None:
    async with Harness(tmp_path, live_restore=False) as h:
        h.worker.session_started("s1")
        h.assign(make_task("t1"), make_task("t2"), full=True)
        await eventually(lambda: h.states("t1")[-1:] == h.states("t2")[-1:] == [S.RUNNING])
    assert [c.calls[-2:] for c in h.executor.controllers.values()] == [["wait", "shutdown"]] * 2
    assert h.worker.left_running == 0
    async with Harness(tmp_path) as second:  # the next worker finds them ended: nothing to resume
        assert await second.stored() == {"t1": S.SHUTDOWN, "t2": S.SHUTDOWN}


async def test_a_stop_right_after_a_restart_still_stops_the_resumed_tasks(tmp_path: Path) -> None:
    async with Harness(tmp_path) as first:
        first.worker.session_started("s1")
        first.assign(make_task("t1"), full=True)
        await eventually(lambda: first.states("t1")[-1:] == [S.RUNNING])
    assert first.worker.left_running == 1  # live restore: left running for the next worker
    second = Harness(tmp_path, live_restore=False)
    second.worker.stop()  # before its loop ever ran
    async with second:
        pass
    assert second.executor.controllers["t1"].calls[-1:] == ["shutdown"]
    async with Harness(tmp_path) as third:
        assert await third.stored() == {"t1": S.SHUTDOWN}


async def test_reports_are_resent_after_a_reconnect_until_acknowledged(tmp_path: Path) -> None:
    async with Harness(tmp_path, ack=False) as h:
        h.worker.session_started("s1")
        h.assign(make_task("t1"), full=True)
        await eventually(lambda: h.states("t1")[-1:] == [S.RUNNING])
        h.worker.session_lost("network")
        sent = len(h.reports)
        h.worker.session_started("s2")
        await eventually(lambda: len(h.reports) > sent, "a re-sent report")
        resent = h.reports[sent:]
        assert [(u.task_id, u.status.state) for _, updates in resent for u in updates] == [("t1", S.RUNNING)]
        for report_id, _ in resent:
            h.worker.acknowledged(report_id)
        await eventually(lambda: h.worker.state.unacknowledged() == 0, "acknowledged")
        h.worker.session_lost("network")
        h.worker.session_started("s3")
        await asyncio.sleep(0.05)
        assert len(h.reports) == sent + len(resent)  # nothing left to re-send


async def refused_after_running(tmp_path: Path, buggy: list[Progress], refusal: str) -> None:
    """Run t1 to RUNNING, then hand the worker `buggy` progress in one batch: the worker must end
    with an InvalidTransition matching `refusal`."""
    h = Harness(tmp_path)
    await h.db.open()
    run = asyncio.create_task(h.worker.run())
    try:
        h.assign(make_task("t1"), full=True)
        await eventually(lambda: [t.state for t in h.worker.state.story("t1")[-1:]] == [S.RUNNING], "RUNNING")
        for progress in buggy:
            h.worker._progressed("t1", progress)
        with pytest.raises(InvalidTransition, match=refusal):
            async with asyncio.timeout(3):
                await run
    finally:
        run.cancel()
        await asyncio.wait({run}, timeout=3)
        await h.db.close()


async def test_an_invalid_transition_stops_the_worker_loudly(tmp_path: Path) -> None:
    # As a buggy runner would: a state before the one the task is in.
    await refused_after_running(tmp_path, [Progress(state=S.PREPARING)], "running -> preparing")


async def test_states_a_runner_passes_in_one_go_reach_the_state_machine_as_the_last(tmp_path: Path) -> None:
    # A hollow task goes from ASSIGNED to RUNNING without the loop coming round: the runner reports
    # five states, the state machine sees RUNNING only; the report and the local DB say RUNNING.
    async with Harness(tmp_path) as h:
        h.worker.session_started("s1")
        h.assign(make_task("t1"), full=True)
        await eventually(lambda: h.states("t1")[-1:] == [S.RUNNING], "RUNNING reported")
        assert [t.state for t in h.worker.state.story("t1")] == [S.ASSIGNED, S.RUNNING]
        assert h.states("t1") == [S.RUNNING]
        assert await h.stored() == {"t1": S.RUNNING}


def test_a_later_state_takes_the_earlier_ones_place_only_when_nothing_came_between(tmp_path: Path) -> None:
    clock = iter(range(1, 100))
    worker = Worker(
        HollowExecutor(), TaskDB(tmp_path / "agent.db"), now=lambda: NOW + timedelta(seconds=next(clock))
    )
    for state in (S.ACCEPTED, S.PREPARING, S.READY):  # one runner's steps in one go: one event
        worker._progressed("t1", Progress(state=state))
    worker.acknowledged(7)  # something else comes between
    worker._progressed("t1", Progress(state=S.STARTING))
    worker._progressed("t1", Progress(state=S.RUNNING))
    events = worker._drain()
    assert [type(event).__name__ for event in events] == ["ReportAcknowledged", "RunnerProgressed"]
    progressed = events[1]
    assert isinstance(progressed, RunnerProgressed)
    # The last state, at its own time, after the acknowledgement that came before it.
    assert (progressed.state, progressed.now) == (S.RUNNING, NOW + timedelta(seconds=6))


async def test_a_state_that_does_not_move_forward_is_refused_even_behind_another_in_one_batch(
    tmp_path: Path,
) -> None:
    # In one batch: FAILED (forward) is kept, not superseded by the PREPARING a buggy runner sends.
    buggy = [Progress(state=S.FAILED, error="exited"), Progress(state=S.PREPARING)]
    await refused_after_running(tmp_path, buggy, "failed -> preparing")


async def test_tasks_of_one_service_version_share_one_spec_also_after_a_restart(tmp_path: Path) -> None:
    async with Harness(tmp_path) as first:
        first.worker.session_started("s1")
        first.assign(make_task("t1"), make_task("t2"), full=True)
        await eventually(lambda: first.states("t1")[-1:] == first.states("t2")[-1:] == [S.RUNNING])
        held = [first.worker.state.task(task_id) for task_id in ("t1", "t2")]
        assert held[0] is not None and held[1] is not None
        assert held[0].spec is held[1].spec
    async with Harness(tmp_path) as second:  # loaded from the local DB: decoded apart, shared again
        await eventually(lambda: second.worker.state.task("t2") is not None, "tasks loaded")
        loaded = [second.worker.state.task(task_id) for task_id in ("t1", "t2")]
        assert loaded[0] is not None and loaded[1] is not None
        assert loaded[0].spec is loaded[1].spec
        assert loaded[0].spec == make_task("t1").spec
        # and the strings every task of the service repeats
        assert loaded[0].service_id is loaded[1].service_id and loaded[0].machine_id is loaded[1].machine_id
        assert loaded[1] == make_task("t2")
