"""Messages on the agent channel (one long-lived WebSocket per agent, one msgpack frame per message).

Agent to manager: `Register` once per session, then `Heartbeat`s and `StatusReport`s.
Manager to agent: `SessionStarted` (or `SessionRefused`), `HeartbeatAck`s, `Assignments`: first a full
set (`full=True`: every task the agent should know; a task it runs that is missing must be stopped),
then increments. `sequence` grows by one per `Assignments` message of a session.
"""

from __future__ import annotations

import msgspec

from treeherd.model.objects import MachineKind
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


class SessionRefused(_Message, frozen=True, kw_only=True, tag="refused"):
    code: str
    detail: str
    retry_after_s: float = 1.0


class HeartbeatAck(_Message, frozen=True, kw_only=True, tag="heartbeat_ack"):
    period_s: float


class StatusAck(_Message, frozen=True, kw_only=True, tag="status_ack"):
    report_id: int


class Assignments(_Message, frozen=True, kw_only=True, tag="assignments"):
    full: bool
    sequence: int
    updated: list[Task] = []
    removed: list[str] = []


AgentMessage = Register | Heartbeat | StatusReport
ManagerMessage = SessionStarted | SessionRefused | HeartbeatAck | StatusAck | Assignments
