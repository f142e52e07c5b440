"""The dispatcher (leader only, as SwarmKit's): one session per agent on the agent channel.

- dispatcher.py: the component; registers agents and routes their messages
- sessions.py: one agent's live session and what is queued for it
- heartbeats.py: heartbeat deadlines and marking late nodes down
- status_writer.py: agents' task status reports, batched into transactions
- assignments.py: the store watch fanned out to sessions as assignments and dependency feeds
- pacer.py: at most so many sends to sessions per turn of the event loop
- endpoint_sets.py: agents' endpoint sets into the endpoint registry
- logstreams.py: task output streamed from an agent's session
- proxy_events.py: agents' reports about their local haproxy into the host's proxy record
"""

from treeherd.manager.dispatcher.dispatcher import Dispatcher

__all__ = ["Dispatcher"]
