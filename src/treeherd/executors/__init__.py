"""Executors run tasks on a machine behind the `Controller` protocol (`base.py`): real processes (the
default, `process.py`, with cgroup limits from `limits.py`) and the hollow executor that only reports
(`hollow.py`, for tests and benchmarks)."""
