"""The agent: runs on every machine, keeps a session with the manager, runs the tasks assigned to it.

`Agent` is the component (`run()` / `stop()`); inside it the `Session` talks to the manager, the
`Worker` drives the pure `core.tasks.agent_state.AgentState`, `TaskRunner`s step executor controllers, and
`TaskDB` keeps the assigned tasks so a restarted agent resumes them.
"""

from treeherd.agent.agent import EXECUTORS, Agent, describe_machine, make_executor

__all__ = ["EXECUTORS", "Agent", "describe_machine", "make_executor"]
