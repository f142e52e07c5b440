#!/usr/bin/env python3
"""Render and validate time of the nginx configuration for 100, 1,000 and 10,000 routed nodes.

Builds a synthetic service tree in memory (no manager: the renderer is a pure function of a snapshot):
N routed nodes under 10 groups, each node with 3 bound machines (weights 1-3, one in ten at weight 0),
routes on 10 domains (one in two nodes also on an inner domain), every tenth domain with an ssl port.
For each size it measures, over `--repeat` runs (median and min reported):

- `routing`: the core's routing table from the snapshot (core/edge/routing.py);
- `render`: routing table + Jinja2 templates to bytes (render/nginx.py, what the gateway does per change);
- `validate`: the real `nginx -t` on the rendered file in a temp prefix (once per size: it is a process).

Results go to `OUT/nginx_render.json` and `OUT/nginx_render.png`. The team goal: render 1,000 nodes in
at most 200 ms.

    .venv/bin/python benchmarks/nginx_render.py                 # 100, 1,000 and 10,000 nodes
    .venv/bin/python benchmarks/nginx_render.py --sizes 100,1000 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from benchlib import machine_info
from treeherd.core.edge.routing import routing_table
from treeherd.model.objects import Binding, Domain, DomainPort, DomainUri, Machine, TreeNode
from treeherd.model.routing import RoutingSnapshot
from treeherd.proxy.nginx import find_nginx
from treeherd.render.nginx import ROUTING_FILE, MainOptions, RenderOptions, render_main, render_nginx
from treeherd.testing.factories import FIXED_NOW

GOAL_MS_1000 = 200.0


def synthetic_snapshot(nodes: int, cert: str, key: str) -> RoutingSnapshot:
    stamp = {"created_at": FIXED_NOW, "updated_at": FIXED_NOW}
    domains = [
        Domain(
            id=f"d{i}",
            name=f"svc{i}.example.com",
            ports=[DomainPort(port=80)] + ([DomainPort(port=443, ssl=True)] if i % 10 == 0 else []),
            access_log_path=f"svc{i}.example.com_access.log",
            error_log_path=f"svc{i}.example.com_error.log",
            ssl_cert_path=cert if i % 10 == 0 else None,
            ssl_key_path=key if i % 10 == 0 else None,
            **stamp,
        )
        for i in range(10)
    ]
    inner = Domain(
        id="inner", name="api.internal", ports=[DomainPort(port=8080)],
        access_log_path="api.internal_access.log", error_log_path="api.internal_error.log", **stamp,
    )  # fmt: skip
    tree = [TreeNode(id=f"g{g}", path=f"corp.g{g}", port=8000 + g, **stamp) for g in range(10)]
    machines: list[Machine] = []
    bindings: list[Binding] = []
    for n in range(nodes):
        routes = [DomainUri(domain_id=f"d{n % 10}", uri=f"/s{n}")]
        if n % 2 == 0:
            routes.append(DomainUri(domain_id="inner", uri=f"/api/s{n}"))
        tree.append(
            TreeNode(
                id=f"n{n}", path=f"corp.g{n % 10}.s{n}", parent_id=f"g{n % 10}", domain_uris=routes,
                ip_hash=n % 7 == 0, **stamp,
            )
        )  # fmt: skip
        for m in range(3):
            index = n * 3 + m
            machines.append(
                Machine(id=f"m{index}", hostname=f"h{index}", ips=[f"10.{index // 65536 % 256}.{index // 256 % 256}.{index % 256}"], **stamp)
            )  # fmt: skip
            weight = 0 if index % 10 == 0 else 1 + m
            bindings.append(
                Binding(id=f"b{index}", machine_id=f"m{index}", node_id=f"n{n}", weight=weight, **stamp)
            )
    return RoutingSnapshot(
        revision=1, nodes=tree, machines=machines, bindings=bindings, domains=[*domains, inner]
    )


def timed(function, repeat: int) -> list[float]:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def validate(text: str, binary: str, work: Path) -> float:
    prefix = Path(tempfile.mkdtemp(dir=work))
    for sub in ("logs", "temp"):
        (prefix / sub).mkdir()
    (prefix / ROUTING_FILE).write_text(text)
    main = prefix / "nginx.conf"
    main.write_text(
        render_main(
            MainOptions(
                include_path=str(prefix / ROUTING_FILE), pid_path=str(prefix / "logs/nginx.pid"),
                error_log_path=str(prefix / "logs/error.log"), temp_dir=str(prefix / "temp"),
            )
        )
    )  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run(
        [binary, "-t", "-q", "-p", f"{prefix}/", "-c", str(main), "-e", str(prefix / "logs/error.log")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    elapsed = (time.perf_counter() - start) * 1000.0
    if result.returncode != 0:
        raise SystemExit(f"nginx -t refused the rendered configuration: {result.stderr}")
    return elapsed


def plot(results: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["nodes"] for r in results]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(sizes, [r["routing_ms_median"] for r in results], "o-", label="routing table")
    ax.plot(sizes, [r["render_ms_median"] for r in results], "o-", label="render (routing + templates)")
    ax.plot(sizes, [r["validate_ms"] for r in results], "s--", label="nginx -t")
    ax.axhline(GOAL_MS_1000, color="grey", linestyle=":", label="goal: 200 ms at 1,000 nodes")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("routed nodes (3 backends each)")
    ax.set_ylabel("milliseconds (median)")
    ax.set_title("nginx configuration: render and validate")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    binary = find_nginx()
    if binary is None:
        raise SystemExit("nginx is not installed: run scripts/system-deps.sh")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=bench",
             "-keyout", str(work / "k.pem"), "-out", str(work / "c.pem")],
            capture_output=True, check=True, timeout=60,
        )  # fmt: skip
        for size in (int(s) for s in args.sizes.split(",")):
            snapshot = synthetic_snapshot(size, str(work / "c.pem"), str(work / "k.pem"))
            options = RenderOptions(log_dir=str(work / "logs"), listen_host="127.0.0.1")
            (work / "logs").mkdir(exist_ok=True)
            render_nginx(snapshot, options)  # warm the template cache
            routing = timed(lambda snapshot=snapshot: routing_table(snapshot), args.repeat)
            render = timed(
                lambda snapshot=snapshot, options=options: render_nginx(snapshot, options), args.repeat
            )
            text = render_nginx(snapshot, options).text
            checked = validate(text, binary, work)
            row = {
                "nodes": size,
                "backends": len(snapshot.bindings),
                "bytes": len(text.encode()),
                "routing_ms_median": round(statistics.median(routing), 2),
                "routing_ms_min": round(min(routing), 2),
                "render_ms_median": round(statistics.median(render), 2),
                "render_ms_min": round(min(render), 2),
                "validate_ms": round(checked, 1),
            }
            results.append(row)
            print(json.dumps(row))
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "nginx_render",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "repeat": args.repeat,
        "goal_render_ms_at_1000": GOAL_MS_1000,
        "results": results,
    }
    (args.out / "nginx_render.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(results, args.out / "nginx_render.png")
    print(f"wrote {args.out / 'nginx_render.json'} and {args.out / 'nginx_render.png'}")


if __name__ == "__main__":
    main()
