"""A text model under FSDP on 2 gloo processes resumes exactly where one process would be (caption features are
encoded once by rank 0 and read by rank 1)."""
import shutil

import numpy as np
import pytest
from PIL import Image
from test_multiprocess import _assert_same_weights, _losses, spawn

from ditlab.cli import main
from ditlab.training.checkpoint import latest_checkpoint

TEXT = ["--preset", "digits-tiny", "--image_size", "8", "--autoencoder", "pixel", "--condition", "text",
        "--block", "pixart", "--text_max_length", "8", "--process", "flow", "--learn_sigma", "false",
        "--global_batch_size", "8", "--num_workers", "0", "--log_every", "1", "--keep_last", "5", "--flip", "false",
        "--sampler", "euler", "--sample_steps", "4"]


@pytest.mark.slow
def test_text_fsdp_resumes_across_world_sizes(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(16):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text(f"a bright square\na square number {i % 4}\n" if i % 2 else "a dark square\n")
    args = [*TEXT, "--data", str(data), "--ckpt_every", "4"]
    one, mixed = tmp_path / "one", tmp_path / "mixed"
    assert main(["train", *args, "--run_dir", str(one), "--steps", "4"]) == 0
    shutil.copytree(one, mixed)
    assert main(["train", *args, "--run_dir", str(one), "--steps", "8"]) == 0
    results = spawn(2, ["train", *args, "--run_dir", str(mixed), "--steps", "6", "--fsdp", "--sample_every", "6"])
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]
    assert (mixed / "samples" / "step_0000006.png").is_file()  # an EMA grid of the example prompts
    assert main(["train", *args, "--run_dir", str(mixed), "--steps", "8"]) == 0
    assert _losses(mixed) == pytest.approx(_losses(one), rel=1e-5, abs=1e-6)
    _assert_same_weights(latest_checkpoint(one), latest_checkpoint(mixed))
