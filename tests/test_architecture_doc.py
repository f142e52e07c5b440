"""docs/architecture.md names modules and folders: every one of them exists, so the map cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "treeherd"
DOC = ROOT / "docs" / "architecture.md"
PACKAGES = {p.name for p in SRC.iterdir() if p.is_dir() and not p.name.startswith("__")}
NAME = re.compile(r"`([a-z_/]+(?:\.py|/))`")


def _exists(relative: str) -> bool:
    return (SRC / relative).exists() or (ROOT / relative).exists()


def _named() -> list[tuple[str, str]]:
    """(path relative to the package, the line it was named on) for every module or folder the page names."""
    found = []
    for line in DOC.read_text().splitlines():
        names = NAME.findall(line)
        if not names:
            continue
        cells = line.split("|")
        # In a table row, a bare name (`services.py`) is relative to the folder in the row's first cell.
        folder = next(iter(NAME.findall(cells[1])), "") if line.startswith("|") and len(cells) > 2 else ""
        base = folder if folder.endswith("/") else ""
        for name in names:
            full = name if name.split("/")[0] in PACKAGES else base + name
            found.append((full, line.strip()))
    return found


def test_the_page_names_modules() -> None:
    assert len(_named()) > 50


def test_every_named_module_exists() -> None:
    missing = sorted({name for name, _ in _named() if not _exists(name)})
    assert not missing, f"docs/architecture.md names what src/treeherd does not have: {missing}"
