"""What batching same-settings requests buys ``ditlab serve``: N requests queued at once, run one by one
(``--max-batch 1``) against batched (``--max-batch 64``), through the server's own scheduler and pipeline
(no HTTP), in one process. Prints requests/s of both and the ratio.

    python benchmarks/serve_batching.py                                   # a tiny random DiT, 8x8 pixels
    python benchmarks/serve_batching.py --model runs/mnist --requests 32 --num 1 --steps 25
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "serve"))


def run(models, max_batch: int, requests: int, num: int, steps: int) -> float:
    """Seconds to finish ``requests`` queued same-settings requests."""
    from ditlab.serve.encode import preview_png
    from ditlab.serve.jobs import Scheduler
    from ditlab.serve.requests import Limits, Plan

    scheduler = Scheduler(models.run_batch, Limits(queue_size=requests, max_batch=max_batch, max_num=num),
                          preview_png)
    name = next(iter(models.pipelines))
    info = models.infos[name]
    labels = [0] if info["condition"] == "class" else None
    sampler = info["defaults"]["sampler"]
    start = time.perf_counter()
    jobs = [scheduler.submit(Plan(model=name, num=num, steps=steps, cfg=1.0, sampler=sampler, seed=i * num,
                                  labels=labels))[0] for i in range(requests)]
    while not all(job.done for job in jobs):
        time.sleep(0.002)
    seconds = time.perf_counter() - start
    scheduler.shutdown()
    assert all(job.status == "done" for job in jobs)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a run directory or model folder (default: a tiny random DiT)")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--num", type=int, default=2, help="images per request")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import torch

    from ditlab.sampling import Pipeline
    from ditlab.serve import ServedModels

    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.model:
        models = ServedModels({"model": Pipeline.load(args.model)})
    else:
        from serve_fakes import tiny_pipeline

        models = ServedModels({"tiny": tiny_pipeline(3)})
    run(models, 64, 2, args.num, args.steps)  # warm up
    alone = min(run(models, 1, args.requests, args.num, args.steps) for _ in range(args.repeats))
    batched = min(run(models, 64, args.requests, args.num, args.steps) for _ in range(args.repeats))
    print(f"{args.requests} requests x {args.num} images x {args.steps} steps, best of {args.repeats}:")
    print(f"  one by one  {alone:7.3f} s  {args.requests / alone:8.1f} requests/s")
    print(f"  batched     {batched:7.3f} s  {args.requests / batched:8.1f} requests/s")
    print(f"  batched / one by one: {alone / batched:.2f}x the throughput")


if __name__ == "__main__":
    main()
