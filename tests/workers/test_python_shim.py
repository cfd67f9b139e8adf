"""The Python shim a node's parts import `trainyard` from: parts starting at once on a new node
all get it (it was made in a race: one part's start failed with 127 now and then)."""

from __future__ import annotations

import threading
from pathlib import Path

import trainyard
from trainyard.workers.job_metrics import python_shim


def test_parts_starting_at_once_on_a_new_node_all_get_the_shim(tmp_path: Path) -> None:
    package = Path(trainyard.__file__).resolve().parent
    for round_index in range(30):
        node_dir = tmp_path / f"node-{round_index}"
        barrier = threading.Barrier(8)
        errors: list[BaseException] = []
        shims: list[Path] = []

        def start(barrier: threading.Barrier, node_dir: Path, shims: list[Path], errors: list[BaseException]) -> None:
            barrier.wait()
            try:
                shims.append(python_shim(node_dir))
            except BaseException as exc:  # what made a part's start fail
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(barrier, node_dir, shims, errors)) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert set(shims) == {node_dir / "python"}
        assert (node_dir / "python" / "trainyard").resolve() == package
        assert sorted(p.name for p in (node_dir / "python").iterdir()) == ["trainyard"]
