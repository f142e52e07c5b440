"""treeherd.testing's bounded waits and loopback ports: what they return, and how they fail."""

from __future__ import annotations

import asyncio
import socket

import pytest

from treeherd.testing.ports import free_port, listening_socket
from treeherd.testing.waiting import eventually, wait_for


async def test_eventually_polls_a_plain_check_until_it_holds() -> None:
    calls = []

    def check() -> bool:
        calls.append(1)
        return len(calls) >= 3

    seconds = await eventually(check, "three calls", poll_s=0.001)
    assert len(calls) == 3
    assert seconds >= 0.0


async def test_eventually_awaits_an_async_check() -> None:
    flag = asyncio.Event()
    asyncio.get_running_loop().call_soon(flag.set)

    async def check() -> bool:
        return flag.is_set()

    await eventually(check, "the flag", poll_s=0.001)


async def test_eventually_fails_naming_what_it_waited_for() -> None:
    with pytest.raises(AssertionError, match=r"timed out after 0.05 s waiting for the impossible"):
        await eventually(lambda: False, "the impossible", timeout_s=0.05, poll_s=0.01)


def test_wait_for_returns_the_first_truthy_value() -> None:
    values = iter([None, [], ["a"]])
    assert wait_for(lambda: next(values), "a list", poll_s=0.001) == ["a"]


def test_wait_for_fails_with_the_last_value() -> None:
    with pytest.raises(AssertionError, match=r"waiting for something; last: 0"):
        wait_for(lambda: 0, "something", timeout_s=0.05, poll_s=0.01)


def test_free_port_never_hands_out_a_port_twice_and_it_can_be_bound() -> None:
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports[-1]))


def test_listening_socket_accepts_on_the_port_it_reports() -> None:
    with listening_socket() as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            connection, _ = server.accept()
            connection.close()
