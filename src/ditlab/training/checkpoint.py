"""Crash-safe checkpoints of a training run.

Layout of a run directory::

    config.json                   the resolved TrainConfig
    checkpoints/step_0001000/     one complete checkpoint
        model.safetensors         raw model weights
        ema.safetensors           EMA weights (what sampling uses)
        state.pt                  optimiser, LR schedule, step, RNG states, data position (tensors and
                                  plain Python values only: loaded with weights_only=True)
        meta.json                 step, model config, when it was written
    checkpoints/latest            name of the newest complete checkpoint

A checkpoint is written into a hidden temporary folder, every file flushed to disk, then the folder is
renamed into place and only then ``latest`` is replaced (write + rename). A crash at any moment leaves
either the old or the new checkpoint as ``latest``, never a half-written one.
"""
from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ditlab.errors import CheckpointError
from ditlab.files import atomic_write, fsync_dir, fsync_file

CHECKPOINTS = "checkpoints"
LATEST = "latest"
# What a complete checkpoint folder holds; meta.json is written last and removed first.
FILES = ("model.safetensors", "ema.safetensors", "state.pt", "meta.json")


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def io_error(err: BaseException) -> OSError | None:
    """The OSError behind a failed write, or None when ``err`` is no I/O failure.

    torch and safetensors wrap a failed write (disk full, file too large) in their own exception types;
    torch keeps the OSError of a Python file object as the context, safetensors only names it in the text.
    """
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)
    found = re.search(r"os error (\d+)", str(err)) if isinstance(err, SafetensorError) else None
    if found:
        code = int(found.group(1))
        return OSError(code, os.strerror(code))
    return None


def seed_all(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA): a fresh run starts from states its seed fixes."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The RNG states of Python, NumPy and torch (CPU and CUDA), as weights_only-loadable values."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step_{step:07d}"


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    ema_state: dict[str, torch.Tensor],
    train_state: dict[str, Any],
    meta: dict[str, Any],
    keep_last: int = 2,
) -> Path:
    """Write a complete checkpoint for ``step`` atomically and point ``latest`` at it.

    Raises CheckpointError (and leaves the previous checkpoint untouched) when the disk is full or the
    run directory is not writable.
    """
    root = Path(run_dir) / CHECKPOINTS
    final = checkpoint_dir(run_dir, step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        save_file(_contiguous(model_state), str(tmp / "model.safetensors"))
        save_file(_contiguous(ema_state), str(tmp / "ema.safetensors"))
        with open(tmp / "state.pt", "wb") as f:  # a Python file: a failed write keeps its OSError
            torch.save(train_state, f)
        meta = {**meta, "step": step, "written": time.strftime("%Y-%m-%dT%H:%M:%S")}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        for f in tmp.iterdir():
            fsync_file(f)
        fsync_dir(tmp)
        if final.exists():  # the same step saved again (e.g. end of a resumed run): replace whole
            old = root / f".old-{final.name}-{os.getpid()}"
            final.rename(old)
            tmp.rename(final)
            _remove(old)
        else:
            tmp.rename(final)
        fsync_dir(root)
        atomic_write(root / LATEST, final.name + "\n")  # only now does the run point at the new checkpoint
    except Exception as err:
        shutil.rmtree(tmp, ignore_errors=True)
        cause = io_error(err)
        if cause is None:
            raise
        reason = "disk full" if cause.errno == errno.ENOSPC else (cause.strerror or str(cause))
        raise CheckpointError(
            f"could not write checkpoint for step {step} in '{root}' ({reason}): free space or fix "
            f"permissions; the previous checkpoint is intact"
        ) from None
    _prune(root, keep_last)
    return final


def _remove(folder: Path) -> None:
    """Delete a checkpoint folder so that a crash half-way never leaves one that looks complete."""
    (folder / "meta.json").unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


def _prune(root: Path, keep_last: int) -> None:
    steps = sorted(p for p in root.glob("step_*") if p.is_dir())
    latest = latest_checkpoint(root.parent)
    for old in steps[:-keep_last] if keep_last > 0 else []:
        if latest is not None and old.resolve() == latest.resolve():
            continue
        _remove(old)
    for stale in (*root.glob(".tmp-*"), *root.glob(".old-*")):  # left by a crash mid-write
        if not stale.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(stale, ignore_errors=True)


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in FILES)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None when it has none."""
    root = Path(run_dir) / CHECKPOINTS
    pointer = root / LATEST
    if pointer.is_file():
        name = pointer.read_text().strip()
        candidate = root / name
        if name.startswith("step_") and _complete(candidate):
            return candidate
    # No pointer (or it names a removed folder): fall back to the newest complete folder.
    complete = sorted(p for p in root.glob("step_*") if _complete(p))
    return complete[-1] if complete else None


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; a missing or truncated file is a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file '{path}' is missing: train first or pass another run directory")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(
            f"checkpoint file '{path}' is damaged ({str(err).splitlines()[0][:80]}): resume from an "
            f"older checkpoint or retrain"
        ) from None


def load_train_state(path: str | Path) -> dict[str, Any]:
    """Read ``state.pt`` without executing code from it (weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"training state '{path}' is missing: the checkpoint is incomplete")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types; none of them may run code
        first = str(err).strip().splitlines()[0][:100] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"training state '{path}' was refused ({first}): it is damaged or not a ditlab file"
        ) from None


def read_meta(ckpt: Path) -> dict[str, Any]:
    """The ``meta.json`` of a checkpoint folder; a damaged one is a CheckpointError."""
    try:
        meta = json.loads((Path(ckpt) / "meta.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(
            f"checkpoint '{ckpt}' has a damaged meta.json ({type(err).__name__}): delete that folder to "
            f"resume from the previous checkpoint"
        ) from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint '{ckpt}' has a damaged meta.json: delete that folder to resume from "
                              f"the previous checkpoint")
    return meta
