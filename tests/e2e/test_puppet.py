"""The real Puppet consumes treeherd's ENC: `puppet node find` (exec node terminus) reports the classes,
parameters and environment the tree says for a bound host, a host inheriting from an ancestor, a host
being installed, a conflicting host, an unknown host and, with the manager down, a cached answer; and
`puppet apply` applies those classes with those parameters to a small module set, so a wrong class or
parameter name fails. Each Puppet command takes 1-3 s, so one manager and one tree serve the module.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Cli
from treeherd.testing.processes import ManagerProcess

pytestmark = pytest.mark.e2e

PUPPET_TIMEOUT = 120
MODULES = {
    "base/manifests/init.pp": """
        # The system's base environment: records which nodes and kind the ENC gave.
        class base {
          file { "${::treeherd_out}/base-${treeherd_hostname}":
            content => "kind=${treeherd_kind} nodes=${join($treeherd_nodes, ',')} env=${environment}\\n",
          }
        }
    """,
    "profile/manifests/init.pp": "class profile { }\n",
    "profile/manifests/web.pp": """
        class profile::web (
          Integer $workers,                      # no default: the tree must give it
          String  $greeting = 'hello { world }', # braces inside a default
        ) inherits profile {
          file { "${::treeherd_out}/web-${treeherd_hostname}": content => "workers=${workers} ${greeting}\\n" }
        }
    """,
    "profile/manifests/db/mysql.pp": """
        class profile::db::mysql (Hash[String, Integer] $tuning = { 'pool' => 1 }) {
          file { "${::treeherd_out}/db-${treeherd_hostname}": content => "pool=${tuning['pool']}\\n" }
        }
    """,
}


def _puppet() -> str:
    found = shutil.which("puppet")
    if found is None:
        pytest.fail("puppet is not installed: run scripts/system-deps.sh (Debian's puppet package)")
    return found


class Puppet:
    """A Puppet configuration in a temp dir whose ENC is `treeherd enc` against one manager."""

    def __init__(self, root: Path, manager_url: str) -> None:
        self.root = root
        self.out = root / "out"
        self.cache = root / "enc-cache"
        for directory in (self.out, root / "conf", root / "environments" / "production"):
            directory.mkdir(parents=True, exist_ok=True)
        for relative, text in MODULES.items():
            path = root / "modules" / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(_dedent(text).replace("${::treeherd_out}", str(self.out)))
        self.enc = root / "enc.sh"
        self.enc.write_text(
            "#!/bin/sh\n"
            f'exec {sys.executable} -m treeherd --manager {manager_url} enc --cache-dir {self.cache} "$@"\n'
        )
        self.enc.chmod(0o755)
        (root / "conf" / "puppet.conf").write_text(
            "[main]\n"
            f"vardir = {root / 'var'}\ncodedir = {root / 'code'}\nlogdir = {root / 'log'}\nrundir = {root / 'run'}\n"
            f"node_terminus = exec\nexternal_nodes = {self.enc}\n"
            f"basemodulepath = {root / 'modules'}\nenvironmentpath = {root / 'environments'}\n"
        )
        (root / "site.pp").write_text("# classes come from the ENC\n")

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [_puppet(), *args, "--confdir", str(self.root / "conf")],
            capture_output=True,
            text=True,
            timeout=PUPPET_TIMEOUT,
            cwd=self.root,
        )

    def node_find(self, host: str) -> dict[str, Any] | None:
        """What Puppet's node terminus made of the ENC's answer (None: Puppet found no node)."""
        result = self._run("node", "find", host, "--render-as", "yaml")
        if result.returncode != 0:
            assert f"Failed to find {host} via exec" in result.stderr, result.stderr
            return None
        node = yaml.safe_load(result.stdout.replace("!ruby/object:Puppet::Node", "", 1))
        assert isinstance(node, dict)
        return node

    def apply(self, host: str) -> subprocess.CompletedProcess[str]:
        return self._run("apply", "--certname", host, str(self.root / "site.pp"))


def _dedent(text: str) -> str:
    lines = text.strip("\n").splitlines()
    indent = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
    return "\n".join(line[indent:] for line in lines) + "\n"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cli, Puppet, ManagerProcess]]:
    """corp (base, env production) > corp.web (profile::web workers=4) > corp.web.api (inherits);
    corp.db (profile::db::mysql pool=7); web-1 on corp.web, api-1 on corp.web.api, both-1 on corp.web and
    corp.db, new-1 being installed for corp.db; default class base."""
    root = tmp_path_factory.mktemp("puppet")
    with ManagerProcess(root / "data") as manager:
        cli = Cli(manager.url)
        puppet = Puppet(root, manager.url)
        cli("puppet", "sync-classes", "--modules", str(root / "modules"))
        cli("cluster", "set", "--puppet-default-class", "base")
        cli("tree", "add", "corp", "--puppet-class", "base", "--puppet-environment", "production")
        cli("tree", "add", "corp.web", "--puppet-class", "profile::web:workers=4", "--label", "tier=web")
        cli("tree", "add", "corp.web.api")
        cli("tree", "add", "corp.db", "--puppet-class", 'profile::db::mysql:tuning={"pool":7}')
        for host, node in (("web-1", "corp.web"), ("api-1", "corp.web.api"), ("both-1", "corp.web")):
            cli("machine", "add", host, "--kind", "physical", "--label", "rack=r1")
            cli("machine", "bind", host, node)
        cli("machine", "bind", "both-1", "corp.db")
        cli("provision", "add", "new-1", "--node", "corp.db")
        yield cli, puppet, manager


def test_puppet_node_find_shows_what_the_tree_says(world: tuple[Cli, Puppet, ManagerProcess]) -> None:
    cli, puppet, _ = world
    web = puppet.node_find("web-1")
    assert web is not None
    assert web["classes"] == {"base": {}, "profile::web": {"workers": 4}}
    assert web["environment"] == "production"
    assert web["parameters"]["treeherd_nodes"] == ["corp.web"]
    assert web["parameters"]["treeherd_kind"] == "physical"
    assert web["parameters"]["treeherd_labels"] == {"rack": "r1"}

    api = puppet.node_find("api-1")  # inherits both classes from its ancestors
    assert api is not None
    assert api["classes"] == {"base": {}, "profile::web": {"workers": 4}}
    assert api["parameters"]["treeherd_nodes"] == ["corp.web.api"]

    new = puppet.node_find("new-1")  # not bound yet: its provisioning record decides
    assert new is not None
    assert new["classes"] == {"base": {}, "profile::db::mysql": {"tuning": {"pool": 7}}}
    assert new["parameters"]["treeherd_source"] == "provisioning"

    both = puppet.node_find("both-1")  # corp.web and corp.db disagree: only the default class
    assert both is not None
    assert both["classes"] == {"base": {}}
    assert both["parameters"]["treeherd_conflict"] == ["corp.db", "corp.web"]
    conflicts = json.loads(cli("puppet", "conflicts", "--format", "json").stdout)
    assert [c["hostname"] for c in conflicts] == ["both-1"]
    events = cli("events", "--since", "0", "--kind", "puppet_conflict", "--count", "1").stdout
    assert "created  puppet_conflict both-1" in events

    assert puppet.node_find("ghost") is None  # unknown: the ENC exits 1, Puppet finds no node


def test_puppet_apply_applies_the_classes_and_parameters(world: tuple[Cli, Puppet, ManagerProcess]) -> None:
    _, puppet, _ = world
    result = puppet.apply("web-1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (puppet.out / "base-web-1").read_text() == "kind=physical nodes=corp.web env=production\n"
    assert (puppet.out / "web-web-1").read_text() == "workers=4 hello { world }\n"
    assert not (puppet.out / "db-web-1").exists()


def test_the_installed_host_reports_and_is_bound(world: tuple[Cli, Puppet, ManagerProcess]) -> None:
    cli, puppet, _ = world
    out = cli("machine", "report", "--hostname", "new-1", "--kind", "physical").stdout
    assert "registered new-1 (physical" in out
    assert "bound new-1 to corp.db (provisioning record removed)" in out
    again = cli("machine", "report", "--hostname", "new-1", "--kind", "physical").stdout
    assert "unchanged: new-1" in again and "bound" not in again
    assert json.loads(cli("provision", "ls", "--format", "json").stdout) == []
    text = cli("enc", "new-1", "--cache-dir", str(puppet.cache)).stdout
    assert "treeherd_source: bound" in text and "profile::db::mysql:" in text


def test_a_manager_that_is_down_leaves_the_cached_answer(world: tuple[Cli, Puppet, ManagerProcess]) -> None:
    """Runs last: it stops the module's manager."""
    _, puppet, manager = world
    assert puppet.node_find("web-1") is not None  # cached now (and earlier)
    cached = (puppet.cache / "web-1.yaml").read_text()
    assert cached.startswith("---\nclasses:\n")
    manager.stop()
    web = puppet.node_find("web-1")
    assert web is not None
    assert web["classes"] == {"base": {}, "profile::web": {"workers": 4}}
    assert puppet.node_find("never-asked") is None  # nothing cached: Puppet gets no node
    direct = subprocess.run(
        [sys.executable, "-m", "treeherd", "enc", "web-1", "--cache-dir", str(puppet.cache)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "TREEHERD_MANAGER": manager.url},
    )
    assert direct.returncode == 0 and direct.stdout == cached
    assert "warning: the manager cannot be reached" in direct.stderr
