"""The process executor with real processes: environment, exits, stopping, start failures, logs,
adoption after an agent restart, clean-up, and a task runner driving it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import uuid
from pathlib import Path

import msgspec
import psutil
import pytest

from tests.executors.conftest import MakeExecutor
from tests.executors.helpers import (
    PYTHON,
    collect,
    eventually,
    gone,
    make_task,
    output,
    run,
    running_with,
    started,
    task_dir,
    until_ready,
)
from treeherd.agent.progress import Progress
from treeherd.agent.taskrunner import TaskRunner
from treeherd.executors.base import Controller, Executor, Exit, FatalError, LogSource, TaskLogs
from treeherd.executors.process import (
    PROCESS,
    UNKNOWN_EXIT,
    ProcessExecutor,
    ProcessRecord,
    TaskFiles,
)
from treeherd.model.states import TaskState as S

pytestmark = pytest.mark.timeout(60)

SLEEPER = "import sys, time; print('ready', flush=True); time.sleep(60)"
IGNORES_TERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
    "time.sleep(60)"
)


def marker() -> str:
    """A unique argument to find a test's process by."""
    return f"treeherd-test-{uuid.uuid4().hex}"


# --- what the task sees -------------------------------------------------------------------------------


async def test_the_environment_is_minimal_plus_the_tasks(
    executor: ProcessExecutor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LANG", "C.UTF-8")
    monkeypatch.setenv("AGENT_SECRET", "not for tasks")
    workdir = tmp_path / "somewhere"
    workdir.mkdir()
    report = tmp_path / "seen.json"
    script = (
        "import json, os; "
        f"json.dump({{'env': dict(os.environ), 'cwd': os.getcwd()}}, open({str(report)!r}, 'w'))"
    )
    task = make_task(
        script=script, env={"GREETING": "hi"}, workdir=str(workdir), ports={"http": 8080, "admin-ui": 9090}
    )
    assert await run(executor, task) == Exit(code=0, message="exited with code 0")
    seen = json.loads(report.read_text())
    env = seen["env"]
    assert seen["cwd"] == str(workdir)
    expected = {
        "GREETING": "hi",
        "TREEHERD_TASK_ID": "t1",
        "TREEHERD_SERVICE": "web",
        "TREEHERD_SLOT": "2",
        "TREEHERD_NODE_PATH": "/shop/frontend",
        "TREEHERD_PORT_HTTP": "8080",
        "TREEHERD_PORT_ADMIN_UI": "9090",
        "LANG": "C.UTF-8",
        "PATH": os.environ["PATH"],
        "TREEHERD_EXECUTOR_DIR": str(executor.root),  # the marker that finds it again
    }
    if "HOME" in os.environ:
        expected["HOME"] = os.environ["HOME"]
    # Python itself may add LC_CTYPE (locale coercion); nothing else of the agent's may leak in.
    assert {name: value for name, value in env.items() if name != "LC_CTYPE"} == expected


async def test_the_spec_env_overrides_the_base_but_not_the_treeherd_variables(
    executor: ProcessExecutor,
) -> None:
    script = "import os; print(os.environ['PATH'], os.environ['TREEHERD_TASK_ID'])"
    task = make_task(script=script, env={"PATH": "/opt/bin:/usr/bin:/bin", "TREEHERD_TASK_ID": "forged"})
    assert (await run(executor, task)).success
    assert output(executor) == b"/opt/bin:/usr/bin:/bin t1\n"


async def test_without_a_workdir_the_task_runs_in_its_own_directory(executor: ProcessExecutor) -> None:
    assert (await run(executor, make_task(script="import os; print(os.getcwd())"))).success
    assert output(executor).decode().strip() == str(task_dir(executor) / "work")


# --- how it ends --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("raise SystemExit(0)", Exit(code=0, message="exited with code 0")),
        ("raise SystemExit(3)", Exit(code=3, message="exited with code 3")),
        ("import os; os.kill(os.getpid(), 9)", Exit(signal=9, message="killed by SIGKILL")),
    ],
)
async def test_exit_statuses(executor: ProcessExecutor, script: str, expected: Exit) -> None:
    controller = await started(executor, make_task(script=script))
    async with asyncio.timeout(15):
        assert await controller.wait() == expected
        # wait is idempotent: again, and from a new controller (the status was saved).
        assert await controller.wait() == expected
        assert await executor.controller(make_task(script=script)).wait() == expected


async def test_sigterm_is_honoured(executor: ProcessExecutor) -> None:
    controller = await started(executor, make_task(script=SLEEPER))
    await until_ready(executor)
    began = time.monotonic()
    async with asyncio.timeout(15):
        await controller.shutdown(10)
        assert time.monotonic() - began < 5
        assert await controller.wait() == Exit(signal=15, message="killed by SIGTERM")


async def test_sigterm_ignored_means_sigkill_after_the_grace_period(executor: ProcessExecutor) -> None:
    controller = await started(executor, make_task(script=IGNORES_TERM))
    await until_ready(executor)
    began = time.monotonic()
    async with asyncio.timeout(15):
        await controller.shutdown(0.5)
        assert 0.5 <= time.monotonic() - began < 5
        assert await controller.wait() == Exit(signal=9, message="killed by SIGKILL")
        await controller.shutdown(0.5)  # idempotent: nothing left to stop


async def test_shutdown_stops_the_whole_process_group(executor: ProcessExecutor, tmp_path: Path) -> None:
    # The task exits on SIGTERM, its grandchild ignores it: after the grace period it is killed too.
    pid_file = tmp_path / "grandchild.pid"
    script = (
        "import subprocess, sys, time; "
        f"child = subprocess.Popen([sys.executable, '-c', {IGNORES_TERM!r}]); "
        f"open({str(pid_file)!r}, 'w').write(str(child.pid)); time.sleep(60)"
    )
    controller = await started(executor, make_task(script=script))
    await until_ready(executor)  # the grandchild's "ready": both run and handle signals
    grandchild = int(pid_file.read_text())
    record = controller.record
    assert record is not None
    assert os.getpgid(grandchild) == record.pid
    began = time.monotonic()
    async with asyncio.timeout(15):
        await controller.shutdown(0.5)
    assert time.monotonic() - began >= 0.5
    assert gone(record.pid)
    assert gone(grandchild)
    async with asyncio.timeout(5):
        assert await controller.wait() == Exit(signal=15, message="killed by SIGTERM")


# --- what cannot start --------------------------------------------------------------------------------


async def test_a_missing_or_unusable_program_is_fatal_in_prepare(
    executor: ProcessExecutor, tmp_path: Path
) -> None:
    not_executable = tmp_path / "script.sh"
    not_executable.write_text("#!/bin/sh\n")
    not_executable.chmod(0o644)
    cases = {
        "treeherd-no-such-program": "not found on PATH",
        str(tmp_path / "missing"): "no such file",
        str(tmp_path): "is a directory",
        str(not_executable): "is not executable",
        "": "empty",
    }
    for program, reason in cases.items():
        with pytest.raises(FatalError, match=reason):
            await executor.controller(make_task(command=[program])).prepare()
    with pytest.raises(FatalError, match="no command"):
        await executor.controller(make_task(command=[], script="")).prepare()


async def test_the_program_is_looked_up_on_the_tasks_path(executor: ProcessExecutor, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    program = bin_dir / "hello-treeherd"
    program.write_text("#!/bin/sh\necho hello\n")
    program.chmod(0o755)
    task = make_task(command=["hello-treeherd"], env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert (await run(executor, task)).success
    assert output(executor) == b"hello\n"
    with pytest.raises(FatalError, match="not found on PATH"):
        await executor.controller(make_task("t2", command=["hello-treeherd"])).prepare()


async def test_a_bad_workdir_is_fatal_in_prepare(executor: ProcessExecutor, tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("")
    cases = {
        str(tmp_path / "missing"): "does not exist",
        str(a_file): "is not a directory",
        "relative/dir": "not an absolute path",
    }
    for workdir, reason in cases.items():
        with pytest.raises(FatalError, match=reason):
            await executor.controller(make_task(workdir=workdir)).prepare()


async def test_an_exec_failure_at_start_is_fatal(executor: ProcessExecutor, tmp_path: Path) -> None:
    program = tmp_path / "run.sh"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    controller = executor.controller(make_task(command=[str(program)]))
    await controller.prepare()
    program.chmod(0o644)  # broken between prepare and start
    with pytest.raises(FatalError, match=r"cannot start .*Permission denied"):
        await controller.start()

    workdir = tmp_path / "gone"
    workdir.mkdir()
    controller = executor.controller(make_task("t2", workdir=str(workdir)))
    await controller.prepare()
    workdir.rmdir()
    with pytest.raises(FatalError, match="No such file or directory"):
        await controller.start()


# --- logs ---------------------------------------------------------------------------------------------


async def test_output_is_kept_and_read_back_with_tail(executor: ProcessExecutor) -> None:
    script = (
        "import sys\n"
        "for i in range(10):\n"
        "    print(f'out {i}', flush=True)\n"
        "    print(f'err {i}', file=sys.stderr, flush=True)\n"
    )
    controller = await started(executor, make_task(script=script))
    async with asyncio.timeout(15):
        assert (await controller.wait()).success
    lines = [f"{stream} {i}\n" for i in range(10) for stream in ("out", "err")]
    everything = "".join(lines).encode()
    assert await collect(executor.logs("t1")) == everything
    assert await collect(controller.logs(follow=False, tail=None)) == everything
    assert await collect(executor.logs("t1", tail=3)) == "".join(lines[-3:]).encode()
    assert await collect(executor.logs("t1", tail=0)) == b""
    # Following a task that has ended returns what there is, then ends.
    assert await collect(executor.logs("t1", follow=True, tail=1)) == b"err 9\n"
    for unknown in ("unknown", "../t1"):
        with pytest.raises(LookupError):
            executor.logs(unknown)


async def test_follow_streams_new_output_across_rotations_until_exit(make_executor: MakeExecutor) -> None:
    # 8 bytes every 20 ms, rotated past 100: several rotations, each of one piece (see `rotate`).
    executor = make_executor(log_max_bytes=100, log_backups=3)
    script = (
        "import time\n"
        "print('ready', flush=True)\n"
        "for i in range(100):\n"
        "    print(f'line {i:02}', flush=True)\n"
        "    time.sleep(0.02)\n"
    )
    controller = await started(executor, make_task(script=script))
    waiter = asyncio.create_task(controller.wait())  # wait() is what rotates the output
    followed = await collect(controller.logs(follow=True, tail=None))
    async with asyncio.timeout(15):
        assert (await waiter).success
    expected = "ready\n" + "".join(f"line {i:02}\n" for i in range(100))
    assert followed.decode() == expected
    directory = task_dir(executor)
    assert (directory / "output.log.1").exists()
    assert not (directory / "output.log.4").exists()
    # What is kept is the newest output, in order; the oldest was dropped.
    kept = (await collect(executor.logs("t1"))).decode()
    assert expected.endswith(kept)
    assert len(kept) < len(expected)


async def test_logs_survive_a_new_executor(make_executor: MakeExecutor) -> None:
    first = make_executor()
    assert (await run(first, make_task(script="print('hello')"))).success
    second = make_executor()
    assert await collect(second.logs("t1", tail=5)) == b"hello\n"


# --- adoption after an agent restart -----------------------------------------------------------------


async def test_a_new_agent_adopts_the_running_process(make_executor: MakeExecutor) -> None:
    tag = marker()
    task = make_task(command=[PYTHON, "-c", SLEEPER, tag])
    first = make_executor()
    old = await started(first, task)
    record = old.record
    assert record is not None
    saved = TaskFiles(first.root, "t1").process()
    assert saved == record
    assert saved.create_time == psutil.Process(record.pid).create_time()

    # The agent restarts: a new executor on the same root, a new controller resuming the task.
    second = make_executor()
    assert second.running_tasks() == {"t1": record.pid}
    new = second.controller(task)
    await new.start()
    assert new.record == record
    assert [p.pid for p in running_with(tag)] == [record.pid]  # no second process

    waiter = asyncio.create_task(new.wait())
    await asyncio.sleep(0.3)
    assert not waiter.done()
    os.killpg(record.pid, signal.SIGKILL)
    async with asyncio.timeout(10):
        assert await waiter == Exit(signal=9, message="killed by SIGKILL")
    assert second.running_tasks() == {}


async def test_a_process_the_agent_did_not_start_reports_an_unknown_exit(make_executor: MakeExecutor) -> None:
    # As after a real restart: the process is not this agent's child, so its status is unknown.
    tag = marker()
    executor = make_executor()
    task = make_task(command=[PYTHON, "-c", SLEEPER, tag])
    process = await asyncio.create_subprocess_exec(PYTHON, "-c", SLEEPER, tag, start_new_session=True)
    try:
        files = TaskFiles(executor.root, "t1")
        files.dir.mkdir(parents=True)
        create_time = psutil.Process(process.pid).create_time()
        files.write(PROCESS, ProcessRecord(pid=process.pid, create_time=create_time))
        controller = executor.controller(task)
        await controller.start()
        assert [p.pid for p in running_with(tag)] == [process.pid]
        assert executor.running_tasks() == {"t1": process.pid}
        waiter = asyncio.create_task(controller.wait())
        await asyncio.sleep(0.3)
        assert not waiter.done()
        process.kill()
        async with asyncio.timeout(10):
            assert await waiter == Exit(message=UNKNOWN_EXIT)
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        async with asyncio.timeout(10):
            await process.wait()
    assert executor.running_tasks() == {}


async def test_start_does_not_run_again_a_task_that_ended_while_the_agent_was_away(
    make_executor: MakeExecutor,
) -> None:
    tag = marker()
    executor = make_executor()
    task = make_task(command=[PYTHON, "-c", SLEEPER, tag])
    process = await asyncio.create_subprocess_exec(PYTHON, "-c", SLEEPER, tag, start_new_session=True)
    record = ProcessRecord(pid=process.pid, create_time=psutil.Process(process.pid).create_time())
    process.kill()
    async with asyncio.timeout(10):
        await process.wait()
    files = TaskFiles(executor.root, "t1")
    files.dir.mkdir(parents=True)
    files.write(PROCESS, record)
    controller = executor.controller(task)
    await controller.prepare()
    await controller.start()
    assert running_with(tag) == []
    async with asyncio.timeout(5):
        assert await controller.wait() == Exit(message=UNKNOWN_EXIT)
    assert output(executor) == b""


async def test_an_agent_stops_processes_of_tasks_it_no_longer_holds(make_executor: MakeExecutor) -> None:
    first = make_executor()
    controller = await started(first, make_task(script=IGNORES_TERM))
    record = controller.record
    assert record is not None
    await until_ready(first)
    second = make_executor()
    assert second.running_tasks() == {"t1": record.pid}
    async with asyncio.timeout(10):
        await second.stop_orphan("t1", 0.3)
    assert gone(record.pid)
    assert second.running_tasks() == {}
    await second.stop_orphan("t1", 0.3)  # nothing left: a no-op
    await second.stop_orphan("never-was", 0.3)


async def test_remove_kills_what_is_left_and_deletes_the_task(executor: ProcessExecutor) -> None:
    controller = await started(executor, make_task(script=IGNORES_TERM))
    record = controller.record
    assert record is not None
    async with asyncio.timeout(10):
        await controller.remove()
    assert gone(record.pid)
    assert not task_dir(executor).exists()
    await controller.remove()  # idempotent
    assert executor.running_tasks() == {}


# --- a task runner driving the executor ----------------------------------------------------------------


def test_the_executor_meets_the_protocols(executor: ProcessExecutor) -> None:
    # For the type checker above all: these assignments fail mypy if a signature drifts.
    as_executor: Executor = executor
    as_task_logs: TaskLogs = executor
    controller: Controller = executor.controller(make_task())
    log_source: LogSource = executor.controller(make_task())
    assert as_executor.name == "process"
    assert all(callable(step) for step in (as_task_logs.logs, log_source.logs, controller.wait))


UP = [S.ACCEPTED, S.PREPARING, S.READY, S.STARTING, S.RUNNING]


class Recorder:
    def __init__(self) -> None:
        self.progress: list[Progress] = []

    def __call__(self, task_id: str, progress: Progress) -> None:
        self.progress.append(progress)

    @property
    def states(self) -> list[S]:
        return [p.state for p in self.progress]


@pytest.mark.parametrize(
    ("command", "states", "error"),
    [
        ([PYTHON, "-c", "pass"], [*UP, S.COMPLETE], ""),
        ([PYTHON, "-c", "raise SystemExit(3)"], [*UP, S.FAILED], "exit code 3: exited with code 3"),
        (["treeherd-no-such-program"], [S.ACCEPTED, S.PREPARING, S.REJECTED], "not found on PATH"),
    ],
)
async def test_a_task_runner_drives_real_processes(
    executor: ProcessExecutor, command: list[str], states: list[S], error: str
) -> None:
    recorder = Recorder()
    runner = TaskRunner(make_task(command=command), S.ASSIGNED, executor, recorder, grace_s=1)
    async with asyncio.timeout(15):
        await runner.run()
    assert recorder.states == states
    assert error in recorder.progress[-1].error


async def test_a_task_runner_resumed_at_running_waits_for_the_adopted_process(
    make_executor: MakeExecutor,
) -> None:
    task = make_task(script=SLEEPER)
    first = make_executor()
    controller = await started(first, task)
    record = controller.record
    assert record is not None
    await until_ready(first)
    # A new agent knows the task RUNNING: its runner goes straight to wait() with a new controller.
    recorder = Recorder()
    runner = TaskRunner(task, S.RUNNING, make_executor(), recorder, grace_s=1)
    runner.start()
    await asyncio.sleep(0.3)
    assert recorder.states == []
    os.killpg(record.pid, signal.SIGKILL)
    assert await runner.join(10)
    assert recorder.states == [S.FAILED]
    assert recorder.progress[-1].error == "killed by signal 9: killed by SIGKILL"


async def test_a_task_runner_shuts_a_real_process_down(executor: ProcessExecutor) -> None:
    recorder = Recorder()
    runner = TaskRunner(make_task(script=SLEEPER), S.ASSIGNED, executor, recorder, grace_s=1)
    runner.start()
    await eventually(lambda: recorder.states == UP, "RUNNING")
    await until_ready(executor)
    runner.shutdown()
    assert await runner.join(10)
    assert recorder.states == [*UP, S.SHUTDOWN]
    assert recorder.progress[-1].message == "shut down (killed by signal 15)"
    async with asyncio.timeout(10):
        await runner.remove()
    assert not task_dir(executor).exists()


async def test_a_task_with_an_image_or_a_user_is_rejected(executor: ProcessExecutor) -> None:
    for changes, what in (({"image": "local/busybox:1"}, "an image"), ({"user": "nobody"}, "a user")):
        task = make_task()
        task = msgspec.structs.replace(task, spec=msgspec.structs.replace(task.spec, **changes))
        with pytest.raises(FatalError, match=f"asks for {what}.*--executor docker"):
            await executor.controller(task).prepare()
