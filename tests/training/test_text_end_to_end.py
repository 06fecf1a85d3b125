"""A tiny text-to-image run end to end: captioned folder -> text features -> PixArt blocks -> exact resume ->
prompts (file, negative, empty) -> grid and .npz; a latent cache of captioned data; prompts steer samples."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ditlab.cli import main
from ditlab.training.checkpoint import latest_checkpoint, load_weights

TINY_TEXT = ["--preset", "digits-tiny", "--image_size", "8", "--autoencoder", "pixel", "--condition", "text",
             "--block", "pixart", "--text_max_length", "8", "--process", "flow", "--learn_sigma", "false",
             "--sampler", "euler", "--sample_steps", "8", "--global_batch_size", "16", "--lr", "2e-3",
             "--num_workers", "0", "--ema_decay", "0.9", "--flip", "false"]
WHITE, BLACK = ["a white square", "a bright square"], ["a black square", "a dark square"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """24 bright and 24 dark 8x8 images captioned as such, one without a caption, one missing from metadata."""
    root = tmp_path_factory.mktemp("squares")
    rng = np.random.default_rng(0)
    lines = []
    for i in range(48):
        bright = i % 2 == 0
        level = rng.integers(200, 256) if bright else rng.integers(0, 50)
        pixels = np.clip(level + rng.integers(-20, 21, (8, 8, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"{i:02d}.png")
        if i != 47:
            lines.append({"file_name": f"{i:02d}.png", "text": WHITE if bright else BLACK})
    lines.append({"file_name": "not-there.png", "text": "a ghost"})
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    return root


def _weights(run):
    return load_weights(latest_checkpoint(run) / "ema.safetensors")


def test_text_run_trains_resumes_exactly_and_samples(folder, tmp_path, capsys):
    straight, split = tmp_path / "straight", tmp_path / "split"
    args = [*TINY_TEXT, "--data", str(folder), "--ckpt_every", "6", "--log_every", "2"]
    assert main(["train", *args, "--run_dir", str(straight), "--steps", "12"]) == 0
    out = capsys.readouterr().out
    assert "condition text" in out and "1 without a caption" in out and "not-there.png" in out
    assert main(["train", *args, "--run_dir", str(split), "--steps", "6"]) == 0
    assert main(["train", *args, "--run_dir", str(split), "--steps", "12"]) == 0
    a, b = _weights(straight), _weights(split)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [(straight / "metrics.csv").read_text().splitlines(), (split / "metrics.csv").read_text().splitlines()]
    assert [r.split(",")[:2] for r in rows[0]] == [r.split(",")[:2] for r in rows[1]]
    assert any("cross_attn" in k for k in a) and "t_block.linear.weight" in a
    # the caption features live in the run (reused on resume): table + description
    cond = json.loads((straight / "condition" / "text_condition.json").read_text())
    assert cond["kind"] == "text" and (straight / "condition" / cond["table"]).is_file()
    meta = json.loads((latest_checkpoint(straight) / "meta.json").read_text())
    assert meta["condition"]["kind"] == "text" and meta["model"]["context_dim"] == 384

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a white square\n\na black square\n", encoding="utf-8")
    grid, npz = tmp_path / "grid.png", tmp_path / "s.npz"
    assert main(["sample", str(straight), "--prompts-file", str(prompts), "--num", "6", "--out", str(grid),
                 "--out-npz", str(npz), "--negative-prompt", "a dark square", "--cfg", "2"]) == 0
    data = np.load(npz)
    assert data["arr_0"].shape == (6, 8, 8, 3) and data["arr_0"].dtype == np.uint8
    assert data["prompts"].tolist() == ["a white square"] * 3 + ["a black square"] * 3
    assert Image.open(grid).size[0] > 3 * 8 + 40  # a label column left of the samples
    # an empty prompt samples unconditionally: the same as the null condition the run trained with
    npz2 = tmp_path / "u.npz"
    assert main(["sample", str(straight), "--prompt", "", "--num", "2", "--out", str(tmp_path / "u.png"),
                 "--out-npz", str(npz2)]) == 0
    assert np.load(npz2)["arr_0"].shape == (2, 8, 8, 3)


@pytest.mark.slow
def test_prompts_steer_samples_in_the_asked_direction(folder, tmp_path):
    """After a few hundred steps, 'white' prompts give bright squares and 'black' ones dark squares, also in
    phrasings the model never saw."""
    from ditlab.sampling import Pipeline

    run = tmp_path / "run"
    assert main(["train", *TINY_TEXT, "--data", str(folder), "--run_dir", str(run), "--steps", "300",
                 "--ckpt_every", "300", "--log_every", "100"]) == 0
    pipe = Pipeline.from_run(run)
    got = pipe(prompts=["a white square", "a black square", "a bright square", ""], num=32, cfg_scale=2.0)
    mean = got.images.reshape(4, 8, -1).mean(axis=(1, 2))  # brightness per prompt
    assert mean[0] > 150 and mean[2] > 150 and mean[1] < 100, mean
    assert mean[1] < mean[3] < mean[0]  # unconditional samples lie in between (a mix of both)


def test_latent_cache_of_captioned_data_trains(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("DITLAB_CACHE", str(tmp_path / "dcache"))
    cache = tmp_path / "cache"
    assert main(["extract-latents", str(folder), "--autoencoder", "pixel", "--image-size", "8", "--out", str(cache),
                 "--workers", "0", "--no-progress", "--text-max-length", "8"]) == 0
    index = json.loads((cache / "index.json").read_text())
    assert index["condition"]["kind"] == "text"
    assert (cache / "condition" / index["condition"]["table"]).is_file()  # the features travel with the cache
    run = tmp_path / "from-cache"
    assert main(["train", *TINY_TEXT, "--latents", str(cache), "--data", "", "--run_dir", str(run), "--steps", "4",
                 "--ckpt_every", "4"]) == 0
    assert (run / "condition" / index["condition"]["table"]).is_file()
    assert main(["sample", str(run), "--prompt", "a white square", "--num", "2", "--out", str(tmp_path / "g.png")]) == 0
