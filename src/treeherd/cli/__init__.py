"""The `treeherd` command: client commands over the API, and the server commands (manager, up)."""
