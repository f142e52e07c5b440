"""Health in the updater: when a task counts as ready (its spec's check, or a health its executor reports
from RUNNING on, such as a container image's own HEALTHCHECK), and a new task found unhealthy is a failed
slot, whichever check said so: the failure action applies instead of the update waiting for ever."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest
from tests.core.tasks.rollout_sim import Sim, spec

from treeherd.core.tasks.canary import canary_size, canary_started
from treeherd.core.tasks.rollout import ready
from treeherd.model.discovery import Health, HealthCheck
from treeherd.model.services import CanaryPolicy, Task, TaskSpec, TaskStatus, UpdatePolicy
from treeherd.model.states import TaskState

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CHECK = HealthCheck(kind="cmd", command=["true"])
OLD = spec("old")
NEW = spec("new")
DONE = ("completed", "paused", "rollback_completed", "rollback_paused")


def task(state: TaskState, health: Health = "", check: HealthCheck | None = None) -> Task:
    return Task(
        id="t1",
        created_at=T0,
        updated_at=T0,
        service_id="s",
        service_name="web",
        slot=1,
        status=TaskStatus(state=state, timestamp=T0, health=health),
        spec=TaskSpec(command=["x"], health=check),
    )


@pytest.mark.parametrize(
    ("state", "health", "check", "expected"),
    [
        # No health at all: running is ready (the process executor, an image without a check).
        (TaskState.RUNNING, "", None, True),
        (TaskState.STARTING, "", None, False),
        # A health the executor reports without a spec check (the image's own): healthy only.
        (TaskState.RUNNING, "starting", None, False),
        (TaskState.RUNNING, "unhealthy", None, False),
        (TaskState.RUNNING, "healthy", None, True),
        # The spec's check: healthy only, even before its first result.
        (TaskState.RUNNING, "", CHECK, False),
        (TaskState.RUNNING, "starting", CHECK, False),
        (TaskState.RUNNING, "healthy", CHECK, True),
        (TaskState.FAILED, "healthy", CHECK, False),
    ],
)
def test_ready_needs_healthy_whenever_the_task_has_a_health(
    state: TaskState, health: Health, check: HealthCheck | None, expected: bool
) -> None:
    assert ready(task(state, health, check)) is expected


def run(sim: Sim, ticks: int = 200) -> None:
    for _ in range(ticks):
        if sim.state() in DONE:
            return
        sim.tick()
    raise AssertionError(f"no end after {ticks} ticks: {sim.service.update_status}")


def test_start_first_keeps_the_old_task_until_the_image_check_passes() -> None:
    sim = Sim(3, OLD, UpdatePolicy(parallelism=1, order="start-first", monitor_s=1))
    sim.image_checked = {"new"}
    sim.update(NEW)
    sim.watch()
    seen_starting = False
    for _ in range(200):
        sim.tick()
        new = [t for t in sim.running() if t.spec == NEW]
        seen_starting |= any(t.status.health == "starting" for t in new)
        if sim.state() in DONE:
            break
    assert seen_starting  # the new tasks ran "starting" a while, and no old one stopped meanwhile
    assert sim.fewest_ready == 3 and sim.state() == "completed"
    assert all(t.spec == NEW and t.status.health == "healthy" for t in sim.running())


@pytest.mark.parametrize("check", ["image", "spec"])
@pytest.mark.parametrize("order", ["stop-first", "start-first"])
def test_an_unhealthy_new_task_pauses_the_update(check: str, order: str) -> None:
    new = spec("new", health=check == "spec")
    sim = Sim(3, OLD, UpdatePolicy(parallelism=1, order=order, monitor_s=1))  # type: ignore[arg-type]
    sim.image_checked = {"new"} if check == "image" else set()
    sim.sick = {"new"}
    sim.update(new)
    run(sim)
    status = sim.service.update_status
    assert status is not None and status.state == "paused" and status.failed == ["1"]
    assert "in slot 1 is unhealthy" in status.message
    for _ in range(5):  # paused: nothing more is replaced
        sim.tick()
    assert sorted(t.slot for t in sim.running() if t.spec == OLD) == (
        [1, 2, 3] if order == "start-first" else [2, 3]
    )


def test_an_unhealthy_new_task_rolls_the_update_back() -> None:
    sim = Sim(3, OLD, UpdatePolicy(parallelism=1, monitor_s=1, failure_action="rollback"))
    sim.image_checked = {"new"}
    sim.sick = {"new"}
    sim.update(NEW)
    run(sim)
    assert sim.state() == "rollback_completed"
    assert all(t.spec == OLD for t in sim.live()) and len(sim.running()) == 3


def test_a_task_healthy_then_unhealthy_within_the_monitor_window_fails_its_slot() -> None:
    sim = Sim(2, OLD, UpdatePolicy(parallelism=1, monitor_s=5))
    sim.image_checked = {"new"}
    sim.update(NEW)
    while not [t for t in sim.running() if t.spec == NEW and t.status.health == "healthy"]:
        sim.tick()
    sim.sick = {"new"}
    fresh = next(t for t in sim.running() if t.spec == NEW)
    sick = msgspec.structs.replace(fresh.status, timestamp=sim.now, health="unhealthy")
    sim.tasks[fresh.id] = msgspec.structs.replace(fresh, status=sick)
    run(sim)
    status = sim.service.update_status
    assert status is not None and status.state == "paused" and "is unhealthy" in status.message


def test_an_unhealthy_canary_task_aborts_the_canary() -> None:
    sim = Sim(3, OLD, UpdatePolicy(parallelism=1, monitor_s=1))
    sim.image_checked = {"new"}
    sim.sick = {"new"}
    sim.update(NEW)
    policy = CanaryPolicy(tasks=1)
    started = canary_started(policy, canary_size(sim.service, policy), sim.now)
    sim.service = msgspec.structs.replace(sim.service, update_status=started)
    run(sim)
    status = sim.service.update_status
    assert status is not None and status.state == "rollback_completed"
    assert status.canary is not None and "slot 1 is unhealthy" in status.canary.verdict
    assert all(t.spec == OLD for t in sim.live())
