"""Durable state: one store protocol, an in-memory engine, and the backends that persist it."""
