"""`treeherd agent` on a local DB it cannot use: it refuses to start, says why and what to do, and
leaves the DB as it was."""

from __future__ import annotations

import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path

from treeherd.agent.agent import DB_FILE
from treeherd.agent.db import LAYOUT
from treeherd.testing.processes import treeherd_command


def test_an_agent_db_of_a_newer_layout_is_a_clear_error(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = data / DB_FILE
    with closing(sqlite3.connect(db)) as raw:
        raw.execute(f"PRAGMA user_version={LAYOUT + 1}")
    before = db.read_bytes()
    result = subprocess.run(
        [*treeherd_command(), "agent", "--manager", "http://127.0.0.1:9", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert error == [
        f"error: the agent DB {db} has layout {LAYOUT + 1}, written by a newer treeherd agent; this one"
        f" reads layouts up to {LAYOUT}: run the newer agent, or move the file away (this agent then"
        " stops the tasks it finds running and starts those the manager assigns)"
    ]
    assert "Traceback" not in result.stderr
    assert db.read_bytes() == before
