"""Learning-rate schedules after the warm-up: constant, cosine and linear decay, logged and resumed exactly."""
import csv
import math
import shutil

import pytest
import torch

from ditlab.cli import main
from ditlab.training.checkpoint import load_weights
from ditlab.training.run import lr_factor


def test_warm_up_then_constant():
    got = [lr_factor(s, warmup=4, steps=10) for s in range(6)]
    assert got == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])


def test_cosine_over_the_whole_run_closed_form():
    steps = 8
    for s in range(steps):
        assert lr_factor(s, warmup=0, schedule="cosine", steps=steps) == pytest.approx(
            0.5 * (1 + math.cos(math.pi * s / steps)))
    assert lr_factor(4, warmup=0, schedule="cosine", steps=steps) == pytest.approx(0.5)  # half way: half the rate


def test_linear_decay_over_the_last_steps_after_a_warm_up():
    got = [lr_factor(s, warmup=2, schedule="linear", steps=10, decay_steps=4) for s in range(10)]
    assert got == pytest.approx([0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.75, 0.5, 0.25])


def test_decay_starts_after_the_warm_up_when_it_spans_every_step():
    got = [lr_factor(s, warmup=2, schedule="linear", steps=6) for s in range(6)]
    assert got == pytest.approx([0.5, 1.0, 1.0, 0.75, 0.5, 0.25])  # 4 decay steps: the 4 after the warm-up


TINY = ["train", "--preset", "digits-tiny", "--num_workers", "0", "--lr", "1e-3", "--warmup_steps", "0",
        "--lr_schedule", "cosine", "--steps", "12", "--log_every", "3", "--ckpt_every", "6", "--keep_last", "5",
        "--no-tensorboard"]


def test_a_cosine_run_logs_its_rates_and_resumes_exactly(tmp_path):
    straight = tmp_path / "straight"
    assert main([*TINY, "--run_dir", str(straight)]) == 0
    with open(straight / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    # the rate logged after step s is the one the next step (0-based index s) uses
    for row in rows:
        step = int(row["step"])
        want = 1e-3 * (0.5 * (1 + math.cos(math.pi * step / 12)) if step < 12 else 0.0)
        assert float(row["lr"]) == pytest.approx(want, abs=1e-9), row
    rates = [float(row["lr"]) for row in rows]
    assert [int(row["step"]) for row in rows] == [3, 6, 9, 12]
    assert all(x > y for x, y in zip(rates, rates[1:], strict=False)) and rates[1] == pytest.approx(0.5e-3)

    # an interruption after step 6: the same command resumes on the same schedule, bit for bit
    split = tmp_path / "split"
    shutil.copytree(straight, split)
    shutil.rmtree(split / "checkpoints" / "step_0000012")
    (split / "checkpoints" / "latest").unlink(missing_ok=True)
    assert main([*TINY, "--run_dir", str(split)]) == 0
    a = load_weights(straight / "checkpoints" / "step_0000012" / "model.safetensors")
    b = load_weights(split / "checkpoints" / "step_0000012" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
