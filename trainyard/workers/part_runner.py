"""Running one part on a node: one runner, and small hooks for what happens around the command.

`PartRunner.run` takes a part from its message to its exit report, always in the same steps:

1. context (the launch context, the launcher, the part's logs), then each hook's `prepare`
   (staging puts code, inputs and the checkpoint in place; volumes are mounted; the rsh relay
   is made);
2. the spec's `prepare` script, then the command; each hook's `started` (the wall clock and the
   checkpoint syncer start, the relay serves), then `part_started` is reported;
3. the command ends, its output is drained; each hook's `ended`, in order (staging uploads
   outputs and the checkpoint and may fail the part; volumes are flushed and unmounted; the
   relay closes; metrics are read);
4. always, each hook's `closed`, in reverse order (timers cancelled, leftovers removed); then
   the logs are finished and `part_exited` is reported.

A part that cannot start (a staging error, a failed `prepare`) skips to step 4 with the
reason and status `start_failure` gives it. The hooks hold no state between parts; what one
part needs lives on its `PartRun`. Time is passed in (`WallClock(timer=…)`), so the rules are
tested with a fake clock.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import redis

from trainyard.storage_adapters import Storage
from trainyard.workers import checkpoint_sync, staging, volumes
from trainyard.workers.deadlines import NODE_DEADLINES, Deadline
from trainyard.workers.job_metrics import TAIL_PERIOD_S, MetricsTail, metrics_file, read_metrics
from trainyard.workers.launchers import LaunchContext, Launcher, PrepareFailed, RunningPart, launcher_for
from trainyard.workers.launchers.rsh_relay import NO_RELAY, NoRelay, RshRelay, relay_for
from trainyard.workers.logpump import PartLogs

log = logging.getLogger(__name__)

PUMP_DRAIN_TIMEOUT_S = 5.0
DEFAULT_WALL_CLOCK_S = 7 * 86400.0
WALL_CLOCK_GRACE_S = 10.0


@dataclass
class PartRun:
    """One part's run on this node: what each step made, for the steps after it."""

    key: tuple[str, int, int]
    message: dict[str, Any]
    logs: PartLogs
    ctx: LaunchContext | None = None
    launcher: Launcher | None = None
    running: RunningPart | None = None
    staged: staging.StagedPart | None = None
    relay: RshRelay | NoRelay = NO_RELAY
    stop_reason: str | None = None
    exit_code: int = 0
    start_failed: bool = False
    report: dict[str, Any] = field(default_factory=dict)  # more fields for the exit report (metrics)
    timer: Any = None
    syncer: Any = None
    metrics_tailer: Any = None

    def say(self, text: str) -> None:
        """A line from trainyard itself in the part's stderr log."""
        self.logs.streams["stderr"].append(text.encode())

    def stop(self, reason: str, grace_s: float) -> None:
        """End the running command (its whole process tree) with this reason."""
        self.stop_reason = reason
        if self.running is not None and self.launcher is not None:
            self.launcher.stop(self.running, grace_s=grace_s)


class Hook:
    """A step around a part's command; this one does nothing: subclasses override the steps they need."""

    def prepare(self, run: PartRun) -> None:
        pass

    def started(self, run: PartRun) -> None:
        pass

    def ended(self, run: PartRun) -> None:
        pass

    def closed(self, run: PartRun) -> None:
        pass


class Staging(Hook):
    """Code, inputs and the checkpoint in before the command; outputs, checkpoint, manifest out after."""

    def __init__(self, storage: Storage, node_dir: Path, node_id: str):
        self.storage, self.node_dir, self.node_id = storage, node_dir, node_id

    def prepare(self, run: PartRun) -> None:
        assert run.ctx is not None
        run.staged = staging.stage(self.storage, self.node_dir, self.node_id, run.ctx)

    def ended(self, run: PartRun) -> None:
        assert run.ctx is not None and run.staged is not None
        run.exit_code = staging.finish(self.storage, run.ctx, run.staged, run.exit_code,
                                       run.logs.streams["stderr"].append)  # fmt: skip

    def closed(self, run: PartRun) -> None:
        if run.start_failed and run.staged is not None:
            shutil.rmtree(run.staged.attempt_dir, ignore_errors=True)


class Volumes(Hook):
    """The part's volumes, mounted after staging (TRAINYARD_VOLUME_<NAME>), released at its end."""

    def __init__(self, node_dir: Path):
        self.node_dir = node_dir

    def prepare(self, run: PartRun) -> None:
        assert run.ctx is not None
        volumes.mount_part(self.node_dir, run.ctx)  # raises MountFailed: reason mount_failed

    def ended(self, run: PartRun) -> None:
        # Flushed and unmounted: a job whose writes did not reach the store fails.
        run.exit_code = volumes.finish_part(self.node_dir, run.key, run.exit_code, run.logs.streams["stderr"].append)

    def closed(self, run: PartRun) -> None:
        volumes.release_part(self.node_dir, run.key)  # nothing left half-mounted (a no-op once released)


class CheckpointSync(Hook):
    """TRAINYARD_CHECKPOINT_DIR synced every checkpoint_interval_s while the command runs: it survives a dead node."""

    def __init__(self, storage: Storage):
        self.storage = storage

    def started(self, run: PartRun) -> None:
        assert run.ctx is not None
        run.syncer = checkpoint_sync.start(self.storage, run.ctx)

    def ended(self, run: PartRun) -> None:
        self.closed(run)  # stopped before staging saves the final checkpoint

    def closed(self, run: PartRun) -> None:
        if run.syncer is not None:
            run.syncer.stop()
            run.syncer = None


class Relay(Hook):
    """MPI's daemons reach a gang's part from other nodes through this relay (no ssh)."""

    def __init__(self, client: redis.Redis):
        self.client = client

    def prepare(self, run: PartRun) -> None:
        assert run.ctx is not None and run.launcher is not None
        run.relay = relay_for(run.launcher, self.client, run.ctx, run.logs)

    def started(self, run: PartRun) -> None:
        assert run.launcher is not None and run.running is not None
        run.relay.serve(run.launcher, run.running)

    def ended(self, run: PartRun) -> None:
        run.relay.close()  # after staging's finish: the spawned daemons' output is in the logs
        run.relay = NO_RELAY

    def closed(self, run: PartRun) -> None:
        run.relay.close()  # a part that failed to start, or whose end was cut short


TimerFactory = Callable[[float, Callable[[], None]], Any]


def _node_timer(delay_s: float, action: Callable[[], None]) -> Deadline:
    """On the node's one deadline thread; the action (stopping a process tree) gets a thread of its own."""
    return NODE_DEADLINES.call_later(delay_s, lambda: threading.Thread(target=action, daemon=True).start())


class WallClock(Hook):
    """max_wall_clock, enforced on the node itself: it holds even while the scheduler is away."""

    def __init__(self, timer: TimerFactory = _node_timer, grace_s: float = WALL_CLOCK_GRACE_S):
        self.timer, self.grace_s = timer, grace_s

    @staticmethod
    def limit_s(message: dict[str, Any]) -> float:
        return float(message["spec"].get("max_wall_clock") or DEFAULT_WALL_CLOCK_S)

    def started(self, run: PartRun) -> None:
        run.timer = self.timer(self.limit_s(run.message), lambda: run.stop("wall_clock", self.grace_s))

    def ended(self, run: PartRun) -> None:
        self.closed(run)  # the command is over: uploading its outputs is not its wall clock

    def closed(self, run: PartRun) -> None:
        if run.timer is not None:
            run.timer.cancel()
            run.timer = None


Publish = Callable[[dict[str, Any]], None]


class _MetricsTailer:
    """Sends what rank 0's `trainyard.report` appended as `metrics` events; polled by `_TailerThread`."""

    def __init__(self, run: PartRun, path: Path, publish: Publish, poller: _TailerThread):
        self.key, self.tail, self.publish, self.poller = run.key, MetricsTail(path), publish, poller
        self._lock = threading.Lock()  # one read at a time: the poller's and the final one keep their order
        poller.add(self)

    def send(self) -> None:
        with self._lock:
            start, end, points = self.tail.read()
            if points:
                job_id, attempt, rank = self.key
                self.publish({"kind": "metrics", "job_id": job_id, "attempt": attempt, "rank": rank,
                              "offset": start, "end": end, "points": points})  # fmt: skip

    def close(self) -> None:
        """Stop, then send the rest: it goes out before the exit report (the outbox keeps the order)."""
        self.poller.remove(self)
        self.send()


class _TailerThread:
    """One thread per node reads every running part's metrics file each period (not a thread per part)."""

    def __init__(self, period_s: float):
        self.period_s = period_s
        self._tailers: dict[int, _MetricsTailer] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, tailer: _MetricsTailer) -> None:
        with self._lock:
            self._tailers[id(tailer)] = tailer
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="metrics-tail", daemon=True)
                self._thread.start()

    def remove(self, tailer: _MetricsTailer) -> None:
        with self._lock:
            self._tailers.pop(id(tailer), None)

    def _loop(self) -> None:
        while True:
            time.sleep(self.period_s)
            with self._lock:
                tailers = list(self._tailers.values())
            for tailer in tailers:
                try:
                    tailer.send()
                except Exception:  # one part's unreadable file must not stop the others' metrics
                    log.warning("metrics of part %s could not be read", tailer.key, exc_info=True)


class Metrics(Hook):
    """`trainyard.report` lines go to the scheduler while rank 0 runs, and the last values into the exit report."""

    def __init__(self, publish: Publish | None = None, period_s: float = TAIL_PERIOD_S):
        self.publish, self.period_s = publish, period_s
        self._poller = _TailerThread(period_s)  # started with the first part that reports

    def started(self, run: PartRun) -> None:
        if self.publish is not None and run.ctx is not None and run.key[2] == 0:
            run.metrics_tailer = _MetricsTailer(run, metrics_file(run.ctx.workdir), self.publish, self._poller)

    def ended(self, run: PartRun) -> None:
        assert run.ctx is not None
        self._stop_tailer(run)
        run.report.update(read_metrics(metrics_file(run.ctx.workdir)))

    def closed(self, run: PartRun) -> None:
        self._stop_tailer(run)
        if run.ctx is not None and not run.start_failed:
            staging.remove_tree(run.ctx.workdir)

    @staticmethod
    def _stop_tailer(run: PartRun) -> None:
        if run.metrics_tailer is not None:
            tailer, run.metrics_tailer = run.metrics_tailer, None
            tailer.close()


class PartSteps(Protocol):
    """What the runner asks of its node agent."""

    def context(self, message: dict[str, Any]) -> LaunchContext: ...
    def run_prepare(self, run: PartRun) -> None: ...
    def started(self, run: PartRun) -> None: ...
    def finished(self, run: PartRun, complete: bool) -> None: ...


def _launcher(name: str, image: str | None) -> Launcher:
    return launcher_for(name, image=image)


class PartRunner:
    def __init__(self, hooks: Sequence[Hook], steps: PartSteps,
                 make_launcher: Callable[[str, str | None], Launcher] = _launcher):  # fmt: skip
        self.hooks, self.steps, self.make_launcher = list(hooks), steps, make_launcher

    def run(self, run: PartRun) -> int:
        """Run the part to its end; returns its exit status (what the exit report says)."""
        try:
            self._start(run)
        except Exception as exc:
            run.start_failed = True
            run.say(f"trainyard: could not start the job: {exc}\n")
            if not isinstance(exc, (PrepareFailed, staging.StagingError)):  # trainyard's own trouble: say where
                log.warning("part %s could not start", run.key, exc_info=True)
            run.stop_reason, run.exit_code = start_failure(exc)
            self._close(run)
            return run.exit_code
        self.steps.started(run)
        assert run.running is not None and run.launcher is not None
        launcher = run.launcher
        pumps = [run.logs.pump_pipes(run.running.stdout_fd, run.running.stderr_fd)]
        run.exit_code = launcher.wait(run.running)
        for pump in pumps:
            pump.join(PUMP_DRAIN_TIMEOUT_S)
        if any(p.is_alive() for p in pumps):
            # A background child still holds the pipe: the part is over, so end its whole tree.
            launcher.stop(run.running, grace_s=1.0)
            for pump in pumps:  # what the tree wrote before it died is still in the pipe
                pump.join(PUMP_DRAIN_TIMEOUT_S)
        try:
            for hook in self.hooks:
                hook.ended(run)
        finally:
            self._close(run)
        return run.exit_code

    def _start(self, run: PartRun) -> None:
        run.ctx = self.steps.context(run.message)
        run.launcher = self.make_launcher(str(run.message["spec"].get("launcher", "process")), run.ctx.image)
        for hook in self.hooks:
            hook.prepare(run)
        self.steps.run_prepare(run)
        run.running = run.launcher.start(run.ctx)
        for hook in self.hooks:
            hook.started(run)

    def _close(self, run: PartRun) -> None:
        try:
            for hook in reversed(self.hooks):
                hook.closed(run)
        finally:
            complete = run.logs.finish()
            self.steps.finished(run, complete)


def start_failure(exc: Exception) -> tuple[str, int]:
    """(reason, exit status) of a part that could not start."""
    if isinstance(exc, PrepareFailed):
        return exc.reason, exc.exit_code
    return ("prepare_failed" if isinstance(exc, staging.StagingError) else "exit"), 127
