"""End to end on small real data: train, checkpoint, resume exactly, sample, evaluate."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from ditlab.cli import main
from ditlab.training.checkpoint import latest_checkpoint, load_weights

TINY = ["--preset", "digits-tiny", "--num_workers", "0"]


def _weights(run):
    return load_weights(latest_checkpoint(run) / "model.safetensors")


def test_train_resume_is_exact_and_sample(tmp_path, capsys):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["train", *TINY, "--run_dir", str(straight), "--steps", "20", "--ckpt_every", "10"]) == 0
    # the same run, interrupted after 10 steps and resumed by rerunning with the full step count
    assert main(["train", *TINY, "--run_dir", str(split), "--steps", "10", "--ckpt_every", "10"]) == 0
    assert main(["train", *TINY, "--run_dir", str(split), "--steps", "20", "--ckpt_every", "10"]) == 0
    a, b = _weights(straight), _weights(split)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    rows_a = (straight / "metrics.csv").read_text().splitlines()
    rows_b = (split / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[:2] for r in rows_a] == [r.split(",")[:2] for r in rows_b]  # step, loss

    # training moved the weights away from the zero-initialised output layer
    assert any(v.abs().sum() > 0 for k, v in a.items() if "final" in k)

    out, npz = tmp_path / "grid.png", tmp_path / "s.npz"
    code = main(["sample", str(straight), "--class", "1,7", "--num", "6", "--steps", "5", "--cfg", "2",
                 "--out", str(out), "--out-npz", str(npz), "--out-dir", str(tmp_path / "each")])
    assert code == 0
    data = np.load(npz)
    assert data["arr_0"].shape == (6, 8, 8, 1) and data["arr_0"].dtype == np.uint8
    assert data["labels"].tolist() == [1, 1, 1, 7, 7, 7]
    assert Image.open(out).size[0] > 8
    assert len(list((tmp_path / "each").glob("*_class7.png"))) == 3

    # per-sample seeds: the same sample whatever the batch size
    npz2 = tmp_path / "s2.npz"
    main(["sample", str(straight), "--class", "1,7", "--num", "6", "--steps", "5", "--cfg", "2",
          "--batch-size", "4", "--out", str(tmp_path / "g2.png"), "--out-npz", str(npz2)])
    assert np.array_equal(np.load(npz2)["arr_0"], data["arr_0"])


def test_resume_refuses_a_different_run(tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["train", *TINY, "--run_dir", str(run), "--steps", "2", "--ckpt_every", "2"]) == 0
    capsys.readouterr()
    assert main(["train", *TINY, "--run_dir", str(run), "--steps", "4", "--depth", "3"]) == 2
    err = capsys.readouterr().err
    assert "depth=2" in err and "--run_dir" in err and "Traceback" not in err


def test_image_folder_with_classes_and_a_corrupt_file(tmp_path, capsys):
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for cls, value in (("cats", 40), ("dogs", 200)):
        (data / cls).mkdir(parents=True)
        for i in range(10):
            arr = np.clip(rng.normal(value, 10, (12, 12, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(data / cls / f"{i}.png")
    (data / "dogs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    run = tmp_path / "run"
    code = main(["train", "--preset", "digits-tiny", "--data", str(data), "--image_size", "8", "--run_dir", str(run),
                 "--steps", "6", "--global_batch_size", "7", "--num_workers", "0", "--ckpt_every", "3"])
    assert code == 0
    out = capsys.readouterr()
    assert "skipped" in out.out and "broken.png" in out.out
    meta = json.loads((latest_checkpoint(run) / "meta.json").read_text())
    assert meta["num_classes"] == 2 and meta["latent_shape"] == [3, 8, 8]


@pytest.mark.slow
def test_mnist_metrics_on_real_digits_meet_the_bar():
    """The demo's metric itself: real test digits score ~99% accuracy and a ratio near 1."""
    from ditlab.data import build_dataset
    from ditlab.evaluation.mnist_classifier import mnist_sample_metrics

    images, labels = build_dataset("mnist", 32, split="train").tensors()
    pick = np.random.default_rng(5).permutation(len(labels))[:1000]  # other digits than the floor's
    real, real_labels = images[pick, 0].numpy(), labels[pick].numpy()
    m = mnist_sample_metrics(real, real_labels)
    assert m["accuracy"] > 0.98
    assert 0.8 < m["frechet_ratio"] < 1.25  # another draw of real digits sits at the floor
    # wrong labels are caught by the accuracy; one repeated digit (no variety) by the distance
    assert mnist_sample_metrics(real, (real_labels + 1) % 10)["accuracy"] < 0.05
    ones = real[real_labels == 1]
    assert mnist_sample_metrics(np.resize(ones, real.shape), np.ones(1000, int))["frechet_ratio"] > 3
