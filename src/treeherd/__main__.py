"""`python -m treeherd` runs the CLI."""

from treeherd.cli.entry import main

main()
