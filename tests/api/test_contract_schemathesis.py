"""The OpenAPI document tells the truth: schemathesis runs every operation of a real manager's
/openapi.json (examples, coverage, fuzzing and stateful phases, every check) with a fixed seed and a
bound of about a minute, and finds nothing: no server error, no undocumented status, no response
outside its schema, no valid request refused, no invalid one accepted, no 405 without `Allow`.

The streams (the event stream, and logs with `follow`) are left out: they answer with a response that
does not end, which a request/response check cannot judge; their own tests cover them."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from treeherd.testing.processes import ManagerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

SEED = 20261204
MAX_EXAMPLES = 50
RUN_LIMIT_S = 240
STREAMS = r"^/api/v1/events$|/logs$"
CONFIG = Path(__file__).with_name("schemathesis.toml")  # the operations with rules a schema cannot state


def _schemathesis() -> str:
    beside = Path(sys.executable).with_name("schemathesis")
    found = str(beside) if beside.exists() else shutil.which("schemathesis")
    if found is None:
        pytest.fail("schemathesis is not installed: pip install -e '.[test]'")
    return found


def test_the_api_does_what_its_openapi_document_says(tmp_path: Path) -> None:
    with ManagerProcess(tmp_path / "manager") as manager:
        command = [
            _schemathesis(), "--config-file", str(CONFIG), "run", f"{manager.url}/openapi.json",
            "--checks", "all",
            "--seed", str(SEED),
            "--max-examples", str(MAX_EXAMPLES),
            "--workers", "1",
            "--request-timeout", "10",
            "--exclude-path-regex", STREAMS,
            "--no-color",
            "--report", "junit", "--report-dir", str(tmp_path / "report"),
        ]  # fmt: skip
        run = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=RUN_LIMIT_S,
            cwd=tmp_path,
        )
        log = manager.log()
    output = run.stdout + run.stderr
    assert run.returncode == 0, f"schemathesis found contract failures:\n{output[-12000:]}"
    assert "Traceback" not in log, log[-4000:]
    # Every operation but the three streams was selected and exercised.
    selected = re.search(r"Selected: (\d+)/(\d+)", output)
    tested = re.search(r"Tested: (\d+)", output)
    assert selected and tested, output[-3000:]
    assert int(tested.group(1)) == int(selected.group(1)) == int(selected.group(2)) - 3, output[-3000:]
