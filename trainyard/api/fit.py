"""Refuse at submit a job that can never fit its pool: it would otherwise wait for ever."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from trainyard.db.jobs import NewJob
from trainyard.db.models import Node
from trainyard.scheduler.pending import never_fits
from trainyard.scheduler.views import JobView, NodeView
from trainyard.spec import FITTING_NODE_STATES


def _pool_nodes(session: Session, pools: set[str]) -> list[NodeView]:
    nodes = session.scalars(select(Node).where(Node.pool.in_(pools), Node.state.in_(FITTING_NODE_STATES)))
    return [
        NodeView(id=n.id, pool=n.pool, address=n.address, cpus=float(n.slots), gpus=list(n.gpus),
                 free_cpus=float(n.slots), free_gpus=list(n.gpus), memory_bytes=n.memory_bytes,
                 free_memory_bytes=n.memory_bytes)
        for n in nodes
    ]  # fmt: skip


def unfit_problems(
    session: Session, new_jobs: Sequence[NewJob], batch: bool, gpu_quotas: Mapping[str, int]
) -> list[dict[str, str]]:
    """One problem per job that no node set of its pool could ever run (a pool without nodes passes);
    `gpu_quotas` are the workspaces' (TRAINYARD_GPU_QUOTAS)."""
    nodes = _pool_nodes(session, {new.spec.pool for new in new_jobs})
    verdicts: dict[tuple[object, ...], str | None] = {}
    problems = []
    for index, new in enumerate(new_jobs):
        spec = new.spec
        shape = (spec.pool, spec.nodes, spec.resources.cpus, spec.resources.gpus, spec.resources.memory_bytes,
                 spec.workspace)  # fmt: skip
        if shape not in verdicts:
            view = JobView(id="", pool=spec.pool, priority=spec.priority, seq=0, workspace=spec.workspace,
                           nodes=spec.nodes, cpus=spec.resources.cpus, gpus=spec.resources.gpus,
                           memory_bytes=spec.resources.memory_bytes)  # fmt: skip
            verdicts[shape] = never_fits(view, nodes, gpu_quotas.get(spec.workspace))
        reason = verdicts[shape]
        if reason:
            field = f"jobs[{index}].resources" if batch else "resources"
            problems.append({"field": field, "reason": f"can never run: {reason}"})
    return problems
