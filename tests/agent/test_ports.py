"""The agent's check of a task's host ports, against a real listening socket."""

from __future__ import annotations

import os
import socket

from treeherd.agent.ports import busy_port, port_in_use


def test_a_listening_port_is_busy_and_its_holder_named() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert port_in_use(port)
        message = busy_port([port], "host-a")
        assert message is not None and message.startswith(
            f"port {port} is in use on host-a (pid {os.getpid()}, "
        )
    assert not port_in_use(port)
    assert busy_port([port], "host-a") is None
