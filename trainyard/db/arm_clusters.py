"""Batch AI clusters and file servers of the /arm surface: which trainyard pool or volume each one is.

A cluster is a name in a workspace for a trainyard pool: `ArmCluster.pool` is the pool its nodes
register in and its jobs run on (`pool_name` derives it: `<workspace>.<cluster>`, or a shortened
form with a digest when that is too long or not a valid pool name). A file server is a name in a
workspace for a registered host volume (an NFS export the nodes already mount) of the same
workspace: `ArmFileServer.volume`.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from trainyard.db.models import Base, Pool, UTCDateTime, utcnow

POOL_NAME_MAX = 64
_POOL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_DIGEST_CHARS = 10
# A pool's settings its setup and volume routes own (api.pools.OTHER_SETTINGS): a deleted cluster drops them.
POOL_PART_SETTINGS = ("setup", "volumes")


class ArmCluster(Base):
    """A Batch AI cluster: the pool it is, and what its create body said that the pool does not hold."""

    __tablename__ = "arm_clusters"

    workspace: Mapped[str] = mapped_column(ForeignKey("arm_workspaces.name", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    pool: Mapped[str] = mapped_column(String(64), unique=True)
    vm_size: Mapped[str] = mapped_column(String(64))
    vm_priority: Mapped[str] = mapped_column(String(16), default="dedicated")
    # The ClusterBaseProperties as given, secrets and passwords left out: what GET echoes.
    properties: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # When its scale settings last changed (create, PATCH): Batch AI's allocationStateTransitionTime.
    scaled_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    @property
    def lowpriority(self) -> bool:
        """Its jobs may be preempted (Batch AI's low-priority VMs could be taken away at any time)."""
        return self.vm_priority == "lowpriority"


class ArmFileServer(Base):
    """A Batch AI file server: a registered host volume of its workspace, named alike."""

    __tablename__ = "arm_file_servers"

    workspace: Mapped[str] = mapped_column(ForeignKey("arm_workspaces.name", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    volume: Mapped[str] = mapped_column(String(63))
    # The FileServerBaseProperties as given (vmSize, dataDisks, sshConfiguration without secrets, subnet).
    properties: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


def pool_name(workspace: str, cluster: str) -> str:
    """The pool a cluster's nodes join: `<workspace>.<cluster>` (neither name may hold a '.'), or, when
    that is over 64 characters or not a valid pool name, an ASCII prefix of it plus a digest of both."""
    plain = f"{workspace}.{cluster}"
    if len(plain) <= POOL_NAME_MAX and _POOL_NAME.match(plain):
        return plain
    digest = hashlib.sha256(f"{workspace}/{cluster}".encode()).hexdigest()[:_DIGEST_CHARS]
    prefix = re.sub(r"[^A-Za-z0-9_.-]", "_", plain)[: POOL_NAME_MAX - _DIGEST_CHARS - 1].lstrip("_.-")
    return f"{prefix}-{digest}" if prefix else f"c-{digest}"


def cluster_named(session: Session, workspace: str, name: str) -> ArmCluster | None:
    """The cluster of that name in that workspace (names compare as given; Batch AI's are case-sensitive)."""
    return session.get(ArmCluster, (workspace, name))


def cluster_of_pool(session: Session, pool: str) -> ArmCluster | None:
    """The cluster a pool belongs to, if it was made through /arm."""
    return session.scalars(select(ArmCluster).where(ArmCluster.pool == pool)).first()


def empty_pool(session: Session, pool_name: str) -> None:
    """Scale a deleted cluster's pool to 0: the autoscaler stops its nodes, their jobs end cancelled (as on
    Azure). Its setup task (with encrypted secrets) and volumes go; the row stays, as pools are cheap."""
    pool = session.get(Pool, pool_name)
    if pool is None:
        return
    settings = {k: v for k, v in (pool.settings or {}).items() if k not in POOL_PART_SETTINGS}
    settings.update({"target": 0, "autoscale": False, "deallocation": "terminate"})
    pool.min_nodes, pool.max_nodes, pool.settings = 0, 0, settings


def forget_workspace(session: Session, workspace: str) -> list[str]:
    """A workspace being deleted: empty its clusters' pools and forget its clusters and file servers.
    Returns the pools emptied. (The rows would cascade with the workspace; the pools would not shrink.)"""
    clusters = list(session.scalars(select(ArmCluster).where(ArmCluster.workspace == workspace)))
    for cluster in clusters:
        empty_pool(session, cluster.pool)
        session.delete(cluster)
    for server in session.scalars(select(ArmFileServer).where(ArmFileServer.workspace == workspace)):
        session.delete(server)
    return [cluster.pool for cluster in clusters]


__all__ = [
    "ArmCluster",
    "ArmFileServer",
    "cluster_named",
    "cluster_of_pool",
    "empty_pool",
    "forget_workspace",
    "pool_name",
]
