"""``ditlab scale`` end to end on 8-px MNIST: trains, scores, writes the study; resumes; refuses bad input."""
from __future__ import annotations

import json

import pytest

from ditlab.cli import main
from ditlab.config import load_config
from ditlab.evaluation.flops import count_gflops
from ditlab.evaluation.scaling import MnistFrechet
from ditlab.models import model_from_config
from ditlab.sampling import Pipeline
from ditlab.training.periodic_eval import eval_samples

ARGS = ["--models", "DiT-S/8,DiT-S/4", "--budget", "4", "--eval-steps", "2", "--eval-num", "20", "--shrink", "6",
        "--image_size", "8", "--autoencoder", "pixel", "--global_batch_size", "16", "--sample_steps", "4",
        "--num_workers", "0", "--tensorboard", "false", "--log_every", "2", "--cfg_scale", "1"]


@pytest.mark.slow  # trains two tiny models on MNIST and classifies 10k digits: ~60 s on 2 busy cores
def test_study_numbers_resume_and_refusals(tmp_path, monkeypatch, capsys):
    out = tmp_path / "study"
    assert main(["scale", "mnist", *ARGS, "--guided-cfg", "3", "--out", str(out)]) == 0
    study = json.loads((out / "scaling.json").read_text())
    assert study["metric"] == "mnist_fd" and [m["name"] for m in study["models"]] == ["DiT-S/8", "DiT-S/4"]
    for entry in study["models"]:
        assert [e["step"] for e in entry["evals"]] == [2, 4]
        assert (entry["depth"], entry["hidden_size"], entry["num_heads"]) == (2, 64, 1)
        assert entry["tokens"] == (8 // entry["patch_size"]) ** 2
    # the numbers are those of the runs' final EMA models, scored again by hand
    scorer = MnistFrechet(8)
    for entry in study["models"]:
        run_dir = out / "runs" / entry["name"].replace("/", "-")
        run, config = Pipeline.from_run(run_dir), load_config(run_dir / "config.json")
        assert run.info["step"] == 4 and config.model == entry["name"] and config.patch_size == entry["patch_size"]
        assert entry["gflops"] == pytest.approx(count_gflops(model_from_config(run.model.config, device="meta")))
        assert entry["params"] == sum(p.numel() for p in run.model.parameters())
        images, labels = eval_samples(run, config, range(20))
        again = scorer.score(images, labels)
        assert entry["evals"][-1]["mnist_fd"] == pytest.approx(again["mnist_fd"], rel=1e-9)
        assert entry["evals"][-1]["mnist_accuracy"] == again["mnist_accuracy"]
        for e in entry["evals"]:  # Fig. 9's axis: forward Gflops x batch x steps x 3
            assert e["train_compute"] == pytest.approx(entry["gflops"] * 16 * e["step"] * 3, rel=1e-12)
        # the guided score is the same samples with cfg 3, kept apart from the (unguided) evaluations
        config.cfg_scale = 3.0
        guided = scorer.score(*eval_samples(run, config, range(20)))
        assert entry["guided"]["cfg_scale"] == 3.0 and entry["guided"]["step"] == 4
        assert entry["guided"]["mnist_fd"] == pytest.approx(guided["mnist_fd"], rel=1e-9)
        # every run reads the one latent encoding of the study (a hard link where the file system allows)
        assert (out / "runs" / entry["name"].replace("/", "-") / "latents.safetensors").stat().st_ino == \
            (out / "latents.safetensors").stat().st_ino
    assert study["floor"] == pytest.approx(scorer.floor(20), rel=1e-12)
    s8, s4 = study["models"]
    assert s4["gflops"] > s8["gflops"]  # 4 tokens cost more than 1
    assert "autoencoder" not in study  # pixels: no reconstructions to score
    assert study["cfg_scale"] == 1.0 and study["eval_steps"] == [2, 4] and "gflops_correlations" in study
    table = (out / "scaling.md").read_text()
    assert table.count("| DiT-S/") == 4 and "MNIST-classifier Fréchet distance" in table
    for png in ("scaling_steps.png", "scaling_gflops.png", "scaling_compute.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"

    # rerunning skips all that is done: no training
    import ditlab.training.loop as loop

    monkeypatch.setattr(loop, "train", lambda config: pytest.fail("trained again"))
    assert main(["scale", "mnist", *ARGS, "--guided-cfg", "3", "--out", str(out)]) == 0
    assert json.loads((out / "scaling.json").read_text()) == study
    capsys.readouterr()
    # another setting in the same folder, and bad input: one line each
    for extra, message in [
        (["--eval-num", "30"], "eval_num=20, not 30"),
    ]:
        assert main(["scale", "mnist", *ARGS, *extra, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


@pytest.mark.parametrize("data, args, message", [
    ("mnist", ["--models", "DiT-Q/4", "--budget", "4"], "unknown model"),
    ("mnist", ["--models", "DiT-S/4,DiT-S/4", "--budget", "4"], "twice"),
    ("mnist", ["--models", "DiT-S/4", "--budget", "0"], "--budget must be >= 1"),
    ("mnist", ["--models", "DiT-S/4", "--budget", "4", "--eval-steps", "8"], "outside [1, --budget 4]"),
    ("mnist", ["--models", "DiT-S/4", "--budget", "4", "--eval-num", "1"], "--eval-num must be >= 2"),
    ("digits", ["--models", "DiT-S/4", "--budget", "4", "--metric", "mnist"], "--metric mnist needs mnist"),
    ("mnist", ["--models", "DiT-S/4", "--budget", "4", "--shrink", "0.5"], "--shrink must be >= 1"),
    ("mnist", ["--models", "DiT-S/4", "--budget", "4", "--guided-cfg", "-1"], "--guided-cfg must be > 0"),
    ("mnist", ["--models", "DiT-S/4", "--budget", "4", "--guided-cfg", "1.5"], "differ from the study's cfg_scale 1.5"),
])
def test_bad_input_is_one_line(tmp_path, capsys, data, args, message):
    assert main(["scale", data, *args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1
