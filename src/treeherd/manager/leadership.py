"""Leadership among managers on one etcd prefix: the leader alone runs the control loop.

`Leadership` campaigns (`store.etcd_election`); once elected it fences the store's writes on its
election key (a deposed leader's late write is refused by etcd), makes a fresh set of term components
(the dispatcher, endpoint registry, orchestrator, allocator, scheduler, canary judge, registry keys)
and runs them under their own `Supervisor` until the lease is lost or the manager stops; then it stops
them, gives up the candidacy and campaigns again. A term component failing while the leadership is
held fails the manager, as any component does. A fresh dispatcher marks every node `unknown` with a
doubled grace, so no node is marked down for the time no leader existed.

While it is not the leader, `door()` is the `FollowerDoor`: agents dialing this manager are refused
with the leader's URL as a hint. `leader` is kept current by watching the election keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

import httpx

from treeherd.core.election import lag
from treeherd.manager.dispatcher import Dispatcher
from treeherd.manager.supervisor import Component, Supervisor
from treeherd.model.errors import TreeherdError, Unavailable
from treeherd.model.managers import ManagerRecord, ManagerView
from treeherd.model.wire import Register, SessionRefused
from treeherd.store.etcd_election import Election
from treeherd.transport.channel import Channel, ChannelClosed

log = logging.getLogger(__name__)

TERM_STOP_S = 10.0  # a term's components get this long to stop before they are cancelled
REFUSE_S = 5.0  # for a follower's answer to an agent
PEER_TIMEOUT_S = 1.0  # for another manager's answer when managers are listed


class LeaderStore(Protocol):
    """What leadership needs of the etcd store: fencing its writes, and waiting for its copy."""

    def fence(self, key: bytes | None, create_revision: int = 0) -> None: ...

    async def applied(self, revision: int) -> None: ...


class Term(Protocol):
    """What a leader runs: its components, and the dispatcher among them."""

    @property
    def dispatcher(self) -> Dispatcher: ...

    @property
    def components(self) -> Sequence[Component]: ...


class Leadership:
    """The component; `make_term()` builds the leader's components anew for each term."""

    name = "leadership"

    def __init__(self, election: Election, store: LeaderStore, make_term: Callable[[], Term]) -> None:
        self._election = election
        self._store = store
        self._make_term = make_term
        self.role: Literal["leader", "follower"] = "follower"
        self.leader: ManagerRecord | None = None
        self.term: Term | None = None
        self.terms = 0  # how many times this manager was elected
        self.peers: list[ManagerRecord] = []  # every candidate, oldest first (the leader first)
        self.problem: str | None = None  # why etcd cannot be read now, if it cannot
        self._stopping = asyncio.Event()

    @property
    def record(self) -> ManagerRecord:
        return self._election.record

    def door(self) -> Any:
        """Where an agent's session goes: the leader's dispatcher, or a refusal naming the leader."""
        term = self.term
        if term is not None and self.role == "leader":
            return term.dispatcher
        return FollowerDoor(self.leader.url if self.leader is not None else None)

    async def run(self) -> None:
        if self._stopping.is_set():
            return
        with contextlib.suppress(TreeherdError):  # else the campaign keeps trying
            await self._election.connect()
        observer = asyncio.create_task(self._observe(), name="leadership-observer")
        try:
            while not self._stopping.is_set():
                if not await self._until_stopped(self._campaign()):
                    return
                await self._lead()
        finally:
            observer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await observer
            with contextlib.suppress(Exception):
                await self._election.close()

    def stop(self) -> None:
        self._stopping.set()

    async def _until_stopped(self, work: Any) -> bool:
        """Run `work` unless the manager stops first; whether it finished."""
        task = asyncio.ensure_future(work)
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait((task, stopping), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return False
        task.result()
        return True

    async def _campaign(self) -> None:
        key, revision = await self._election.campaign()
        self._store.fence(key, revision)
        # The term starts on a copy that has every write made before this election was won (the last
        # writes of the previous leader included).
        while True:
            try:
                await self._store.applied(revision)
                break
            except TreeherdError as error:
                log.warning("elected, waiting for the store to catch up: %s", error)
                await asyncio.sleep(1.0)
        self.terms += 1
        self.leader = self._election.record
        log.info("this manager (%s) leads from etcd revision %d", self.record.url, revision)

    async def _lead(self) -> None:
        term = self._make_term()
        self.term, self.role = term, "leader"
        supervisor = Supervisor(term.components)
        running = asyncio.create_task(supervisor.run(), name="leader-term")
        lost = asyncio.create_task(self._election.lost.wait())
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait((running, lost, stopping), return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            stopping.cancel()
            self.role = "follower"
            supervisor.stop()
            try:
                async with asyncio.timeout(TERM_STOP_S):
                    await asyncio.shield(running)
            except TimeoutError:
                running.cancel()
            except BaseException:
                pass
            self.term = None
        failure = None if running.cancelled() else running.exception()
        lease_lost = self._election.lost.is_set()
        await self._election.resign()
        if failure is not None and not lease_lost and not self._stopping.is_set():
            raise failure
        if not self._stopping.is_set():
            log.warning(
                "this manager (%s) lost its leadership: its leader components stopped", self.record.url
            )

    async def _observe(self) -> None:
        """Keep `leader` current from the election keys."""
        while True:
            try:
                revision, found = await self._election.candidates()
                self.problem = None
                ordered = sorted(found, key=lambda c: (c.create_revision, c.key))
                self.peers = list({c.record.url: c.record for c in ordered}.values())
                if self.role != "leader":
                    leading = min(found, key=lambda c: (c.create_revision, c.key), default=None)
                    self.leader = leading.record if leading is not None else None
                await self._election.changed(revision)
            except TreeherdError as error:
                log.debug("reading the election keys: %s", error)
                self.problem = f"etcd at {self._election.endpoints} does not answer"

                if self.role != "leader":
                    self.leader = None
                await asyncio.sleep(1.0)
                with contextlib.suppress(TreeherdError):
                    await self._election.connect()


async def list_managers(
    leadership: Leadership, revision: int, *, verify: str | bool = True
) -> list[ManagerView]:
    """Every candidate manager: its role, and the store revision it has applied (each other manager is
    asked for it, briefly: its answers say it in `X-Treeherd-Revision`) and its lag behind the most
    advanced of them. `verify`: the cluster CA's certificate file when the managers serve https."""
    own = leadership.record
    peers = leadership.peers if any(p.url == own.url for p in leadership.peers) else [own, *leadership.peers]
    async with httpx.AsyncClient(timeout=PEER_TIMEOUT_S, verify=verify) as client:

        async def applied(record: ManagerRecord) -> int | None:
            if record.url == own.url:
                return revision
            try:
                answer = await client.get(record.url.rstrip("/") + "/healthz")
                return int(answer.headers["x-treeherd-revision"])
            except (httpx.HTTPError, KeyError, ValueError):
                return None

        revisions = await asyncio.gather(*(applied(record) for record in peers))
    newest = max((r for r in revisions if r is not None), default=revision)
    leader = leadership.leader.url if leadership.leader is not None else None
    return [
        ManagerView(
            id=record.id,
            url=record.url,
            role="leader" if record.url == leader else "follower",
            revision=applied_revision,
            lag=None if applied_revision is None else lag(newest, applied_revision),
        )
        for record, applied_revision in zip(peers, revisions, strict=True)
    ]


class FollowerDoor:
    """Stands in for the dispatcher on a manager that does not lead."""

    registry = None

    def __init__(self, leader: str | None) -> None:
        self.leader = leader

    def hint(self) -> str:
        if self.leader is None:
            return "this manager is not the leader and no leader is elected now: retry shortly"
        return f"this manager is not the leader: the leader is at {self.leader}"

    def task_logs(self, *_: Any, **__: Any) -> Any:
        raise Unavailable(self.hint() + " (task logs are read through the leader)")

    async def serve(self, channel: Channel[Any], **_: Any) -> None:
        """Answer the agent's registration with a refusal naming the leader, then close."""
        try:
            async with asyncio.timeout(REFUSE_S):
                first = await channel.receive()
                if isinstance(first, Register):
                    await channel.send(
                        SessionRefused(
                            code="not_leader",
                            detail=self.hint(),
                            retry_after_s=0.2,
                            leader=self.leader or "",
                        )
                    )
        except (TimeoutError, ChannelClosed):
            pass
        finally:
            with contextlib.suppress(Exception):
                await channel.close()
