"""The proxy processes treeherd supervises: the local haproxy that forwards 127.0.0.1 ports to a
dependency's endpoints (`haproxy.py`, `master.py`, `runtime.py`, `stats.py`: runtime API first, a checked
hitless reload when its frontends change) and the edge gateway's nginx (`nginx.py`: validate with the real
`nginx -t`, start or adopt, reload; `releases.py`: rendered configurations swapped in atomically)."""

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
