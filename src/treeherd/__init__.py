"""treeherd: a cluster manager built around a service tree."""

__version__ = "0.1.0"
