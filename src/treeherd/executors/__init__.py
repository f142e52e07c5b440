"""Executors run tasks on a machine: processes (default), Docker containers, and the hollow executor."""
