"""Any aspect ratio and resolution, end to end: a folder of mixed-aspect images trains in buckets (resuming
exactly), samples at a non-square size; sizes, designs and conditions that do not fit are one-line errors."""
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
from ditlab.errors import UserError
from ditlab.models import create_model
from ditlab.sampling import Pipeline
from ditlab.training.checkpoint import latest_checkpoint, load_weights

BUCKETS = "8x8,4x12,12x4"
TINY = ["--preset", "digits-tiny", "--num_workers", "0", "--image_size", "8", "--global_batch_size", "4",
        "--ckpt_every", "3", "--buckets", BUCKETS]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """12 wide, 12 tall and 8 square images of two tones each, in two class folders."""
    root = tmp_path_factory.mktemp("mixed") / "data"
    rng = np.random.default_rng(0)
    for cls, tone in (("dark", 50), ("light", 200)):
        (root / cls).mkdir(parents=True)
        for name, (h, w), n in (("wide", (10, 31), 6), ("tall", (33, 11), 6), ("square", (16, 16), 4)):
            for i in range(n):
                arr = np.clip(rng.normal(tone, 20, (h, w, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(root / cls / f"{name}{i}.png")
    return root


def test_mixed_aspect_folder_trains_resumes_exactly_and_samples_non_square(mixed, tmp_path, capsys):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["train", *TINY, "--data", str(mixed), "--run_dir", str(straight), "--steps", "6"]) == 0
    assert main(["train", *TINY, "--data", str(mixed), "--run_dir", str(split), "--steps", "3"]) == 0
    assert main(["train", *TINY, "--data", str(mixed), "--run_dir", str(split), "--steps", "6"]) == 0
    a, b = (load_weights(latest_checkpoint(r) / "model.safetensors") for r in (straight, split))
    for key in a:
        assert torch.equal(a[key], b[key]), key
    meta = json.loads((latest_checkpoint(straight) / "meta.json").read_text())
    assert meta["buckets"] == [[8, 8], [4, 12], [12, 4]]  # the bucket list is stored in the run
    assert meta["latent_shape"] == [3, 8, 8]  # the default (square) bucket

    out = tmp_path / "wide.npz"
    assert main(["sample", str(straight), "--class", "0,1", "--num", "4", "--steps", "3", "--height", "4",
                 "--width", "12", "--out", str(tmp_path / "wide.png"), "--out-npz", str(out)]) == 0
    assert np.load(out)["arr_0"].shape == (4, 4, 12, 3)


def test_each_batch_is_one_bucket(mixed, tmp_path):
    from ditlab.config import resolve_config
    from ditlab.training.distributed import DistInfo
    from ditlab.training.setup import build_data

    config = resolve_config("digits-tiny", None, {"data": str(mixed), "image_size": "8", "buckets": BUCKETS,
                                                  "global_batch_size": "4", "num_workers": "0"})
    info = DistInfo()  # one process
    data = build_data(config, tmp_path / "r", info, 4, torch.device("cpu"), log=lambda *a: None)
    assert data.buckets == [(8, 8), (4, 12), (12, 4)]
    shapes = {tuple(data.source.next()[0].shape) for _ in range(8)}
    assert shapes == {(4, 3, 8, 8), (4, 3, 4, 12), (4, 3, 12, 4)}


def _pipe(**model_kw):
    model = create_model("DiT-Test/2", input_size=8, in_channels=1, num_classes=3, learn_sigma=False, **model_kw)
    return Pipeline(model.eval(), create_process("flow"), load_autoencoder("pixel", channels=1), ClassCondition(3),
                    (1, 8, 8))


def test_pipeline_sizes_and_their_errors():
    pipe = _pipe()
    assert pipe.latent_shape_at() == (1, 8, 8) and pipe.latent_shape_at(6, 12) == (1, 6, 12)
    assert pipe.latent_shape_at(width=4) == (1, 8, 4)
    got = pipe(labels=[1], num=2, steps=2, height=6, width=12)
    assert got.images.shape == (2, 6, 12, 1) and got.settings["latent_shape"] == [1, 6, 12]
    for kw, message in [(dict(height=7), "--height 7 is not a multiple of 2"), (dict(width=0), "--width 0"),
                        (dict(height=40), "exceeds this model's position table of 10 patches")]:
        limited = _pipe(pos_max_size=10)
        with pytest.raises(UserError, match=message) as err:
            limited(labels=[1], steps=2, **kw)
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("argv,message", [
    (["--buckets", "8x8,4x11"], "bucket 4x11 is not divisible by 2"),
    (["--buckets", "8x8,6x10", "--autoencoder", "auto", "--vae_downsample", "4"],
     "bucket 6x10 is not divisible by 8"),
    (["--model", "MMDiT-Test/2"], "block 'mmdit' is a text-to-image design but the data gives class labels"),
    (["--block", "mmdit"], "block 'mmdit' is a text-to-image design"),
    (["--buckets", "8x8", "--data", "digits"], "--buckets is for image folders"),
])
def test_bad_sizes_and_designs_are_refused_before_anything_is_trained(mixed, tmp_path, capsys, argv, message):
    run = tmp_path / "run"
    code = main(["train", "--preset", "digits-tiny", "--num_workers", "0", "--image_size", "8", "--data", str(mixed),
                 "--run_dir", str(run), "--steps", "2", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ") and message in err[-1], err
    assert not [p.name for p in run.glob("*") if p.name not in ("config.json", ".ditlab.lock")]  # nothing trained


def test_sample_size_the_model_cannot_take(mixed, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--data", str(mixed), "--run_dir", str(run), "--steps", "1"]) == 0
    capsys.readouterr()
    out = tmp_path / "never.png"
    assert main(["sample", str(run), "--num", "2", "--steps", "2", "--height", "9", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --height 9 is not a multiple of 2 (patch 2 x autoencoder downsampling 1): use e.g. 8"]
    assert not out.exists()
