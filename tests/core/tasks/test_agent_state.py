"""The agent's state machine, by direct calls: events in, instructions out; plus a Hypothesis property."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from treeherd.core.tasks.agent_state import (
    AgentStarted,
    AgentState,
    AssignmentsReceived,
    DeleteTask,
    Event,
    HealthChanged,
    Instruction,
    InvalidTransition,
    PersistTask,
    ProceedRunner,
    RemoveRunner,
    ReportAcknowledged,
    RunnerNoted,
    RunnerProgressed,
    SendReport,
    SessionEstablished,
    SessionLost,
    StartRunner,
    StoredTask,
)
from treeherd.model.services import Task, TaskSpec, TaskStatus
from treeherd.model.states import TaskState as S

NOW = datetime(2026, 1, 1, tzinfo=UTC)
RUN_STEPS = [S.ACCEPTED, S.PREPARING, S.READY, S.STARTING, S.RUNNING]


def task(
    id: str, *, desired: S = S.RUNNING, state: S = S.ASSIGNED, spec_version: int = 1, version: int = 1
) -> Task:
    return Task(
        id=id,
        version=version,
        created_at=NOW,
        updated_at=NOW,
        service_id="svc-1",
        service_name="web",
        machine_id="m-1",
        desired_state=desired,
        status=TaskStatus(state=state, timestamp=NOW),
        spec=TaskSpec(command=["sleep", "inf"]),
        spec_version=spec_version,
    )


class Driver:
    """Builds events with fresh cause ids and a clock that ticks a second per event."""

    def __init__(self, state: AgentState | None = None) -> None:
        self.state = state or AgentState()
        self.n = 0

    def _base(self) -> dict[str, Any]:
        self.n += 1
        return {"cause_id": f"c{self.n}", "now": NOW + timedelta(seconds=self.n)}

    def assign(self, *tasks: Task, full: bool = False, removed: tuple[str, ...] = ()) -> list[Instruction]:
        return self.state.handle(
            AssignmentsReceived(**self._base(), full=full, updated=list(tasks), removed=list(removed))
        )

    def progress(self, task_id: str, state: S, **fields: Any) -> list[Instruction]:
        return self.state.handle(RunnerProgressed(**self._base(), task_id=task_id, state=state, **fields))

    def run_to(self, task_id: str, last: S) -> None:
        for state in RUN_STEPS[: RUN_STEPS.index(last) + 1]:
            self.progress(task_id, state)

    def connect(self, session: str = "s1") -> list[Instruction]:
        return self.state.handle(SessionEstablished(**self._base(), session_id=session))

    def lose(self) -> list[Instruction]:
        return self.state.handle(SessionLost(**self._base(), reason="test"))

    def ack(self, report_id: int) -> list[Instruction]:
        return self.state.handle(ReportAcknowledged(**self._base(), report_id=report_id))

    def start(self, *stored: StoredTask) -> list[Instruction]:
        return self.state.handle(AgentStarted(**self._base(), tasks=list(stored)))


def kinds(instructions: list[Instruction]) -> list[str]:
    return [type(i).__name__ for i in instructions]


def reported(instructions: list[Instruction]) -> list[tuple[str, S]]:
    return [(u.task_id, u.status.state) for i in instructions if isinstance(i, SendReport) for u in i.updates]


# --- assignments ---------------------------------------------------------------------------------


def test_a_new_task_is_persisted_before_its_runner_starts() -> None:
    d = Driver()
    out = d.assign(task("t1"))
    assert kinds(out) == ["PersistTask", "StartRunner"]
    start = out[1]
    assert isinstance(start, StartRunner) and start.status.state == S.ASSIGNED and start.cause_id == "c1"
    assert d.state.task_ids() == {"t1"}
    assert [t.message for t in d.state.story("t1")] == ["assigned"]


def test_runner_progress_is_persisted_and_reported_once_connected() -> None:
    d = Driver()
    d.assign(task("t1"))
    out = d.progress("t1", S.ACCEPTED)
    assert kinds(out) == ["PersistTask"]  # no session yet: the report waits
    d.progress("t1", S.PREPARING)
    out = d.connect()
    assert reported(out) == [("t1", S.PREPARING)]  # only the latest status of each task
    out = d.progress("t1", S.READY)
    assert kinds(out) == ["PersistTask", "SendReport"]


def test_a_note_of_a_running_task_changes_its_message_only() -> None:
    d = Driver()
    d.assign(task("t1"))
    d.connect()
    d.run_to("t1", S.STARTING)
    note = RunnerNoted(cause_id="n1", now=NOW, task_id="t1", message="dockerd unreachable")
    assert d.state.handle(note) == []  # not running yet: nothing to say
    d.progress("t1", S.RUNNING, message="started")
    assert kinds(d.state.handle(note))[0] == "PersistTask"  # kept, and reported as the window allows
    status = d.state.status("t1")
    assert status is not None and (status.state, status.message) == (S.RUNNING, "dockerd unreachable")
    assert d.state.handle(note) == []  # the same news again: nothing new


def test_running_carries_the_health_the_runner_starts_it_with() -> None:
    """An image's own health check: RUNNING is reported "starting" at once (never without a health),
    the checker's first "starting" changes nothing, and its "healthy" is a new status."""
    d = Driver()
    d.assign(task("t1"))
    d.connect()
    d.run_to("t1", S.STARTING)
    out = d.progress("t1", S.RUNNING, message="started", health="starting")
    persisted = [i.status for i in out if isinstance(i, PersistTask)]
    assert [(s.state, s.health) for s in persisted] == [(S.RUNNING, "starting")]
    assert d.state.handle(HealthChanged(cause_id="h1", now=NOW, task_id="t1", health="starting")) == []
    out = d.state.handle(HealthChanged(cause_id="h2", now=NOW, task_id="t1", health="healthy"))
    status = d.state.status("t1")
    assert kinds(out)[0] == "PersistTask" and status is not None and status.health == "healthy"
    d.progress("t1", S.FAILED, error="exit code 1")  # an ended task has no health
    status = d.state.status("t1")
    assert status is not None and status.health == ""


def test_an_unchanged_task_is_ignored_even_when_its_version_moved() -> None:
    d = Driver()
    d.assign(task("t1"))
    assert d.assign(task("t1", version=7, state=S.ASSIGNED)) == []
    assert d.assign(task("t1"), full=True) == []


def test_desired_shutdown_tells_the_runner_once() -> None:
    d = Driver()
    d.assign(task("t1"))
    d.run_to("t1", S.RUNNING)
    out = d.assign(task("t1", desired=S.SHUTDOWN))
    assert kinds(out) == ["PersistTask", "ShutdownRunner"]
    assert isinstance(out[0], PersistTask) and out[0].task.desired_state == S.SHUTDOWN
    assert d.assign(task("t1", desired=S.SHUTDOWN)) == []
    d.progress("t1", S.SHUTDOWN, message="shut down")
    assert d.state.status("t1").state == S.SHUTDOWN  # type: ignore[union-attr]


def test_a_task_assigned_already_shut_down_gets_no_runner() -> None:
    d = Driver()
    out = d.assign(task("t1", desired=S.SHUTDOWN))
    assert kinds(out) == ["PersistTask"]
    assert d.state.status("t1").state == S.SHUTDOWN  # type: ignore[union-attr]
    # Nothing ran, so forgetting it needs no clean-up by the executor.
    assert kinds(d.assign(full=True)) == ["DeleteTask"]


def test_a_task_missing_from_a_full_set_is_stopped_and_forgotten() -> None:
    d = Driver()
    d.assign(task("t1"), task("t2"), full=True)
    d.run_to("t1", S.RUNNING)
    out = d.assign(task("t2"), full=True)
    assert kinds(out) == ["RemoveRunner", "DeleteTask"]
    assert isinstance(out[0], RemoveRunner) and out[0].task.id == "t1"
    assert d.state.task_ids() == {"t2"}
    assert d.state.story("t1")[-1].message == "forgotten: missing from the full assignment set"
    # A late report from the removed runner is not an error: it is simply dropped.
    assert d.progress("t1", S.SHUTDOWN) == []


def test_an_increment_removes_tasks_by_id() -> None:
    d = Driver()
    d.assign(task("t1"), task("t2"))
    out = d.assign(removed=("t1", "unknown"))
    assert kinds(out) == ["RemoveRunner", "DeleteTask"]
    assert d.state.task_ids() == {"t2"}


def test_a_spec_change_is_not_applied_to_a_known_task() -> None:
    d = Driver()
    d.assign(task("t1"))
    out = d.assign(task("t1", spec_version=2))
    assert out == []
    assert d.state.task("t1").spec_version == 1  # type: ignore[union-attr]
    assert "immutable" in d.state.story("t1")[-1].message
    assert d.assign(task("t1", spec_version=2)) == []  # said once, not on every assignment


def test_desired_ready_holds_the_runner_until_running() -> None:
    d = Driver()
    out = d.assign(task("t1", desired=S.READY))
    assert isinstance(out[1], StartRunner) and out[1].task.desired_state == S.READY
    d.run_to("t1", S.READY)
    out = d.assign(task("t1", desired=S.RUNNING))
    assert kinds(out) == ["PersistTask", "ProceedRunner"]
    assert isinstance(out[1], ProceedRunner)


def test_desired_state_never_goes_back() -> None:
    d = Driver()
    d.assign(task("t1"))
    d.assign(task("t1", desired=S.SHUTDOWN))
    assert d.assign(task("t1", desired=S.RUNNING)) == []
    assert d.state.task("t1").desired_state == S.SHUTDOWN  # type: ignore[union-attr]
    assert "ignored" in d.state.story("t1")[-1].message


# --- invalid transitions ------------------------------------------------------------------------


def test_a_backward_transition_raises_with_the_story_and_changes_nothing() -> None:
    d = Driver()
    d.assign(task("t1"))
    d.run_to("t1", S.RUNNING)
    before = d.state.status("t1")
    with pytest.raises(InvalidTransition) as raised:
        d.progress("t1", S.PREPARING)
    assert raised.value.current == S.RUNNING and raised.value.new == S.PREPARING
    assert "running -> preparing" in str(raised.value)
    assert "assigned" in str(raised.value)  # the story comes with it
    assert [t.state for t in raised.value.story][1:6] == RUN_STEPS
    assert d.state.status("t1") == before


@pytest.mark.parametrize(
    ("reached", "reported_state"),
    [(S.COMPLETE, S.FAILED), (S.FAILED, S.REJECTED), (S.RUNNING, S.RUNNING), (S.ASSIGNED, S.PENDING)],
)
def test_terminal_is_final_and_the_agent_starts_at_accepted(reached: S, reported_state: S) -> None:
    d = Driver()
    d.assign(task("t1"))
    if reached != S.ASSIGNED:
        d.run_to("t1", S.RUNNING)
        if reached != S.RUNNING:
            d.progress("t1", reached)
    with pytest.raises(InvalidTransition):
        d.progress("t1", reported_state)


# --- reports ------------------------------------------------------------------------------------


def test_reports_are_resent_after_a_reconnect_until_acknowledged() -> None:
    d = Driver()
    d.connect("s1")
    d.assign(task("t1"), task("t2"))
    first = d.progress("t1", S.ACCEPTED)
    assert [(i.report_id, reported([i])) for i in first if isinstance(i, SendReport)] == [
        (1, [("t1", S.ACCEPTED)])
    ]
    d.progress("t2", S.ACCEPTED)  # report 2
    d.ack(2)
    assert d.lose() == []
    d.progress("t1", S.PREPARING)  # while disconnected: kept
    out = d.connect("s2")
    # Report 1 was never acknowledged: t1 goes again, with its current status; t2 was acknowledged.
    assert [i.report_id for i in out if isinstance(i, SendReport)] == [3]
    assert reported(out) == [("t1", S.PREPARING)]
    d.ack(1)  # a late ack of the old session's report changes nothing
    d.ack(3)
    assert d.state.unacknowledged() == 0


def test_a_full_report_window_batches_updates_until_an_ack() -> None:
    d = Driver(AgentState(report_window=1, report_max=2))
    d.connect()
    d.assign(task("t1"), task("t2"), task("t3"))
    assert reported(d.progress("t1", S.ACCEPTED)) == [("t1", S.ACCEPTED)]
    assert reported(d.progress("t2", S.ACCEPTED)) == []
    assert reported(d.progress("t3", S.ACCEPTED)) == []
    d.progress("t2", S.PREPARING)
    out = d.ack(1)
    assert reported(out) == [("t3", S.ACCEPTED), ("t2", S.PREPARING)]  # capped at report_max: one batch
    assert reported(d.ack(2)) == []


def test_stories_are_bounded() -> None:
    d = Driver(AgentState(story_limit=3))
    d.assign(task("t1"))
    d.run_to("t1", S.RUNNING)
    assert [t.state for t in d.state.story("t1")] == [S.READY, S.STARTING, S.RUNNING]


# --- restart from the local DB ------------------------------------------------------------------


def test_a_restarted_agent_resumes_what_its_db_holds_and_reports_it_again() -> None:
    d = Driver()
    running = StoredTask(task=task("t1"), status=TaskStatus(state=S.RUNNING, timestamp=NOW))
    done = StoredTask(task=task("t2"), status=TaskStatus(state=S.COMPLETE, timestamp=NOW))
    stopping = StoredTask(
        task=task("t3", desired=S.SHUTDOWN), status=TaskStatus(state=S.RUNNING, timestamp=NOW)
    )
    out = d.start(running, done, stopping)
    assert kinds(out) == ["StartRunner", "StartRunner", "ShutdownRunner"]
    assert isinstance(out[0], StartRunner) and out[0].status.state == S.RUNNING
    assert sorted(reported(d.connect())) == [("t1", S.RUNNING), ("t2", S.COMPLETE), ("t3", S.RUNNING)]
    # The first full set drops what the manager no longer assigns; even t2's executor state is cleaned up.
    out = d.assign(task("t1"), full=True)
    assert sorted(
        (type(i).__name__, getattr(i, "task_id", "")) for i in out if isinstance(i, DeleteTask)
    ) == [
        ("DeleteTask", "t2"),
        ("DeleteTask", "t3"),
    ]
    assert len([i for i in out if isinstance(i, RemoveRunner)]) == 2


# --- properties ---------------------------------------------------------------------------------

IDS = ["a", "b", "c", "d"]
ALL_STATES = list(S)

assignments = st.builds(
    lambda full, updated, removed: ("assign", full, updated, removed),
    st.booleans(),
    st.lists(
        st.tuples(st.sampled_from(IDS), st.sampled_from([S.READY, S.RUNNING, S.SHUTDOWN]), st.integers(1, 2)),
        max_size=4,
    ),
    st.lists(st.sampled_from(IDS), max_size=2),
)
# A runner report: mostly the next step of the ladder (or a terminal state), sometimes any state at all.
progresses = st.tuples(
    st.just("progress"),
    st.sampled_from(IDS),
    st.one_of(
        st.integers(1, 2), st.sampled_from([S.COMPLETE, S.FAILED, S.SHUTDOWN]), st.sampled_from(ALL_STATES)
    ),
)
LADDER = [S.NEW, S.ALLOCATED, S.PENDING, S.ASSIGNED, *RUN_STEPS]
steps = st.lists(
    st.one_of(
        assignments,
        progresses,
        progresses,
        progresses,
        st.tuples(st.just("ack"), st.integers(1, 8)),
        st.tuples(st.just("lost")),
        st.tuples(st.just("connect")),
    ),
    min_size=10,
    max_size=60,
)
# Every script starts with all tasks assigned and a session, so the rest has something to act on.
PROLOGUE = [("assign", True, [(i, S.RUNNING, 1) for i in IDS], []), ("connect",)]


def _event(step: tuple[Any, ...], n: int, state: AgentState) -> Event:
    base: dict[str, Any] = {"cause_id": f"c{n}", "now": NOW + timedelta(seconds=n)}
    kind = step[0]
    if kind == "assign":
        _, full, updated, removed = step
        tasks = {i: task(i, desired=desired, spec_version=v) for i, desired, v in updated}
        return AssignmentsReceived(**base, full=full, updated=list(tasks.values()), removed=removed)
    if kind == "progress":
        _, task_id, choice = step
        if isinstance(choice, S):
            return RunnerProgressed(**base, task_id=task_id, state=choice)
        current = state.status(task_id)
        at = LADDER.index(current.state) if current and current.state in LADDER else 0
        return RunnerProgressed(**base, task_id=task_id, state=LADDER[min(at + choice, len(LADDER) - 1)])
    if kind == "ack":
        return ReportAcknowledged(**base, report_id=step[1])
    if kind == "lost":
        return SessionLost(**base)
    return SessionEstablished(**base, session_id=f"s{n}")


@settings(max_examples=300, deadline=None)
@given(steps)
def test_observed_states_only_move_forward_and_full_sets_drop_the_rest(script: list[tuple[Any, ...]]) -> None:
    state = AgentState(report_window=2)
    runners: set[str] = set()  # tasks with a live runner, as the instructions say
    reported_max: dict[str, S] = {}
    for n, step in enumerate(PROLOGUE + script):
        event = _event(step, n, state)
        before = {i: state.status(i) for i in state.task_ids()}
        try:
            out = state.handle(event)
        except InvalidTransition as error:
            assert isinstance(event, RunnerProgressed)
            current = before[event.task_id]
            assert current is not None
            assert (
                current.state.terminal
                or event.state <= current.state
                or event.state < S.ACCEPTED
                or event.task_id not in runners
            )
            assert {i: state.status(i) for i in state.task_ids()} == before, "a rejected event changed state"
            assert error.story  # noqa: PT017 (each failure is checked in place, within the script)
            continue
        for task_id, old in before.items():
            new = state.status(task_id)
            if new is None or old is None:
                continue  # forgotten
            assert new.state >= old.state, f"{task_id} moved back: {old.state.label} -> {new.state.label}"
            if old.state.terminal:
                assert new == old, f"{task_id} left terminal {old.state.label}"
        if isinstance(event, AssignmentsReceived) and event.full:
            assert state.task_ids() == {t.id for t in event.updated} - set(event.removed)
        for instruction in out:
            if isinstance(instruction, StartRunner):
                assert instruction.task.id not in runners, "two runners for one task"
                assert not instruction.status.state.terminal
                runners.add(instruction.task.id)
            elif isinstance(instruction, RemoveRunner | DeleteTask):
                task_id = (
                    instruction.task.id if isinstance(instruction, RemoveRunner) else instruction.task_id
                )
                runners.discard(task_id)
                reported_max.pop(task_id, None)
            elif isinstance(instruction, SendReport):
                assert state.connected
                for update in instruction.updates:
                    assert update.status.state >= reported_max.get(update.task_id, S.NEW)
                    reported_max[update.task_id] = update.status.state
        if isinstance(event, RunnerProgressed) and event.state.terminal:
            runners.discard(event.task_id)
