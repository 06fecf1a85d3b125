"""The text demo's scoring: real digits that match their prompts meet the bar; digits that ignore them do not."""
from __future__ import annotations

import numpy as np
import pytest

from ditlab.data.mnist_captions import HELD_OUT, SEEN_EVAL, eval_requests, mnist_attributes
from ditlab.evaluation.mnist_text import captions_of_test_digits, format_text_metrics, score_text_demo


@pytest.fixture(scope="module")
def train():
    return mnist_attributes("train")


def _matching(train, digits, thick, slant, seed=0):
    """A real training digit of each requested (digit, thickness, slant), as uint8 (N, 28, 28, 1)."""
    rng = np.random.default_rng(seed)
    out = []
    for d, t, s in zip(digits, thick, slant, strict=True):
        ok = np.flatnonzero((train["labels"] == d) & (train["thickness_level"] == t) & (train["slant_level"] == s))
        out.append(train["images"][rng.choice(ok)])
    return np.stack(out)[..., None]


def test_digits_that_follow_their_prompts_meet_the_bar_and_ones_that_do_not_miss_it(train):
    per, fd = 10, 300
    requests = {}
    for combos in (HELD_OUT, SEEN_EVAL):
        prompts, d, t, s = eval_requests(combos, per)
        requests[tuple(prompts)] = (d, t, s)
    captions, labels = captions_of_test_digits(fd, seed=0)
    assert len(set(captions)) > 50 and labels.shape == (fd,)

    def follows(prompts):
        if tuple(prompts) in requests:
            return _matching(train, *requests[tuple(prompts)])
        assert prompts == captions
        pick = [np.flatnonzero(train["labels"] == y)[i] for i, y in enumerate(labels)]  # real digits of the label
        return train["images"][pick][..., None]

    good, samples = score_text_demo(follows, per_combination=per, fd_num=fd)
    assert good["held_out"]["thickness_right"] == 1.0 and good["held_out"]["slant_right"] == 1.0
    assert good["held_out"]["digit_accuracy"] >= 0.95 and good["seen"]["all_right"] >= 0.95
    assert good["held_out"]["num_samples"] == 10 * per and len(good["held_out"]["per_combination"]) == 10
    assert good["test_captions"]["frechet_ratio"] < 2.0 and good["test_captions"]["accuracy"] > 0.95
    assert good["meets_bar"] and samples["held_out"].shape == (10 * per, 28, 28, 1)
    assert format_text_metrics(good)[-1] == "-> MEETS the text demo's bar"

    def ignores(prompts):  # right digits, but always thin and upright
        if tuple(prompts) in requests:
            d, t, s = requests[tuple(prompts)]
            return _matching(train, d, [0] * len(d), [1] * len(d))
        return follows(prompts)

    bad, _ = score_text_demo(ignores, per_combination=per, fd_num=0)
    assert bad["held_out"]["digit_accuracy"] >= 0.9 and bad["held_out"]["thickness_right"] < 0.5
    assert not bad["meets_bar"] and "test_captions" not in bad
