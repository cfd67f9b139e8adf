"""Batch AI's provider-wide routes under /arm: the operations list and a location's usages.

Usages are counted from trainyard's registered nodes, in vCPUs (a node's CPU slots): a cluster's
live nodes (not lost, not removed) count under its vmSize's family, as dedicated or low priority
by its vmPriority. Every vCPU limit is what all live registered nodes hold together (trainyard has
no cloud quota; its machines are the limit). `Clusters` counts the subscription's clusters against
MAX_CLUSTERS, which cluster creation enforces.
"""

from __future__ import annotations

from collections import defaultdict
from functools import lru_cache
from typing import Any

from fastapi import APIRouter, Depends, Path, Request
from sqlalchemy import func, select

from trainyard.api.arm.common import (
    PROVIDER,
    CloudError,
    PageRequest,
    api_version,
    list_result,
    page_request,
)
from trainyard.api.arm.sizes import VmSizeTable
from trainyard.api.auth import Principal, require
from trainyard.db.arm_clusters import ArmCluster
from trainyard.db.models import ArmWorkspace, Node
from trainyard.spec import NodeState

router = APIRouter()

MAX_CLUSTERS = 1000
LOCATION_PATTERN = r"^[-\w\._]+$"
# Nodes that hold a cluster's vCPUs: every registered node the autoscaler has not removed and that is not lost.
GONE_NODE_STATES = (NodeState.REMOVED.value, NodeState.LOST.value)
_PRIORITIES = (("dedicated", "Dedicated", "Dedicated"), ("lowpriority", "LowPriority", "Low Priority"))

# (resource, verb, operation, description) of each operation this surface serves.
_OPERATIONS = [
    ("workspaces", "read", "List or get Batch AI workspaces", "Lists Batch AI workspaces or gets one"),
    ("workspaces", "write", "Create or update Batch AI workspace", "Creates or updates a Batch AI workspace"),
    ("workspaces", "delete", "Delete Batch AI workspace", "Deletes a Batch AI workspace"),
    ("workspaces/experiments", "read", "List or get Batch AI experiments", "Lists experiments or gets one"),
    ("workspaces/experiments", "write", "Create Batch AI experiment", "Creates a Batch AI experiment"),
    ("workspaces/experiments", "delete", "Delete Batch AI experiment", "Deletes a Batch AI experiment"),
    ("workspaces/experiments/jobs", "read", "List or get Batch AI jobs", "Lists Batch AI jobs or gets one"),
    ("workspaces/experiments/jobs", "write", "Create Batch AI job", "Creates a Batch AI job (a trainyard job)"),
    ("workspaces/experiments/jobs", "delete", "Delete Batch AI job", "Deletes a Batch AI job"),
    ("workspaces/experiments/jobs/terminate", "action", "Terminate Batch AI job", "Terminates a Batch AI job"),
    ("workspaces/experiments/jobs/listOutputFiles", "action", "List Batch AI job output files",
     "Lists the files of a job's output directory"),
    ("workspaces/experiments/jobs/listRemoteLoginInformation", "action",
     "List Batch AI job remote-login information", "Lists the nodes that ran a job"),
    ("workspaces/clusters", "read", "List or get Batch AI clusters",
     "Lists Batch AI clusters or gets the properties of one (a trainyard pool)"),
    ("workspaces/clusters", "write", "Create or update Batch AI cluster",
     "Creates or updates a Batch AI cluster (a trainyard pool)"),
    ("workspaces/clusters", "delete", "Delete Batch AI cluster", "Deletes a Batch AI cluster (scales its pool to 0)"),
    ("workspaces/clusters/listRemoteLoginInformation", "action", "List Batch AI cluster remote-login information",
     "Lists the nodes of a cluster"),
    ("workspaces/fileservers", "read", "List or get Batch AI fileservers",
     "Lists Batch AI fileservers or gets one (a registered NFS volume)"),
    ("workspaces/fileservers", "write", "Create Batch AI fileserver", "Names a registered NFS volume as a fileserver"),
    ("workspaces/fileservers", "delete", "Delete Batch AI fileserver", "Deletes a Batch AI fileserver"),
    ("locations/usages", "read", "Get Batch AI usages", "Gets usages and limits of Batch AI resources"),
    ("operations", "read", "List Batch AI operations", "Lists the operations of the Batch AI provider"),
]  # fmt: skip


def _operation(resource: str, verb: str, operation: str, description: str) -> dict[str, Any]:
    kind = resource.rsplit("/", 1)[-1]
    return {
        "name": f"{PROVIDER}/{resource}/{verb}",
        "display": {"provider": "Microsoft Batch AI (trainyard)", "resource": f"Batch AI {kind}",
                    "operation": operation, "description": description},
        "origin": "user,system",
    }  # fmt: skip


OPERATIONS = [_operation(*row) for row in _OPERATIONS]


@router.get("/providers/Microsoft.BatchAI/operations", summary="Operations of the Batch AI provider")
def list_operations(
    request: Request,
    _version: str = Depends(api_version),
    page: PageRequest = Depends(page_request),
    who: Principal = require("viewer"),
) -> Any:
    rows = page.of(OPERATIONS, lambda op: str(op["name"]))
    return list_result(request, page, rows, lambda op: str(op["name"]), lambda op: op)


@lru_cache(maxsize=4)
def _sizes(setting: str | None) -> VmSizeTable:
    return VmSizeTable.from_setting(setting)


def vm_sizes(request: Request) -> VmSizeTable:
    """The deployment's size table (TRAINYARD_ARM_VM_SIZES over the defaults); CloudError 500 if it is broken."""
    try:
        return _sizes(getattr(request.app.state.settings, "arm_vm_sizes", None))
    except ValueError as exc:
        raise CloudError(500, "InvalidConfiguration", str(exc)) from None


def _usage(value: str, current: int, limit: int, localized: str | None = None) -> dict[str, Any]:
    return {"unit": "Count", "currentValue": current, "limit": limit,
            "name": {"value": value, "localizedValue": localized or value}}  # fmt: skip


def usages(session: Any, who: Principal, subscription_id: str, sizes: VmSizeTable) -> list[dict[str, Any]]:
    """The usage rows of a subscription as the caller sees it (a workspace token: its workspace's clusters)."""
    query = (
        select(ArmCluster)
        .join(ArmWorkspace, ArmWorkspace.name == ArmCluster.workspace)
        .where(func.lower(ArmWorkspace.subscription_id) == subscription_id.lower())
    )
    if who.workspace is not None:
        query = query.where(ArmCluster.workspace == who.workspace)
    clusters = {cluster.pool: cluster for cluster in session.scalars(query)}
    used: dict[tuple[str, str], int] = defaultdict(int)  # (priority, family) → vCPUs
    total = 0
    for pool, slots in session.execute(select(Node.pool, Node.slots).where(Node.state.not_in(GONE_NODE_STATES))):
        total += slots
        cluster = clusters.get(pool)
        if cluster is not None:
            size = sizes.get(cluster.vm_size)
            used[(cluster.vm_priority, size.family if size else "Other")] += slots
    rows = [_usage("Clusters", len(clusters), MAX_CLUSTERS)]
    for priority, value_word, localized_word in _PRIORITIES:
        in_use = sum(v for (p, _family), v in used.items() if p == priority)
        rows.append(_usage(f"Total Cluster {value_word} Regional vCPUs", in_use, total,
                           f"Total Cluster {localized_word} Regional vCPUs"))  # fmt: skip
        families = sorted(set(sizes.families()) | {f for (p, f) in used if p == priority})
        for family in families:
            rows.append(_usage(f"{family} Cluster {value_word} vCPUs", used.get((priority, family), 0), total,
                               f"{family} Cluster {localized_word} vCPUs"))  # fmt: skip
    return rows


@router.get(
    "/subscriptions/{subscription_id}/providers/Microsoft.BatchAI/locations/{location}/usages",
    summary="Usages and limits of Batch AI resources (vCPUs of trainyard's registered nodes)",
)
def list_usages(
    request: Request,
    subscription_id: str = Path(min_length=1, max_length=64),
    location: str = Path(pattern=LOCATION_PATTERN, max_length=64),
    _version: str = Depends(api_version),
    page: PageRequest = Depends(page_request),
    who: Principal = require("viewer"),
) -> Any:
    sizes = vm_sizes(request)
    with request.app.state.sessions() as session:
        rows = page.of(enumerate(usages(session, who, subscription_id, sizes)), lambda r: f"{r[0]:06d}")
    return list_result(request, page, rows, lambda r: f"{r[0]:06d}", lambda r: r[1])
