"""Typed value objects shared by the store, the API, the CLI and the wire: msgspec structs only."""
