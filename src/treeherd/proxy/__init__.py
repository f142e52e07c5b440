"""Live proxies on this host: the local haproxy that forwards 127.0.0.1 ports to a dependency's
endpoints, driven through its runtime API and, when its frontends change, a checked hitless reload."""

from treeherd.proxy.haproxy import ApplyResult, HaproxyConfigRejected, LocalHaproxy
from treeherd.proxy.master import HaproxyFailed, find_haproxy
from treeherd.proxy.runtime import RuntimeApiError, RuntimeCall, RuntimeCommandFailed
from treeherd.proxy.stats import ProcTable, ServerState, StatRow

__all__ = [
    "ApplyResult",
    "HaproxyConfigRejected",
    "HaproxyFailed",
    "LocalHaproxy",
    "ProcTable",
    "RuntimeApiError",
    "RuntimeCall",
    "RuntimeCommandFailed",
    "ServerState",
    "StatRow",
    "find_haproxy",
]
