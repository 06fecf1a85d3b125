"""Served models on disk for the end-to-end tests: a real (tiny) training run, an unconditional model folder
and a slower model folder for long generations."""
from __future__ import annotations

import pytest
from serve_fakes import write_model_folder

from ditlab.cli import main


@pytest.fixture(scope="session")
def served_dirs(tmp_path_factory):
    """(run dir of 10 class-conditional digits, unconditional folder, slow 16-px class folder)."""
    root = tmp_path_factory.mktemp("served")
    run = root / "digits"
    assert main(["train", "--preset", "digits-tiny", "--run_dir", str(run), "--steps", "4", "--ckpt_every", "4",
                 "--log_every", "4"]) == 0
    noise = write_model_folder(root / "noise", num_classes=0)
    slow = write_model_folder(root / "slow", num_classes=3, class_names=["left", "right", "up"], size=16,
                              name="DiT-T/2", steps=20)
    return run, noise, slow
