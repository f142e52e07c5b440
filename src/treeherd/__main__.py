"""`python -m treeherd` runs the CLI."""

from treeherd.cli.main import main

main()
