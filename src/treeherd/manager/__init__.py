"""Async shells of the manager: read the store, call the core, apply the result."""
