"""The updater's decision: which slots of a service get a task of its current spec in this step, and
where the update stands (SwarmKit's rolling update, as a pure function of a snapshot and `now`).

A task is *outdated* when its spec is not the service's (equal `spec_version`s are equal specs, so the
specs are compared once per version: `stale_versions`); a slot is *dirty* while a live outdated task
is in it. The reconciler
(`core.tasks.orchestrate`) calls `step` first and replaces only the slots it returns:
- stop-first: the old task is stopped and the new one created at once;
- start-first: the new task is created beside the old one, which is stopped once the new one is ready
  (running, and healthy when it has a health: its spec's check, or one its executor reports from the
  start, such as a container image's own HEALTHCHECK: such a task runs "starting" until it passes).
Slots are replaced in batches of the policy's `parallelism` (0: all at once), dirty slots that are down
anyway first. With stop-first a batch never takes the number of slots without a running task past
`parallelism` (slots that failed in this update aside: a failure the ratio tolerates may stay down). A batch is over when each of its slots has a new task that stayed ready for the monitor
window, or failed; then comes the policy's delay, then the next batch. (SwarmKit moves on as soon as a
new task runs and only counts failures within the window; waiting the window out means a version that
crashes after two seconds stops at its first batch instead of replacing every slot before its first
crash is seen.)
A slot fails when a task of the new spec, created since the update started, ends or is found unhealthy
(by its spec's check or its image's own) before the update is over (its batch waited out the monitor
window; a crash after that still counts while the update runs): an unhealthy task never becomes ready,
so the update would otherwise wait on it for ever. Once the failed slots exceed `max_failure_ratio` of
the slots the update had to replace, the failure action applies: pause (nothing more is replaced until the service is updated again), rollback
(the previous spec comes back, replaced with the rollback policy; a failing rollback pauses: a rollback
is never rolled back), or continue. A failed slot is not tried again in the same update.
A canary (state `canary`, `core.tasks.canary`) replaces only its own slots, chosen at its first step
(slots that are down first), and records when every one of them serves the new spec: the judge's window
starts there. A canary task that ends or is unhealthy aborts the canary: the previous spec comes back on
its slots.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta

import msgspec

from treeherd.model.services import CanaryStatus, Service, Task, UpdateStatus
from treeherd.model.states import TaskState

ACTIVE = frozenset({"canary", "updating", "rollback_started"})
PAUSED = frozenset({"paused", "rollback_paused"})
# How a task of the new spec ends when it fails (stopped by the manager, it ends SHUTDOWN instead).
_FAILED = frozenset({TaskState.COMPLETE, TaskState.FAILED, TaskState.REJECTED})


class Step(msgspec.Struct, frozen=True):
    """The service as the step leaves it (a new update status, or the previous spec back), the slots
    whose outdated tasks are to be replaced now, and when to look again."""

    service: Service
    replace: frozenset[str] = frozenset()
    wake_at: datetime | None = None


def stale_versions(service: Service, tasks: Iterable[Task]) -> frozenset[int]:
    """The spec versions among `tasks` whose spec is not the service's: a task is outdated when its
    version is one of them. One spec comparison per version, not per task."""
    seen: dict[int, bool] = {}
    current = service.spec_version
    for task in tasks:
        version = task.spec_version
        if version not in seen:
            seen[version] = version != current and task.spec != service.task
    return frozenset(version for version, stale in seen.items() if stale)


def ready(task: Task) -> bool:
    """Running, and healthy when it has a health (its spec's check, or a health its executor reports,
    such as its image's own check, which a status carries from RUNNING on): a task that can take the
    old one's place."""
    if task.status.state != TaskState.RUNNING:
        return False
    if task.spec.health is None and not task.status.health:
        return True
    return task.status.health == "healthy"


def _failed(task: Task, started: datetime, stale: frozenset[int]) -> bool:
    """A task of the current spec made since the update started that ended on its own, or runs unhealthy
    (it will never be ready)."""
    if task.created_at < started or task.spec_version in stale:
        return False
    if task.status.state in _FAILED:
        return True
    return _live(task) and task.status.state == TaskState.RUNNING and task.status.health == "unhealthy"


def _live(task: Task) -> bool:
    return task.desired_state <= TaskState.RUNNING


def _running(task: Task) -> bool:
    """Running and serving: a task being drained before it stops serves no more."""
    return _live(task) and task.status.state == TaskState.RUNNING and task.drain_until is None


def canary_slots(service: Service) -> frozenset[str] | None:
    """While a canary runs: its slots (a new task in any other slot gets the previous spec)."""
    status = service.update_status
    if status is None or status.state != "canary" or status.canary is None:
        return None
    return frozenset(status.canary.slots)


def rolled_back(service: Service, now: datetime, message: str, canary: CanaryStatus | None = None) -> Service:
    """The service with its previous spec back (the current one becomes the previous) and a rollback
    under way. The spec version still grows: tasks already on the previous spec compare equal to it.
    `canary`: the aborted canary this rollback ends, kept on the status with its verdict."""
    assert service.previous_task is not None
    return msgspec.structs.replace(
        service,
        task=service.previous_task,
        previous_task=service.task,
        spec_version=service.spec_version + 1,
        updated_at=now,
        update_status=UpdateStatus(state="rollback_started", started_at=now, message=message, canary=canary),
    )


def step(
    service: Service,
    slots: Mapping[str, Sequence[Task]],
    now: datetime,
    rollback_refused: str | None = None,
) -> Step:
    """One step of the service's update. `slots` are the wanted slots (replicated: by slot number;
    global: by machine id) in the order to replace them, each with all its tasks. `rollback_refused`:
    why the previous spec no longer validates (the failure action `rollback` then pauses instead)."""
    status = service.update_status
    stale = stale_versions(service, (t for tasks in slots.values() for t in tasks))
    dirty = [key for key, tasks in slots.items() if any(t.spec_version in stale and _live(t) for t in tasks)]
    if status is None:
        if not dirty:
            return Step(service)
        # Outdated tasks and no update on record (a store written before updates were rolled).
        status = UpdateStatus(state="updating", started_at=now, message="update in progress")
    if status.state not in ACTIVE:
        return Step(service)  # paused until the service is updated again, or over
    if status.state == "canary" and status.canary is not None:
        return _canary_step(service, status, status.canary, slots, dirty, stale, now)
    rolling_back = status.state == "rollback_started"
    what = ("canary abort" if status.canary else "rollback") if rolling_back else "update"
    policy = service.rollback if rolling_back else service.update
    if status.to_replace is None:
        status = msgspec.structs.replace(status, to_replace=len(dirty))
    failed = list(status.failed)
    failures: list[Task] = []
    started = status.started_at
    for key, tasks in slots.items():
        if key in failed:
            continue
        ended = [t for t in tasks if _failed(t, started, stale)]
        if ended:
            failed.append(key)
            failures.append(max(ended, key=lambda t: t.created_at))
    unfinished: list[str] = []
    wake_at: datetime | None = None
    for key in status.batch:
        if key not in slots or key in failed:
            continue  # scaled away, or failed
        # The slot's task of the current spec (one the update made, or, for a rollback, the old one that
        # never left) that will go on running.
        fresh = sorted(
            (
                t
                for t in slots[key]
                if _live(t)
                and t.drain_until is None
                and not t.status.state.terminal
                and t.spec_version not in stale
            ),
            key=lambda t: t.created_at,
        )
        if fresh and ready(fresh[-1]):
            done_at = fresh[-1].status.timestamp + timedelta(seconds=policy.monitor_s)
            if done_at <= now:
                continue
            wake_at = done_at if wake_at is None else min(wake_at, done_at)
        unfinished.append(key)
    status = msgspec.structs.replace(status, failed=failed)
    total = status.to_replace or 0
    if failures and total and len(failed) / total > policy.max_failure_ratio:
        culprit = failures[-1]
        why = (
            f"task {culprit.id} in slot {culprit.slot or culprit.machine_id} {_outcome(culprit)};"
            f" {len(failed)} of {total} slots failed"
        )
        if policy.failure_action == "rollback" and not rolling_back and service.previous_task is not None:
            if rollback_refused is None:
                return Step(rolled_back(service, now, f"update rolled back: {why}"))
            why += f"; not rolled back: {rollback_refused}"
        if policy.failure_action != "continue":
            state = "rollback_paused" if rolling_back else "paused"
            paused = msgspec.structs.replace(status, state=state, message=f"{what} paused: {why}")
            return Step(_with(service, paused, now))
    if unfinished:
        needed = frozenset(unfinished) & frozenset(dirty)
        return Step(_with(service, status, now), needed, wake_at)
    if status.batch:
        delay = timedelta(seconds=policy.delay_s)
        status = msgspec.structs.replace(status, batch=[], next_batch_at=now + delay if delay else None)
    if status.next_batch_at is not None and now < status.next_batch_at:
        return Step(_with(service, status, now), wake_at=status.next_batch_at)
    candidates = [key for key in dirty if key not in failed]
    if not candidates:
        done = "rollback_completed" if rolling_back else "completed"
        message = f"{what} completed" + (f" ({len(failed)} of {total} slots failed)" if failed else "")
        over = msgspec.structs.replace(
            status, state=done, completed_at=now, message=message, next_batch_at=None
        )
        return Step(_with(service, over, now))
    size = policy.parallelism or len(candidates)
    serving = {key for key, tasks in slots.items() if any(_running(t) for t in tasks)}
    down = [key for key in candidates if key not in serving]
    up = [key for key in candidates if key in serving]
    batch = down[:size]
    room = size - len(batch)
    if policy.order == "stop-first":
        # Never more than `parallelism` slots without a running task, whatever brought them down, but
        # for slots that failed in this update: a failure the ratio tolerates may stay down.
        unavailable = sum(1 for key in slots if key not in serving and key not in failed)
        room = min(room, size - unavailable)
    batch += up[: max(0, room)]
    if not batch:
        return Step(_with(service, status, now))  # slots are down: wait for them to come back
    done_count = total - len(candidates)
    status = msgspec.structs.replace(
        status,
        batch=batch,
        next_batch_at=None,
        message=f"{what} in progress: {done_count} of {total} slots done, replacing {len(batch)}",
    )
    return Step(_with(service, status, now), frozenset(batch))


def _canary_step(
    service: Service,
    status: UpdateStatus,
    canary: CanaryStatus,
    slots: Mapping[str, Sequence[Task]],
    dirty: Sequence[str],
    stale: frozenset[int],
    now: datetime,
) -> Step:
    """A canary's step: its slots (chosen now if not yet) get the new spec; the others keep theirs."""
    if not canary.slots:
        serving = {key for key, tasks in slots.items() if any(_running(t) for t in tasks)}
        chosen = [key for key in dirty if key not in serving] + [key for key in dirty if key in serving]
        canary = msgspec.structs.replace(canary, slots=chosen[: canary.tasks])
    mine = [key for key in canary.slots if key in slots]
    for key in mine:
        ended = [t for t in slots[key] if _failed(t, status.started_at, stale)]
        if ended:
            culprit = max(ended, key=lambda t: t.created_at)
            why = f"canary task {culprit.id} in slot {key} {_outcome(culprit)}"
            verdict = msgspec.structs.replace(canary, verdict=f"aborted: {why}")
            return Step(rolled_back(service, now, f"canary aborted: {why}", verdict))
    serving_now = bool(mine) and all(
        key not in dirty
        and any(
            ready(t) and _live(t) and t.drain_until is None and t.spec_version not in stale
            for t in slots[key]
        )
        for key in mine
    )
    if serving_now and canary.serving_at is None:
        canary = msgspec.structs.replace(canary, serving_at=now)
    if canary.serving_at is not None:
        message = (
            f"canary on {len(mine)} of {len(slots)} slots (spec {service.spec_version}), judged over"
            f" {canary.policy.window_s:g}s since {canary.serving_at.isoformat(timespec='seconds')}"
        )
    else:
        message = f"canary starting on {len(mine)} of {len(slots)} slots (spec {service.spec_version})"
    status = msgspec.structs.replace(status, canary=canary, message=message)
    return Step(_with(service, status, now), frozenset(key for key in mine if key in dirty))


def _with(service: Service, status: UpdateStatus, now: datetime) -> Service:
    if status == service.update_status:
        return service
    return msgspec.structs.replace(service, update_status=status, updated_at=now)


def _outcome(task: Task) -> str:
    """How a failed task of the update failed: "ended (failed, exit code 1)", "is unhealthy (...)"."""
    if task.status.state == TaskState.RUNNING:
        said = task.status.error or task.status.message
        return f"is unhealthy ({said})" if said else "is unhealthy"
    return f"ended ({task.status.state.label}{_detail(task)})"


def _detail(task: Task) -> str:
    if task.status.exit_code is not None:
        return f", exit code {task.status.exit_code}"
    return f": {task.status.error}" if task.status.error else ""
