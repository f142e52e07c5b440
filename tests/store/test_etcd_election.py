"""Leader election on a real etcd: one leader at a time, the next one once it resigns or its lease
lapses, and a deposed leader's late write refused by etcd through the fence."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from store_helpers import commit, machine

from conftest import fresh_prefix
from treeherd.model.managers import ManagerRecord
from treeherd.model.objects import Machine
from treeherd.model.ops import Create
from treeherd.store.etcd import EtcdStore
from treeherd.store.etcd_client import parse_etcd_url
from treeherd.store.etcd_election import Election
from treeherd.store.etcd_writer import Fenced

WAIT_S = 10.0


@pytest.fixture
async def url(etcd_server) -> str:
    return etcd_server.url(fresh_prefix())


@pytest.fixture
async def elections(url: str) -> AsyncIterator[list[Election]]:
    made = [
        Election(parse_etcd_url(url), ManagerRecord(id=name, url=f"http://{name}:7400"))
        for name in ("one", "two")
    ]
    for election in made:
        await election.connect()
    yield made
    for election in made:
        await election.close()


async def test_one_leader_then_the_next_when_it_resigns(elections: list[Election]) -> None:
    one, two = elections
    async with asyncio.timeout(WAIT_S):
        key, revision = await one.campaign()
    assert revision > 0 and key.startswith(b"/test-")
    second = asyncio.create_task(two.campaign())
    await asyncio.sleep(0.5)
    assert not second.done()  # the older candidacy leads
    assert (await two.leader()) == one.record
    await one.resign()
    async with asyncio.timeout(WAIT_S):
        await second
    assert (await one.leader()) == two.record
    assert not two.lost.is_set()


async def test_a_lapsed_lease_hands_leadership_over(elections: list[Election]) -> None:
    one, two = elections
    async with asyncio.timeout(WAIT_S):
        await one.campaign()
    second = asyncio.create_task(two.campaign())
    # The leader stops renewing (a frozen process): its lease lapses in etcd after the TTL.
    assert one._renewer is not None
    one._renewer.cancel()
    started = asyncio.get_running_loop().time()
    async with asyncio.timeout(WAIT_S):
        await second
    assert asyncio.get_running_loop().time() - started < one.ttl_s + 3.0
    assert (await two.leader()) == two.record


async def test_a_deposed_leaders_late_write_is_refused_by_etcd(url: str, elections: list[Election]) -> None:
    one, two = elections
    stale = EtcdStore(url)
    await stale.open()
    try:
        async with asyncio.timeout(WAIT_S):
            key, revision = await one.campaign()
        stale.fence(key, revision)
        await commit(stale, Create(machine("m1")))  # the leader writes
        assert one._renewer is not None
        one._renewer.cancel()  # the leader freezes: its lease lapses
        async with asyncio.timeout(WAIT_S):
            await two.campaign()
        with pytest.raises(Fenced, match="no longer the leader"):
            await commit(stale, Create(machine("m2")))
        assert sorted(m.id for m in stale.view().all(Machine)) == ["m1"]
    finally:
        await stale.close()
