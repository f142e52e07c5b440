"""Client contexts: `treeherd context add|use|ls|rm` on a real config file, and the real CLI and ENC
finding a TLS manager's URL, CA and token through the current context, with the environment first."""

from __future__ import annotations

import os
import stat
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from treeherd.testing.processes import ManagerProcess, treeherd_command

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def config_home(tmp_path: Path) -> Path:
    return tmp_path / "config-home"


@pytest.fixture
def run(config_home: Path) -> Run:
    """The real CLI with only this test's config home and no client settings in the environment."""

    def call(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("TREEHERD_")}
        clean["XDG_CONFIG_HOME"] = str(config_home)
        return subprocess.run(
            [*treeherd_command(), *args],
            capture_output=True,
            text=True,
            timeout=30,
            env={**clean, **(env or {})},
            check=False,
        )

    return call


def config_file(config_home: Path) -> Path:
    return config_home / "treeherd" / "config.toml"


def test_contexts_are_added_listed_used_and_removed(tmp_path: Path, config_home: Path, run: Run) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("not used here\n")
    token = tmp_path / "t.token"
    token.write_text("secret\n")
    token.chmod(0o600)
    added = run("context", "add", "prod", "--manager", "https://a:7400,https://b:7400", "--ca-file", str(ca))
    assert added.returncode == 0, added.stderr
    assert "added (current)" in added.stderr
    made = run("context", "add", "lab", "--manager", "http://lab:7400", "--token-file", str(token))
    assert made.returncode == 0 and "(current)" not in made.stderr
    path = config_file(config_home)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = tomllib.loads(path.read_text())
    assert data["current"] == "prod"
    assert data["contexts"]["prod"]["manager"] == ["https://a:7400", "https://b:7400"]
    assert data["contexts"]["lab"]["token_file"] == str(token)
    assert "secret" not in path.read_text()

    listed = run("context", "ls").stdout.splitlines()
    assert [line.split()[:2] for line in listed[1:]] == [["lab", "http://lab:7400"], ["*", "prod"]]
    assert run("context", "use", "lab").returncode == 0
    assert tomllib.loads(path.read_text())["current"] == "lab"
    assert run("context", "rm", "lab").returncode == 0
    data = tomllib.loads(path.read_text())
    assert "current" not in data and list(data["contexts"]) == ["prod"]


def test_bad_configurations_are_refused_in_one_line_and_nothing_changes(
    tmp_path: Path, config_home: Path, run: Run
) -> None:
    assert run("context", "add", "a", "--manager", "http://a:7400").returncode == 0
    path = config_file(config_home)
    before = path.read_text()
    for args, words in [
        (("context", "use", "nope"), "no context named 'nope' (known: a)"),
        (("context", "rm", "nope"), "no context named 'nope'"),
        (("context", "add", "b", "--manager", "ftp://x"), "invalid manager URL 'ftp://x'"),
        (("context", "add", "b c", "--manager", "http://x:1"), "invalid context name"),
        (("context", "add", "b", "--manager", "http://x:1", "--ca-file", str(tmp_path / "no")), "not a file"),
    ]:
        done = run(*args)
        assert done.returncode != 0, args
        assert words in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
        assert path.read_text() == before
    loose = tmp_path / "loose.token"
    loose.write_text("x\n")
    loose.chmod(0o644)
    refused = run("context", "add", "b", "--manager", "http://x:1", "--token-file", str(loose))
    assert refused.returncode != 0 and "chmod 600" in refused.stderr and path.read_text() == before

    path.write_text("current = [broken\n")
    for args in (("tree", "ls"), ("context", "ls"), ("context", "use", "a"), ("enc", "web-1")):
        done = run(*args)
        assert done.returncode != 0, args
        assert "is not valid TOML" in done.stderr and str(path) in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    assert path.read_text() == "current = [broken\n"
    path.write_text('current = "gone"\n[contexts.a]\nmanager = ["http://a:7400"]\n')
    unknown = run("tree", "ls")
    assert "the current context 'gone' is not defined" in unknown.stderr


def test_the_cli_and_the_enc_reach_a_tls_manager_through_the_current_context(
    tmp_path: Path, config_home: Path, run: Run
) -> None:
    data = tmp_path / "manager"
    with ManagerProcess(data, extra_args=("--tls", "--require-auth")) as manager:
        admin = data / "secrets" / "admin.token"
        ca = data / "ca.crt"
        assert run("tree", "ls").returncode != 0  # no context: the default http manager is not there
        added = run(
            "context",
            "add",
            "here",
            "--manager",
            manager.url,
            "--ca-file",
            str(ca),
            "--token-file",
            str(admin),
        )
        assert added.returncode == 0, added.stderr
        assert run("tree", "add", "corp").returncode == 0
        assert run("machine", "add", "web-1").returncode == 0
        assert run("machine", "bind", "web-1", "corp").returncode == 0
        assert "corp" in run("tree", "ls").stdout

        made = run("token", "create", "look", "--role", "viewer")
        viewer = tmp_path / "viewer.token"
        viewer.write_text(made.stdout)
        viewer.chmod(0o600)
        # The environment comes before the context: the viewer's token is used, and refused a write.
        as_viewer = run("tree", "add", "corp.web", env={"TREEHERD_TOKEN_FILE": str(viewer)})
        assert "the role viewer may not do this" in as_viewer.stderr

        # The context's token goes to its own managers only.
        elsewhere = run("--manager", manager.url.replace("127.0.0.1", "localhost"), "tree", "ls")
        assert elsewhere.returncode != 0
        assert "set TREEHERD_CA_FILE" in elsewhere.stderr or "authentication required" in elsewhere.stderr

        enc = run("enc", "web-1", "--cache-dir", str(tmp_path / "cache"))
        assert enc.returncode == 0, enc.stderr
        assert "classes" in enc.stdout

        # The ENC with its own configuration file, as puppet.conf's external_nodes line names it.
        puppet_conf = tmp_path / "puppet-enc.toml"
        config_file(config_home).rename(puppet_conf)
        enc = run("enc", "--config", str(puppet_conf), "web-1", "--cache-dir", str(tmp_path / "cache2"))
        assert enc.returncode == 0, enc.stderr
        missing = run("enc", "--config", str(tmp_path / "none.toml"), "web-1")
        assert missing.returncode == 2 and "which is not a file" in missing.stderr

        # A context whose token file went away: said so, in one line.
        admin_copy = tmp_path / "gone.token"
        admin_copy.write_bytes(admin.read_bytes())
        admin_copy.chmod(0o600)
        assert run("context", "add", "gone", "--manager", manager.url, "--ca-file", str(ca),
                   "--token-file", str(admin_copy), "--use").returncode == 0  # fmt: skip
        admin_copy.unlink()
        done = run("tree", "ls")
        assert done.returncode != 0
        assert f"the context 'gone' names the token file {admin_copy}, which does not exist" in done.stderr
