"""Secrets on disk: keys and tokens in 0600 files under a 0700 directory, refused when others can read.

Writes are atomic (a temporary file in the same directory, fsynced, then renamed), so a crash leaves
the old secret or the new one, never half of one. Reads check the file's and the directory's modes
first: a key that group or others could read may already be known to them, and using it would hide
that; the error says which `chmod` fixes it.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path


class InsecureSecret(Exception):
    """A secret file or its directory is readable or writable by group or others, or not ours."""


def ensure_private_dir(directory: Path) -> None:
    """Create `directory` as 0700, or check that an existing one is not open to group or others."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(directory.stat().st_mode)
    if mode & 0o077:
        raise InsecureSecret(
            f"the directory {directory} holds secrets but has mode {mode:04o}: run `chmod 700 {directory}`"
        )


def write_secret(path: Path, data: bytes) -> None:
    """Write `data` to `path` (mode 0600) atomically, its directory made private if new."""
    ensure_private_dir(path.parent)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(handle, 0o600)
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_secret(path: Path) -> bytes:
    """The bytes of a secret file, after checking that only its owner can read it."""
    info = path.stat()
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise InsecureSecret(
            f"the secret file {path} has mode {mode:04o}, so others may have read it:"
            f" run `chmod 600 {path}` (and replace the secret if others could read it)"
        )
    if info.st_uid != os.geteuid():
        raise InsecureSecret(f"the secret file {path} belongs to uid {info.st_uid}, not to this user")
    return path.read_bytes()
