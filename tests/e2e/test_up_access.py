"""`treeherd up` is secure by default and as easy as before on its own machine: https with the cluster
CA and tokens required, the client context `local` pointing at its URL, CA and admin token, so the CLI
needs no settings; its own agent connects with its credentials. `--insecure-http` serves plain http."""

from __future__ import annotations

import os
import ssl
import subprocess
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from treeherd.testing.processes import ManagerProcess, treeherd_command
from treeherd.testing.waiting import wait_for

pytestmark = pytest.mark.e2e


def treeherd(config_home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TREEHERD_")}
    env["XDG_CONFIG_HOME"] = str(config_home)
    return subprocess.run(
        [*treeherd_command(), *args], capture_output=True, text=True, timeout=30, env=env, check=False
    )


def test_up_serves_https_with_tokens_and_the_cli_finds_it_through_the_local_context(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    data = tmp_path / "up"
    with ManagerProcess(data, command=("up",), extra_args=("--no-gateway", "--demo")) as up:
        assert up.url.startswith("https://127.0.0.1:")
        config = tomllib.loads((home / "treeherd" / "config.toml").read_text())
        assert config["current"] == "local"
        assert config["contexts"]["local"] == {
            "manager": [up.url],
            "ca_file": str((data / "ca.crt").resolve()),
            "token_file": str((data / "secrets" / "admin.token").resolve()),
        }
        # The tour's commands, with no settings at all.
        assert "corp.web" in treeherd(home, "tree", "ls").stdout
        wait_for(lambda: "ready" in treeherd(home, "node", "ls").stdout, "up's own agent to connect", 20)
        assert wait_for(
            lambda: treeherd(home, "service", "ps", "frontend").stdout.count("running") >= 4,
            "the demo's tasks to run",
            30,
        )
        # Anyone else is refused: no token, 401.
        anonymous = urllib.request.Request(up.url + "/api/v1/nodes")
        context = ssl.create_default_context(cafile=str(data / "ca.crt"))
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(anonymous, timeout=5, context=context)
        assert refused.value.code == 401
        assert b"thd1_" not in refused.value.read()
        refused.value.close()
        # No token (the admin's, or those of up's own agent and gateway) in the log, the event
        # stream, or any process's command line.
        assert "thd1_" not in up.log()
        events = treeherd(
            home, "events", "--since", "0", "--kind", "token", "--count", "3", "--format", "json"
        ).stdout
        assert '"kind":"token"' in events.replace(" ", "") and "thd1_" not in events
        for process in [psutil.Process(up.pid), *psutil.Process(up.pid).children(recursive=True)]:
            assert "thd1_" not in " ".join(process.cmdline())


def test_up_leaves_another_current_context_current(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    assert treeherd(home, "context", "add", "prod", "--manager", "https://prod:7400").returncode == 0
    with ManagerProcess(tmp_path / "up", command=("up",), extra_args=("--no-gateway",)) as up:
        config = tomllib.loads((home / "treeherd" / "config.toml").read_text())
        assert config["current"] == "prod" and config["contexts"]["local"]["manager"] == [up.url]
        listed = treeherd(home, "context", "ls").stdout
        assert "* " in listed.splitlines()[2] and "prod" in listed.splitlines()[2]


def test_a_broken_client_configuration_is_left_alone_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    (home / "treeherd").mkdir(parents=True)
    broken = home / "treeherd" / "config.toml"
    broken.write_text("contexts = [\n")
    with ManagerProcess(tmp_path / "up", command=("up",), extra_args=("--no-gateway",)) as up:
        assert broken.read_text() == "contexts = [\n"
        assert "is not valid TOML" in up.log() and "TREEHERD_TOKEN_FILE=" in up.log()


def test_up_insecure_http_is_plain_and_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    up = ManagerProcess(tmp_path / "up", command=("up",), extra_args=("--no-gateway", "--insecure-http"))
    with up:
        assert up.url.startswith("http://")
        with urllib.request.urlopen(up.url + "/api/v1/nodes", timeout=5) as answer:
            assert answer.status == 200
        assert not (home / "treeherd" / "config.toml").exists()
        assert not (tmp_path / "up" / "secrets" / "admin.token").exists()
    help_text = treeherd(home, "up", "--help").stdout
    assert "--insecure-http" in help_text and "plain http" in help_text
