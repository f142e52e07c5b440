"""`treeherd agent`, and the agent of `treeherd up`, on a local DB they cannot use: they refuse to
start, say why and what to do, and leave the DB as it was."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path

import pytest

from treeherd.agent.agent import DB_FILE
from treeherd.agent.db import LAYOUT
from treeherd.testing.processes import treeherd_command


@pytest.mark.parametrize(
    ("args", "agent_dir"),
    [
        (("agent", "--manager", "http://127.0.0.1:9"), "."),
        (("up", "--listen", "127.0.0.1:0", "--no-gateway"), "agent"),
    ],
    ids=["agent", "up"],
)
def test_an_agent_db_of_a_newer_layout_is_a_clear_error(
    tmp_path: Path, args: tuple[str, ...], agent_dir: str
) -> None:
    data = tmp_path / "data"
    db = (data / agent_dir / DB_FILE).resolve()
    db.parent.mkdir(parents=True)
    with closing(sqlite3.connect(db)) as raw:
        raw.execute(f"PRAGMA user_version={LAYOUT + 1}")
    before = db.read_bytes()
    result = subprocess.run(
        [*treeherd_command(), *args, "--data-dir", str(data)],
        env={**os.environ, "HOME": str(tmp_path / "home")},  # `up` writes a client context there
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"error: the agent DB {db} has layout {LAYOUT + 1}, written by a newer treeherd agent; this one"
        f" reads layouts up to {LAYOUT}: run the newer agent, or move the file away (this agent then"
        " stops the tasks it finds running and starts those the manager assigns)"
    )
    assert db.read_bytes() == before
