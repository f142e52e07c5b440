"""The real `treeherd` command against a real manager: the issue's examples, listings, errors."""

from __future__ import annotations

import json
import secrets

import pytest

from tests.conftest import Cli


@pytest.fixture
def root(cli: Cli) -> str:
    """A root node of this test's own, so tests sharing a manager never see each other's data."""
    name = "t" + secrets.token_hex(4)
    cli("tree", "add", name)
    return name


def test_examples_from_the_issue(cli: Cli, root: str) -> None:
    web = f"{root}.web"
    host = f"web-{root}"
    domain = f"shop-{root}.example.com"
    assert cli("tree", "add", web, "--label", "tier=web").stdout.strip() == f"added {web}"
    cli("machine", "add", host, "--ip", "127.0.0.11", "--kind", "virtual")
    out = cli("machine", "bind", host, web, "--weight", "5").stdout
    assert f"bound {host} to {web} with weight 5" in out
    cli(
        "domain",
        "add",
        domain,
        "--port",
        "80",
        "--port",
        "443:ssl",
        "--ssl-cert",
        "/etc/ssl/a.pem",
        "--ssl-key",
        "/etc/ssl/a.key",
    )
    cli("route", "add", web, "--domain", domain, "--uri", "/api")

    node = json.loads(cli("tree", "show", web, "--format", "json").stdout)
    assert node["labels"] == {"tier": "web"}
    assert len(node["domain_uris"]) == 1 and node["domain_uris"][0]["uri"] == "/api"
    bound = json.loads(cli("machine", "ls", "--node", web, "--format", "json").stdout)
    assert [m["hostname"] for m in bound] == [host]
    shown = json.loads(cli("domain", "show", domain, "--format", "json").stdout)
    assert shown["ports"] == [{"port": 80, "ssl": False}, {"port": 443, "ssl": True}]
    assert shown["access_log_path"] == f"{domain}_access.log"
    assert shown["error_log_path"] == f"{domain}_error.log"
    routes = cli("route", "ls", root).stdout
    assert f"{domain}  /api  {web}" in " ".join(routes.split("\n"))


def test_resolved_shows_values_and_sources(cli: Cli, root: str) -> None:
    cli(
        "tree", "set", root, "--label", "team=infra", "--puppet-class", "base", "--puppet-environment", "prod"
    )
    cli(
        "tree",
        "add",
        f"{root}.web",
        "--label",
        "tier=web",
        "--port",
        "8080",
        "--puppet-class",
        "profile::web:workers=4,tls=true",
    )
    cli("tree", "add", f"{root}.web.api", "--label", "tier=api", "--exclude-puppet-class", "base")
    resolved = json.loads(cli("tree", "show", f"{root}.web.api", "--resolved", "--format", "json").stdout)
    assert resolved["labels"] == {
        "team": {"value": "infra", "source": root},
        "tier": {"value": "api", "source": f"{root}.web.api"},
    }
    assert resolved["puppet_classes"] == {
        "profile::web": {"params": {"workers": 4, "tls": True}, "source": f"{root}.web"}
    }
    assert resolved["port"] == {"value": 8080, "source": f"{root}.web"}
    assert resolved["puppet_environment"] == {"value": "prod", "source": root}
    assert resolved["upstream"]["source"] == "(default)"
    table = cli("tree", "show", f"{root}.web.api", "--resolved").stdout
    assert "ATTRIBUTE" in table and "FROM" in table and "label team infra" in " ".join(table.split())


def test_listings_have_tables_and_json(cli: Cli, root: str) -> None:
    cli("tree", "add", f"{root}.a")
    cli("tree", "add", f"{root}.b")
    table = cli("tree", "ls", root).stdout.splitlines()
    assert table[0].split()[:2] == ["PATH", "LABELS"]
    assert [line.split()[0] for line in table[1:]] == [root, f"{root}.a", f"{root}.b"]
    as_json = json.loads(cli("tree", "ls", root, "--format", "json").stdout)
    assert [n["path"] for n in as_json] == [root, f"{root}.a", f"{root}.b"]
    for listing in (("machine", "ls"), ("domain", "ls"), ("provision", "ls"), ("route", "ls")):
        assert isinstance(json.loads(cli(*listing, "--format", "json").stdout), list)


def test_set_mv_and_rm(cli: Cli, root: str) -> None:
    cli("tree", "add", f"{root}.old")
    cli("tree", "add", f"{root}.old.leaf", "--label", "x=1")
    cli("tree", "set", f"{root}.old.leaf", "--label", "y=2", "--unset-label", "x", "--port", "9000")
    leaf = json.loads(cli("tree", "show", f"{root}.old.leaf", "--format", "json").stdout)
    assert leaf["labels"] == {"y": "2"} and leaf["port"] == 9000
    cli("tree", "set", f"{root}.old.leaf", "--port", "")
    assert json.loads(cli("tree", "show", f"{root}.old.leaf", "--format", "json").stdout)["port"] is None
    cli("tree", "mv", f"{root}.old", f"{root}.new")
    assert json.loads(cli("tree", "show", f"{root}.new.leaf", "--format", "json").stdout)["labels"] == {
        "y": "2"
    }
    refused = cli("tree", "rm", f"{root}.new", check=False)
    assert refused.returncode == 1 and "--recursive" in refused.stderr
    assert "2 node(s)" in cli("tree", "rm", f"{root}.new", "--recursive").stdout


def test_provisioning_records(cli: Cli, root: str) -> None:
    host = f"new-{root}"
    assert f"for {root}" in cli("provision", "add", host, "--node", root).stdout
    records = json.loads(cli("provision", "ls", "--format", "json").stdout)
    assert {"hostname": host, "path": root} in [
        {"hostname": r["hostname"], "path": r["path"]} for r in records
    ]
    again = cli("provision", "add", host, "--node", root, check=False)
    assert again.returncode == 1 and "already being provisioned" in again.stderr
    cli("provision", "rm", host)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("tree", "add", "Bad.Path"), "invalid path"),
        (("tree", "add", "nope.child"), "does not exist"),
        (("tree", "add", "x", "--label", "novalue"), "KEY=VALUE"),
        (("machine", "add", "h1", "--ip", "300.1.1.1"), "invalid IP address"),
        (("machine", "add", "h1", "--memory", "lots"), "not a size"),
        (("domain", "add", "d.example.com", "--port", "443:ssl"), "ssl_cert_path"),
        (("domain", "add", "d.example.com", "--port", "80:tls"), "PORT or PORT:ssl"),
        (("tree", "show", "does.not.exist"), "no tree node"),
        (("machine", "bind", "no-such-host", "x"), "no machine"),
    ],
)
def test_bad_input_says_what_to_fix(cli: Cli, args: tuple[str, ...], message: str) -> None:
    result = cli(*args, check=False)
    assert result.returncode in (1, 2), result
    assert message in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_mixing_machine_kinds_is_refused(cli: Cli, root: str) -> None:
    cli("tree", "add", f"{root}.db")
    cli("machine", "add", f"vm-{root}", "--kind", "virtual")
    cli("machine", "add", f"pm-{root}", "--kind", "physical")
    cli("machine", "bind", f"vm-{root}", f"{root}.db")
    refused = cli("machine", "bind", f"pm-{root}", f"{root}.db", check=False)
    assert refused.returncode == 1 and "never mixed" in refused.stderr


def test_unreachable_manager_is_a_clear_error() -> None:
    result = Cli("http://127.0.0.1:9")("tree", "ls", check=False)
    assert result.returncode == 1
    assert "cannot reach the treeherd manager at http://127.0.0.1:9" in result.stderr
    assert "Traceback" not in result.stderr


def test_events_replays_and_prints(cli: Cli, root: str) -> None:
    created = json.loads(cli("tree", "add", f"{root}.ev", "--format", "json").stdout)
    since = created["version"] - 1
    cli("tree", "set", f"{root}.ev", "--label", "a=b")
    as_json = cli("events", "--since", str(since), "--count", "2", "--format", "json").stdout.splitlines()
    events = [json.loads(line) for line in as_json]
    assert [(e["type"], e["object"]["path"]) for e in events] == [
        ("created", f"{root}.ev"),
        ("updated", f"{root}.ev"),
    ]
    table = cli("events", "--since", str(since), "--count", "1", "--kind", "node").stdout.splitlines()
    assert table[0].split() == ["REVISION", "EVENT", "KIND", "NAME"]
    assert table[1].split() == [str(created["version"]), "created", "node", f"{root}.ev"]
