"""Run ``ditlab train`` in subprocesses, interrupt it, and compare runs bit for bit."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ditlab.training import checkpoint as ckpt

EXACT_CLI = Path(__file__).with_name("exact_cli.py")
STEPS = 16
# A seconds-scale pixel-space run. Checkpoints every 2 steps (all kept, so every one can be compared);
# the loss of every step logged, which also shows a watcher how far the run has got.
TRAIN = [
    "train", "--preset", "digits-tiny", "--num_workers", "0", "--steps", str(STEPS), "--global_batch_size", "16",
    "--ckpt_every", "2", "--log_every", "1", "--keep_last", "50",
]
# One thread: the same kernels in every process, and no fight over the test machine's cores.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


class Training:
    """One ``ditlab train`` subprocess; stdout and stderr go to files beside the run directory."""

    def __init__(self, run_dir: Path, tag: str, extra: tuple[str, ...] = (), cli: Path = EXACT_CLI,
                 env: dict[str, str] | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.parent.mkdir(parents=True, exist_ok=True)
        self.out_path = self.run_dir.parent / f"{self.run_dir.name}.{tag}.out"
        self.err_path = self.run_dir.parent / f"{self.run_dir.name}.{tag}.err"
        # The files must outlive __init__ (the child writes to them until it exits); finish() closes them.
        self._out, self._err = open(self.out_path, "w"), open(self.err_path, "w")  # noqa: SIM115
        argv = [sys.executable, str(cli), *TRAIN, "--run_dir", str(self.run_dir), *extra]
        self.proc = subprocess.Popen(argv, stdout=self._out, stderr=self._err, env={**ENV, **(env or {})})
        self.started, self.started_wall = time.monotonic(), time.time()

    def stdout(self) -> str:
        return self.out_path.read_text()

    def stderr_tail(self, n: int = 2000) -> str:
        return self.err_path.read_text()[-n:]

    def training_started(self) -> bool:
        """True once the trainer has logged its model line, just before the first step."""
        return "model DiT" in self.stdout()

    def logged_step(self) -> int:
        """The last step this process has logged (0 before it has logged one)."""
        csv = self.run_dir / "metrics.csv"
        try:
            if csv.stat().st_mtime < self.started_wall:  # still the file of an earlier process
                return 0
            rows = csv.read_text().splitlines()
            return int(rows[-1].split(",")[0]) if len(rows) > 1 and rows[-1][:1].isdigit() else 0
        except (OSError, ValueError):
            return 0

    def wait_for(self, predicate: Callable[[], bool], timeout: float, poll: float = 0.005) -> bool:
        """Poll ``predicate`` until it holds (True), the process exits or ``timeout`` passes (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            if self.proc.poll() is not None:
                return predicate()
            time.sleep(poll)
        return False

    def send(self, sig: int) -> bool:
        """Send ``sig``; False when the process had already exited (nothing was interrupted)."""
        if self.proc.poll() is not None:
            return False
        self.proc.send_signal(sig)
        return True

    def finish(self, timeout: float = 600) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._out.close()
            self._err.close()


def run_to_end(run_dir: Path, tag: str) -> Training:
    t = Training(run_dir, tag)
    code = t.finish()
    assert code == 0, f"{tag} run exited {code}:\n{t.stderr_tail()}"
    return t


def checkpoint_steps(run_dir: Path) -> list[int]:
    return sorted(int(p.name.split("_")[1]) for p in (Path(run_dir) / ckpt.CHECKPOINTS).glob("step_*"))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Everything a checkpoint holds, except the time it was written."""
    meta = ckpt.read_meta(path)
    meta.pop("written")
    return {
        "model": ckpt.load_weights(path / "model.safetensors"),
        "ema": ckpt.load_weights(path / "ema.safetensors"),
        "state": ckpt.load_train_state(path / "state.pt"),
        "meta": meta,
    }


def assert_identical(a: Any, b: Any, where: str = "") -> None:
    """Bitwise equality of nested dicts / lists / tuples of tensors and plain values."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), f"tensors differ at {where}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"keys differ at {where}: {a.keys()} vs {b.keys()}"
        for key in a:
            assert_identical(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"lengths differ at {where}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{a!r} != {b!r} at {where}"


def logged_losses(run_dir: Path) -> list[tuple[str, str]]:
    """(step, loss) of every metrics.csv row, as written (full precision under exact_cli)."""
    rows = (Path(run_dir) / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    i_step, i_loss = header.index("step"), header.index("loss")
    return [(r.split(",")[i_step], r.split(",")[i_loss]) for r in rows[1:]]


def assert_same_training(run: Path, reference: Path, steps: list[int] | None = None) -> None:
    """``run`` holds bit for bit the checkpoints (weights, EMA, optimiser, schedule, RNG, data position)
    and logged losses of ``reference`` at every step in ``steps`` (default: all of the reference's)."""
    for step in steps or checkpoint_steps(reference):
        assert_identical(load_checkpoint(ckpt.checkpoint_dir(run, step)),
                         load_checkpoint(ckpt.checkpoint_dir(reference, step)), f"step {step}")
    assert logged_losses(run) == logged_losses(reference)
    leftovers = [p.name for p in (Path(run) / ckpt.CHECKPOINTS).glob(".*-step_*")]
    assert not leftovers, f"temporary checkpoint folders left behind: {leftovers}"

