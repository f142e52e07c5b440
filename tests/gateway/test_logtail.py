"""The access-log tailer across rotations and restarts: no line lost, none read twice."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from treeherd.gateway.logtail import LogTailer, PathPosition


def write(path: Path, *lines: str, end: str = "\n") -> None:
    with open(path, "a") as handle:
        handle.write("".join(line + "\n" for line in lines[:-1]) + (lines[-1] + end if lines else ""))


def test_reads_whole_lines_only(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    tailer = LogTailer()
    tailer.follow([str(log)])
    assert tailer.poll() == []  # not there yet
    write(log, "one", "tw", end="")
    assert tailer.poll() == [b"one"]
    write(log, "o")
    assert tailer.poll() == [b"two"]
    tailer.close()


def test_rename_rotation_drains_the_old_file_until_nginx_reopens(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    write(log, "1", "2")
    tailer = LogTailer()
    tailer.follow([str(log)])
    assert tailer.poll() == [b"1", b"2"]
    os.rename(log, tmp_path / "a.log.1")
    write(tmp_path / "a.log.1", "3")  # nginx still writes to the renamed file
    log.touch()  # logrotate creates the new one
    assert tailer.poll() == [b"3"]
    write(tmp_path / "a.log.1", "4")  # before `nginx -s reopen`
    write(log, "5")  # after it
    assert tailer.poll() == [b"4", b"5"]
    write(log, "6")
    assert tailer.poll() == [b"6"]
    tailer.close()


def test_copytruncate_starts_over(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    write(log, "1", "2")
    tailer = LogTailer()
    tailer.follow([str(log)])
    assert tailer.poll() == [b"1", b"2"]
    os.truncate(log, 0)
    write(log, "3")
    assert tailer.poll() == [b"3"]
    tailer.close()


def _restart(tailer: LogTailer) -> LogTailer:
    saved = msgspec.json.decode(msgspec.json.encode(tailer.positions()), type=dict[str, PathPosition])
    paths = list(saved)
    tailer.close()
    restarted = LogTailer(saved)
    restarted.follow(paths)
    return restarted


def test_a_restart_resumes_where_it_stopped(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    write(log, "1")
    tailer = LogTailer()
    tailer.follow([str(log)])
    assert tailer.poll() == [b"1"]
    write(log, "2")
    tailer = _restart(tailer)
    assert tailer.poll() == [b"2"]
    tailer.close()


def test_a_rotation_while_stopped_loses_nothing(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    write(log, "1")
    tailer = LogTailer()
    tailer.follow([str(log)])
    assert tailer.poll() == [b"1"]
    saved = tailer.positions()
    tailer.close()
    write(log, "2")  # written while the gateway is away ...
    os.rename(log, tmp_path / "a.log.1")  # ... then rotated
    write(log, "3")
    restarted = LogTailer(saved)
    restarted.follow([str(log)])
    assert restarted.poll() == [b"2", b"3"]
    assert restarted.poll() == []
    restarted.close()
