"""The `treeherd` command's first step: send `treeherd enc ...` to the light ENC program, anything else
to the full CLI. Puppet runs the ENC on every agent run; loading click and every command group first
would triple its start-up time.

Only the global `--manager URL` option may come before `enc` (it is passed on).
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def main() -> None:
    args = sys.argv[1:]
    manager = None
    index = 0
    while index < len(args):
        if args[index] == "--manager" and index + 1 < len(args):
            manager = args[index + 1]
            index += 2
        elif args[index].startswith("--manager="):
            manager = args[index].partition("=")[2]
            index += 1
        else:
            break
    if index < len(args) and args[index] == "enc":
        from treeherd.cli.enc import main as enc

        enc(args[index + 1 :], manager=manager)
    from treeherd.cli.main import main as full

    full()
