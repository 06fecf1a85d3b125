"""Real multi-process training on gloo (2 CPU processes): DDP through torchrun, FSDP with resume across
world sizes. The reference is one process at the same global batch: same losses, same final weights."""
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ditlab.cli import main
from ditlab.training.checkpoint import latest_checkpoint, load_train_state, load_weights

TINY = ["--preset", "digits-tiny", "--num_workers", "0", "--log_every", "1", "--keep_last", "5"]
REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 600


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, args: list[str]) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node N -m ditlab.cli ARGS``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "ditlab.cli", *args]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)


def spawn(nproc: int, args: list[str]) -> list[subprocess.CompletedProcess]:
    """The environment torchrun gives its workers (RANK, WORLD_SIZE, MASTER_*), without the agent."""
    port = _free_port()
    procs = []
    for rank in range(nproc):
        env = _env() | {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc),
                        "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, "-m", "ditlab.cli", *args], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    results = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return results


def _losses(run: Path) -> list[float]:
    rows = (run / "metrics.csv").read_text().splitlines()[1:]
    return [float(r.split(",")[1]) for r in rows]


def _assert_same_weights(a_ckpt: Path, b_ckpt: Path) -> None:
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_weights(a_ckpt / name), load_weights(b_ckpt / name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.allclose(a[k], b[k], atol=2e-6, rtol=1e-5), (name, k, (a[k] - b[k]).abs().max())
    sa, sb = load_train_state(a_ckpt / "state.pt"), load_train_state(b_ckpt / "state.pt")
    assert sa["step"] == sb["step"] and sa["batches_consumed"] == sb["batches_consumed"]
    assert sa["optimizer"]["param_groups"] == sb["optimizer"]["param_groups"]
    for i, s in sa["optimizer"]["state"].items():
        assert torch.allclose(s["exp_avg"], sb["optimizer"]["state"][i]["exp_avg"], atol=1e-7, rtol=1e-4)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process, global batch 32, 8 steps, with a copy of the run as it stood after step 4."""
    root = tmp_path_factory.mktemp("reference")
    run, half = root / "one", root / "half"
    assert main(["train", *TINY, "--run_dir", str(run), "--steps", "4", "--ckpt_every", "4"]) == 0
    shutil.copytree(run, half)
    assert main(["train", *TINY, "--run_dir", str(run), "--steps", "8", "--ckpt_every", "4"]) == 0
    return run, half


@pytest.mark.slow
def test_torchrun_ddp_two_processes_equal_one(reference, tmp_path):
    one, _ = reference
    run = tmp_path / "ddp"
    result = torchrun(2, ["train", *TINY, "--run_dir", str(run), "--steps", "8", "--ckpt_every", "4"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert _losses(run) == pytest.approx(_losses(one), rel=1e-5, abs=1e-6)
    assert len(_losses(run)) == 8
    _assert_same_weights(latest_checkpoint(one), latest_checkpoint(run))


@pytest.mark.slow
def test_fsdp_resumes_across_world_sizes(reference, tmp_path):
    """1 process (steps 1-4) -> 2 processes with --fsdp (5-6, with an EMA sample grid) -> 1 process (7-8)
    ends exactly where 1 process for all 8 steps ends."""
    one, half = reference
    run = tmp_path / "mixed"
    shutil.copytree(half, run)
    results = spawn(2, ["train", *TINY, "--run_dir", str(run), "--steps", "6", "--ckpt_every", "4", "--fsdp",
                        "--sample_every", "6"])
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from" in results[0].stdout and "resuming from" not in results[1].stdout  # rank 0 logs
    assert (run / "samples" / "step_0000006.png").is_file()
    ckpt6 = latest_checkpoint(run)
    assert ckpt6.name == "step_0000006"
    # the FSDP checkpoint is a consolidated single-process one: a plain load works
    ref6 = {k: v for k, v in load_weights(ckpt6 / "model.safetensors").items()}
    assert "blocks.0.attn.qkv.weight" in ref6 and ref6["blocks.0.attn.qkv.weight"].shape == (3 * 64, 64)
    assert main(["train", *TINY, "--run_dir", str(run), "--steps", "8", "--ckpt_every", "4"]) == 0
    assert _losses(run) == pytest.approx(_losses(one), rel=1e-5, abs=1e-6)
    _assert_same_weights(latest_checkpoint(one), latest_checkpoint(run))


@pytest.mark.slow
def test_world_size_that_does_not_divide_the_batch_fails_on_every_rank(tmp_path):
    results = spawn(2, ["train", *TINY, "--run_dir", str(tmp_path / "r"), "--global_batch_size", "33"])
    for r in results:
        assert r.returncode == 2
        lines = r.stderr.strip().splitlines()
        assert lines == ["error: global_batch_size 33 does not divide over 2 processes: use a multiple of 2"]
    assert not (tmp_path / "r").exists()  # nothing was done
