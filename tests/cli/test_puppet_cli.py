"""`treeherd puppet ...`, `treeherd enc` and the catalog's refusals, through the real command against a
real manager (one per module: the catalog is cluster-wide)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Cli

GOOD = {
    "base/manifests/init.pp": "class base { }\n",
    "app/manifests/init.pp": "class app ($port = 80) { }\n",
    "app/manifests/web.pp": "class app::web (\n  Integer $workers = 2,\n  String $name,\n) inherits app {\n}\n",
    "app/manifests/stray.pp": "class app::elsewhere { }\n",
}


def _modules(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture(scope="module")
def synced(shared_manager: object, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The module's manager with a catalog synced from GOOD."""
    from treeherd.testing.processes import ManagerProcess

    assert isinstance(shared_manager, ManagerProcess)
    root = _modules(tmp_path_factory.mktemp("modules"), GOOD)
    result = Cli(shared_manager.url)("puppet", "sync-classes", "--modules", str(root))
    assert "synced 3 classes: 3 added, 0 removed, 0 changed" in result.stdout
    assert (
        "app::elsewhere is not where Puppet's autoloader looks for it (app/manifests/elsewhere.pp)"
        in result.stderr
    )
    return root


def test_the_catalog_is_listed_and_enforced(cli: Cli, synced: Path) -> None:
    classes = json.loads(cli("puppet", "classes", "--format", "json").stdout)
    assert [c["name"] for c in classes] == ["app", "app::web", "base"]
    web = classes[1]
    assert web["parent"] == "app"
    assert [(p["name"], p["type"], p["default"]) for p in web["params"]] == [
        ("workers", "Integer", "2"),
        ("name", "String", None),
    ]
    table = cli("puppet", "classes").stdout
    assert "app::web  app     workers=2, name" in table

    cli("tree", "add", "shop", "--puppet-class", "app::web:workers=4,name=shop")
    refused = cli("tree", "set", "shop", "--puppet-class", "app::web:threads=2", check=False)
    assert refused.returncode == 1
    assert "class app::web declares no parameter 'threads' (it declares: workers, name)" in refused.stderr
    unknown = cli("tree", "add", "shop.db", "--puppet-class", "app::db", check=False)
    assert unknown.returncode == 1 and "'app::db' is not in the class catalog" in unknown.stderr
    assert cli("tree", "ls", "shop", "--format", "json").stdout.count('"path"') == 1  # nothing written

    # A node may drop an inherited class, and an environment is set.
    cli("tree", "add", "shop.api", "--exclude-puppet-class", "app::web", "--puppet-environment", "staging")
    resolved = json.loads(cli("tree", "show", "shop.api", "--resolved", "--format", "json").stdout)
    assert resolved["puppet_classes"] == {}
    assert resolved["puppet_environment"] == {"value": "staging", "source": "shop.api"}

    # A sync that would strand shop is refused; --dry-run and --force say what happens.
    _modules(synced, {"app/manifests/web.pp": "class app::web (Integer $workers = 2) inherits app { }\n"})
    stuck = cli("puppet", "sync-classes", "--modules", str(synced), check=False)
    assert stuck.returncode == 1
    assert "shop (class app::web declares no parameter 'name'" in stuck.stderr and "--force" in stuck.stderr
    dry = cli("puppet", "sync-classes", "--modules", str(synced), "--dry-run", "--force").stdout
    assert "would sync 3 classes: 0 added, 0 removed, 1 changed" in dry
    assert [
        p["name"] for p in json.loads(cli("puppet", "classes", "--format", "json").stdout)[1]["params"]
    ] == [
        "workers",
        "name",
    ]
    _modules(synced, GOOD)


def test_broken_puppet_code_changes_nothing(cli: Cli, synced: Path, tmp_path: Path) -> None:
    before = cli("puppet", "classes", "--format", "json").stdout
    broken = _modules(
        tmp_path / "broken", {**GOOD, "app/manifests/db.pp": "class app::db (\n  $x = [1, 2\n) { }\n"}
    )
    result = cli("puppet", "sync-classes", "--modules", str(broken), check=False)
    assert result.returncode == 1
    assert (
        "app/manifests/db.pp:3: expected ']', found ')'" in result.stderr
        and "nothing was changed" in result.stderr
    )
    assert "Traceback" not in result.stderr
    empty = cli("puppet", "sync-classes", "--modules", str(tmp_path), check=False)
    assert empty.returncode != 0 and "holds no Puppet module" in empty.stderr
    neither = cli("puppet", "sync-classes", check=False)
    assert neither.returncode == 2 and "--modules DIR or --classes-file FILE" in neither.stderr
    assert cli("puppet", "classes", "--format", "json").stdout == before


def test_a_classes_file_and_the_cluster_settings(cli: Cli, synced: Path, tmp_path: Path) -> None:
    listed = tmp_path / "classes.txt"
    listed.write_text("# every class\nbase\napp\napp::web\nlegacy::thing\n")
    out = cli("puppet", "sync-classes", "--classes-file", str(listed)).stdout
    assert "added: legacy::thing" in out
    cli("tree", "add", "legacy", "--puppet-class", "legacy::thing:anything=1")  # parameters not known: any
    refused = cli("cluster", "set", "--puppet-default-class", "nope", check=False)
    assert refused.returncode == 1 and "'nope' is not in the class catalog" in refused.stderr
    cli("cluster", "set", "--puppet-default-class", "base", "--puppet-unknown-host", "default")
    shown = cli("cluster", "show").stdout
    assert "puppet_default_class        base" in shown and "puppet_unknown_host         default" in shown
    default = cli("enc", "nobody-here", "--cache-dir", str(tmp_path / "cache")).stdout
    assert default.startswith("---\nclasses:\n  base: {}\n") and "treeherd_source: default" in default
    failed = cli("enc", "nobody-here", "--unknown=fail", "--cache-dir", str(tmp_path / "cache"), check=False)
    assert failed.returncode == 1 and failed.stdout == ""
    assert "host 'nobody-here' is not in the inventory" in failed.stderr
    cli("cluster", "set", "--puppet-unknown-host", "fail", "--puppet-default-class", "")
    bad = cli("puppet", "sync-classes", "--modules", str(synced), "--classes-file", str(listed), check=False)
    assert bad.returncode == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give the HOSTNAME"),
        (["a", "b"], "one HOSTNAME only"),
        (["bad/host"], "invalid hostname"),
        (["h", "--unknown", "maybe"], "--unknown takes fail or default"),
        (["h", "--timeout", "0"], "--timeout takes a positive number"),
        (["h", "--bogus"], "unknown option --bogus"),
    ],
)
def test_enc_usage_errors(cli: Cli, args: list[str], message: str) -> None:
    result = cli("enc", *args, check=False)
    assert result.returncode == 2
    assert message in result.stderr and "usage: treeherd enc" in result.stderr


def test_the_enc_path_loads_no_heavy_module() -> None:
    code = (
        "import sys; sys.argv = ['treeherd', '--manager', 'http://127.0.0.1:9', 'enc', 'h', '--cache-dir', '/nonexistent'];"
        "from treeherd.cli.entry import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n"
        "    heavy = sorted(m for m in ('click', 'msgspec', 'http.client', 'litestar', 'psutil') if m in sys.modules)\n"
        "    print(e.code, heavy)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert result.stdout.strip() == "1 []", result.stdout + result.stderr
    assert "the manager cannot be reached" in result.stderr


def test_the_enc_caches_good_answers_and_forgets_unknown_hosts(
    cli: Cli, synced: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    cli("tree", "add", "cachetest", "--puppet-class", "base")
    cli("machine", "add", "cache-1")
    cli("machine", "bind", "cache-1", "cachetest")
    answer = cli("enc", "cache-1", "--cache-dir", str(cache)).stdout
    assert (cache / "cache-1.yaml").read_text() == answer
    assert [p.name for p in cache.iterdir()] == ["cache-1.yaml"]  # no temporary file left behind
    cli("machine", "unbind", "cache-1", "cachetest")
    gone = cli("enc", "cache-1", "--cache-dir", str(cache), check=False)
    assert gone.returncode == 1 and "bound to no node" in gone.stderr
    assert not (cache / "cache-1.yaml").exists()  # an unknown host is never served from the cache
