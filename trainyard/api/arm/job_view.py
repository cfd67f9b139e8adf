"""A trainyard job as a Batch AI Job resource: the JobCreateParameters it was made from (secret values
left out) plus toolType, provisioningState, executionState and executionInfo read off the job row.

executionState: queued (queued, scheduled), running, terminating (running with a cancel requested),
succeeded, failed (failed and cancelled: Batch AI ended a terminated job as failed).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from trainyard.api.arm.common import WorkspaceIds, arm_time, envelope, resource_id, resource_type
from trainyard.db.models import ArmJob, Attempt, Job

TOOL_TYPES = {
    "cntkSettings": "cntk",
    "tensorFlowSettings": "tensorflow",
    "caffeSettings": "caffe",
    "caffe2Settings": "caffe2",
    "chainerSettings": "chainer",
    "horovodSettings": "horovod",
    "customMpiSettings": "custommpi",
    "customToolkitSettings": "custom",
    "pyTorchSettings": "custom",  # 2018-05-01's ToolType has no PyTorch member
}
_EXECUTION_STATES = {"queued": "queued", "scheduled": "queued", "running": "running", "succeeded": "succeeded"}


def without_secret_values(properties: dict[str, Any]) -> dict[str, Any]:
    """The properties to keep and show: `secrets[].value` and registry passwords removed (write-only)."""
    kept = copy.deepcopy(properties)
    for item in kept.get("secrets") or []:
        if isinstance(item, dict):
            item.pop("value", None)
    registry = (kept.get("containerSettings") or {}).get("imageSourceRegistry")
    credentials = registry.get("credentials") if isinstance(registry, dict) else None
    if isinstance(credentials, dict):
        credentials.pop("password", None)
    return kept


def execution_state(job: Job) -> str:
    if job.state in ("failed", "cancelled"):
        return "failed"
    if job.cancel_requested and job.state != "succeeded":
        return "terminating"
    return _EXECUTION_STATES.get(job.state, "queued")


def _errors(job: Job, last: Attempt | None) -> list[dict[str, Any]]:
    if job.state not in ("failed", "cancelled"):
        return []
    reason = job.end_reason or (last.reason if last is not None else None) or job.state
    if job.state == "cancelled":
        return [{"code": "JobTerminated", "message": "The job was terminated (cancelled)."}]
    message = f"The job failed ({reason}" + (f", exit code {job.exit_code})." if job.exit_code is not None else ").")
    return [{"code": f"Job{reason.title().replace('_', '')}", "message": message}]


def execution_info(job: Job, attempts: Sequence[Attempt]) -> dict[str, Any] | None:
    started = [a.started_at for a in attempts if a.started_at is not None]
    if not started:
        return None
    last = attempts[-1] if attempts else None
    info: dict[str, Any] = {"startTime": arm_time(min(started))}
    if job.ended_at is not None:
        info["endTime"] = arm_time(job.ended_at)
    if job.exit_code is not None:
        info["exitCode"] = job.exit_code
    errors = _errors(job, last)
    if errors:
        info["errors"] = errors
    return info


def job_body(ids: WorkspaceIds, arm_job: ArmJob, job: Job, attempts: Sequence[Attempt]) -> dict[str, Any]:
    properties = dict(arm_job.properties)
    tool = next((TOOL_TYPES[key] for key in TOOL_TYPES if properties.get(key) is not None), "custom")
    properties.setdefault("nodeCount", job.nodes)
    properties.setdefault("schedulingPriority", "normal")
    created = arm_time(arm_job.created_at)
    properties.update(
        {
            "toolType": tool,
            "creationTime": created,
            "provisioningState": "succeeded",
            "provisioningStateTransitionTime": created,
            "executionState": execution_state(job),
            "executionStateTransitionTime": arm_time(job.ended_at or job.updated_at),
        }
    )
    info = execution_info(job, attempts)
    if info is not None:
        properties["executionInfo"] = info
    path = resource_id(ids, ("experiments", arm_job.experiment), ("jobs", arm_job.name))
    return envelope(path, arm_job.name, resource_type("experiments", "jobs"), properties)
