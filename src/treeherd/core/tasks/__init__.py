"""Pure decisions about services and their tasks: reconcile, allocate, schedule, dispatch, node loss,
and the agent's state machine."""
