"""Text adherence scored on real MNIST test digits, whose asked attributes are known exactly."""
from __future__ import annotations

import tempfile

import numpy as np
import pytest

from ditlab.data import mnist_captions as mc
from ditlab.evaluation.text_adherence import combination_name, mean_over, text_adherence


@pytest.fixture(scope="module")
def test_digits():
    pytest.importorskip("ccexam")
    with pytest.MonkeyPatch.context() as mp, tempfile.TemporaryDirectory() as cache:
        mp.setenv("DITLAB_CACHE", cache)
        yield mc.mnist_attributes("test")


@pytest.fixture(scope="module")
def classifier(test_digits):
    from ditlab.evaluation.mnist_classifier import load_classifier

    return load_classifier()


def test_real_digits_asked_for_what_they_are(test_digits, classifier):
    a = test_digits
    images = a["images"][..., None]  # (N, 28, 28, 1) as samplers return them
    res = text_adherence(images, a["labels"], a["thickness_level"], a["slant_level"], classifier=classifier,
                         details=True)
    ov = res["overall"]
    assert ov["num_samples"] == 10000
    assert ov["thickness_right"] == 1.0 and ov["slant_right"] == 1.0  # the same measures made the requests
    assert 0.985 <= ov["digit_accuracy"] <= 1.0  # ccexam's classifier: about 99% on MNIST test
    assert ov["all_right"] == ov["digit_accuracy"]
    assert len(res["per_combination"]) == 90
    assert sum(g["num_samples"] for g in res["per_combination"].values()) == 10000
    # 32-px samples (MNIST padded by 2 pixels, as the demo trains) score the same, sample by sample.
    k = 1000
    padded = np.pad(images[:k], ((0, 0), (2, 2), (2, 2), (0, 0)))
    res32 = text_adherence(padded, a["labels"][:k], a["thickness_level"][:k], a["slant_level"][:k],
                           classifier=classifier, details=True)
    for key in ("predicted_digit", "thickness_level", "slant_level"):
        assert res32[key] == res[key][:k]


def test_wrong_and_partial_requests_are_counted(test_digits, classifier):
    a = test_digits
    n = 600
    images, d = a["images"][:n], a["labels"][:n]
    t, s = a["thickness_level"][:n], a["slant_level"][:n]
    wrong_t = t.copy()
    wrong_t[::2] = (t[::2] + 1) % 3  # every other thickness request is wrong
    asked_s = [None if i % 3 == 0 else int(s[i]) for i in range(n)]  # a third of prompts omit slant
    res = text_adherence(images, d, wrong_t, asked_s, classifier=classifier, details=True)
    ov = res["overall"]
    assert ov["thickness_right"] == 0.5 and ov["slant_right"] == 1.0
    digit_ok = np.asarray(res["predicted_digit"]) == d
    assert ov["all_right"] == pytest.approx((digit_ok & (np.arange(n) % 2 == 1)).mean())
    assert np.array_equal(res["thickness_level"], t) and np.array_equal(res["slant_level"], s)
    # One combination checked by hand: asked (d, wrong level, not asked slant).
    i = 0
    name = combination_name(d[i], wrong_t[i], None)
    m = (d == d[i]) & (wrong_t == wrong_t[i]) & (np.arange(n) % 3 == 0)
    g = res["per_combination"][name]
    assert g["num_samples"] == m.sum() and g["slant_right"] is None
    assert g["thickness_right"] == pytest.approx((t[m] == wrong_t[i]).mean())
    # No attribute asked at all: only the digit is scored.
    only = text_adherence(images, d, classifier=classifier)["overall"]
    assert only["thickness_right"] is None and only["all_right"] == only["digit_accuracy"] == digit_ok.mean()


def test_mean_over_held_out_combinations(test_digits, classifier):
    a = test_digits
    held = a["held_out"]
    res = text_adherence(a["images"][held], a["labels"][held], a["thickness_level"][held], a["slant_level"][held],
                         classifier=classifier)
    pooled = mean_over(res, mc.HELD_OUT)
    assert pooled["num_samples"] == held.sum() == res["overall"]["num_samples"]
    for key in ("digit_accuracy", "thickness_right", "slant_right", "all_right"):
        assert pooled[key] == pytest.approx(res["overall"][key])
    assert mean_over(res, mc.SEEN_EVAL)["num_samples"] == 0


def test_bad_arguments():
    img = np.zeros((2, 28, 28, 1), np.uint8)
    with pytest.raises(ValueError, match="expected 2"):
        text_adherence(img, [1, 2], [0])
    with pytest.raises(ValueError, match="levels are 0, 1, 2"):
        text_adherence(img, [1, 2], [0, 3])
