"""`treeherd render nginx`, `policy`, `backend pin` and `availability` against a real manager."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Cli


def test_render_nginx_writes_a_checked_configuration(cli: Cli, tmp_path: Path) -> None:
    cli("domain", "add", "render-cli.test", "--port", "18099")
    cli("tree", "add", "rcli", "--port", "9100")
    cli("route", "add", "rcli", "--domain", "render-cli.test", "--uri", "/")
    cli("machine", "add", "rcli-1", "--ip", "127.0.0.9")
    cli("machine", "bind", "rcli-1", "rcli", "--weight", "2")
    out = tmp_path / "out"
    result = cli("render", "nginx", "--out", str(out), "--listen-host", "127.0.0.1")
    assert "wrote" in result.stdout
    text = (out / "treeherd.conf").read_text()
    assert "server 127.0.0.9:9100 weight=2;  # rcli-1" in text
    assert "server_name render-cli.test;" in text
    assert "include " + str(out / "treeherd.conf") in (out / "nginx.conf").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["nginx.conf", "treeherd.conf"]  # no staging left


def test_render_nginx_refused_by_nginx_writes_nothing(cli: Cli, tmp_path: Path) -> None:
    cli(
        "domain", "add", "render-bad.test", "--port", "18443:ssl",
        "--ssl-cert", str(tmp_path / "missing.pem"), "--ssl-key", str(tmp_path / "missing.key"),
    )  # fmt: skip
    out = tmp_path / "out"
    result = cli("render", "nginx", "--out", str(out), check=False)
    assert result.returncode == 1
    assert "nginx -t refused the rendered configuration, nothing was written" in result.stderr
    assert "missing.pem" in result.stderr and "Traceback" not in result.stderr
    assert list(out.iterdir()) == []
    cli("domain", "rm", "render-bad.test")


def test_policies_and_pins(cli: Cli) -> None:
    cli("tree", "add", "pcli", "--port", "9200")
    cli("machine", "add", "pcli-1", "--ip", "127.0.0.10")
    cli("machine", "bind", "pcli-1", "pcli")
    cli("policy", "set", "pcli", "--alert-below", "0.99", "--alert-window", "1m")
    assert "0.99" in cli("policy", "ls").stdout
    bad = cli("policy", "set", "pcli", "--eject-cap", "2", check=False)
    assert bad.returncode == 1 and "eject_cap must be a share between 0 and 1" in bad.stderr
    assert "pin out" in cli("backend", "pin", "pcli", "pcli-1", "out").stdout
    unbound = cli("backend", "pin", "pcli", "nosuch", "in", check=False)
    assert unbound.returncode == 1 and "'nosuch' is no backend of pcli" in unbound.stderr
    assert "/ (default)" in cli("policy", "ls").stdout
    cli("policy", "set", "/", "--no-eject")
    shown = cli("policy", "ls").stdout
    assert "/ (default)" not in shown and "\n/ " in shown
    assert "built-in default applies again" in cli("policy", "rm", "/").stdout
    assert cli("availability").stdout.startswith("SERVICE")
    cli("policy", "rm", "pcli")
