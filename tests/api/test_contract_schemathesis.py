"""The OpenAPI document tells the truth: schemathesis runs every operation of a real manager's
/openapi.json (examples, coverage, fuzzing and stateful phases, every check) with a fixed seed and a
bound of about a minute, and finds nothing: no server error, no undocumented status, no response
outside its schema, no valid request refused, no invalid one accepted, no 405 without `Allow`.

The streams (the event stream, and logs with `follow`) are left out: they answer with a response that
does not end, which a request/response check cannot judge; their own tests cover them."""

from __future__ import annotations

import json
import os
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


VIEWER_HOOKS = Path(__file__).with_name("schemathesis_viewer_hooks.py")
# What the admin reads before and after the viewer's run: every listing of what a write could change.
LISTINGS = [
    "/api/v1/nodes", "/api/v1/machines", "/api/v1/bindings", "/api/v1/domains", "/api/v1/provisioning",
    "/api/v1/services", "/api/v1/cluster", "/api/v1/tokens", "/api/v1/cluster/join-tokens",
    "/api/v1/puppet/classes", "/api/v1/puppet/conflicts", "/api/v1/policies", "/api/v1/backends",
    "/api/v1/gateways", "/api/v1/proxies",
]  # fmt: skip


def _admin_state(url: str, data: Path) -> dict[str, object]:
    from treeherd.transport.client import Client, ClientError

    token = (data / "secrets" / "admin.token").read_text().strip()
    state: dict[str, object] = {}
    with Client(url, token=token, timeout=10) as client:
        for path in LISTINGS:
            try:
                state[path] = client.request("GET", path)
            except ClientError as error:
                state[path] = f"{error.status}"
    settings = state["/api/v1/cluster"]
    if isinstance(settings, dict) and settings.get("id") == "cluster-default":  # made afresh per read
        settings.pop("created_at")
        settings.pop("updated_at")
    return state


def test_a_viewer_token_writes_nothing(tmp_path: Path) -> None:
    """Every operation, called by schemathesis with a viewer's token on a manager that requires
    tokens: no write succeeds (a check of its own), nothing answers 5xx, and what the admin reads
    afterwards is what it read before."""
    data = tmp_path / "manager"
    with ManagerProcess(data, extra_args=("--require-auth",)) as manager:
        admin = {**os.environ, "TREEHERD_TOKEN_FILE": str(data / "secrets" / "admin.token")}

        def treeherd(*args: str) -> str:
            done = subprocess.run(
                [sys.executable, "-m", "treeherd", "--manager", manager.url, *args],
                capture_output=True, text=True, timeout=30, env=admin, check=False,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            return done.stdout

        treeherd("tree", "add", "corp", "--port", "8080")
        treeherd("machine", "add", "web-1")
        treeherd("machine", "bind", "web-1", "corp")
        treeherd("domain", "add", "shop.example.com", "--port", "80")
        treeherd("service", "create", "web", "--node", "corp", "--", "sleep", "100")
        viewer = treeherd("token", "create", "fuzz", "--role", "viewer").strip()
        before = _admin_state(manager.url, data)
        config = tmp_path / "viewer.toml"
        config.write_text('headers = { Authorization = "Bearer ${TREEHERD_FUZZ_TOKEN}" }\n')
        command = [
            _schemathesis(), "--config-file", str(config), "run", f"{manager.url}/openapi.json",
            "--checks", "not_a_server_error,no_write_succeeds",
            "--seed", str(SEED),
            "--max-examples", "20",
            "--workers", "1",
            "--request-timeout", "10",
            "--exclude-path-regex", STREAMS,
            "--no-color",
        ]  # fmt: skip
        env = {**os.environ, "TREEHERD_FUZZ_TOKEN": viewer, "SCHEMATHESIS_HOOKS": str(VIEWER_HOOKS)}
        run = subprocess.run(
            command, capture_output=True, text=True, timeout=RUN_LIMIT_S, cwd=tmp_path, env=env
        )
        after = _admin_state(manager.url, data)
        log = manager.log()
    # The check can fail: on a manager that requires no token, the same run finds writes that succeed.
    with ManagerProcess(tmp_path / "open") as open_manager:
        control = [
            _schemathesis(), "run", f"{open_manager.url}/openapi.json",
            "--checks", "no_write_succeeds", "--include-path", "/api/v1/nodes", "--include-method", "POST",
            "--phases", "fuzzing", "--max-examples", "20", "--seed", str(SEED), "--no-color",
        ]  # fmt: skip
        found = subprocess.run(
            control, capture_output=True, text=True, timeout=RUN_LIMIT_S, cwd=tmp_path, env=env
        )
    assert found.returncode != 0 and "answered 201 to a viewer token" in found.stdout + found.stderr, (
        found.stdout + found.stderr
    )[-3000:]
    output = run.stdout + run.stderr
    assert run.returncode == 0, f"schemathesis found a failure with a viewer token:\n{output[-12000:]}"
    tested = re.search(r"Tested: (\d+)", output)
    assert tested and int(tested.group(1)) >= 60, output[-3000:]
    assert re.search(r"Authentication failed: \d+ operations returned only 401/403", output), output[-3000:]
    assert json.dumps(after, sort_keys=True, default=str) == json.dumps(before, sort_keys=True, default=str)
    assert "Traceback" not in log, log[-4000:]
    assert viewer not in log
