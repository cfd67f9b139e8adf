"""Example Horovod job for examples/batchai/horovod-2node.json: an allreduce, then rank 0 writes it.

Without Horovod installed it still runs under the MPI launcher and reports the rank MPI gave
it, so the example also shows the AZ_BATCHAI_* environment on a machine without GPUs.
"""

import argparse
import json
import os
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--output-dir", default=".")
    args = parser.parse_args()
    try:
        import horovod.torch as hvd
        import torch
    except ImportError:
        hvd = None
    if hvd is not None:
        hvd.init()
        rank, size = hvd.rank(), hvd.size()
        total = float(hvd.allreduce(torch.tensor([float(rank + 1)]), op=hvd.Sum).item())
    else:
        rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMI_RANK", "0")))
        size = int(os.environ.get("OMPI_COMM_WORLD_SIZE", os.environ.get("PMI_SIZE", "1")))
        total = None
        print("horovod is not installed: reporting the MPI rank only")
    seen = {k: v for k, v in sorted(os.environ.items()) if k.startswith("AZ_BATCHAI_")}
    print(json.dumps({"rank": rank, "size": size, "epochs": args.epochs, "allreduce": total, "env": seen}))
    if rank == 0:
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "result.json").write_text(json.dumps({"size": size, "allreduce": total}))


if __name__ == "__main__":
    main()
