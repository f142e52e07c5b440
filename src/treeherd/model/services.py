"""Services, their tasks, and the cluster's settings.

A service belongs to a tree node and describes what to run (`TaskSpec`) and how many (`replicated` with
`replicas` slots, or `global`: one task per eligible machine). The orchestrator turns it into tasks; a
task is immutable in what it runs (it carries a copy of the spec it was made from, and `spec_version`):
an update replaces tasks, it never changes a running one, a few at a time as the service's update
policy says (`core.tasks.rollout`). `spec_version` grows with every change of the spec, a rollback
included: equal versions mean equal specs.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar, Literal

import msgspec
from msgspec import Meta

from treeherd.model.base import Object
from treeherd.model.discovery import Dependency, Health, HealthCheck
from treeherd.model.states import TaskState

ServiceMode = Literal["replicated", "global"]
RestartCondition = Literal["none", "on-failure", "any"]
LimitsMode = Literal["best-effort", "strict"]
UpdateOrder = Literal["stop-first", "start-first"]
FailureAction = Literal["pause", "continue", "rollback"]
# What happens to a task whose machine is declared down: replaced elsewhere at once (SwarmKit), or kept
# until the machine returns (a slot that must never run twice, as a StatefulSet's pod).
NodeDownAction = Literal["replace", "wait"]
UpdateState = Literal[
    "canary", "updating", "paused", "completed", "rollback_started", "rollback_paused", "rollback_completed"
]


class _Spec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class Resources(_Spec, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Reservations are what the scheduler counts; limits are what the executor enforces (0: none)."""

    reserve_cpus: float = 0.0
    reserve_memory: int = 0
    limit_cpus: float = 0.0
    limit_memory: int = 0
    limit_pids: int = 0
    # best-effort: a limit the host cannot enforce is a warning on the task; strict: the task is rejected.
    limits: LimitsMode = "best-effort"


class RestartPolicy(_Spec, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """When a task that ended is replaced: `max_attempts` restarts (0: no limit) within `window_s`
    seconds (0: ever), each after `delay_s`."""

    condition: RestartCondition = "any"
    delay_s: float = 5.0
    max_attempts: int = 0
    window_s: float = 0.0


class Placement(_Spec, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where tasks may go: constraints in SwarmKit syntax, a per-machine cap (0: none), fleet's
    Conflicts (never beside these services) and MachineOf (only beside this service)."""

    constraints: list[str] = []
    max_per_node: int = 0
    conflicts: list[str] = []
    machine_of: str | None = None


class PortSpec(_Spec, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A named port; without a number the allocator picks a free host port."""

    name: str
    port: int | None = None


class TaskSpec(_Spec, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What one task runs."""

    command: list[str]
    env: dict[str, str] = {}
    workdir: str | None = None
    # The docker executor's container image: a local image ID or tag (never pulled), and the user
    # (NAME, UID or UID:GID, as in the image) the command runs as.
    image: str | None = None
    user: str | None = None
    resources: Resources = msgspec.field(default_factory=Resources)
    restart: RestartPolicy = msgspec.field(default_factory=RestartPolicy)
    placement: Placement = msgspec.field(default_factory=Placement)
    ports: list[PortSpec] = []
    # How long a task may take to stop after SIGTERM before it is killed.
    stop_grace_s: float = 10.0
    health: HealthCheck | None = None
    # fleet's Requires: a task is held (NEW) until each of these services has an endpoint.
    requires: list[str] = []
    # Services reached through the host's haproxy: TREEHERD_DEP_<SVC>=127.0.0.1:<local port>.
    depends_on: list[Dependency] = []
    # fleet's BindsTo (with MachineOf): a sidekick of this service, one task on every machine that runs
    # a live task of it, stopped when that machine no longer does.
    binds_to: str | None = None
    # Raised by `service update --force`: a spec that differs only here still replaces every task.
    force_update: Annotated[int, Meta(ge=0, description="raised by every forced update")] = 0


class UpdatePolicy(_Spec, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How a changed spec reaches the tasks (SwarmKit's UpdateConfig, with its defaults): batches of
    `parallelism` slots (0: all at once), `delay_s` between batches, the new task started before the old
    one stops or after; a new task must stay ready (running, and healthy when it has a health) for
    `monitor_s` to count as a success; past `max_failure_ratio` of the slots failing, `failure_action`."""

    parallelism: Annotated[
        int, Meta(ge=0, le=1_000_000, description="slots replaced at once; 0: every slot at once")
    ] = 1
    delay_s: Annotated[float, Meta(ge=0, le=86_400, description="seconds between batches")] = 0.0
    order: UpdateOrder = "stop-first"
    monitor_s: Annotated[
        float,
        Meta(
            ge=0,
            le=86_400,
            description="seconds a new task must stay running (and healthy) to count as a success",
        ),
    ] = 5.0
    failure_action: FailureAction = "pause"
    max_failure_ratio: Annotated[
        float, Meta(ge=0, le=1, description="the share of slots that may fail before the failure action")
    ] = 0.0


class CanaryPolicy(_Spec, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How a canary is sized and judged: `tasks` slots (or `percent` of the replicas, at least one)
    get the new spec; over `window_s` the gateways' figures of the canary tasks are compared with the
    old tasks'. Availability worse by more than `margin` percentage points (with at least
    `min_requests` requests to the canary), or a p99 latency above `latency_factor` times the old one,
    aborts it; once the window has passed with enough requests it waits for a promotion, or promotes
    itself with `auto_promote`."""

    tasks: Annotated[int, Meta(ge=0, le=1_000_000, description="slots on the new spec; 0: use percent")] = 0
    percent: Annotated[
        float, Meta(ge=0, le=100, description="share of the replicas on the new spec (at least one task)")
    ] = 0.0
    window_s: Annotated[float, Meta(gt=0, le=86_400, description="seconds the canary is judged over")] = 300.0
    margin: Annotated[
        float, Meta(ge=0, le=100, description="percentage points of availability the canary may lose")
    ] = 0.5
    min_requests: Annotated[
        int, Meta(ge=1, le=1_000_000_000, description="requests to the canary before it is judged")
    ] = 100
    latency_factor: Annotated[
        float, Meta(ge=1, le=1_000, description="the canary's p99 latency may be this times the old one")
    ] = 1.5
    auto_promote: bool = False


class VersionFigures(msgspec.Struct, frozen=True, kw_only=True):
    """What the gateways measured of the tasks of one spec version over the canary's window."""

    spec_version: int
    requests: int = 0
    errors: int = 0
    availability: float | None = None
    p99_ms: float | None = None


class CanaryStatus(msgspec.Struct, frozen=True, kw_only=True):
    """A canary under way (or over): its policy, its size, the slots it runs in, since when every one of
    them serves the new spec (the judge's window starts there), and the verdict with its figures."""

    policy: CanaryPolicy
    tasks: int
    slots: list[str] = []
    serving_at: datetime | None = None
    verdict: str = ""
    old: VersionFigures | None = None
    new: VersionFigures | None = None


class UpdateStatus(msgspec.Struct, frozen=True, kw_only=True):
    """Where the latest update (or rollback) of a service stands (SwarmKit's UpdateStatus), and the
    progress the updater (`core.tasks.rollout`) keeps between its steps."""

    state: UpdateState
    started_at: datetime
    completed_at: datetime | None = None
    message: str = ""
    # Slots the update had to replace when it started (None until the updater has counted them).
    to_replace: int | None = None
    # The slots of the batch under way (replicated: the slot number; global: the machine id).
    batch: list[str] = []
    # When the next batch may start (the policy's delay after the last one).
    next_batch_at: datetime | None = None
    # Slots whose new task failed during this update.
    failed: list[str] = []
    # The canary this update began with (state `canary` while it is judged).
    canary: CanaryStatus | None = None


class Service(Object, frozen=True, kw_only=True, tag="service"):
    """A service attached to a tree node."""

    kind: ClassVar[str] = "service"
    name: str
    node_id: str
    mode: ServiceMode = "replicated"
    replicas: int = 1
    task: TaskSpec
    spec_version: int = 1
    # Set by `service rm`: tasks are shut down, then the service and its tasks are deleted.
    removing: bool = False
    # Where tasks that depend on this service reach it on their host: 127.0.0.1:local_port.
    local_port: int | None = None
    # "wait": a task whose machine is down is not replaced; it runs on when its agent returns.
    on_node_down: NodeDownAction = "replace"
    update: UpdatePolicy = msgspec.field(default_factory=UpdatePolicy)
    rollback: UpdatePolicy = msgspec.field(default_factory=UpdatePolicy)
    # The spec before the latest change: what `service rollback` returns to.
    previous_task: TaskSpec | None = None
    update_status: UpdateStatus | None = None

    def summary(self) -> str:
        """What `treeherd events` shows beside the name: where the latest update stands."""
        status = self.update_status
        return "" if status is None else f"update {status.state}: {status.message}"


# `gc=False` (here, on `Task` and on `model.events.Event`): instances are not tracked by Python's cycle
# collector. They cannot be part of a cycle (nothing they hold refers back to them), and a manager with
# 1,000,000 tasks spent about half of a reconcile of new slots in collections that walked every task.
class TaskStatus(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A task's observed state, when it was reached, and why."""

    state: TaskState = TaskState.NEW
    timestamp: datetime
    message: str = ""
    error: str = ""
    exit_code: int | None = None
    # Of a RUNNING task with a health check (its spec's, or its image's own that the executor follows):
    # "starting" until its first check passes, then "healthy" or "unhealthy". A change of health is a
    # status update in the same state. An executor that knows at start that the task will have a health
    # (a container image with a HEALTHCHECK) reports RUNNING with "starting" already.
    health: Health = ""


class Task(Object, frozen=True, kw_only=True, tag="task", gc=False):
    """One run of a service's task spec in one slot (replicated) or on one machine (global)."""

    kind: ClassVar[str] = "task"
    service_id: str
    service_name: str
    # The tree path of the service's node when the task was made (TREEHERD_NODE_PATH for the task).
    node_path: str = ""
    slot: int = 0
    machine_id: str | None = None
    desired_state: TaskState = TaskState.RUNNING
    status: TaskStatus
    spec: TaskSpec
    spec_version: int = 1
    ports: dict[str, int] = {}
    # Why the scheduler could not place it (empty once placed).
    placement_error: str = ""
    # What made the manager create it: a new slot, a restart of task X, a replacement after node loss...
    cause: str = ""
    # A restart waits out the policy's delay: the task is created with desired state READY and the
    # orchestrator moves it to RUNNING at `restart_at`.
    restart_at: datetime | None = None
    # When this slot was restarted within the policy's window (carried from task to task, so the
    # max-attempts rule survives a manager restart and history clean-up). A tuple: the empty one is
    # shared, where an empty list per task is a million more objects for the cycle collector to walk.
    restarts: tuple[datetime, ...] = ()
    # Set when an update retires a running task that is an endpoint: its registrations are removed
    # (the proxies stop sending it requests) and it is told to stop at this time.
    drain_until: datetime | None = None


class ClusterSettings(Object, frozen=True, kw_only=True, tag="cluster"):
    """Cluster-wide settings (one object, name "default")."""

    kind: ClassVar[str] = "cluster"
    name: str = "default"
    heartbeat_period_s: float = 5.0
    heartbeat_epsilon_s: float = 0.5
    heartbeat_grace_multiplier: float = 3.0
    status_batch_interval_s: float = 0.1
    status_batch_max: int = 10_000
    task_history: int = 5
    registration_limit: int = 3
    registration_window_s: float = 8.0
    # The brake on mass node loss (core.tasks.node_loss): when more than this share of the agent machines
    # went down within `node_loss_hold_s`, a down machine's tasks are replaced only after that long.
    node_loss_fraction: float = 0.1
    node_loss_hold_s: float = 60.0
    # Endpoint registrations live this long unless refreshed; agents refresh every third of it.
    endpoint_ttl_s: float = 30.0
    # How long a task that is an endpoint is out of its proxies (the gateway's nginx, the local
    # haproxies) before it is told to stop, when an update, a scale-down or a removal retires it: long
    # enough for every proxy to take the change, so that no new request reaches it after it stops.
    drain_delay_s: float = 1.0
    # The ENC (core.puppet.enc): the class a host gets when its bound nodes' classes conflict (and, with
    # `puppet_unknown_host = "default"`, a host the tree does not know); None: no class at all.
    puppet_default_class: str | None = None
    puppet_unknown_host: Literal["fail", "default"] = "fail"
