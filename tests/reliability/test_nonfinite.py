"""Non-finite losses: a step is skipped with a warning (no update, its batch consumed); N in a row stop
the run with an error that names the step and the last good checkpoint."""
from __future__ import annotations

import math

import torch

from ditlab.cli import main
from ditlab.training import checkpoint as ckpt

ARGS = ["train", "--preset", "digits-tiny", "--global_batch_size", "16", "--log_every", "1"]


def _poison(monkeypatch, bad_calls) -> None:
    """Make the training loss NaN on the given (1-based) calls; the real loss otherwise."""
    import ditlab.training.run as loop  # where the run's parts are built

    real_build = loop.build_process
    calls = {"n": 0}

    def build(config):
        process = real_build(config)
        real_loss = process.training_loss

        def loss(*args, **kwargs):
            calls["n"] += 1
            out = real_loss(*args, **kwargs)
            return out * math.nan if bad_calls(calls["n"]) else out

        process.training_loss = loss
        return process

    monkeypatch.setattr(loop, "build_process", build)


def test_nonfinite_steps_are_skipped_with_a_warning(tmp_path, monkeypatch, capsys):
    _poison(monkeypatch, lambda n: n in (3, 4))
    run = tmp_path / "run"
    assert main([*ARGS, "--steps", "6", "--ckpt_every", "100", "--run_dir", str(run)]) == 0
    err = capsys.readouterr().err
    assert err.count("warning: non-finite loss at step 3; step skipped") == 2
    latest = ckpt.latest_checkpoint(run)
    state = ckpt.load_train_state(latest / "state.pt")
    assert state["step"] == 6 and latest.name == "step_0000006"
    assert state["batches_consumed"] == 8  # the two skipped batches were used up, not retried
    # no update for a skipped step: Adam counted 6 steps, the LR schedule 6, and the weights are finite
    assert {float(s["step"]) for s in state["optimizer"]["state"].values()} == {6.0}
    assert state["scheduler"]["last_epoch"] == 6
    assert all(torch.isfinite(w).all() for w in ckpt.load_weights(latest / "model.safetensors").values())


def test_too_many_nonfinite_steps_stop_naming_the_step_and_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    _poison(monkeypatch, lambda n: n >= 5)  # steps 1-4 train, every later loss is NaN
    run = tmp_path / "run"
    code = main([*ARGS, "--steps", "10", "--ckpt_every", "2", "--max_nonfinite_steps", "3", "--run_dir", str(run)])
    assert code == 2
    err = capsys.readouterr().err
    good = ckpt.checkpoint_dir(run, 4)
    assert err.count("warning: non-finite loss at step 5; step skipped") == 3
    last = err.strip().splitlines()[-1]
    assert last == (f"error: 3 non-finite losses in a row up to step 5: lower --lr or check the data; "
                    f"last good checkpoint: {good}")
    assert "Traceback" not in err
    assert ckpt.latest_checkpoint(run) == good
    weights = ckpt.load_weights(good / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
