"""Limits that hold a job back whatever the room: its sweep's max_concurrency and its workspace's GPU quota."""

from __future__ import annotations

from trainyard.scheduler import pending
from trainyard.scheduler.views import JobView, Snapshot


class QueueLimits:
    """Counts what is running plus what this pass places, and says when a job would go over."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._sweep_max = snapshot.sweep_max_concurrency
        self._sweep_running = dict(snapshot.sweep_running)
        self.quota = snapshot.workspace_gpu_quota
        self._gpus_in_use = dict(snapshot.workspace_gpus_in_use)
        # Thousands of jobs of one sweep or workspace share one reason: format it once.
        self._texts: dict[tuple[str, int, int], str] = {}  # (workspace or "" for sweeps, count, need)

    def may_apply(self, job: JobView) -> bool:
        """Cheap first look, so most jobs skip `blocked()` entirely."""
        return job.sweep_id is not None or (job.gpus > 0 and job.workspace in self.quota)

    def blocked(self, job: JobView) -> str | None:
        if job.sweep_id is not None:
            limit = self._sweep_max.get(job.sweep_id)
            if limit is not None and self._sweep_running.get(job.sweep_id, 0) >= limit:
                return self._sweep_text(limit)
        quota = self.quota.get(job.workspace) if job.gpus else None
        if quota is not None:
            in_use = self._gpus_in_use.get(job.workspace, 0)
            if in_use + job.gpus * job.nodes > quota:
                return self._quota_text(job.workspace, in_use, job.gpus * job.nodes)
        return None

    def blocked_sweeps(self) -> dict[str | None, str]:
        """Sweep id → reason, for every sweep at its limit now."""
        return {
            sweep_id: self._sweep_text(limit)
            for sweep_id, limit in self._sweep_max.items()
            if self._sweep_running.get(sweep_id, 0) >= limit
        }

    def charge(self, job: JobView) -> None:
        if job.sweep_id is not None:
            self._sweep_running[job.sweep_id] = self._sweep_running.get(job.sweep_id, 0) + 1
        if job.gpus:
            self._gpus_in_use[job.workspace] = self._gpus_in_use.get(job.workspace, 0) + job.gpus * job.nodes

    def _sweep_text(self, limit: int) -> str:
        key = ("", limit, 0)
        text = self._texts.get(key)
        if text is None:
            text = self._texts[key] = pending.sweep_limit(limit)
        return text

    def _quota_text(self, workspace: str, in_use: int, need: int) -> str:
        key = (workspace, in_use, need)
        text = self._texts.get(key)
        if text is None:
            text = self._texts[key] = pending.workspace_quota(workspace, self.quota[workspace], in_use, need)
        return text
