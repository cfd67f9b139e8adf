"""The node's part runner: the order of its steps, start failures, and the wall clock on a fake timer.

Unit tests of the runner's logic: the launcher here is a stub (a pipe and an exit status), the
logs go to a real local store. The real launchers, staging and relay run through the same
runner in tests/workers/launchers and tests/integration.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from trainyard.storage_adapters import open_storage
from trainyard.workers.launchers import LaunchContext, PrepareFailed
from trainyard.workers.logpump import PartLogs
from trainyard.workers.part_runner import Hook, PartRun, PartRunner, WallClock, start_failure
from trainyard.workers.staging import StagingError


class FakeStep:
    def __init__(self, exit_code: int, output: bytes = b""):
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        os.write(out_w, output)
        self.fds = (out_r, err_r)
        self._writers = [out_w, err_w]
        self.exit_code = exit_code
        self.stopped: list[float] = []

    def finish(self) -> None:
        for fd in self._writers:
            os.close(fd)
        self._writers = []


class FakeRunning:
    def __init__(self, step: FakeStep):
        self.step = step
        self.pid = 4242

    @property
    def stdout_fd(self) -> int:
        return self.step.fds[0]

    @property
    def stderr_fd(self) -> int:
        return self.step.fds[1]


class FakeLauncher:
    name = "fake"

    def __init__(self, exit_code: int = 0, output: bytes = b"hello\n"):
        self.exit_code, self.output = exit_code, output
        self.stops: list[float] = []

    def start(self, ctx: LaunchContext) -> FakeRunning:
        return FakeRunning(FakeStep(self.exit_code, self.output))

    def wait(self, running: FakeRunning) -> int:
        running.step.finish()
        return running.step.exit_code

    def stop(self, running: FakeRunning, grace_s: float) -> None:
        self.stops.append(grace_s)


class Recorder(Hook):
    def __init__(self, name: str, calls: list[str], fail_in: str | None = None, exc: Exception | None = None):
        self.name, self.calls, self.fail_in, self.exc = name, calls, fail_in, exc

    def _note(self, step: str) -> None:
        self.calls.append(f"{self.name}.{step}")
        if step == self.fail_in:
            raise self.exc or RuntimeError("boom")

    def prepare(self, run: PartRun) -> None:
        self._note("prepare")

    def started(self, run: PartRun) -> None:
        self._note("started")

    def ended(self, run: PartRun) -> None:
        self._note("ended")

    def closed(self, run: PartRun) -> None:
        self._note("closed")


class Steps:
    def __init__(self, tmp: Path, calls: list[str], prepare_error: Exception | None = None):
        self.tmp, self.calls, self.prepare_error = tmp, calls, prepare_error
        self.reports: list[dict[str, Any]] = []

    def context(self, message: dict[str, Any]) -> LaunchContext:
        return LaunchContext(job_id="j1", name="n", attempt=1, rank=0, num_nodes=1, node_hosts=["127.0.0.2"],
                             node_address="127.0.0.2", spec=message["spec"], gpus=[], workdir=self.tmp / "work",
                             checkpoint_dir=self.tmp / "ckpt", master_port=29500)  # fmt: skip

    def run_prepare(self, run: PartRun) -> None:
        self.calls.append("prepare-script")
        if self.prepare_error is not None:
            raise self.prepare_error

    def started(self, run: PartRun) -> None:
        self.calls.append("report-started")

    def finished(self, run: PartRun, complete: bool) -> None:
        self.calls.append("report-exited")
        self.reports.append({"exit_code": run.exit_code, "reason": run.stop_reason or "exit", "complete": complete})


def _run(tmp_path: Path, hooks: list[Hook], steps: Steps, launcher: FakeLauncher) -> tuple[PartRun, int]:
    storage = open_storage(f"file://{tmp_path / 'store'}")
    logs = PartLogs(storage, tmp_path / "spool", "j1", 1, 0)
    run = PartRun(key=("j1", 1, 0), message={"spec": {"command": "x"}}, logs=logs)
    return run, PartRunner(hooks, steps, make_launcher=lambda _name, _image: launcher).run(run)  # type: ignore[arg-type,return-value]


def test_steps_run_in_order_and_the_exit_report_comes_last(tmp_path: Path) -> None:
    calls: list[str] = []
    steps = Steps(tmp_path, calls)
    code = _run(tmp_path, [Recorder("a", calls), Recorder("b", calls)], steps, FakeLauncher(exit_code=3))[1]
    assert code == 3
    assert calls == ["a.prepare", "b.prepare", "prepare-script", "a.started", "b.started", "report-started",
                     "a.ended", "b.ended", "b.closed", "a.closed", "report-exited"]  # fmt: skip
    assert steps.reports == [{"exit_code": 3, "reason": "exit", "complete": True}]
    storage = open_storage(f"file://{tmp_path / 'store'}")
    assert b"hello\n" in b"".join(storage.get(o.key) for o in storage.list("") if "stdout" in o.key)


@pytest.mark.parametrize(
    ("error", "reason", "status"),
    [(StagingError("no such input"), "prepare_failed", 127), (PrepareFailed(5), "prepare_failed", 5),
     (PrepareFailed(143, "cancelled"), "cancelled", 143), (RuntimeError("bug"), "exit", 127)],
)  # fmt: skip
def test_a_part_that_cannot_start_is_closed_and_reported_with_its_reason(
    tmp_path: Path, error: Exception, reason: str, status: int
) -> None:
    calls: list[str] = []
    steps = Steps(tmp_path, calls, prepare_error=error)
    run, code = _run(tmp_path, [Recorder("a", calls)], steps, FakeLauncher())
    assert code == status
    assert calls == ["a.prepare", "prepare-script", "a.closed", "report-exited"]
    assert steps.reports[0]["reason"] == reason
    assert start_failure(error) == (reason, status)
    assert run.start_failed


def test_a_failing_end_step_still_closes_and_reports(tmp_path: Path) -> None:
    calls: list[str] = []
    steps = Steps(tmp_path, calls)
    with pytest.raises(RuntimeError):
        _run(tmp_path, [Recorder("a", calls, fail_in="ended"), Recorder("b", calls)], steps, FakeLauncher())
    assert calls[-3:] == ["b.closed", "a.closed", "report-exited"]


class FakeTimer:
    def __init__(self) -> None:
        self.armed: list[tuple[float, Any]] = []
        self.cancelled = 0

    def __call__(self, delay_s: float, action: Any) -> FakeTimer:
        self.armed.append((delay_s, action))
        return self

    def cancel(self) -> None:
        self.cancelled += 1

    def fire(self) -> None:
        self.armed[-1][1]()


def test_the_wall_clock_stops_the_part_with_reason_wall_clock_after_max_wall_clock(tmp_path: Path) -> None:
    timer = FakeTimer()
    launcher = FakeLauncher()
    run = PartRun(key=("j1", 1, 0), message={"spec": {"max_wall_clock": 90}},
                  logs=PartLogs(open_storage(f"file://{tmp_path}"), tmp_path / "spool", "j1", 1, 0))  # fmt: skip
    run.launcher, run.running = launcher, FakeRunning(FakeStep(0))  # type: ignore[assignment]
    clock = WallClock(timer=timer, grace_s=7.0)
    clock.started(run)
    assert timer.armed[0][0] == 90.0
    timer.fire()  # 90 s later
    assert run.stop_reason == "wall_clock"
    assert launcher.stops == [7.0]
    clock.ended(run)
    clock.closed(run)
    assert timer.cancelled == 1  # cancelled once, when the command ended
    run.logs.finish()


def test_the_wall_clock_defaults_to_seven_days() -> None:
    assert WallClock.limit_s({"spec": {}}) == 7 * 86400.0
