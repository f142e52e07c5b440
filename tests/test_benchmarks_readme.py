"""benchmarks/README.md says only what the committed results say: its tables are the ones
benchmarks/report.py writes from benchmarks/results/*.json, every result file has a table, and the
prose of a Results section quotes no figure that its tables do not show, unless the paragraph says it
comes from a run that was not kept."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
README = BENCHMARKS / "README.md"
# A quoted figure: a number with a unit of time, size, rate or share.
FIGURE = re.compile(r"(?<![\w.`])\d[\d,]*(?:\.\d+)?\s?(?:ms|µs|s|MiB|KiB|MB|kB|%|cores?|/s|req/s)(?![\w`])")
NOT_KEPT = "not kept"


def _report() -> ModuleType:
    # report.py imports its sibling modules, as it does when run as a script (its directory on the path).
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("benchmarks_report", BENCHMARKS / "report.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report = _report()


def test_every_table_is_the_one_its_json_gives() -> None:
    text = README.read_text()
    fresh = report.rewrite(text)
    stale = [name for name, body in report.blocks(text).items() if report.blocks(fresh)[name] != body]
    assert not stale, f"tables differ from their JSON: {stale}; run .venv/bin/python benchmarks/report.py"


def test_every_generated_table_is_in_the_readme() -> None:
    assert set(report.blocks(README.read_text())) == set(report.SECTIONS)


def test_every_result_file_has_a_table() -> None:
    shown = "\n".join(report.blocks(README.read_text()).values())
    files = sorted(path.name for path in (BENCHMARKS / "results").glob("*.json"))
    missing = [name for name in files if f"`results/{name}`" not in shown]
    assert not missing, f"result files no table shows: {missing}"


def _results_sections(text: str) -> list[str]:
    """The text of every `### Results` section, up to the next heading."""
    return re.findall(r"^### Results\n(.*?)(?=^#{2,3} )", text + "\n## end\n", re.S | re.M)


def test_results_prose_quotes_only_figures_its_tables_show() -> None:
    text = README.read_text()
    sections = _results_sections(text)
    assert sections and len(sections) == text.count("\n### Results\n")  # the parse finds every one
    unbacked = []
    for section in sections:
        tables = "\n".join(report.blocks(section).values())
        shown = {f.replace(" ", "") for f in FIGURE.findall(tables)}
        prose = report.BLOCK.sub("", section)
        for paragraph in re.split(r"\n\n|\n(?=- )", prose):  # a list item counts as a paragraph
            if NOT_KEPT in " ".join(paragraph.lower().split()):
                continue
            for figure in FIGURE.findall(paragraph):
                if figure.replace(" ", "") not in shown:
                    unbacked.append((figure, paragraph.strip()[:80]))
    assert not unbacked, (
        f"figures in the prose that no table shows (say 'not kept' if from a run not kept): {unbacked}"
    )


def test_a_figure_changed_in_a_result_file_shows_as_a_stale_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = tmp_path / "results"
    shutil.copytree(BENCHMARKS / "results", results, ignore=shutil.ignore_patterns("*.png", "*.collapsed"))
    data = json.loads((results / "discovery.json").read_text())
    data["summary"]["register"]["p50_ms"] += 1.0
    (results / "discovery.json").write_text(json.dumps(data))
    monkeypatch.setattr(sys.modules["report_format"], "RESULTS", results)
    text = README.read_text()
    fresh = report.rewrite(text)
    changed = [name for name, body in report.blocks(text).items() if report.blocks(fresh)[name] != body]
    assert changed == ["discovery"]


def test_provenance_says_what_a_file_does_not_record() -> None:
    assert "commit not recorded" in report.provenance("old", {"date": "2026-11-23T10:00:00+00:00"})
    assert "date not recorded" in report.provenance("old", {})
    recorded = {"machine": {"code": {"commit": "abc1234", "src_modified": False, "tree_clean": False}}}
    assert "code `abc1234`, tree not clean" in report.provenance("new", recorded)
