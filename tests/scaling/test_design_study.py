"""``ditlab design-study``'s pieces: sizes, compute-matched step budgets, the table and figures, refusals.
(The study itself runs for minutes on captioned MNIST; its measured results are in docs/text_to_image_designs.md.)"""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from ditlab.cli import main
from ditlab.commands.design_study import _entry, parse_sizes
from ditlab.errors import UserError
from ditlab.evaluation.design_study import final_evals, study_table, winners, write_design_study
from ditlab.evaluation.scaling_plots import training_compute


def test_sizes_parse_and_bad_ones_are_one_line():
    assert parse_sizes("2x96x2, 4x192x3") == [(2, 96, 2), (4, 192, 3)]
    for bad in ("4x192", "ax1x1", ""):
        with pytest.raises(UserError, match="--sizes"):
            parse_sizes(bad)


def test_every_design_gets_the_same_training_compute():
    base = SimpleNamespace(model="DiT-S/2", image_size=32, vae_downsample=4, vae_latent_channels=4,
                           global_batch_size=64, text_max_length=24)
    fields = {"num_classes": 0, "context_dim": 384, "pooled_dim": 384}
    study = {"compute": 2500.0, "models": []}
    entries = [_entry(study, d, (2, 96, 2), base, fields) for d in ("pixart", "mmdit", "u-vit")]
    assert [e["name"] for e in entries] == ["pixart-2x96", "mmdit-2x96", "u-vit-2x96"]
    assert _entry(study, "pixart", (2, 96, 2), base, fields) is entries[0]  # made once
    for e in entries:
        per_step = training_compute(e["gflops"], 64, 1)
        assert abs(training_compute(e["gflops"], 64, e["steps"]) - 2500.0) <= per_step / 2
    # a costlier forward pass takes fewer steps
    assert entries[1]["gflops"] > entries[0]["gflops"] and entries[1]["steps"] < entries[0]["steps"]


def _eval(step, digit, fd):
    scores = {"digit_accuracy": digit, "thickness_right": 0.5, "slant_right": 0.5, "all_right": digit / 2}
    return {"step": step, "train_compute": 10.0 * step, "held_out": scores, "seen": scores, "frechet_ratio": fd}


def test_table_winners_and_figures(tmp_path):
    study = {"compute": 100.0, "per_combination": 2, "fd_num": 10, "cfg_scale": 1.5, "models": [
        {"name": "pixart-2x96", "design": "pixart", "depth": 2, "hidden_size": 96, "gflops": 0.01, "params": 1e5,
         "steps": 10, "evals": [_eval(5, 0.2, 9.0), _eval(10, 0.6, 5.0)]},
        {"name": "mmdit-2x96", "design": "mmdit", "depth": 2, "hidden_size": 96, "gflops": 0.02, "params": 2e5,
         "steps": 5, "evals": [_eval(3, 0.3, 8.0), _eval(5, 0.5, 4.0)]},
        {"name": "u-vit-4x192", "design": "u-vit", "depth": 4, "hidden_size": 192, "gflops": 0.05, "params": 5e5,
         "steps": 2, "evals": [_eval(1, 0.1, 12.0)]},  # stopped half-way: not at its full compute yet
    ]}
    assert [m["name"] for m, _ in final_evals(study)] == ["pixart-2x96", "mmdit-2x96"]
    assert winners(study) == {"digit_accuracy": "pixart-2x96", "thickness_right": "pixart-2x96",
                              "slant_right": "pixart-2x96", "all_right": "pixart-2x96",
                              "frechet_ratio": "mmdit-2x96"}
    assert len(study_table(study)) == 2 + 5
    paths = write_design_study(study, tmp_path)
    for key in ("compute", "gflops", "markdown"):
        assert paths[key].is_file() and paths[key].stat().st_size > 0
    assert "best held-out: all three right at full compute: pixart-2x96" in paths["markdown"].read_text()


@pytest.mark.parametrize("argv,message", [
    (["--designs", "adaLN-Zero", "--compute", "10"], "'adaLN-Zero' is not a text design"),
    (["--compute", "0"], "--compute must be > 0"),
    (["--compute", "10", "--eval-fractions", "0.5,2"], "--eval-fractions in (0, 1]"),
    (["--compute", "10", "--sizes", "4x192"], "is not DEPTHxWIDTHxHEADS"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, argv, message):
    out = tmp_path / "study"
    assert main(["design-study", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not out.exists()
