"""Task states: their order, and the module names that stand for them."""

from __future__ import annotations

from treeherd.model import states
from treeherd.model.states import TaskState


def test_each_member_is_also_a_module_name_of_the_same_object() -> None:
    for name, member in TaskState.__members__.items():
        assert getattr(states, name) is member


def test_states_only_move_forward_and_the_last_four_are_terminal() -> None:
    ordered = list(TaskState)
    assert ordered == sorted(ordered)
    assert [state for state in ordered if state.terminal] == [
        states.COMPLETE,
        states.SHUTDOWN,
        states.FAILED,
        states.REJECTED,
    ]
    assert {state.label for state in ordered} >= {"running", "rejected"}
