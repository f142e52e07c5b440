"""The leadership component on a real etcd: the leader alone runs its term's components, a follower
sends agents to it, and a lost lease stops the term promptly while another manager takes over."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator

import pytest

from treeherd.manager.leadership import FollowerDoor, Leadership
from treeherd.model.managers import ManagerRecord
from treeherd.store.etcd_client import parse_etcd_url
from treeherd.store.etcd_election import Election
from treeherd.testing.etcd import EtcdProcess, etcd_binary
from treeherd.testing.waiting import eventually

pytestmark = pytest.mark.skipif(etcd_binary() is None, reason="needs etcd (apt-get install etcd-server)")
_prefixes = itertools.count()


class Probe:
    """A term component that records when it runs."""

    name = "probe"

    def __init__(self, log: list[str], who: str) -> None:
        self._log = log
        self._who = who
        self._stop = asyncio.Event()

    async def run(self) -> None:
        self._log.append(f"{self._who} start")
        await self._stop.wait()
        self._log.append(f"{self._who} stop")

    def stop(self) -> None:
        self._stop.set()


class ProbeTerm:
    def __init__(self, log: list[str], who: str) -> None:
        self.dispatcher: object = None
        self.components = [Probe(log, who)]


class FenceRecorder:
    def __init__(self) -> None:
        self.fences: list[tuple[bytes | None, int]] = []

    def fence(self, key: bytes | None, create_revision: int = 0) -> None:
        self.fences.append((key, create_revision))

    async def applied(self, revision: int) -> None:
        pass


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdProcess]:
    with EtcdProcess(tmp_path_factory.mktemp("etcd")) as server:
        yield server


@pytest.fixture
async def pair(etcd: EtcdProcess) -> AsyncIterator[tuple[list[Leadership], list[str], list[FenceRecorder]]]:
    url = parse_etcd_url(etcd.url(f"/leadership-{next(_prefixes)}"))
    log: list[str] = []
    fences = [FenceRecorder(), FenceRecorder()]
    made = []
    for name, fence in zip(("one", "two"), fences, strict=True):
        election = Election(url, ManagerRecord(id=name, url=f"http://{name}:7400"))
        made.append(Leadership(election, fence, lambda name=name: ProbeTerm(log, name)))  # type: ignore[misc]
    runs = []
    for leadership in made:
        runs.append(asyncio.create_task(leadership.run()))
        await eventually(lambda leadership=leadership: leadership.peers != [])  # type: ignore[misc]
    try:
        yield made, log, fences
    finally:
        for leadership in made:
            leadership.stop()
        async with asyncio.timeout(10):
            await asyncio.gather(*runs, return_exceptions=True)


async def test_the_leader_runs_its_term_and_a_follower_names_it(
    pair: tuple[list[Leadership], list[str], list[FenceRecorder]],
) -> None:
    (one, two), log, fences = pair
    await eventually(lambda: one.role == "leader")
    await eventually(lambda: log == ["one start"])
    assert fences[0].fences and fences[0].fences[-1][0] is not None  # its writes are fenced
    await eventually(lambda: two.leader == one.record)
    door = two.door()
    assert isinstance(door, FollowerDoor) and door.leader == "http://one:7400"
    assert two.role == "follower" and fences[1].fences == []
    # The leader stops: the follower is elected and runs a term of its own.
    one.stop()
    await eventually(lambda: two.role == "leader", timeout_s=10)
    await eventually(lambda: log == ["one start", "one stop", "two start"])


async def test_a_lost_lease_stops_the_term_and_hands_leadership_over(
    pair: tuple[list[Leadership], list[str], list[FenceRecorder]],
) -> None:
    (one, two), log, _ = pair
    await eventually(lambda: one.role == "leader" and log == ["one start"])
    renewer = one._election._renewer
    assert renewer is not None
    renewer.cancel()  # no more renewals: as if etcd were out of reach
    await eventually(lambda: "one stop" in log, timeout_s=5)
    await eventually(lambda: two.role == "leader" and log[-1] == "two start", timeout_s=10)
    assert log.count("two start") == 1
