"""Run directories written before conditions were data (no process / condition / sampling in meta.json,
``class_dropout_prob`` in config.json) still sample and resume."""
from __future__ import annotations

import json

import numpy as np

from ditlab.cli import main
from ditlab.sampling import Pipeline
from ditlab.training import checkpoint as ckpt

TINY = ["train", "--preset", "digits-tiny", "--steps", "4", "--ckpt_every", "2", "--global_batch_size", "16"]


def _as_old_run(run) -> None:
    config = json.loads((run / "config.json").read_text())
    config["class_dropout_prob"] = config.pop("cond_dropout_prob")
    del config["condition"]
    (run / "config.json").write_text(json.dumps(config))
    for folder in (run / "checkpoints").glob("step_*"):
        meta = json.loads((folder / "meta.json").read_text())
        for key in ("process", "condition", "sampling", "autoencoder_spec"):
            meta.pop(key)
        meta["model"] = {**{k: v for k, v in meta["model"].items() if k not in ("context_dim", "pooled_dim")},
                         "class_dropout_prob": 0.1}
        (folder / "meta.json").write_text(json.dumps(meta))


def test_old_run_directories_sample_and_resume(tmp_path):
    run = tmp_path / "run"
    assert main([*TINY, "--run_dir", str(run)]) == 0
    expected = Pipeline.from_run(run)(labels=[1, 2], num=4, steps=3).images
    _as_old_run(run)
    old = Pipeline.from_run(run)
    assert old.condition.class_names == [str(d) for d in range(10)] and old.process.kind == "ddpm"
    assert old.defaults.sampler == "ddim" and old.defaults.steps == 10  # from config.json
    assert np.array_equal(old(labels=[1, 2], num=4, steps=3).images, expected)
    assert main([*TINY[:-6], "--steps", "6", "--ckpt_every", "2", "--global_batch_size", "16",
                 "--run_dir", str(run)]) == 0  # the same command with more steps resumes
    assert ckpt.latest_checkpoint(run).name == "step_0000006"
