"""Test helpers that ship with treeherd: object factories and a real manager process on loopback."""
