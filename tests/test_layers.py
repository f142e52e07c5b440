"""The architecture's layering, enforced: imports only go downward, and model/core stay pure."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "treeherd"

# Each package and the treeherd packages it may import (besides itself).
LAYERS = {
    "model": set(),
    "core": {"model"},
    "runtime": {"model"},
    "store": {"runtime", "core", "model"},
    "executors": {"runtime", "core", "model"},
    "transport": {"runtime", "core", "model"},
    "render": {"runtime", "core", "model"},
    "proxy": {"runtime", "core", "model", "render"},
    "manager": {"store", "executors", "transport", "render", "proxy", "runtime", "core", "model"},
    "agent": {"store", "executors", "transport", "render", "proxy", "runtime", "core", "model"},
    "gateway": {"store", "executors", "transport", "render", "proxy", "runtime", "core", "model"},
    "api": {"manager", "store", "transport", "runtime", "core", "model"},
    "cli": {
        "api",
        "web",
        "manager",
        "agent",
        "gateway",
        "store",
        "executors",
        "transport",
        "render",
        "proxy",
        "runtime",
        "core",
        "model",
    },
    "web": {"api", "manager", "runtime", "core", "model"},
    "testing": {"manager", "store", "transport", "runtime", "core", "model"},
}
TOP_LEVEL_OK = {"__init__", "__main__"}
# model/ and core/ are pure: no event loop, no I/O, no clock.
IMPURE = {
    "asyncio",
    "socket",
    "subprocess",
    "sqlite3",
    "os",
    "time",
    "threading",
    "http",
    "urllib",
    "litestar",
    "uvicorn",
    "shutil",
    "pathlib",
    "random",
    "secrets",
    "uuid",
}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py"))


def test_every_package_has_a_layer() -> None:
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and not p.name.startswith("__")}
    assert packages <= LAYERS.keys(), f"packages without a layer: {packages - LAYERS.keys()}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_go_downward(path: Path) -> None:
    relative = path.relative_to(SRC)
    layer = relative.parts[0] if len(relative.parts) > 1 else relative.stem
    if layer in TOP_LEVEL_OK:
        return
    allowed = LAYERS[layer] | {layer}
    for line, module in _imports(path):
        parts = module.split(".")
        if parts[0] != "treeherd" or len(parts) < 2:
            continue
        assert parts[1] in allowed, (
            f"{relative}:{line} imports {module}: {layer} may import only {sorted(allowed)}"
        )


@pytest.mark.parametrize(
    "path",
    [p for p in _modules() if p.relative_to(SRC).parts[0] in ("model", "core")],
    ids=lambda p: str(p.relative_to(SRC)),
)
def test_model_and_core_are_pure(path: Path) -> None:
    for line, module in _imports(path):
        root = module.split(".")[0]
        assert root not in IMPURE, (
            f"{path.relative_to(SRC)}:{line} imports {module}: model/ and core/ stay pure"
        )


def test_every_module_opens_with_a_docstring() -> None:
    missing = [str(p.relative_to(SRC)) for p in _modules() if not ast.get_docstring(ast.parse(p.read_text()))]
    assert not missing, f"modules without a docstring: {missing}"
