"""SIGTERM and SIGINT: the trainer finishes its step, writes a checkpoint, says how to resume and exits 0;
rerunning the command continues bit-identically. In-process: the logged loss spans a stop exactly."""
from __future__ import annotations

import os
import signal

import pytest
from run_helpers import STEPS, Training, assert_same_training, logged_losses

from ditlab.cli import main
from ditlab.training import checkpoint as ckpt
from ditlab.training import logger


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_checkpoints_exits_0_and_resumes_bit_identical(tmp_path, reference_run, sig):
    run = tmp_path / "run"
    t = Training(run, "signalled")
    assert t.wait_for(lambda: t.logged_step() >= 3, timeout=300), t.stderr_tail()
    assert t.send(sig)
    assert t.finish() == 0, t.stderr_tail()
    out = t.stdout()
    latest = ckpt.latest_checkpoint(run)
    stopped = int(latest.name.split("_")[1])
    assert 3 <= stopped < STEPS, out  # it stopped early, after the step it was in
    assert f"stopped at step {stopped}; checkpoint {latest}. Resume by rerunning the same command." in out
    assert ckpt.read_meta(latest)["step"] == stopped
    assert "Traceback" not in t.stderr_tail(10_000)

    resumed = Training(run, "resumed")
    assert resumed.finish() == 0, resumed.stderr_tail()
    assert f"resuming from {latest} (step {stopped})" in resumed.stdout()
    assert_same_training(run, reference_run.run_dir)


def _stop_at_call(monkeypatch, call: int):
    """Make the trainer receive a real SIGTERM from inside its ``call``-th training step."""
    import ditlab.training.run as loop  # where the run's parts are built

    real_build = loop.build_process
    calls = {"n": 0}

    def build(config):
        process = real_build(config)
        real_loss = process.training_loss

        def loss(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == call:
                os.kill(os.getpid(), signal.SIGTERM)  # handled by the trainer: finish the step, then stop
            return real_loss(*args, **kwargs)

        process.training_loss = loss
        return process

    monkeypatch.setattr(loop, "build_process", build)


def test_stop_inside_a_logging_window_logs_the_same_losses(tmp_path, monkeypatch, capsys):
    """Losses logged every 3 steps, stopped after step 4 (mid-window): the step-6 mean still covers 4-6."""
    args = ["train", "--preset", "digits-tiny", "--steps", "6", "--log_every", "3", "--ckpt_every", "100",
            "--global_batch_size", "16"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    monkeypatch.setattr(logger, "_fmt", lambda v: repr(v) if isinstance(v, float) else v)  # full precision
    assert main([*args, "--run_dir", str(straight)]) == 0
    with monkeypatch.context() as m:
        _stop_at_call(m, 4)
        assert main([*args, "--run_dir", str(split)]) == 0
    out = capsys.readouterr().out
    assert "stopped at step 4;" in out and "Resume by rerunning the same command." in out
    assert ckpt.latest_checkpoint(split).name == "step_0000004"
    assert [s for s, _ in logged_losses(split)] == ["3"]  # nothing logged at the stop itself
    assert main([*args, "--run_dir", str(split)]) == 0
    assert [s for s, _ in logged_losses(split)] == ["3", "6"]
    assert logged_losses(split) == logged_losses(straight)
    assert_same_training(split, straight, steps=[6])
