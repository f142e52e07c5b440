"""What the etcd store adds to the contract: its URL, its marker, split commits, several writers on one
prefix, history read back after a restart, etcd's own compaction, and an unreachable etcd."""

from __future__ import annotations

import asyncio

import pytest
from store_helpers import WAIT, commit, machine, opening, replace, snapshot, take, watching

from conftest import fresh_prefix
from treeherd.model.errors import AlreadyExists, Compacted, InvalidInput, Refused, Unavailable
from treeherd.model.objects import Machine
from treeherd.model.ops import Create, Update
from treeherd.store import etcd_client
from treeherd.store.etcd import EtcdStore
from treeherd.store.etcd_client import EtcdClient, parse_etcd_url
from treeherd.store.etcd_writer import Fenced
from treeherd.testing.etcd import EtcdProcess
from treeherd.testing.ports import free_port
from treeherd.testing.waiting import eventually


@pytest.fixture
def url(etcd_server):
    return etcd_server.url(fresh_prefix())


@pytest.fixture
async def stores():
    """Opens etcd stores; closes them after the test."""
    async with opening(EtcdStore) as make:
        yield make


async def raw_put(server, key: bytes, value: bytes) -> None:
    client = EtcdClient(parse_etcd_url(server.url()).endpoints)
    await client.connect()
    try:
        await client.txn([], [etcd_client.put(key, value)])
    finally:
        await client.close()


# ---- the URL -------------------------------------------------------------------------------------


def test_url_with_several_endpoints_and_options():
    url = parse_etcd_url("etcd://10.0.0.1:2379,10.0.0.2,[::1]:2380?prefix=/prod/&max-txn-ops=1024")
    assert url.endpoints == (("10.0.0.1", 2379), ("10.0.0.2", 2379), ("::1", 2380))
    assert url.prefix == "/prod"
    assert url.max_txn_ops == 1024
    assert parse_etcd_url("etcd://h:1").prefix == "/treeherd"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("http://h:2379", "not an etcd URL"),
        ("etcd://h:notaport", "HOST:PORT"),
        ("etcd://h:2379?prefix=relative", "key path"),
        ("etcd://h:2379?colour=red", "unknown option 'colour'"),
        ("etcd://h:2379?max-txn-ops=2", "at least 4"),
    ],
)
def test_bad_urls_say_what_is_wrong(text, says):
    with pytest.raises(InvalidInput, match=says):
        parse_etcd_url(text)


async def test_unreachable_etcd_names_every_endpoint_tried():
    ports = [free_port(), free_port()]
    store = EtcdStore(f"etcd://127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}")
    with pytest.raises(Unavailable) as caught:
        await store.open()
    for port in ports:
        assert f"127.0.0.1:{port} (connection refused)" in caught.value.detail


async def test_the_first_endpoint_that_answers_is_used(etcd_server, stores):
    store = await stores(f"etcd://127.0.0.1:{free_port()},{etcd_server.endpoint}?prefix={fresh_prefix()}")
    assert store.endpoint == etcd_server.endpoint
    assert (await commit(store, Create(machine("m1")))).revision == store.revision


# ---- the marker ----------------------------------------------------------------------------------


async def test_a_prefix_holding_other_keys_is_refused(etcd_server, url):
    prefix = parse_etcd_url(url).prefix
    await raw_put(etcd_server, f"{prefix}/something".encode(), b"x")
    with pytest.raises(Refused, match="no treeherd marker"):
        await EtcdStore(url).open()


async def test_another_schema_is_refused(etcd_server, url):
    prefix = parse_etcd_url(url).prefix
    await raw_put(etcd_server, f"{prefix}/meta".encode(), b'{"schema": 99, "cluster": "c"}')
    with pytest.raises(Refused, match="schema 99"):
        await EtcdStore(url).open()


async def test_another_cluster_is_refused(url, stores):
    first = await stores(url)
    assert first.cluster_id
    assert (await stores(url, cluster=first.cluster_id)).cluster_id == first.cluster_id
    with pytest.raises(Refused, match="not elsewhere"):
        await EtcdStore(url, cluster="elsewhere").open()


# ---- split commits -------------------------------------------------------------------------------


async def test_a_commit_larger_than_one_etcd_transaction_is_one_change(url, stores):
    small = url + "&max-txn-ops=8"
    writer = await stores(small)
    reader = await stores(small)
    async with watching(writer) as mine, watching(reader) as theirs:
        done = await commit(writer, *(Create(machine(f"m{i}")) for i in range(30)))
        assert len(done.objects) == 30
        assert done.revision == writer.revision
        for changes in (mine, theirs):
            (change,) = await take(changes, 1)
            assert change.revision == done.revision
            assert sorted(e.object.id for e in change.events) == sorted(f"m{i}" for i in range(30))
    assert snapshot(reader)[1] == snapshot(writer)[1]
    # The chunks were written at several revisions: each object's version is its own key's.
    assert len({obj.version for obj in done.objects}) > 1
    assert all(writer.view().get(Machine, o.id).version == o.version for o in done.objects)


async def test_an_object_larger_than_a_request_is_refused(url, stores):
    store = await stores(url + "&max-request-bytes=65536")
    before = snapshot(store)
    with pytest.raises(Refused, match="does not fit"):
        await commit(store, Create(machine("m1", labels={"blob": "x" * 70_000})))
    assert snapshot(store) == before


# ---- several writers on one prefix ----------------------------------------------------------------


async def test_a_second_store_sees_the_first_ones_writes(url, stores):
    a, b = await stores(url), await stores(url)
    done = await commit(a, Create(machine("m1")))
    await eventually(lambda: b.revision >= done.revision, "the second store's feed", timeout_s=WAIT)
    assert b.view().get(Machine, "m1") == done.objects[0]
    updated = await commit(b, Update(replace(done.objects[0], cpus=2.0)))
    assert updated.objects[0].version == updated.revision


async def test_writers_racing_for_one_unique_key_get_one_winner(url, stores):
    a, b = await stores(url), await stores(url)
    for round in range(5):
        hostname = f"host{round}"
        results = await asyncio.gather(
            a.commit([Create(machine(f"a{round}", hostname))]),
            b.commit([Create(machine(f"b{round}", hostname))]),
            return_exceptions=True,
        )
        assert sorted(type(r).__name__ for r in results) == ["AlreadyExists", "Committed"]
        assert all(not isinstance(r, BaseException) or isinstance(r, AlreadyExists) for r in results)
    final = await stores(url)
    assert final.view().count(Machine) == 5


async def test_two_busy_writers_keep_every_hostname_unique(url, stores):
    a, b = await stores(url), await stores(url)
    # 80 commits from each store at once, over 60 hostnames: each hostname is taken exactly once.
    results = await asyncio.wait_for(
        asyncio.gather(
            *(a.commit([Create(machine(f"a{i}", f"h{i % 60}"))]) for i in range(80)),
            *(b.commit([Create(machine(f"b{i}", f"h{(i * 7) % 60}"))]) for i in range(80)),
            return_exceptions=True,
        ),
        WAIT * 10,
    )
    failures = [r for r in results if isinstance(r, BaseException)]
    assert all(isinstance(f, AlreadyExists) for f in failures), failures
    assert len(results) - len(failures) == 60
    await eventually(lambda: a.revision == b.revision, "both stores at the same revision", timeout_s=WAIT)
    assert snapshot(a)[1] == snapshot(b)[1]
    assert sorted(m.hostname for m in a.view().all(Machine)) == sorted(f"h{i}" for i in range(60))


# ---- history across restarts and etcd's compaction -------------------------------------------------


async def test_a_restarted_store_resumes_watches_from_etcds_history(url, stores):
    first = await stores(url)
    revisions = [(await commit(first, Create(machine(f"m{i}")))).revision for i in range(4)]
    await first.close()
    again = await stores(url)
    async with watching(again, since=revisions[1]) as changes:
        replay = await take(changes, 2)
    assert [c.revision for c in replay] == revisions[2:]
    assert [c.events[0].type for c in replay] == ["created", "created"]
    async with watching(again, since=0) as changes:
        assert [c.revision for c in await take(changes, 4)] == revisions


async def test_history_etcd_compacted_answers_compacted(etcd_server, url, stores):
    first = await stores(url)
    revisions = [(await commit(first, Create(machine(f"m{i}")))).revision for i in range(4)]
    await first.close()
    client = EtcdClient(parse_etcd_url(url).endpoints)
    await client.connect()
    try:
        await client.compact(revisions[2])
    finally:
        await client.close()
    again = await stores(url)
    with pytest.raises(Compacted) as caught:
        again.watch(since=revisions[0])
    assert caught.value.oldest == revisions[2] - 1
    async with watching(again, since=caught.value.oldest) as changes:
        assert [c.revision for c in await take(changes, 2)] == revisions[2:]


# ---- etcd lost and back ----------------------------------------------------------------------------


async def test_etcd_lost_then_back(tmp_path, stores):
    with EtcdProcess(tmp_path / "etcd") as server:
        store = await stores(server.url())
        before = await commit(store, Create(machine("m1")))
        await asyncio.to_thread(server.stop)
        with pytest.raises(Unavailable):
            await asyncio.wait_for(store.commit([Create(machine("m2"))]), etcd_client.CALL_TIMEOUT + WAIT)
        assert snapshot(store)[1] == {("machine", "m1"): before.objects[0]}
        await asyncio.to_thread(server.start)
        # The store reconnects by itself; a write goes through once etcd answers again.
        async with asyncio.timeout(20):
            while True:
                try:
                    done = await store.commit([Create(machine("m2"))])
                    break
                except Unavailable:
                    await asyncio.sleep(0.2)
        assert store.view().get(Machine, "m2") == done.objects[0]
        # ...and its feed follows writes of another store again.
        other = await stores(server.url())
        third = await commit(other, Create(machine("m3")))
        await eventually(
            lambda: store.revision >= third.revision, "the feed after etcd came back", timeout_s=WAIT
        )


# ---- the fence (a leader's key) --------------------------------------------------------------------


async def test_a_fenced_store_cannot_write_once_its_key_is_made_again(etcd_server, url, stores):
    store = await stores(url)
    key = f"{parse_etcd_url(url).prefix}-leader".encode()
    client = EtcdClient(parse_etcd_url(url).endpoints)
    await client.connect()
    try:
        made = await client.txn([], [etcd_client.put(key, b"me")])
        store.fence(key, made.header.revision)
        await commit(store, Create(machine("m1")))
        # Another manager takes over: the key is deleted and created again.
        await client.txn([], [etcd_client.delete(key)])
        await client.txn([], [etcd_client.put(key, b"someone else")])
        before = snapshot(store)
        with pytest.raises(Fenced, match="no longer the leader"):
            await commit(store, Create(machine("m2")))
        with pytest.raises(Fenced):  # a split commit is refused before any chunk is written
            await commit(store, *(Create(machine(f"x{i}")) for i in range(300)))
        assert snapshot(store) == before
        store.fence(None)
        await commit(store, Create(machine("m2")))
    finally:
        await client.close()
