"""Small builders for scheduler snapshots: nodes, queued jobs, and running jobs that hold room."""

from __future__ import annotations

from trainyard.scheduler.placement import JobView, NodeView, RunningPart, RunningView

NOW_S = 10_000.0


def node(node_id: str, *, gpus: int = 4, cpus: float = 16, pool: str = "gpu", schedulable: bool = True) -> NodeView:
    return NodeView(
        id=node_id, pool=pool, address=f"10.0.0.{len(node_id)}", cpus=cpus, gpus=list(range(gpus)),
        free_cpus=cpus, free_gpus=list(range(gpus)), schedulable=schedulable,
    )  # fmt: skip


def job(job_id: str, seq: int, **fields: object) -> JobView:
    defaults: dict[str, object] = {"pool": "gpu", "priority": 500, "submitted_s": NOW_S}
    defaults.update(fields)
    return JobView(id=job_id, seq=seq, **defaults)  # type: ignore[arg-type]


def occupy(
    nodes: list[NodeView], job_id: str, *, gpus: int = 0, cpus: float = 1, priority: int = 500,
    preemptible: bool = False, ends_in_s: float = 3600, stopping: bool = False, attempt: int = 1,
) -> RunningView:  # fmt: skip
    """A running job holding `gpus`/`cpus` on each of `nodes` (taken from their free room)."""
    parts = []
    for view in nodes:
        taken, view.free_gpus = view.free_gpus[:gpus], view.free_gpus[gpus:]
        view.free_cpus -= cpus
        parts.append(RunningPart(node_id=view.id, cpus=cpus, gpus=taken))
    return RunningView(
        job_id=job_id, attempt=attempt, priority=priority, preemptible=preemptible,
        node_ids=[view.id for view in nodes], expected_end_s=NOW_S + ends_in_s, parts=parts, stopping=stopping,
    )  # fmt: skip
