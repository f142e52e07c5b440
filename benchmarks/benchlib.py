"""What every benchmark records about where it ran: the machine, the versions, and the code's commit."""

from __future__ import annotations

import contextlib
import os
import platform
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import psutil

import treeherd


def code_version() -> dict[str, Any]:
    """The commit this treeherd runs from, and whether src/ has changes on top of it (others may be
    editing the tree while a long run goes)."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": commit, "src_modified": bool(dirty)}


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu_count": os.cpu_count(),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "cpu_model": model,
        "memory_bytes": psutil.virtual_memory().total,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "sqlite": sqlite3.sqlite_version,
        "treeherd": treeherd.__version__,
        "msgspec": msgspec.__version__,
        "code": code_version(),
    }
