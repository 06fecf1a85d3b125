"""Shared fixtures for the scaling / sample-many / in-training evaluation tests."""
from __future__ import annotations

import pytest

TINY = ["--preset", "digits-tiny", "--num_workers", "0", "--steps", "4", "--ckpt_every", "2", "--keep_last", "2"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A 4-step digits-tiny run (8x8 pixels, 10 classes) with checkpoints at steps 2 and 4."""
    from ditlab.cli import main

    run = tmp_path_factory.mktemp("tiny") / "run"
    assert main(["train", *TINY, "--run_dir", str(run)]) == 0
    return run


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    # Never write Inception statistics into the user's real cache.
    monkeypatch.setenv("DITLAB_CACHE", str(tmp_path / "cache"))
