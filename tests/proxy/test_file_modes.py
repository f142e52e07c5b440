"""A local haproxy's files are its user's only: the working directory (configuration, pid file, log)
0700 and its admin and master sockets 0600, even where the directory existed open to all."""

from __future__ import annotations

import stat
from pathlib import Path

from tests.proxy.conftest import one_frontend
from treeherd.proxy import LocalHaproxy
from treeherd.testing.backends import backends
from treeherd.testing.ports import free_port


def mode(path: Path | str) -> int:
    return stat.S_IMODE(Path(path).stat().st_mode)


async def test_the_workdir_and_sockets_are_private(tmp_path: Path) -> None:
    workdir = tmp_path / "haproxy"
    workdir.mkdir(mode=0o755)
    workdir.chmod(0o755)
    proxy = LocalHaproxy(workdir)
    try:
        async with backends("b1") as servers:
            await proxy.start(one_frontend(free_port(), servers))
            assert mode(workdir) == 0o700
            assert mode(proxy.admin_socket) == 0o600
            assert mode(proxy.master_socket) == 0o600
    finally:
        await proxy.stop()
