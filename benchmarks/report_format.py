"""How benchmarks/report.py writes figures and tables, and where it reads them from: number formats, a
Markdown table, a result file, and the line saying where a table's figures come from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def num(value: float, digits: int = 0) -> str:
    """1,234 or 1,234.5: thousands separated, `digits` decimals."""
    return f"{value:,.{digits}f}"


def sec(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f} s"


def ms(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f} ms"


def pct(fraction: float) -> str:
    return f"{fraction * 100:.0f} %"


def table(header: list[str], rows: list[list[str]], align: str = "") -> str:
    """A Markdown table; `align` has one letter per column (l or r), right-aligned by default."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---" if a == "l" else "---:" for a in align]
    return "\n".join("| " + " | ".join(row) + " |" for row in [header, rule, *rows])


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((RESULTS / f"{name}.json").read_text())
    return data


def result_names(pattern: str) -> list[str]:
    """The names of the result files matching `pattern` (without `.json`), in the order of their files' names."""
    return [path.stem for path in sorted(RESULTS.glob(f"{pattern}.json"))]


def provenance(name: str, data: dict[str, Any]) -> str:
    """Where the figures come from: the file, when, on which code, on how many CPUs."""
    date = str(data.get("date") or "")[:10] or "date not recorded"
    machine = data.get("machine") if isinstance(data.get("machine"), dict) else {}
    code = machine.get("code")
    if isinstance(code, dict) and code.get("commit"):
        parts = [f"code `{code['commit']}`"]
        if code.get("src_modified"):
            parts.append("with uncommitted changes in src/")
        if "tree_clean" in code:
            parts.append("clean tree" if code["tree_clean"] else "tree not clean")
        else:
            parts.append("tree cleanliness not recorded")
        where = ", ".join(parts)
    elif isinstance(code, str) and code:
        where = f"code `{code}` (whether the tree was clean is not recorded)"
    else:
        where = "commit not recorded (the run predates that record)"
    cpus = machine.get("cpu_count") or machine.get("cpus") or data.get("cpus")
    load_average = machine.get("load_average_at_start")
    extra = f", {cpus} CPUs" if cpus else ""
    if load_average:
        extra += f", load average {load_average[0]} at the start"
    return f"From `results/{name}.json`: {date}, {where}{extra}."
