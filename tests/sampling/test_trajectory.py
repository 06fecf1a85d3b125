"""Trajectories: the recorder keeps x_t and the x0 prediction at evenly spaced steps (the last one is the
sample itself), independent of batching; ``ditlab sample --trajectory`` writes PNG strips and GIFs and
refuses bad file names and models without an autoencoder in one line."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ditlab.autoencoders import load_autoencoder
from ditlab.cli import main
from ditlab.conditioning import ClassCondition
from ditlab.diffusion import create_process
from ditlab.models import create_model
from ditlab.models.io import save_pretrained
from ditlab.sampling import Pipeline, StepInfo
from ditlab.sampling.trajectory import TrajectoryRecorder, spaced_steps, trajectory_frames


def _random_model():
    model = create_model("DiT-Test/2", input_size=8, in_channels=1, num_classes=3, learn_sigma=False)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # every weight random: a fresh adaLN-Zero model would output zeros
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def _pipeline() -> Pipeline:
    return Pipeline(_random_model(), create_process("flow"), load_autoencoder("pixel", channels=1), ClassCondition(3),
                    (1, 8, 8))


def test_spaced_steps_are_even_and_end_at_the_last():
    assert spaced_steps(10, 4) == [1, 4, 7, 10]
    assert spaced_steps(3, 8) == [1, 2, 3]  # never more columns than steps
    assert spaced_steps(50, 1) == [50]


def test_recorder_keeps_states_whose_last_column_is_the_sample():
    pipe = _pipeline()
    recorder = TrajectoryRecorder(columns=4)
    got = pipe(labels=[0, 2], num=3, steps=10, batch_size=2, callback=recorder)  # two batches
    traj = recorder.trajectory()
    assert traj.steps == [1, 4, 7, 10] and traj.total == 10
    assert traj.x.shape == traj.x0.shape == (3, 4, 8, 8, 1)
    # after the last Euler step the state and the prediction are the sample
    np.testing.assert_array_equal(traj.x[:, -1], got.images)
    np.testing.assert_array_equal(traj.x0[:, -1], got.images)
    # the state starts noisy and approaches the sample: its distance to the end shrinks step by step
    dist = np.abs(traj.x.astype(float) - got.images[:, None].astype(float)).mean(axis=(0, 2, 3, 4))
    assert dist[0] > dist[1] > dist[2] > dist[3] == 0
    # batching does not change what is recorded
    again = TrajectoryRecorder(columns=4)
    pipe(labels=[0, 2], num=3, steps=10, batch_size=3, callback=again)
    np.testing.assert_array_equal(again.trajectory().x, traj.x)
    frames = trajectory_frames(traj)  # x_t | x0 side by side, upscaled to >= 64 px
    assert frames.shape[0] == 4 and frames.shape[-1] == 1 and min(frames.shape[1:3]) >= 64


def test_stepinfo_without_x_stays_valid():
    info = StepInfo(step=1, total=2, x0=torch.zeros(1, 1, 2, 2), batch=0, num_batches=1, start=0,
                    decoder=lambda t: t.numpy())
    assert info.x is None and info.decode().shape == (1, 1, 2, 2)
    with pytest.raises(ValueError, match="no current state"):
        info.decode_x()


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("traj") / "model"
    save_pretrained(_random_model(), folder)
    (folder / "pipeline.json").write_text(json.dumps({
        "process": {"kind": "flow"}, "condition": ClassCondition(3, ["a", "b", "c"]).to_dict(),
        "sampling": {"sampler": "euler", "steps": 6, "cfg_scale": 1.0}}))
    return folder


def test_cli_writes_png_strips_and_gif(model_folder, tmp_path, capsys):
    png, gif = tmp_path / "traj.png", tmp_path / "traj.gif"
    assert main(["sample", str(model_folder), "--autoencoder", "pixel", "--num", "2", "--out",
                 str(tmp_path / "grid.png"), "--trajectory", str(png), "--trajectory-steps", "3"]) == 0
    assert str(png) in capsys.readouterr().out
    strips = np.asarray(Image.open(png).convert("L"))
    assert strips.shape[0] > strips.shape[1] * 0.8  # two samples x two rows of three columns: taller than wide
    assert main(["sample", str(model_folder), "--autoencoder", "pixel", "--num", "2", "--out",
                 str(tmp_path / "grid.png"), "--trajectory", str(gif)]) == 0
    with Image.open(gif) as anim:
        assert anim.n_frames == 6 + 8  # every one of the 6 steps, then a second (8 fps) on the sample


@pytest.mark.parametrize("extra, message", [
    (["--autoencoder", "pixel", "--trajectory", "traj.jpg"], "must end in .png (strips) or .gif"),
    (["--autoencoder", "pixel", "--trajectory", "t.png", "--trajectory-steps", "0"], "--trajectory-steps must be >= 1"),
    (["--trajectory", "t.png"], "has no autoencoder: pass --autoencoder"),
])
def test_cli_refuses_in_one_line(model_folder, tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.chdir(tmp_path)
    assert main(["sample", str(model_folder), "--num", "1", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not list(tmp_path.glob("t*.png"))


def test_trajectory_needs_an_autoencoder_to_decode(monkeypatch, tmp_path, capsys):
    """A pipeline that has no autoencoder (nothing to decode x_t with) is refused before sampling."""
    pipe = _pipeline()
    pipe.autoencoder = None
    monkeypatch.setattr(Pipeline, "load", classmethod(lambda cls, *a, **k: pipe))
    assert main(["sample", "whatever", "--num", "1", "--out", str(tmp_path / "g.png"),
                 "--trajectory", str(tmp_path / "t.png")]) == 2
    assert "--trajectory needs images: this model has no autoencoder" in capsys.readouterr().err
