"""Worker functions for the 2-process gloo tests (importable by spawned children)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch


def sample_many_worker(rank: int, world: int, port: int, run_dir: str, out: str, num: int, record: str) -> None:
    """One torchrun-like rank: the in-training eval split (gather to rank 0), then sample-many."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from ditlab.config import load_config
    from ditlab.sampling import Pipeline
    from ditlab.sampling.many import sample_many
    from ditlab.training.distributed import DistInfo
    from ditlab.training.periodic_eval import gather_eval_samples

    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        pipe = Pipeline.from_run(run_dir)
        got = gather_eval_samples(pipe, load_config(Path(run_dir) / "config.json"), 5,
                                  DistInfo(rank=rank, world_size=world))
        if rank == 0:
            np.savez(Path(record) / "eval_gather.npz", images=got[0], labels=got[1])
        else:
            assert got is None
        result = sample_many(run_dir, num, out, batch_size=3, device="cpu", progress=False)
        (Path(record) / f"rank{rank}.json").write_text(json.dumps(
            {"generated": result.generated, "npz": str(result.npz) if result.npz else None}))
    finally:
        dist.destroy_process_group()
