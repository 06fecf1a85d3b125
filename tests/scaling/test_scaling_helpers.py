"""The study's pure helpers: shrunk sizes, evaluation steps, the table, the plots, the eval-history plot."""
from __future__ import annotations

import json

import pytest

from ditlab.commands.scale import parse_steps
from ditlab.errors import ConfigError, UserError
from ditlab.evaluation.scaling import shrink_config, study_markdown, write_study
from ditlab.training.periodic_eval import plot_eval_history, read_eval_history

PNG = b"\x89PNG\r\n\x1a\n"


def test_shrink_keeps_head_width_and_patch():
    assert shrink_config("DiT-S/4") == {"depth": 12, "hidden_size": 384, "num_heads": 6, "patch_size": 4}
    assert shrink_config("DiT-S/2", 3) == {"depth": 4, "hidden_size": 128, "num_heads": 2, "patch_size": 2}
    assert shrink_config("DiT-B/8", 3) == {"depth": 4, "hidden_size": 256, "num_heads": 4, "patch_size": 8}
    assert shrink_config("DiT-XL/2", 4) == {"depth": 7, "hidden_size": 288, "num_heads": 4, "patch_size": 2}
    assert shrink_config("DiT-S/8", 100)["depth"] == 1 and shrink_config("DiT-S/8", 100)["num_heads"] == 1
    with pytest.raises(ConfigError, match="--shrink must be >= 1"):
        shrink_config("DiT-S/2", 0.5)


def test_eval_steps():
    assert parse_steps(None, 400) == [100, 200, 400]
    assert parse_steps(None, 2) == [1, 2]
    assert parse_steps("50,10,50", 60) == [10, 50, 60]  # sorted, unique, the budget added
    for text in ("0,5", "5,61", "a,b"):
        with pytest.raises(UserError):
            parse_steps(text, 60)


def _study():
    models = []
    for name, gflops, values in [("DiT-S/4", 0.02, [40.0, 20.0]), ("DiT-S/8", 0.005, [90.0, 70.0])]:
        models.append({"name": name, "label": name, "depth": 4, "hidden_size": 128, "num_heads": 2,
                       "patch_size": int(name[-1]), "tokens": 64 // int(name[-1]) ** 2, "params": 1_234_567,
                       "gflops": gflops, "batch": 32,
                       "evals": [{"step": s, "mnist_fd": v, "mnist_accuracy": 0.5, "mnist_fd_ratio": v / 20}
                                 for s, v in zip((100, 300), values, strict=False)]})
    return {"metric": "mnist_fd", "eval_num": 250, "floor": 1.5, "models": models}


def test_table_has_one_row_per_model_and_step():
    lines = study_markdown(_study()).splitlines()
    assert lines[0].startswith("| model | depth | hidden | heads | patch | tokens | params (M) | Gflops | step | "
                               "compute (Gflops) | mnist_fd | mnist_fd_ratio | mnist_accuracy")
    assert len(lines) == 2 + 4
    assert lines[2] == "| DiT-S/4 | 4 | 128 | 2 | 4 | 4 | 1.235 | 0.0200 | 100 | 192 | 40.00 | 2.000 | 0.500 |"


def test_write_study_writes_json_table_and_three_plots(tmp_path):
    paths = write_study(_study(), tmp_path)
    saved = json.loads(paths["json"].read_text())
    assert saved.pop("gflops_correlations") == {"mnist_fd": {}, "mnist_accuracy": {}, "log_mnist_fd": {}}  # 2 models
    assert saved == _study()
    text = paths["markdown"].read_text()
    assert "MNIST-classifier Fréchet distance" in text and "Real-data floor: 1.50" in text
    for key in ("steps_plot", "gflops_plot", "compute_plot"):
        assert paths[key].read_bytes()[:8] == PNG
    assert not list(tmp_path.glob(".*"))  # no temporary files left


def test_eval_history_reads_only_eval_columns(tmp_path):
    (tmp_path / "metrics.csv").write_text(
        "step,loss,eval/fid,eval/mnist_fd_floor\n2,0.5,,\n2,,31.5,1.0\n4,0.4,,\n4,,20.25,1.0\n")
    assert read_eval_history(tmp_path) == {"fid": [(2, 31.5), (4, 20.25)], "mnist_fd_floor": [(2, 1.0), (4, 1.0)]}
    assert plot_eval_history(tmp_path).read_bytes()[:8] == PNG
    assert plot_eval_history(tmp_path / "none") is None
