"""A tiny video run end to end: moving digits, a VAE on their frames, a video DiT that trains, resumes exactly,
samples GIF / MP4 / npz through the CLI, and is scored with the video demo's metrics."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ditlab.cli import main
from ditlab.training.checkpoint import latest_checkpoint, load_weights

TINY = ["train", "--preset", "moving-mnist-tiny"]


def test_video_run_trains_resumes_exactly_and_samples(tmp_path, capsys):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main([*TINY, "--run_dir", str(straight), "--eval_num", "16"]) == 0
    printed = capsys.readouterr().out
    assert "per-frame digit accuracy" in printed and "direction right" in printed
    metrics = json.loads((straight / "metrics.json").read_text())
    assert metrics["num_videos"] == 16 and metrics["num_frames"] == 4 and "meets_bar" in metrics
    assert metrics["smoothness_real"] > 0  # the reference: real clips through the run's VAE, not raw (exactly 0)
    assert (straight / "samples" / "final_grid.gif").stat().st_size > 0
    meta = json.loads((latest_checkpoint(straight) / "meta.json").read_text())
    assert meta["latent_shape"] == [4, 4, 9, 9] and meta["model"]["num_frames"] == 4

    # interrupted after 3 steps and resumed by rerunning: the same weights as the straight run
    assert main([*TINY, "--run_dir", str(split), "--steps", "3"]) == 0
    assert main([*TINY, "--run_dir", str(split)]) == 0
    a = load_weights(latest_checkpoint(straight) / "model.safetensors")
    b = load_weights(latest_checkpoint(split) / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(v.abs().sum() > 0 for k, v in a.items() if k.startswith("temporal_blocks.") and "adaLN" in k)

    gif, npz = tmp_path / "v.gif", tmp_path / "v.npz"
    assert main(["sample", str(straight), "--class", "3,27", "--num", "4", "--out", str(gif), "--out-npz", str(npz),
                 "--out-dir", str(tmp_path / "each"), "--fps", "4"]) == 0
    data = np.load(npz)
    assert data["arr_0"].shape == (4, 4, 36, 36, 1) and data["arr_0"].dtype == np.uint8
    assert data["labels"].tolist() == [3, 3, 27, 27]
    from ditlab.data.video_io import read_video

    grid = read_video(gif, channels=1)
    assert grid.shape[0] == 4 and grid.shape[1] > 36  # 4 frames of a grid of 4 clips
    assert len(list((tmp_path / "each").glob("*_class27.gif"))) == 2
    mp4 = tmp_path / "v.mp4"
    assert main(["sample", str(straight), "--class", "3 right", "--num", "2", "--out", str(mp4),
                 "--out-npz", str(tmp_path / "w.npz"), "--batch-size", "1"]) == 0
    assert read_video(mp4, channels=1).shape[0] == 4
    same = np.load(tmp_path / "w.npz")
    assert same["labels"].tolist() == [26, 26]


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2m", "euler_maruyama", "ddim"])
def test_every_flow_sampler_and_guidance_make_clips(sampler, tmp_path, video_run):
    from ditlab.sampling import Pipeline

    pipe = Pipeline.from_run(video_run)
    got = pipe(labels=[5, 9], num=2, sampler=sampler, steps=2, cfg_scale=2.0, seed=3)
    again = pipe(labels=[5, 9], num=2, sampler=sampler, steps=2, cfg_scale=2.0, seed=3, batch_size=1)
    assert got.images.shape == (2, 4, 36, 36, 1) and np.array_equal(got.images, again.images)


@pytest.fixture(scope="module")
def video_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("video") / "run"
    assert main([*TINY, "--run_dir", str(run), "--steps", "2"]) == 0
    return run


def test_image_steps_train_frames_first_then_clips_and_resume_exactly(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    args = [*TINY, "--image_steps", "3", "--keep_last", "5"]
    assert main([*args, "--run_dir", str(straight)]) == 0
    first = load_weights(straight / "checkpoints" / "step_0000003" / "model.safetensors")
    temporal = [k for k in first if k.startswith("temporal_blocks.")]
    assert temporal and all(not first[k].any() for k in temporal if "adaLN_modulation" in k)  # still zero-gated
    assert any(first[k].any() for k in first if k.startswith("blocks.") and "adaLN_modulation" in k)  # images trained
    end = load_weights(latest_checkpoint(straight) / "model.safetensors")
    assert any(end[k].any() for k in temporal if "adaLN_modulation" in k)  # then the clips move the temporal blocks
    assert main([*args, "--run_dir", str(split), "--steps", "2"]) == 0  # stopped inside the image steps
    assert main([*args, "--run_dir", str(split)]) == 0
    again = load_weights(latest_checkpoint(split) / "model.safetensors")
    assert all(torch.equal(end[k], again[k]) for k in end)


def test_init_from_an_image_model_folder(tmp_path, capsys):
    from ditlab.models import create_model, save_pretrained
    from ditlab.training.setup import init_from

    image = create_model("DiT-S/2", input_size=9, in_channels=4, num_classes=80, learn_sigma=False, depth=1,
                         hidden_size=32, num_heads=2, patch_size=3, timestep_scale=1000.0)
    with torch.no_grad():
        for p in image.parameters():
            p.add_(torch.randn(p.shape) * 0.02)
    save_pretrained(image, tmp_path / "image")
    from ditlab.models import model_from_config

    video = model_from_config({**image.config.to_dict(), "num_frames": 4})
    init_from(video, str(tmp_path / "image"))
    own = video.state_dict()
    assert all(torch.equal(own[k], v) for k, v in image.state_dict().items())
    assert all(not v.any() for k, v in own.items() if k.startswith("temporal_blocks.") and "adaLN_modulation" in k)
    # the same through `ditlab train`: the run starts from the image weights (a mismatch would be refused)
    image_dir = str(tmp_path / "image")
    assert main([*TINY, "--run_dir", str(tmp_path / "run"), "--steps", "1", "--init_from", image_dir]) == 0
    capsys.readouterr()
    assert main([*TINY, "--run_dir", str(tmp_path / "run2"), "--steps", "1", "--depth", "2",
                 "--init_from", str(tmp_path / "image")]) == 2
    assert "does not fit this video model" in capsys.readouterr().err


def test_the_demos_layout_full_attention_with_factored_labels_resumes_exactly_and_samples(tmp_path):
    """The moving-mnist preset's model kind (full 3-D attention, digit + direction embeddings) end to end."""
    from ditlab.sampling import Pipeline

    straight, split = tmp_path / "straight", tmp_path / "split"
    args = [*TINY, "--video_layout", "full", "--class_factors", "10,8"]
    assert main([*args, "--run_dir", str(straight)]) == 0
    assert main([*args, "--run_dir", str(split), "--steps", "3"]) == 0
    assert main([*args, "--run_dir", str(split)]) == 0
    a = load_weights(latest_checkpoint(straight) / "model.safetensors")
    b = load_weights(latest_checkpoint(split) / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not any(k.startswith("temporal_blocks.") for k in a)  # full attention: no temporal blocks
    assert {"y_embedder.factor_tables.0.weight", "y_embedder.factor_tables.1.weight"} <= a.keys()
    pipe = Pipeline.from_run(straight)
    assert pipe.model.config.layout == "full" and pipe.model.config.class_factors == (10, 8)
    got = pipe(labels=[3, 27], num=2, steps=2, cfg_scale=1.5, seed=0)
    assert got.images.shape == (2, 4, 36, 36, 1) and got.labels.tolist() == [3, 27]
