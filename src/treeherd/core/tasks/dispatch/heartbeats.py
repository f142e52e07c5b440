"""Heartbeat deadlines: the period an agent is told, how long it may stay silent, and the set of
deadlines the dispatcher watches.

Time comes in as `now` in monotonic seconds; randomness as a `draw` in [0, 1]. A node is told the period
`period + draw * epsilon`, and its deadline is that told period plus `multiplier - 1` base periods after
its last registration or heartbeat, twice that while it is "unknown" (the dispatcher restarted and the
agent has not come back). A heartbeat is answered
when the agent has something to learn, else every second one (`heartbeat_answer_due`).
"""

from __future__ import annotations

import heapq

from treeherd.model.services import ClusterSettings

UNKNOWN_GRACE_FACTOR = 2.0

# Heartbeats per answer when nothing changed: half the messages of an answer to each (at 5,000 nodes
# each answer's socket write was a quarter of the manager's idle CPU). An agent gives its session up
# after ANSWER_EVERY + 2 periods with nothing from the manager (agent.session.SILENCE_PERIODS).
ANSWER_EVERY = 2


def heartbeat_answer_due(unanswered: int, news: bool) -> bool:
    """Whether to answer a heartbeat, after `unanswered` heartbeats of the session went unanswered:
    always when the agent has something to learn (`news`: its period, its refresh interval or the
    managers changed), else every `ANSWER_EVERY`th heartbeat."""
    return news or unanswered + 1 >= ANSWER_EVERY


def told_settings(settings: ClusterSettings) -> tuple[float, float, float]:
    """The settings a heartbeat's answer passes on to the agent: a change to any is news to it."""
    return (settings.heartbeat_period_s, settings.heartbeat_epsilon_s, settings.endpoint_ttl_s)


def heartbeat_period(settings: ClusterSettings, draw: float) -> float:
    """The period an agent is told to heartbeat at: the base period plus `draw` (in [0, 1]) of the
    epsilon, so that agents restarted together spread out."""
    return settings.heartbeat_period_s + min(max(draw, 0.0), 1.0) * settings.heartbeat_epsilon_s


def heartbeat_timeout(period: float, settings: ClusterSettings, *, unknown: bool = False) -> float:
    """How long a node may stay silent after being told `period`: that period, then the grace
    multiplier less one of base periods, doubled for a node in the "unknown" state.

    The epsilon spreads heartbeats out; it says nothing about how late one may be. Multiplied by the
    grace (SwarmKit's rule: `period * multiplier`) it made the deadline vary by up to `multiplier`
    epsilons, and a dead node's tasks waited for the slowest draw: at a 1 s period with epsilon 0.1 s
    and a grace of 3, up to 3.3 s of silence instead of 3.1 s."""
    timeout = period + settings.heartbeat_period_s * (settings.heartbeat_grace_multiplier - 1)
    return timeout * UNKNOWN_GRACE_FACTOR if unknown else timeout


class Deadlines:
    """When each tracked node must have been heard from; `expired(now)` hands back the late ones.

    A heap ordered by deadline with lazy deletion: a heartbeat pushes a new entry and leaves the old
    one to be skipped, and the heap is rebuilt when skipped entries outnumber live ones. Deadlines are
    kept less `_shift`, the time every deadline was postponed by, so that `postpone` moves them all at
    once: at 5,000 nodes, rewriting each on every late timer tick was 2 % of a busy manager's CPU.
    """

    def __init__(self) -> None:
        self._due: dict[str, float] = {}  # deadlines less `_shift`
        self._heap: list[tuple[float, str]] = []
        self._shift = 0.0

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._due

    def due(self, node_id: str) -> float | None:
        kept = self._due.get(node_id)
        return None if kept is None else kept + self._shift

    def register(self, node_id: str, now: float, timeout: float) -> float:
        """Track `node_id` (again) with a deadline `timeout` seconds from `now`; returns the deadline."""
        kept = now + timeout - self._shift
        self._due[node_id] = kept
        heapq.heappush(self._heap, (kept, node_id))
        if len(self._heap) > 2 * len(self._due) + 64:
            self._heap = [(d, n) for n, d in self._due.items()]
            heapq.heapify(self._heap)
        return kept + self._shift

    def heartbeat(self, node_id: str, now: float, timeout: float) -> bool:
        """Move a tracked node's deadline; False (and nothing tracked) for a node not tracked."""
        if node_id not in self._due:
            return False
        self.register(node_id, now, timeout)
        return True

    def forget(self, node_id: str) -> bool:
        return self._due.pop(node_id, None) is not None

    def postpone(self, seconds: float) -> None:
        """Move every deadline `seconds` later: for time in which nobody listened to the nodes."""
        self._shift += seconds

    def next_due(self) -> float | None:
        while self._heap:
            kept, node_id = self._heap[0]
            if self._due.get(node_id) == kept:
                return kept + self._shift
            heapq.heappop(self._heap)
        return None

    def expired(self, now: float) -> list[str]:
        """Nodes whose deadline is at or before `now`, earliest first; they are no longer tracked."""
        late: list[str] = []
        limit = now - self._shift
        while self._heap and self._heap[0][0] <= limit:
            kept, node_id = heapq.heappop(self._heap)
            if self._due.get(node_id) == kept:
                del self._due[node_id]
                late.append(node_id)
        return late
