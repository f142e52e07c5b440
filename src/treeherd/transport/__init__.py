"""Wires to the manager: the HTTP client the CLI and agents use."""
