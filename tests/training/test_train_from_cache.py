"""`ditlab train --latents CACHE`: two commands from an image folder to a trained DiT."""
import numpy as np
import pytest
from PIL import Image

from ditlab.cli import main
from ditlab.training.checkpoint import latest_checkpoint, load_weights


@pytest.fixture()
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(8):
            image = Image.fromarray(rng.integers(0, 255, (10, 10, 3), dtype=np.uint8))
            image.save(tmp_path / "data" / cls / f"{i}.png")
    return tmp_path / "data"


def test_extract_then_train_from_cache(tmp_path, folder):
    cache = tmp_path / "cache"
    assert main(["extract-latents", str(folder), "--autoencoder", "pixel", "--image-size", "8", "--out", str(cache),
                 "--no-progress"]) == 0
    run = tmp_path / "run"
    args = ["train", "--preset", "digits-tiny", "--latents", str(cache), "--autoencoder", "pixel", "--image_size", "8",
            "--run_dir", str(run), "--steps", "4", "--global_batch_size", "8", "--ckpt_every", "2"]
    assert main(args) == 0
    weights = load_weights(latest_checkpoint(run) / "model.safetensors")
    assert any(v.abs().sum() > 0 for k, v in weights.items() if "final" in k)
    # the same command resumes exactly where it was: no further steps to do
    assert main(args) == 0


def test_cache_of_another_size_is_refused(tmp_path, folder, capsys):
    cache = tmp_path / "cache"
    main(["extract-latents", str(folder), "--autoencoder", "pixel", "--image-size", "8", "--out", str(cache),
          "--no-progress"])
    capsys.readouterr()
    code = main(["train", "--preset", "digits-tiny", "--latents", str(cache), "--autoencoder", "pixel",
                 "--image_size", "16", "--run_dir", str(tmp_path / "r"), "--global_batch_size", "8"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "8px" in err and "16px" in err and len(err.splitlines()) == 1
