"""``MnistFrechet``: at 32 px it gives ``mnist_sample_metrics``'s numbers; at 8 px it compares like with like."""
from __future__ import annotations

import numpy as np
import pytest

from ditlab.data import build_dataset
from ditlab.evaluation.mnist_classifier import mnist_sample_metrics
from ditlab.evaluation.scaling import MnistFrechet


@pytest.mark.slow  # classifies the 10k MNIST test digits three times: ~30-90 s on 2 busy cores
def test_matches_mnist_sample_metrics_at_32px_and_is_resolution_matched_at_8px():
    images, labels = build_dataset("mnist", 32, split="test").tensors()
    rng = np.random.default_rng(3)
    pick = rng.choice(len(labels), 300, replace=False)
    samples = images[pick].permute(0, 2, 3, 1).numpy()  # (300, 32, 32, 1): real digits as "samples"
    wrong = (labels[pick].numpy() + (np.arange(300) % 3 == 0)) % 10  # a third of the labels wrong
    at32 = MnistFrechet(32)
    ours = at32.score(samples, wrong)
    theirs = mnist_sample_metrics(samples, wrong)
    assert ours["mnist_accuracy"] == pytest.approx(theirs["accuracy"], abs=1e-12)
    assert 0.6 < ours["mnist_accuracy"] < 0.68  # 2/3 right labels x 99% classifier accuracy
    assert ours["mnist_fd"] == pytest.approx(theirs["frechet_distance"], rel=1e-9)
    assert ours["mnist_fd_floor"] == pytest.approx(theirs["frechet_floor"], rel=1e-9)
    assert ours["mnist_fd_ratio"] == pytest.approx(theirs["frechet_ratio"], rel=1e-9)

    # 8-px digits: their own floor is small, noise is far; 28-px statistics would call both far
    small, small_labels = build_dataset("mnist", 8, split="test").tensors()
    scorer = MnistFrechet(8)
    real = scorer.score(small[:300].permute(0, 2, 3, 1).numpy(), small_labels[:300].numpy())
    noise = scorer.score(rng.integers(0, 256, (300, 8, 8, 1), dtype=np.uint8), small_labels[:300].numpy())
    assert real["mnist_fd_ratio"] < 3 < 100 < noise["mnist_fd_ratio"]
    assert real["mnist_fd_floor"] == noise["mnist_fd_floor"]  # one floor per sample count
    # the same 8-px digits against the 28-px statistics (upsampled by the classifier): mostly blur
    blurred_vs_28px = at32.score(small[:300].permute(0, 2, 3, 1).numpy(), small_labels[:300].numpy())
    assert blurred_vs_28px["mnist_fd_ratio"] > 10 * real["mnist_fd_ratio"]


class _Blank:
    """An autoencoder that forgets everything: every reconstruction is a black image."""

    def encode(self, x):
        return x[:, :, :1, :1]

    def decode(self, z):
        return -z.new_ones(z.shape[0], 1, 8, 8)


def test_reconstruction_score_is_the_floor_for_a_lossless_autoencoder():
    from ditlab.autoencoders import load_autoencoder
    from ditlab.evaluation.mnist_classifier import classify

    scorer = MnistFrechet(8)
    lossless = scorer.score_reconstructions(load_autoencoder("pixel", channels=1), 200, batch_size=64)
    assert lossless["mnist_fd"] == pytest.approx(scorer.floor(200), rel=1e-9)
    assert lossless["mnist_fd_ratio"] == pytest.approx(1.0, rel=1e-9)
    real, labels = scorer._real(200)  # the floor's digits, (200, 1, 8, 8)
    assert lossless["mnist_accuracy"] == float((classify(real[:, 0])[0] == labels).mean())
    blank = scorer.score_reconstructions(_Blank(), 200)
    assert blank["mnist_fd_ratio"] > 10 and blank["mnist_accuracy"] < 0.3
