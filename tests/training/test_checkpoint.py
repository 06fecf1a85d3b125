"""Checkpoints: atomic writes, latest pointer, pruning, RNG round trip, refusal of damaged files."""
import os
import random

import numpy as np
import pytest
import torch

from ditlab.errors import CheckpointError
from ditlab.training import checkpoint as ckpt


def _save(run, step, value=0.0, keep=2):
    w = {"w": torch.full((3,), float(value))}
    return ckpt.save_checkpoint(run, step, w, w, {"step": step, "rng": ckpt.rng_state()}, {"model": {}}, keep_last=keep)


def test_save_load_and_latest(tmp_path):
    _save(tmp_path, 10, 1.0)
    path = _save(tmp_path, 20, 2.0)
    assert ckpt.latest_checkpoint(tmp_path) == path
    assert torch.equal(ckpt.load_weights(path / "ema.safetensors")["w"], torch.full((3,), 2.0))
    assert ckpt.load_train_state(path / "state.pt")["step"] == 20
    assert ckpt.read_meta(path)["step"] == 20


def test_keep_last_prunes_old(tmp_path):
    for s in (1, 2, 3, 4):
        _save(tmp_path, s, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    assert names == ["step_0000003", "step_0000004"]


def test_rng_round_trip():
    state = ckpt.rng_state()
    a = (random.random(), np.random.rand(), torch.rand(2))
    ckpt.set_rng_state(state)
    b = (random.random(), np.random.rand(), torch.rand(2))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def test_incomplete_checkpoint_is_ignored(tmp_path):
    good = _save(tmp_path, 5)
    # a crash mid-write leaves a hidden temporary folder and no pointer change
    (tmp_path / "checkpoints" / ".tmp-step_0000006-999").mkdir()
    assert ckpt.latest_checkpoint(tmp_path) == good


def test_write_failure_keeps_previous(tmp_path, monkeypatch):
    good = _save(tmp_path, 5, 1.0)

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt, "save_file", boom)
    with pytest.raises(CheckpointError, match="disk full"):
        _save(tmp_path, 6, 2.0)
    assert ckpt.latest_checkpoint(tmp_path) == good
    assert torch.equal(ckpt.load_weights(good / "model.safetensors")["w"], torch.full((3,), 1.0))
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_truncated_safetensors_refused(tmp_path):
    path = _save(tmp_path, 1)
    f = path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:20])
    with pytest.raises(CheckpointError, match="damaged"):
        ckpt.load_weights(f)


def test_malicious_pickle_is_not_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "state.pt"
    torch.save({"x": Evil()}, bad)
    with pytest.raises(CheckpointError, match="refused"):
        ckpt.load_train_state(bad)
    assert not marker.exists()
