"""``ditlab sample-many``: labels from a seeded counter, a disjoint split over 2 gloo ranks, resume, ADM npz."""
from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import torch
from PIL import Image
from scaling_workers import sample_many_worker

from ditlab.cli import main
from ditlab.config import load_config
from ditlab.sampling import Pipeline
from ditlab.sampling.many import random_labels, sample_many, sample_name, write_adm_npz
from ditlab.training.periodic_eval import eval_samples


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reference(run_dir, num: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """What one process makes for samples 0..num-1: labels by (seed, i), noise seed seed + i, as RGB."""
    pipe = Pipeline.from_run(run_dir)
    labels = random_labels(seed, range(num), pipe.condition.num_classes)
    images = pipe(labels=labels.tolist(), num=num, seed=seed).images  # (N, 8, 8, 1)
    return np.repeat(images, 3, axis=-1), labels.numpy()


def test_labels_are_uniform_and_fixed_by_seed_and_index():
    labels = random_labels(7, range(100_000), 10)
    counts = np.bincount(labels.numpy(), minlength=10)
    chi2 = float(((counts - 10_000) ** 2 / 10_000).sum())
    assert chi2 < 33.7  # chi-square, 9 degrees of freedom: p = 1e-4
    # the label of sample i depends on (seed, i) only: any subset, any order, any total
    idx = [99_999, 5, 12_345, 0]
    assert random_labels(7, idx, 10).tolist() == labels[idx].tolist()
    assert random_labels(7, range(50), 10).tolist() == labels[:50].tolist()
    assert (random_labels(8, range(1000), 10) != labels[:1000]).float().mean() > 0.8  # another seed, other labels
    # neighbouring indices are not correlated (a lag-1 pair hits the same class about 1/10 of the time)
    same = float((labels[1:] == labels[:-1]).float().mean())
    assert abs(same - 0.1) < 0.006
    assert random_labels(7, range(3), 0).tolist() == [0, 0, 0]


@pytest.mark.slow  # two processes start torch: ~30-50 s on 2 busy cores
def test_two_gloo_ranks_split_without_gaps_and_match_one_process(tiny_run, tmp_path):
    out, record = tmp_path / "s", tmp_path / "rec"
    record.mkdir()
    num = 11
    torch.multiprocessing.spawn(sample_many_worker, args=(2, _free_port(), str(tiny_run), str(out), num, str(record)),
                                nprocs=2, join=True)
    ranks = [json.loads((record / f"rank{r}.json").read_text()) for r in (0, 1)]
    a, b = set(ranks[0]["generated"]), set(ranks[1]["generated"])
    assert not a & b and a | b == set(range(num))  # disjoint, no gaps
    assert a == set(range(0, num, 2))
    assert ranks[0]["npz"] == str(out / "samples.npz") and ranks[1]["npz"] is None  # rank 0 assembles
    ref_images, ref_labels = _reference(tiny_run, num)
    with np.load(out / "samples.npz") as z:
        assert z["arr_0"].dtype == np.uint8 and z["arr_0"].shape == (num, 8, 8, 3)
        np.testing.assert_array_equal(z["arr_0"], ref_images)  # bit-identical to one process
        np.testing.assert_array_equal(z["labels"], ref_labels)
    # the in-training evaluation split (every world-th sample per rank, gathered) is one process's set
    one = eval_samples(Pipeline.from_run(tiny_run), load_config(tiny_run / "config.json"), range(5))
    with np.load(record / "eval_gather.npz") as z:
        np.testing.assert_array_equal(z["images"], one[0])
        np.testing.assert_array_equal(z["labels"], one[1])


def test_resume_makes_only_missing_samples_and_refuses_other_settings(tiny_run, tmp_path, capsys):
    out = tmp_path / "s"
    first = sample_many(tiny_run, 6, out, batch_size=4, device="cpu", progress=False)
    assert first.generated == list(range(6))
    before = np.load(out / "samples.npz")["arr_0"]
    labels = random_labels(0, range(8), 10).tolist()
    for i in (1, 4):
        (out / "images" / sample_name(i, labels[i])).unlink()
    (out / "images" / ".000002_class0.png.tmp").write_bytes(b"half a png")  # a killed write
    (out / "samples.npz").unlink()
    again = sample_many(tiny_run, 6, out, batch_size=4, device="cpu", progress=False)
    assert again.generated == [1, 4]
    np.testing.assert_array_equal(np.load(out / "samples.npz")["arr_0"], before)
    assert not list((out / "images").glob(".*.tmp"))
    # a larger --num keeps the first samples and their labels, and adds the rest
    more = sample_many(tiny_run, 8, out, batch_size=4, device="cpu", progress=False)
    assert more.generated == [6, 7]
    with np.load(out / "samples.npz") as z:
        np.testing.assert_array_equal(z["arr_0"][:6], before)
        assert z["labels"].tolist() == labels
        # each PNG is the sample (8x8 gray, lossless), replicated to RGB in the npz
        png = np.asarray(Image.open(out / "images" / sample_name(7, labels[7])))
        np.testing.assert_array_equal(np.repeat(png[..., None], 3, -1), z["arr_0"][7])

    capsys.readouterr()
    assert main(["sample-many", str(tiny_run), "--num", "8", "--out", str(out), "--cfg", "3"]) == 2
    err = capsys.readouterr().err
    assert "cfg=1.0, not 3.0" in err and "--out" in err and "Traceback" not in err and err.count("\n") == 1


@pytest.mark.parametrize("args, message", [
    (["--num", "0"], "--num must be >= 1"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--cfg", "-1"], "--cfg must be >= 0"),
    (["--sampler", "nope"], "nope"),
])
def test_bad_input_is_one_line(tiny_run, tmp_path, capsys, args, message):
    assert main(["sample-many", str(tiny_run), "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_missing_run_is_one_line(tmp_path, capsys):
    assert main(["sample-many", str(tmp_path / "nope"), "--num", "2", "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_adm_npz_streams_images_in_order(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 6, 7, 3), dtype=np.uint8)
    files = []
    for i, im in enumerate(images):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(im).save(files[-1])
    path = write_adm_npz(tmp_path / "x.npz", files, np.arange(5) * 2)
    with np.load(path) as z:
        np.testing.assert_array_equal(z["arr_0"], images)
        assert z["labels"].tolist() == [0, 2, 4, 6, 8]
    from ditlab.evaluation import load_image_source

    src = load_image_source(path)  # ditlab eval reads it back, streamed
    assert src.kind == "npz" and src.num_images == 5
    np.testing.assert_array_equal(np.concatenate(list(src.batches(2))), images)
