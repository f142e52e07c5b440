"""The pure scheduler: constraints, per-machine bookkeeping, feasibility filters, and placement.

The shell keeps one `NodeSet` up to date from store events and calls `schedule(node_set, pending,
services)` for each batch of pending tasks; see scheduler.py for what it decides and nodeinfo.py for how
the NodeSet is kept in step with the store.
"""

from treeherd.core.tasks.scheduling.constraints import Constraint, parse_constraint, parse_constraints
from treeherd.core.tasks.scheduling.nodeinfo import Demand, NodeInfo, NodeSet, counts_against_node
from treeherd.core.tasks.scheduling.scheduler import Assignment, Decisions, schedule

__all__ = [
    "Assignment",
    "Constraint",
    "Decisions",
    "Demand",
    "NodeInfo",
    "NodeSet",
    "counts_against_node",
    "parse_constraint",
    "parse_constraints",
    "schedule",
]
