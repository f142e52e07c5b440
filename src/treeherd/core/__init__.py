"""Pure decisions: functions of a read-only view, request values and `now` that return plans."""
