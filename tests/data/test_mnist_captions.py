"""Captioned MNIST: attribute measures on hand-drawn images, the stored tercile cuts, captions, held-out set."""
from __future__ import annotations

import re

import numpy as np
import pytest

from ditlab.data import mnist_captions as mc


def blank(n: int = 28) -> np.ndarray:
    return np.zeros((n, n), dtype=np.uint8)


def stack(*images) -> np.ndarray:
    return np.stack(images)


# ---------------------------------------------------------------- thickness, by hand
def test_thickness_of_hand_drawn_shapes():
    square = blank()
    square[10:13, 10:13] = 255  # 3x3: 9 ink, 8 on the boundary (all but the centre) -> 9 / 4 = 2.25
    line = blank()
    line[5:10, 7] = 200  # 1 wide, 5 long: 5 ink, all boundary -> 5 / 2.5 = 2
    rect = blank()
    rect[4:14, 3:7] = 128  # 4 x 10: 40 ink, interior 2 x 8 = 16, boundary 24 -> 40 / 12
    rect[20, 20] = 127  # 127 is not ink
    corner = blank()
    corner[:2, :2] = 255  # touching the edge: outside is not ink, so all 4 are boundary -> 4 / 2 = 2
    full = np.full((28, 28), 255, np.uint8)  # 784 ink; boundary = the 108 edge pixels -> 784 / 54
    got = mc.thickness(stack(square, line, rect, corner, full, blank()))
    np.testing.assert_allclose(got, [2.25, 2.0, 40 / 12, 2.0, 784 / 54, 0.0], rtol=1e-12)


# ---------------------------------------------------------------- slant, by hand
def test_slant_of_hand_drawn_shapes():
    vertical = blank()
    vertical[5:10, 10] = 255  # mu11 = 0 -> 0
    right = blank()
    for x, y in [(12, 5), (11, 6), (10, 7), (9, 8), (8, 9)]:  # "/": the top is further right
        right[y, x] = 255
    # xbar = 10, ybar = 7; dx = 2, 1, 0, -1, -2 and dy = -2, -1, 0, 1, 2:
    # mu11 = -4 - 1 - 1 - 4 = -10, mu02 = 4 + 1 + 1 + 4 = 10 -> slant = +1 (leaning right).
    left = np.fliplr(right)  # "\" -> -1
    weighted = blank()
    # Centroid (10, 10) by symmetry. Diagonal pair (11, 9), (9, 11) at 200; vertical pair (10, 8), (10, 12)
    # at 250: mu11 = 200 * (1)(-1) + 200 * (-1)(1) = -400; mu02 = 200 + 200 + 250 * 4 + 250 * 4 = 2400
    # -> slant = 400 / 2400 = 1/6 (unweighted it would be 2 / 10 = 0.2). A 127 pixel is not ink.
    weighted[9, 11] = weighted[11, 9] = 200
    weighted[8, 10] = weighted[12, 10] = 250
    weighted[0, 27] = 127
    flat = blank()
    flat[10, 3:9] = 255  # one row: mu02 = 0, slant undefined -> 0
    got = mc.slant(stack(vertical, right, left, weighted, flat, blank()))
    np.testing.assert_allclose(got, [0.0, 1.0, -1.0, 1 / 6, 0.0, 0.0], atol=1e-12)


def test_measures_accept_32px_and_channel_axes():
    rng = np.random.default_rng(0)
    x28 = (rng.random((5, 28, 28)) ** 3 * 255).astype(np.uint8)
    x32 = np.pad(x28, ((0, 0), (2, 2), (2, 2)))
    want = mc.attribute_levels(x28)
    for arr in (x32, x32[..., None], x32[:, None], x28[..., None]):
        got = mc.attribute_levels(arr)
        assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))
    np.testing.assert_array_equal(mc.thickness(x32), mc.thickness(x28))
    with pytest.raises(ValueError, match="uint8"):
        mc.thickness(x28.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        mc.slant(np.zeros((2, 30, 30), np.uint8))


def test_levels_at_the_cuts():
    c0, c1 = mc.THICKNESS_CUTS
    np.testing.assert_array_equal(mc.levels([c0 - 1e-9, c0, c1 - 1e-9, c1, 9.0], mc.THICKNESS_CUTS), [0, 1, 1, 2, 2])


# ---------------------------------------------------------------- the data
@pytest.fixture(scope="module")
def train():
    with pytest.MonkeyPatch.context() as mp, __import__("tempfile").TemporaryDirectory() as cache:
        mp.setenv("DITLAB_CACHE", cache)
        yield mc.mnist_attributes("train")


def test_stored_cuts_are_the_training_terciles(train):
    th, sl = mc.tercile_cuts(train["thickness"]), mc.tercile_cuts(train["slant"])
    np.testing.assert_allclose(th, mc.THICKNESS_CUTS, rtol=0, atol=1e-12)
    np.testing.assert_allclose(sl, mc.SLANT_CUTS, rtol=0, atol=1e-12)
    # Where issue 12 says they land.
    np.testing.assert_allclose(th, (2.55, 3.15), atol=0.01)
    np.testing.assert_allclose(sl, (-0.010, 0.225), atol=0.001)
    assert np.bincount(train["thickness_level"]).tolist() == [19990, 20006, 20004]
    assert np.bincount(train["slant_level"]).tolist() == [20000, 20000, 20000]


def test_held_out_combinations(train):
    assert len(set(mc.HELD_OUT)) == 10 and sorted(d for d, _, _ in mc.HELD_OUT) == list(range(10))
    assert not set(mc.HELD_OUT) & set(mc.SEEN_EVAL)
    names = {(d, mc.THICKNESS_NAMES[t], mc.SLANT_NAMES[s]) for d, t, s in mc.HELD_OUT}
    assert (0, "thin", "leaning left") in names and (9, "medium", "upright") in names
    assert (3, "thick", "upright") in names and (8, "thick", "leaning right") in names
    held = train["held_out"]
    assert held.sum() == 6224  # 10.4% of the training digits
    d, t, s = train["labels"], train["thickness_level"], train["slant_level"]
    assert set(zip(d[held], t[held], s[held], strict=True)) == set(mc.HELD_OUT)
    assert mc.is_held_out(3, 2, 1) and not mc.is_held_out(3, 2, 0)
    for combo in mc.SEEN_EVAL:  # every seen evaluation combination has plenty of training digits
        assert ((d == combo[0]) & (t == combo[1]) & (s == combo[2])).sum() >= 250


def test_captioned_mnist_keeps_captions_of_the_full_set(train):
    full = mc.training_captions(train["labels"][:50], train["thickness_level"][:50], train["slant_level"][:50], k=2)
    kept = mc.captioned_mnist("train", k=2)  # held-out digits dropped
    assert len(kept["captions"]) == len(kept["labels"]) == 60000 - 6224 and not kept["held_out"].any()
    first = kept["index"][kept["index"] < 50]
    assert [kept["captions"][i] for i in range(len(first))] == [full[j] for j in first]
    assert np.array_equal(kept["images"], train["images"][kept["index"]])


# ---------------------------------------------------------------- captions
_DIGIT = {**{str(i): i for i in range(10)}, **{w: i for i, w in enumerate(mc.DIGIT_WORDS)}}


def parse(caption: str) -> tuple[int, int | None, int | None]:
    """Read (digit, thickness level, slant level) back from a caption (None = not named)."""
    words = re.findall(r"[a-z0-9]+", caption)
    digits = [_DIGIT[w] for w in words if w in _DIGIT]
    thick = [lv for lv, ws in enumerate(mc.THICKNESS_WORDS) for w in ws if w in words]
    slant = [lv for lv, ws in enumerate(mc.SLANT_WORDS) for w in ws if re.search(rf"\b{w}\b", caption)]
    assert len(digits) == 1 and len(thick) <= 1 and len(slant) <= 1, caption
    return digits[0], (thick or [None])[0], (slant or [None])[0]


def test_captions_say_what_the_image_is():
    rng = np.random.default_rng(1)
    n = 4000
    d, t, s = rng.integers(0, 10, n), rng.integers(0, 3, n), rng.integers(0, 3, n)
    caps = mc.training_captions(d, t, s, k=2, seed=3)
    assert all(len(c) == 2 for c in caps)
    modes = {"both": 0, "thickness": 0, "slant": 0, "none": 0}
    both_orders = set()
    for i, pair in enumerate(caps):
        for cap in pair:
            dd, tt, ss = parse(cap)
            assert dd == d[i] and tt in (None, t[i]) and ss in (None, s[i]), cap
            modes[{(True, True): "both", (True, False): "thickness", (False, True): "slant",
                   (False, False): "none"}[(tt is not None, ss is not None)]] += 1
            if tt is not None and ss is not None:
                tw = next(w for w in mc.THICKNESS_WORDS[tt] if re.search(rf"\b{w}\b", cap))
                sw = next(w for w in mc.SLANT_WORDS[ss] if re.search(rf"\b{w}\b", cap))
                both_orders.add(cap.index(tw) < cap.index(sw))
    # Sometimes one or both attributes are left out, at the default rates (8000 captions, +- 3 sigma).
    for mode, p in zip(mc.MODES, mc.DEFAULT_MODE_PROBS, strict=True):
        assert abs(modes[mode] / (2 * n) - p) < 3 * np.sqrt(p * (1 - p) / (2 * n)), (mode, modes)
    assert both_orders == {True, False}
    flat = [c for pair in caps for c in pair]
    assert any("seven" in c for c in flat) and any(" 7" in c or c.startswith("7") for c in flat)


def test_captions_depend_only_on_seed_and_index():
    d, t, s = np.arange(10), np.arange(10) % 3, (np.arange(10) // 3) % 3
    full = mc.training_captions(d, t, s, k=3, seed=5)
    assert full == mc.training_captions(d, t, s, k=3, seed=5)
    sub = mc.training_captions(d[4:7], t[4:7], s[4:7], k=3, seed=5, index=np.arange(4, 7))
    assert sub == full[4:7]
    assert mc.training_captions(d, t, s, k=3, seed=6) != full
    assert mc.training_captions(d, t, s, k=2, seed=5) == [c[:2] for c in full]


def test_articles():
    assert mc.render("a {T} {D}", 8, "thin", None, word=False) == "a thin 8"
    assert mc.render("a {D}", 8, None, None, word=False) == "an 8"
    assert mc.render("a {D}", 8, None, None, word=True) == "an eight"
    assert mc.render("a {D}", 1, None, None, word=True) == "a one"
    assert mc.render("a {D} {S}", 3, None, "upright", word=True) == "a three upright"


def test_templates_and_eval_phrasings_never_meet():
    train = set(mc.all_training_captions())
    assert len(train) == 18100 and len(mc.TRAIN_TEMPLATES["both"]) >= 8
    evals = mc._enumerate(mc.EVAL_TEMPLATES)
    assert not train & evals
    # And what the samplers actually get:
    prompts = [p for d, t, s in mc.HELD_OUT + mc.SEEN_EVAL for p in mc.eval_prompts(d, t, s, 100)]
    prompts += mc.eval_prompts(4, None, 2, 20) + mc.eval_prompts(4, 0, None, 20) + mc.eval_prompts(4, None, None, 5)
    assert not set(prompts) & train and set(prompts) <= evals
    for i, (d, t, s) in enumerate(mc.HELD_OUT):
        batch = mc.eval_prompts(d, t, s, 100)
        assert len(set(batch)) >= 30  # varied: templates x synonyms x numeral/word
        assert all(parse(p) == (d, t, s) for p in batch), i
    assert parse(mc.eval_prompts(4, None, 2, 1)[0]) == (4, None, 2)


def test_eval_requests():
    prompts, d, t, s = mc.eval_requests(mc.HELD_OUT[:2] + ((5, None, 1),), 4)
    assert len(prompts) == 12 and d.tolist() == [0] * 4 + [1] * 4 + [5] * 4
    assert t == [0] * 4 + [2] * 4 + [None] * 4 and s == [0] * 4 + [2] * 4 + [1] * 4
    assert [parse(p) for p in prompts] == list(zip(d.tolist(), t, s, strict=True))
