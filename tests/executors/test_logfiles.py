"""Task output files without processes: rotation, tail across backups, readers across rotations."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from treeherd.executors.logfiles import LogReader, backup_path, follow_logs, open_for_child, rotate

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[int]:
    """The descriptor a child would write its output to (O_APPEND)."""
    descriptor = open_for_child(tmp_path)
    yield descriptor
    os.close(descriptor)


def write(descriptor: int, *lines: str) -> None:
    for line in lines:
        os.write(descriptor, f"{line}\n".encode())


def rotate_now(directory: Path) -> bool:
    """Rotate whatever there is into `.1` (a limit just under the size: one piece)."""
    return rotate(directory, (directory / "output.log").stat().st_size - 1, 3)


def read_all(reader: LogReader) -> bytes:
    out = b""
    while chunk := reader.read():
        out += chunk
    return out


def test_rotation_keeps_a_bounded_number_of_backups(tmp_path: Path, writer: int) -> None:
    write(writer, "a" * 20)
    assert not rotate(tmp_path, 100, 2)  # small enough
    write(writer, "b" * 90)
    assert rotate(tmp_path, 100, 2)
    assert (tmp_path / "output.log").read_bytes() == b""
    assert backup_path(tmp_path, 1).read_bytes() == b"a" * 20 + b"\n" + b"b" * 90 + b"\n"
    write(writer, "c" * 120)  # O_APPEND: written at the start of the truncated file, no hole
    assert (tmp_path / "output.log").read_bytes() == b"c" * 120 + b"\n"
    assert rotate(tmp_path, 100, 2)
    write(writer, "d" * 120)
    assert rotate(tmp_path, 100, 2)
    assert backup_path(tmp_path, 1).read_bytes() == b"d" * 120 + b"\n"
    assert backup_path(tmp_path, 2).read_bytes() == b"c" * 120 + b"\n"
    assert not backup_path(tmp_path, 3).exists()
    assert not rotate(tmp_path, 0, 2)  # 0: never rotate


def test_no_backups_means_truncating(tmp_path: Path, writer: int) -> None:
    write(writer, "x" * 200)
    assert rotate(tmp_path, 100, 0)
    assert (tmp_path / "output.log").read_bytes() == b""
    assert not backup_path(tmp_path, 1).exists()


def test_tail_counts_lines_across_backups(tmp_path: Path, writer: int) -> None:
    write(writer, "1", "2", "3")
    rotate_now(tmp_path)
    write(writer, "4", "5")
    rotate_now(tmp_path)
    write(writer, "6")
    os.write(writer, b"partial")  # a last line without a newline counts as a line
    cases = {
        None: b"1\n2\n3\n4\n5\n6\npartial",
        0: b"",
        1: b"partial",
        2: b"6\npartial",
        4: b"4\n5\n6\npartial",
        5: b"3\n4\n5\n6\npartial",
        100: b"1\n2\n3\n4\n5\n6\npartial",
    }
    for tail, expected in cases.items():
        reader = LogReader(tmp_path, tail=tail, backups=3)
        assert read_all(reader) == expected, tail
        reader.close()


def test_tail_ignores_a_final_newline(tmp_path: Path, writer: int) -> None:
    write(writer, "a", "b", "c")
    reader = LogReader(tmp_path, tail=2, backups=3)
    assert read_all(reader) == b"b\nc\n"
    reader.close()


def test_tail_reads_long_files_backwards_in_blocks(tmp_path: Path, writer: int) -> None:
    lines = [f"line {i:06}" for i in range(20_000)]  # 240 kB: several blocks
    write(writer, *lines)
    reader = LogReader(tmp_path, tail=15_000, backups=3)
    assert read_all(reader).decode() == "".join(f"{line}\n" for line in lines[-15_000:])
    reader.close()


@pytest.mark.parametrize("backups_before", [False, True])
@pytest.mark.parametrize("rotations", [1, 2, 3, 5])
def test_a_reader_follows_across_rotations(
    tmp_path: Path, writer: int, rotations: int, backups_before: bool
) -> None:
    if backups_before:  # the reader then finds where the `.1` it knew has moved to
        write(writer, "older")
        rotate_now(tmp_path)
    write(writer, "old")
    reader = LogReader(tmp_path, tail=0, backups=3)
    assert read_all(reader) == b""
    write(writer, "first")
    assert reader.read() == b"first\n"
    expected = b""
    for round_ in range(rotations):  # several rotations before the reader looks again
        write(writer, f"r{round_}")
        expected += f"r{round_}\n".encode()
        assert rotate_now(tmp_path)
    write(writer, "after")
    expected += b"after\n"
    got = read_all(reader)
    if rotations <= 3:
        assert got == expected
    else:  # more rotations than backups: what was dropped is lost, the rest comes in order
        assert expected.endswith(got)
        assert got.endswith(b"after\n")
    reader.close()


def test_a_reader_started_before_any_output(tmp_path: Path) -> None:
    reader = LogReader(tmp_path, tail=None, backups=3)
    assert reader.read() == b""
    descriptor = open_for_child(tmp_path)
    try:
        write(descriptor, "late")
        assert read_all(reader) == b"late\n"
        rotate_now(tmp_path)
        write(descriptor, "later")
        assert read_all(reader) == b"later\n"
    finally:
        os.close(descriptor)
        reader.close()


async def test_following_ends_when_the_writer_stops_running(tmp_path: Path, writer: int) -> None:
    running = True
    write(writer, "one")

    async def produce() -> None:
        nonlocal running
        for i in range(5):
            await asyncio.sleep(0.03)
            write(writer, f"more {i}")
            rotate(tmp_path, 10, 2)
        running = False

    producer = asyncio.create_task(produce())
    out = b""
    async with asyncio.timeout(10):
        async for chunk in follow_logs(
            tmp_path, follow=True, tail=None, backups=2, running=lambda: running, poll_s=0.01
        ):
            out += chunk
    await producer
    assert out == b"one\n" + b"".join(f"more {i}\n".encode() for i in range(5))


def test_a_file_far_over_its_limit_is_cut_into_backups(tmp_path: Path, writer: int) -> None:
    # No agent rotated it for a while: the newest output fills the backups, the rest is dropped.
    write(writer, "older")
    rotate_now(tmp_path)
    data = b"".join(f"{i:09}\n".encode() for i in range(100))  # 1000 bytes
    os.write(writer, data)
    assert rotate(tmp_path, 100, 3)
    assert (tmp_path / "output.log").read_bytes() == b""
    assert [backup_path(tmp_path, i).read_bytes() for i in (3, 2, 1)] == [
        data[-300:-200],
        data[-200:-100],
        data[-100:],
    ]
    assert not backup_path(tmp_path, 4).exists()
    reader = LogReader(tmp_path, tail=None, backups=3)
    assert read_all(reader) == data[-300:]
    reader.close()


def test_a_file_a_little_over_its_limit_becomes_one_backup(tmp_path: Path, writer: int) -> None:
    data = b"x" * 150
    os.write(writer, data)
    assert rotate(tmp_path, 100, 3)
    assert backup_path(tmp_path, 1).read_bytes() == data
    assert not backup_path(tmp_path, 2).exists()
