"""Example PyTorch job for examples/batchai/pytorch-gloo.json, written the Batch AI way: rank,
world size, backend and init URL come on the command line from AZ_BATCHAI_* variables."""

import argparse
import json
import os
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--world-size", type=int, required=True)
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--dist-backend", default="gloo")
    parser.add_argument("--dist-url", required=True)
    parser.add_argument("--output-dir", default=".")
    args = parser.parse_args()
    try:
        import torch
        import torch.distributed as dist
    except ImportError:
        print("torch is not installed: showing the arguments and environment only")
        total = None
    else:
        dist.init_process_group(args.dist_backend, init_method=args.dist_url,
                                rank=args.rank, world_size=args.world_size)
        value = torch.tensor([float(args.rank + 1)])
        dist.all_reduce(value)
        total = float(value.item())
        dist.destroy_process_group()
    seen = {k: v for k, v in sorted(os.environ.items()) if k.startswith("AZ_BATCHAI_")}
    print(json.dumps({"rank": args.rank, "world_size": args.world_size, "all_reduce": total, "env": seen}))
    if args.rank == 0:
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "result.json").write_text(json.dumps({"world_size": args.world_size, "all_reduce": total}))


if __name__ == "__main__":
    main()
