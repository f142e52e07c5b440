"""The restart backoff of a proxy master: at once after a death, exponential in a crash loop, capped,
and forgiven once the master stays up; and the cause as the events word it."""

from __future__ import annotations

from treeherd.proxy.supervise import RestartPolicy, Restarts, after_death, death_cause, started, stayed_up

POLICY = RestartPolicy(first_delay_s=1.0, max_delay_s=30.0, stable_s=10.0)


def test_a_first_death_restarts_at_once() -> None:
    decision = after_death(Restarts(), now=100.0, policy=POLICY)
    assert decision.delay_s == 0.0
    assert not decision.crash_loop


def test_deaths_right_after_restarts_back_off_exponentially_up_to_the_cap() -> None:
    history = started(after_death(Restarts(), now=0.0, policy=POLICY), now=0.0)
    now = 0.0
    delays = []
    for _ in range(8):
        now += 0.5  # dies half a second after each restart
        decision = after_death(history, now=now, policy=POLICY)
        assert decision.crash_loop
        delays.append(decision.delay_s)
        now += decision.delay_s
        history = started(decision, now=now)
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_a_master_that_stayed_up_is_forgiven() -> None:
    history = Restarts(quick_deaths=5, started_at=50.0)
    assert after_death(history, now=59.9, policy=POLICY).delay_s == 30.0
    forgiven = after_death(history, now=60.0, policy=POLICY)
    assert forgiven.delay_s == 0.0 and forgiven.quick_deaths == 0 and not forgiven.crash_loop


def test_a_crash_loop_is_over_once_the_master_stayed_up_after_its_last_restart() -> None:
    assert not stayed_up(Restarts(), now=1000.0, policy=POLICY)  # never restarted: nothing to resolve
    history = Restarts(quick_deaths=3, started_at=50.0)
    assert not stayed_up(history, now=59.9, policy=POLICY)
    assert stayed_up(history, now=60.0, policy=POLICY)


def test_a_long_crash_loop_stays_capped() -> None:
    decision = after_death(Restarts(quick_deaths=10_000, started_at=0.0), now=1.0, policy=POLICY)
    assert decision.delay_s == 30.0


def test_the_cause_names_the_pid_and_the_signal() -> None:
    assert death_cause(123, -9) == "master pid 123 died (signal 9, SIGKILL)"
    assert death_cause(123, 1) == "master pid 123 exited with status 1"
    assert death_cause(123, None).startswith("master pid 123 died (exit status unknown")
