"""Runs the real `nginx -t` on rendered configuration, in a temp prefix of its own."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from treeherd.proxy.nginx import find_nginx
from treeherd.render.nginx import ROUTING_FILE, MainOptions, render_main


def nginx_binary() -> str:
    """The nginx executable; the test fails (it does not skip) when nginx is missing."""
    found = find_nginx()
    if found is None:
        pytest.fail("nginx is not installed: run scripts/system-deps.sh (Debian package nginx)")
    return found


def nginx_test(routing_text: str, prefix: Path) -> subprocess.CompletedProcess[str]:
    """Write the routing file and a main configuration under `prefix` and run `nginx -t` on them."""
    for sub in ("logs", "temp", "conf"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    (prefix / "conf" / ROUTING_FILE).write_text(routing_text)
    main = prefix / "conf" / "nginx.conf"
    main.write_text(
        render_main(
            MainOptions(
                include_path=str(prefix / "conf" / ROUTING_FILE),
                pid_path=str(prefix / "logs" / "nginx.pid"),
                error_log_path=str(prefix / "logs" / "error.log"),
                temp_dir=str(prefix / "temp"),
            )
        )
    )
    return subprocess.run(
        [nginx_binary(), "-t", "-p", f"{prefix}/", "-c", str(main), "-e", str(prefix / "logs" / "error.log")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def make_certificate(directory: Path, name: str) -> None:
    """A self-signed certificate and key `name.pem` / `name.key` for nginx to load."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            f"/CN={name}",
            "-keyout",
            str(directory / f"{name}.key"),
            "-out",
            str(directory / f"{name}.pem"),
        ],
        capture_output=True,
        check=True,
        timeout=60,
    )
