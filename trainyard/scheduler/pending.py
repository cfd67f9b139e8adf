"""Why a job is pending, in words a user understands; and the submit-time check for jobs that never fit."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import repeat
from typing import TYPE_CHECKING

from trainyard.scheduler.views import EPSILON, JobView, NodeView, Reservation

if TYPE_CHECKING:
    from trainyard.scheduler.capacity import NodeState

# Past this many jobs ahead, "behind N jobs" keeps two significant digits ("4,200+"): the text
# then changes rarely, and the loop only writes reasons that changed.
EXACT_POSITION_BELOW = 100


def plural(count: int, word: str) -> str:
    return f"{count:,} {word}" if count == 1 else f"{count:,} {word}s"


def about(seconds: float) -> str:
    """A rough duration: "~40 s", "~12 min", "~5 h", "~3 d"."""
    seconds = max(seconds, 1.0)
    if seconds < 90:
        return f"~{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"~{seconds / 60:.0f} min"
    if seconds < 36 * 3600:
        return f"~{seconds / 3600:.0f} h"
    return f"~{seconds / 86400:.0f} d"


def bytes_text(memory_bytes: int) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if memory_bytes >= size:
            return (
                f"{memory_bytes / size:g} {unit}" if memory_bytes % size == 0 else f"{memory_bytes / size:.1f} {unit}"
            )
    return f"{memory_bytes} bytes"


def share_text(job: JobView, free: str = "free ") -> str:
    """What the job asks of each node: "4 free GPUs", "2 free CPUs and 8 GiB free memory"."""
    asks: list[str] = []
    if job.gpus:
        asks.append(f"{job.gpus} {free}GPU{'s' if job.gpus != 1 else ''}")
    if not job.gpus or job.cpus > 1 + EPSILON:
        asks.append(f"{job.cpus:g} {free}CPU{'s' if abs(job.cpus - 1) > EPSILON else ''}")
    if job.memory_bytes is not None:
        asks.append(f"{bytes_text(job.memory_bytes)} {free}memory")
    return asks[0] if len(asks) == 1 else ", ".join(asks[:-1]) + " and " + asks[-1]


def needs(job: JobView, nodes_with_room: int) -> str:
    """ "needs 2 nodes with 4 free GPUs in pool gpu; 1 has them"."""
    verb = "has" if nodes_with_room == 1 else "have"
    asks = f"{plural(job.nodes, 'node')} with {share_text(job)} in pool {job.pool}"
    return f"needs {asks}; {nodes_with_room:,} {verb} them"


def missing_host_volumes(job: JobView, having: int) -> str:
    """ "needs 2 nodes with host volume /data in pool p; 1 declares it (…)"."""
    paths = ", ".join(job.host_paths)
    what = f"host volume{'s' if len(job.host_paths) > 1 else ''} {paths}"
    verb = "declares" if having == 1 else "declare"
    return (
        f"needs {plural(job.nodes, 'node')} with {what} in pool {job.pool}; {having:,} {verb} "
        f"{'them' if len(job.host_paths) > 1 else 'it'} (a node declares its host volumes with "
        "`trainyard worker --host-volume PATH`)"
    )


def reserved_for_it(reservation: Reservation, now_s: float) -> str:
    count = len(reservation.node_ids)
    when = about(reservation.expected_start_s - now_s)
    return f"{plural(count, 'node')} reserved for it, expected to start in {when}"


def waiting_for_reservation(reservation: Reservation, now_s: float) -> str:
    count = len(reservation.node_ids)
    when = about(reservation.expected_start_s - now_s)
    return f"waiting for {plural(count, 'node')} reserved for job {reservation.job_id} (expected in {when})"


def preempting(new_victims: int, stopping: int) -> str:
    if new_victims:
        return f"preempting {plural(new_victims, 'lower-priority job')} to make room"
    return f"waiting for {plural(stopping, 'preempted job')} to exit"


def too_big(big_enough: int, big_enough_draining: int, pool: str) -> str:
    if big_enough == 0:
        text = f"no node in pool {pool} is big enough"
    else:
        text = f"only {plural(big_enough, 'node')} in pool {pool} {'is' if big_enough == 1 else 'are'} big enough"
    if big_enough_draining:
        text += f" ({big_enough_draining:,} more draining)"
    return text


def sweep_limit(limit: int) -> str:
    return f"sweep concurrency limit {limit:,} reached"


def workspace_quota(workspace: str, quota: int, in_use: int, need: int) -> str:
    used = f"{in_use:,} of {quota:,} GPUs in use"
    return f"workspace {workspace} GPU quota reached: {used}, this job needs {need:,}"


def pool_unavailable(pool: str, draining: int, unready: dict[str, int] | None = None) -> str:
    if unready:
        states = []
        if unready.get("preparing"):
            states.append(f"{unready['preparing']:,} preparing (running the pool's setup task)")
        if unready.get("unusable"):
            states.append(f"{unready['unusable']:,} unusable (setup task failed: see `trainyard node logs ID`)")
        if draining:
            states.append(f"{draining:,} draining")
        return f"no node of pool {pool} takes work yet: " + ", ".join(states)
    if not draining:
        return f"no nodes in pool {pool}"
    if draining == 1:
        return f"draining: the only node in pool {pool} takes no new work"
    return f"draining: all {draining:,} nodes in pool {pool} take no new work"


def pool_busy(nodes: Iterable[NodeState]) -> str:
    """ "3 of 3 slots busy", "4 of 8 slots and 2 of 2 GPUs busy": how full the pool is now."""
    slots = used = 0.0
    gpus = gpus_used = 0
    for node in nodes:
        slots += node.cpus
        used += node.cpus - node.free_cpus
        gpus += node.gpu_count
        gpus_used += node.gpu_count - len(node.free_gpus)
    text = f"{max(used, 0.0):g} of {slots:g} slots"
    if gpus:
        text += f" and {gpus_used:,} of {gpus:,} GPUs"
    return text + " busy"


def waiting_for_room(job: JobView, nodes_with_room: int, busy: str | None) -> str:
    """The first job of its shape that does not fit: "waiting for a free slot in pool default (3 of 3
    slots busy)", or for a gang or a bigger share what it needs and how many nodes have it."""
    if job.nodes == 1 and not job.gpus and job.memory_bytes is None and job.cpus <= 1 + EPSILON:
        text = f"waiting for a free slot in pool {job.pool}"
    else:
        text = needs(job, nodes_with_room)
    return f"{text} ({busy})" if busy else text


def behind(jobs_ahead: int, pool: str, busy: str | None = None) -> tuple[str, int]:
    """ "behind 37 jobs in the queue for pool gpu", and the count from which the text changes.

    Near the head of the queue the text also says how busy the pool is (it changes as jobs start
    and end, but only for those few jobs); further back it changes rarely, so the loop rewrites
    few of them.
    """
    if jobs_ahead < EXACT_POSITION_BELOW:
        text = f"behind {plural(jobs_ahead, 'job')} in the queue for pool {pool}"
        return (f"{text} ({busy})" if busy else text), jobs_ahead + 1
    step = 10 ** (len(str(jobs_ahead)) - 2)
    floor = jobs_ahead // step * step
    return f"behind {floor:,}+ jobs in the queue for pool {pool}", floor + step


class QueuePosition:
    """Counts, per pool, the jobs ahead that also wait for room, and words it."""

    def __init__(self, busy: Callable[[str], str | None] | None = None) -> None:
        self._busy = busy or (lambda _pool: None)
        self._ahead: dict[str, int] = {}
        self._text: dict[str, tuple[int, str]] = {}  # pool → (count it stops being right at, text)

    def count(self, pool: str) -> None:
        self._ahead[pool] = self._ahead.get(pool, 0) + 1

    def behind(self, pool: str) -> str:
        """The reason for a job waiting behind others, which then counts as ahead of the next."""
        jobs_ahead = self._ahead.get(pool, 0)
        self._ahead[pool] = jobs_ahead + 1
        cached = self._text.get(pool)
        if cached is not None and jobs_ahead < cached[0]:
            return cached[1]
        text, changes_at = behind(jobs_ahead, pool, self._busy(pool) if jobs_ahead < EXACT_POSITION_BELOW else None)
        self._text[pool] = (changes_at, text)
        return text

    def behind_many(self, pool: str, count: int) -> list[str]:
        """`behind()` for `count` jobs in a row, built a run of equal texts at a time."""
        first = self._ahead.get(pool, 0)
        end = first + count
        texts: list[str] = []
        position = first
        while position < end:
            text, changes_at = behind(position, pool, self._busy(pool) if position < EXACT_POSITION_BELOW else None)
            run = min(changes_at, end) - position
            texts.extend(repeat(text, run))
            position += run
        self._ahead[pool] = end
        return texts


def never_fits(job: JobView, nodes: list[NodeView], gpu_quota: int | None = None) -> str | None:
    """Why the job can never run on its pool as it stands (draining nodes count), or None.

    A pool with no nodes yet says nothing: nodes may still join.
    """
    if gpu_quota is not None and job.gpus * job.nodes > gpu_quota:
        return f"asks for {plural(job.gpus * job.nodes, 'GPU')} in all but the workspace's GPU quota is {gpu_quota:,}"
    pool_nodes = [node for node in nodes if node.pool == job.pool]
    if not pool_nodes:
        return None
    if job.nodes > len(pool_nodes):
        return f"asks for {plural(job.nodes, 'node')} but pool {job.pool} has {len(pool_nodes):,}"
    single = _single_dimension_too_big(job, pool_nodes)
    if single is not None:
        return single
    big_enough = sum(1 for node in pool_nodes if _is_big_enough(node, job))
    if big_enough >= job.nodes:
        return None
    return (
        f"needs {plural(job.nodes, 'node')} with {share_text(job, free='')} each but only "
        f"{plural(big_enough, 'node')} in pool {job.pool} {'is' if big_enough == 1 else 'are'} that big"
    )


def _single_dimension_too_big(job: JobView, pool_nodes: list[NodeView]) -> str | None:
    largest_gpus = max(len(node.gpus) for node in pool_nodes)
    if job.gpus > largest_gpus:
        largest = f"the largest node in pool {job.pool} has {largest_gpus:,}"
        return f"asks {plural(job.gpus, 'GPU')} per node but {largest}"
    largest_cpus = max(node.cpus for node in pool_nodes)
    if job.cpus > largest_cpus + EPSILON:
        return f"asks {job.cpus:g} CPUs per node but the largest node in pool {job.pool} has {largest_cpus:g}"
    memories = [node.memory_bytes for node in pool_nodes if node.memory_bytes is not None]
    if job.memory_bytes is not None and len(memories) == len(pool_nodes) and job.memory_bytes > max(memories):
        return (
            f"asks {bytes_text(job.memory_bytes)} memory per node but the largest node in pool {job.pool} "
            f"has {bytes_text(max(memories))}"
        )
    return None


def _is_big_enough(node: NodeView, job: JobView) -> bool:
    if node.cpus + EPSILON < job.cpus or len(node.gpus) < job.gpus:
        return False
    return job.memory_bytes is None or node.memory_bytes is None or node.memory_bytes >= job.memory_bytes
