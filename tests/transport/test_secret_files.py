"""Secrets on disk: 0600 files in 0700 directories, refused when others could read them."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from treeherd.transport.secret_files import InsecureSecret, read_secret, write_secret


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_secret_is_written_0600_in_a_new_0700_directory(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "ca.key"
    write_secret(path, b"key")
    assert (mode(path.parent), mode(path)) == (0o700, 0o600)
    assert read_secret(path) == b"key"
    write_secret(path, b"new key")
    assert read_secret(path) == b"new key"
    assert [p.name for p in path.parent.iterdir()] == ["ca.key"]


def test_a_readable_secret_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "token"
    write_secret(path, b"t")
    path.chmod(0o644)
    with pytest.raises(InsecureSecret, match=r"mode 0644.*chmod 600"):
        read_secret(path)


def test_an_open_directory_is_refused_before_writing(tmp_path: Path) -> None:
    directory = tmp_path / "open"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    with pytest.raises(InsecureSecret, match="chmod 700"):
        write_secret(directory / "token", b"t")
    assert list(directory.iterdir()) == []
