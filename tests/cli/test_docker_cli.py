"""`--executor docker` without a dockerd to talk to: the agent and `up` refuse to start, say why and
what to do, and leave nothing behind."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from treeherd.testing.processes import treeherd_command


@pytest.mark.parametrize(
    "args",
    [
        ("agent", "--manager", "http://127.0.0.1:9", "--executor", "docker"),
        ("up", "--executor", "docker", "--listen", "127.0.0.1:0", "--no-gateway"),
    ],
    ids=["agent", "up"],
)
def test_no_dockerd_is_a_clear_error(tmp_path: Path, args: tuple[str, ...]) -> None:
    socket = tmp_path / "no-dockerd.sock"
    data = tmp_path / "data"
    result = subprocess.run(
        [*treeherd_command(), *args, "--data-dir", str(data)],
        env={**os.environ, "DOCKER_HOST": f"unix://{socket}"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: the docker executor cannot work: cannot reach dockerd at unix://{socket}:"
        " is it running? (start it, or set DOCKER_HOST)"
    )
    assert not data.exists()
