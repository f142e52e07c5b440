"""Rendered configurations on disk: a staging directory per render, an atomic swap of the live one,
and the previous one kept for rollback.

Layout under `root`:
    releases/<digest>/treeherd.conf   one directory per rendered configuration (written, then renamed)
    current -> releases/<digest>      what nginx's main configuration includes (`current/*.conf`)
    previous -> releases/<digest>     what `current` pointed at before the last swap
A swap replaces the `current` symlink with `rename(2)`, so nginx reads either the old or the new files,
never a mix. Releases other than current and previous are pruned.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

DIGEST_CHARS = 16


class Releases:
    """The configuration releases under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.releases = root / "releases"
        self.current = root / "current"
        self.previous = root / "previous"

    def prepare(self) -> None:
        self.releases.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.releases / digest[:DIGEST_CHARS]

    def _target(self, link: Path) -> str | None:
        try:
            return os.path.basename(os.readlink(link))
        except OSError:
            return None

    def current_digest(self) -> str | None:
        """The (shortened) digest of the live release, or None before the first swap."""
        return self._target(self.current)

    def stage(self, digest: str, files: Mapping[str, str]) -> Path:
        """Write a release (idempotent: an existing release with this digest is reused)."""
        final = self.path(digest)
        if final.is_dir():
            return final
        staging = self.releases / f".staging-{digest[:DIGEST_CHARS]}-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for name, text in files.items():
            with open(staging / name, "w") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
        os.rename(staging, final)
        return final

    def _point(self, link: Path, target: Path) -> None:
        temporary = link.with_name(f".{link.name}.tmp")
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        os.symlink(os.path.relpath(target, link.parent), temporary)
        os.replace(temporary, link)

    def activate(self, digest: str) -> None:
        """Make the release `digest` current; the one it replaces becomes previous."""
        old = self._target(self.current)
        if old == digest[:DIGEST_CHARS]:
            return
        if old is not None:
            self._point(self.previous, self.releases / old)
        self._point(self.current, self.path(digest))

    def rollback(self) -> str | None:
        """Point current back at previous; returns the digest now current (None: there was no previous,
        and no release is current any more)."""
        old = self._target(self.previous)
        if old is None:
            with contextlib.suppress(FileNotFoundError):
                self.current.unlink()
            return None
        self._point(self.current, self.releases / old)
        return old

    def prune(self) -> None:
        keep = {self._target(self.current), self._target(self.previous)}
        for entry in self.releases.iterdir():
            if entry.name not in keep:
                shutil.rmtree(entry, ignore_errors=True)
