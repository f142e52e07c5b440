"""Fixtures shared by the whole suite: an opened in-memory store and the inventory over it, real manager
processes on loopback in temp dirs, and a real dockerd with a locally built image for the docker
executor. A directory's conftest (or a module) that needs another kind of store overrides `store`."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from treeherd.manager.inventory import Inventory
from treeherd.store.memory import MemoryStore
from treeherd.testing.docker import Dockerd, DockerdUnavailable, busybox_image
from treeherd.testing.factories import FIXED_NOW, Ids
from treeherd.testing.processes import ManagerProcess, treeherd_command

CLI_TIMEOUT = 30


@pytest.fixture(scope="session", autouse=True)
def client_config_of_the_tests(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The client contexts the tests' commands read and `up` writes: a directory of the test session,
    never the user's own ~/.config/treeherd."""
    saved = {name: os.environ.get(name) for name in ("XDG_CONFIG_HOME", "TREEHERD_CONFIG")}
    os.environ["XDG_CONFIG_HOME"] = str(tmp_path_factory.mktemp("config-home"))
    os.environ.pop("TREEHERD_CONFIG", None)
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    """An opened in-memory store, closed after the test."""
    opened = MemoryStore()
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture
def inventory(store: MemoryStore) -> Inventory:
    """The inventory over `store`, on a fixed clock and predictable ids."""
    return Inventory(store, clock=lambda: FIXED_NOW, ids=Ids("id"))


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[ManagerProcess]:
    """A manager of this test alone, stopped by pid afterwards."""
    process = ManagerProcess(tmp_path / "data")
    with process:
        yield process


@pytest.fixture(scope="module")
def shared_manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagerProcess]:
    """One manager for a module whose tests each use their own names."""
    process = ManagerProcess(tmp_path_factory.mktemp("shared") / "data")
    with process:
        yield process


class Cli:
    """Runs the real `treeherd` command against one manager."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "TREEHERD_MANAGER": self.url}
        result = subprocess.run(
            [*treeherd_command(), *args], capture_output=True, text=True, env=env, timeout=CLI_TIMEOUT
        )
        if check and result.returncode != 0:
            raise AssertionError(f"treeherd {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
        return result


@pytest.fixture
def cli(shared_manager: ManagerProcess) -> Cli:
    return Cli(shared_manager.url)


# --- a real dockerd and a local image, for the docker executor's tests --------------------------------


@pytest.fixture(scope="session")
def dockerd() -> Iterator[Dockerd]:
    """The dockerd that runs here, or one started for the session (and stopped after it). Skipped
    only when none can start at all (not installed, not root)."""
    daemon = Dockerd()
    try:
        daemon.start()
    except DockerdUnavailable as error:
        pytest.skip(f"no dockerd can run here: {error}")
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="session")
def busybox(dockerd: Dockerd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The ID of an image of Debian's busybox-static, imported for the session and removed after it."""
    workdir = tmp_path_factory.mktemp("busybox-image")
    image = busybox_image(dockerd, workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    try:
        yield image
    finally:
        dockerd.docker("rmi", "-f", image, check=False)


@pytest.fixture
def docker_host(dockerd: Dockerd, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """DOCKER_HOST for this test and the agents it starts; the task containers made during the test are
    removed afterwards, whatever happened (an agent the test killed leaves its containers running, as
    live restore means it to)."""

    def task_containers() -> set[str]:
        return set(dockerd.docker("ps", "-aq", "--filter", "label=treeherd.task").split())

    before = task_containers()
    monkeypatch.setenv("DOCKER_HOST", dockerd.host)
    yield dockerd.host
    left = sorted(task_containers() - before)
    if left:
        dockerd.docker("rm", "-f", *left, check=False)
