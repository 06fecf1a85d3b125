"""The study's numbers: training compute (Fig. 9's axis), the log-Gflops correlation (Fig. 8's r), the figures."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ditlab.evaluation.scaling import correlation_markdown, study_markdown, write_study
from ditlab.evaluation.scaling_plots import (
    final_step,
    gflops_correlations,
    pearson,
    plot_study,
    study_metrics,
    training_compute,
)

PNG = b"\x89PNG\r\n\x1a\n"
GFLOPS = {"DiT-S/8": 0.0006, "DiT-S/4": 0.0018, "DiT-S/2": 0.0075, "DiT-B/8": 0.0021, "DiT-B/4": 0.007,
          "DiT-B/2": 0.028}


def _study(steps=(100, 250, 500), batch=64):
    rng = np.random.default_rng(0)
    models = []
    for name, g in GFLOPS.items():
        evals = [{"step": s, "mnist_fd": float(300 / (g * 1e3 * s / 100) ** 0.5 + rng.uniform(0, 5)),
                  "mnist_accuracy": float(min(0.99, 0.1 + 0.2 * math.log10(g * 1e4 * s / 100))),
                  "mnist_fd_ratio": 1.0} for s in steps]
        models.append({"name": name, "label": name, "depth": 2, "hidden_size": 64, "num_heads": 1,
                       "patch_size": int(name[-1]), "tokens": 256 // int(name[-1]) ** 2, "params": 200_000,
                       "gflops": g, "batch": batch, "evals": evals})
    return {"metric": "mnist_fd", "eval_num": 1000, "floor": 2.5, "cfg_scale": 1.0, "models": models}


def test_training_compute_is_gflops_batch_steps_times_three():
    assert training_compute(0.5, 64, 1000) == 0.5 * 64 * 1000 * 3 == 96_000
    assert training_compute(118.6, 256, 400_000) == pytest.approx(3.643e10, rel=1e-3)  # DiT-XL/2's 400K steps
    row = study_markdown(_study()).splitlines()[2].split(" | ")
    assert row[0] == "| DiT-S/8" and row[8] == "100" and float(row[9]) == pytest.approx(0.0006 * 64 * 100 * 3, rel=1e-3)


def test_pearson_matches_numpy():
    rng = np.random.default_rng(1)
    for n in (2, 3, 9, 50):
        x, y = rng.normal(size=n), rng.normal(size=n)
        y2 = -3 * x + 0.1 * y
        assert pearson(list(x), list(y)) == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
        assert pearson(list(x), list(y2)) == pytest.approx(np.corrcoef(x, y2)[0, 1], abs=1e-12)
    assert math.isnan(pearson([1.0, 2.0, 3.0], [0.05, 0.05, 0.05]))  # a constant has no correlation
    with pytest.raises(ValueError):
        pearson([1.0, 2.0], [1.0])


def test_gflops_correlation_is_log10_gflops_against_each_metric_per_step():
    study = _study()
    corr = gflops_correlations(study)
    assert set(corr) == {"mnist_fd", "mnist_accuracy", "log_mnist_fd"}
    for s in (100, 250, 500):
        logg = [math.log10(m["gflops"]) for m in study["models"]]
        fd = [next(e["mnist_fd"] for e in m["evals"] if e["step"] == s) for m in study["models"]]
        acc = [next(e["mnist_accuracy"] for e in m["evals"] if e["step"] == s) for m in study["models"]]
        assert corr["mnist_fd"][str(s)] == pytest.approx(np.corrcoef(logg, fd)[0, 1], abs=1e-4)
        assert corr["log_mnist_fd"][str(s)] == pytest.approx(np.corrcoef(logg, np.log10(fd))[0, 1], abs=1e-4)
        assert corr["mnist_accuracy"][str(s)] == pytest.approx(np.corrcoef(logg, acc)[0, 1], abs=1e-4)
    assert corr["log_mnist_fd"]["500"] < -0.9 < 0.9 < corr["mnist_accuracy"]["500"]  # as built: more Gflops, better
    # a step that fewer than 3 models reached has no correlation; the last common step is the figures' step
    study["models"][0]["evals"].append({"step": 900, "mnist_fd": 1.0, "mnist_accuracy": 1.0})
    assert "900" not in gflops_correlations(study)["mnist_fd"] and final_step(study) == 500
    assert correlation_markdown(study).splitlines()[2].startswith("| 100 | ")
    assert study_metrics({"metric": "fid"}) == ["fid"]


def test_write_study_writes_correlations_table_and_three_figures(tmp_path):
    study = _study()
    paths = write_study(study, tmp_path)
    saved = json.loads(paths["json"].read_text())
    assert saved["gflops_correlations"] == gflops_correlations(study) and saved["models"] == study["models"]
    assert "gflops_correlations" not in study  # the caller's dict is left alone
    text = paths["markdown"].read_text()
    assert "Real-data floor: 2.50" in text and "r(log Gflops, mnist_fd)" in text
    for key in ("gflops_plot", "steps_plot", "compute_plot"):
        assert paths[key].read_bytes()[:8] == PNG
    assert not list(tmp_path.glob(".*"))  # no temporary files left
    fid_study = {**study, "metric": "fid", "models": [{**m, "evals": [{"step": e["step"], "fid": e["mnist_fd"]}
                                                                      for e in m["evals"]]} for m in study["models"]]}
    assert set(plot_study(fid_study, tmp_path / "fid")) == {"gflops", "steps", "compute"}
