"""Messages on the agent channel (one long-lived WebSocket per agent, one msgpack frame per message).

Agent to manager: `Register` once per session, then `Heartbeat`s and `StatusReport`s.
Manager to agent: `SessionStarted` (or `SessionRefused`), `HeartbeatAck`s, `Assignments`: first a full
set (`full=True`: every task the agent should know; a task it runs that is missing must be stopped),
then increments. `sequence` grows by one per `Assignments` message of a session.

The agent reports what happened to its local haproxy (`ProxyEventReport`: a restart with its cause, a
failed restart, the crash-loop alert firing or resolving); the manager records it on the host's
`ProxyRecord`.

Logs: the manager asks for a task's output with `LogRequest` (a `stream_id` it chose) and may end it
early with `LogCancel`; the agent answers with `LogChunk`s and one `LogEnd`.
"""

from __future__ import annotations

import msgspec

from treeherd.model.gateway import Figure
from treeherd.model.objects import LimitSupport, MachineKind
from treeherd.model.proxies import ProxyEventType
from treeherd.model.services import Task, TaskStatus


class _Message(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    pass


class Register(_Message, frozen=True, kw_only=True, tag="register"):
    """An agent opens a session: who it is and what it offers (resources as psutil sees them)."""

    hostname: str
    ips: list[str] = []
    machine_kind: MachineKind = "virtual"
    labels: dict[str, str] = {}
    cpus: float = 0.0
    memory_bytes: int = 0
    version: str = ""
    limits: LimitSupport | None = None  # None: the executor enforces no limits (hollow)


class Heartbeat(_Message, frozen=True, kw_only=True, tag="heartbeat"):
    session_id: str


class TaskStatusUpdate(msgspec.Struct, frozen=True, kw_only=True):
    task_id: str
    status: TaskStatus


class StatusReport(_Message, frozen=True, kw_only=True, tag="status"):
    """Observed states of tasks (batched by the agent, retried until acknowledged)."""

    session_id: str
    updates: list[TaskStatusUpdate]
    report_id: int = 0


class SessionStarted(_Message, frozen=True, kw_only=True, tag="session"):
    session_id: str
    machine_id: str
    heartbeat_period_s: float
    managers: list[str] = []
    # How often to send the endpoint set (a third of the registrations' TTL).
    endpoint_refresh_s: float = 10.0
    # The cluster's task history per slot: the agent keeps finished tasks' output as long.
    task_history: int = 5


class SessionRefused(_Message, frozen=True, kw_only=True, tag="refused"):
    code: str
    detail: str
    retry_after_s: float = 1.0
    leader: str = ""  # code "not_leader": the URL of the manager that leads now, if one does


class HeartbeatAck(_Message, frozen=True, kw_only=True, tag="heartbeat_ack"):
    period_s: float
    endpoint_refresh_s: float = 10.0
    # The managers' URLs, when they changed since the agent was last told (a manager joined or left).
    managers: list[str] | None = None


class StatusAck(_Message, frozen=True, kw_only=True, tag="status_ack"):
    report_id: int


class Assignments(_Message, frozen=True, kw_only=True, tag="assignments"):
    full: bool
    sequence: int
    updated: list[Task] = []
    removed: list[str] = []


class TaskEndpoint(msgspec.Struct, frozen=True, kw_only=True):
    task_id: str
    port: int


class EndpointSet(_Message, frozen=True, kw_only=True, tag="endpoints"):
    """The agent's tasks that are endpoints now (running, healthy or unchecked, with a port): sent on
    every change and every refresh interval; the manager makes its registrations exactly this set and
    renews their leases."""

    session_id: str
    endpoints: list[TaskEndpoint]


class DependencyServer(msgspec.Struct, frozen=True, kw_only=True):
    address: str
    port: int
    weight: int = 1


class DependencyEndpoints(_Message, frozen=True, kw_only=True, tag="dependency_endpoints"):
    """The live endpoints of a service this agent's tasks depend on (sent at session start, when one of
    its tasks starts depending on it, and at every change)."""

    service: str
    servers: list[DependencyServer]


class ProxyEventReport(_Message, frozen=True, kw_only=True, tag="proxy_event"):
    """Something that happened to the agent's local haproxy (`proxy restarted: master pid 123 died
    (signal 9, SIGKILL)`; `alert_firing` when its master is in a crash loop, `alert_resolved` once it
    stayed up again)."""

    session_id: str
    event: ProxyEventType
    reason: str
    figures: dict[str, Figure] = {}


class LogRequest(_Message, frozen=True, kw_only=True, tag="log_request"):
    """Send the output of a task: the last `tail` lines (None: all kept), then, with `follow`, what it
    prints until it ends or the stream is cancelled."""

    stream_id: int
    task_id: str
    follow: bool = False
    tail: int | None = None


class LogCancel(_Message, frozen=True, kw_only=True, tag="log_cancel"):
    stream_id: int


class LogChunk(_Message, frozen=True, kw_only=True, tag="log_chunk"):
    session_id: str
    stream_id: int
    data: bytes


class LogEnd(_Message, frozen=True, kw_only=True, tag="log_end"):
    """The end of a log stream; `error` says why when it is not the end of the output."""

    session_id: str
    stream_id: int
    error: str = ""


class CertificateRenewal(_Message, frozen=True, kw_only=True, tag="renew"):
    """An agent that joined with a certificate asks for a new one, for a new key, before expiry."""

    session_id: str
    csr_pem: str


class CertificateIssued(_Message, frozen=True, kw_only=True, tag="certificate"):
    """The answer to a renewal: the new certificate, or why there is none."""

    cert_pem: str = ""
    error: str = ""
    ca_cert_pem: str = ""  # the roots to trust from now on (changes during a root rotation)


class RenewNow(_Message, frozen=True, kw_only=True, tag="renew_now"):
    """The manager asks an agent to renew its certificate at once (the cluster's root is rotating)."""

    reason: str = ""


AgentMessage = (
    Register
    | Heartbeat
    | StatusReport
    | EndpointSet
    | ProxyEventReport
    | LogChunk
    | LogEnd
    | CertificateRenewal
)
ManagerMessage = (
    SessionStarted
    | SessionRefused
    | HeartbeatAck
    | StatusAck
    | Assignments
    | DependencyEndpoints
    | LogRequest
    | LogCancel
    | CertificateIssued
    | RenewNow
)
