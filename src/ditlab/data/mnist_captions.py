"""Built-in captioned MNIST: two measured attributes per digit, captions from templates, held-out combinations.

**Attributes** (issue 12; any reader can recompute them from a 28x28 uint8 digit):

- thickness = (ink pixels) / (boundary ink pixels / 2), where ink = pixel > 127 and a boundary pixel
  is an ink pixel with at least one of its 4 neighbours not ink (outside the image is not ink). A
  stroke w pixels wide and n long has about n*w ink pixels and 2n boundary pixels, so this is
  roughly the stroke width in pixels.
- slant = -mu11 / mu02, the central image moments of the ink pixels weighted by their intensities,
  with x pointing right and y pointing down: > 0 when the top of the digit is further right (the
  slope dx/dy of the digit's principal axis, negated because y points down).

**Levels** are terciles of the 60,000 training digits: 0/1/2 = thin/medium/thick and
leaning left/upright/leaning right. The cuts are stored below (``THICKNESS_CUTS``, ``SLANT_CUTS``)
and a test recomputes them from the data.

**Captions** come from 10 templates naming digit, thickness and slant (both orders), 5 with only
thickness, 5 with only slant and 5 with neither; the digit as a numeral or a word; each level by one
of three synonyms. Every random choice is a hash of (seed, image index, caption number), so an
image's captions do not depend on which other images are in the set. **Evaluation phrasings** use
separate templates (``EVAL_TEMPLATES``) that the training templates never produce (tested by
enumerating every training caption).
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

# Tercile cuts on the 60,000 MNIST training digits (np.quantile, linear interpolation, at 1/3 and 2/3).
THICKNESS_CUTS = (2.5542168674698793, 3.1463414634146343)
SLANT_CUTS = (-0.010032757370120118, 0.22514053576385326)

THICKNESS_NAMES = ("thin", "medium", "thick")
SLANT_NAMES = ("leaning left", "upright", "leaning right")
THICKNESS_WORDS = (("thin", "fine", "light"), ("medium", "regular", "normal"), ("thick", "bold", "heavy"))
SLANT_WORDS = (
    ("leaning left", "slanted left", "tilted left"),
    ("upright", "straight", "vertical"),
    ("leaning right", "slanted right", "tilted right"),
)
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# (digit, thickness level, slant level) left out of mnist-text training (issue 12).
HELD_OUT = (
    (0, 0, 0), (1, 2, 2), (2, 1, 0), (3, 2, 1), (4, 0, 2), (5, 2, 0), (6, 1, 2), (7, 0, 1), (8, 2, 2), (9, 1, 1),
)
# Ten combinations that training does see (each held-out one with its thickness moved up a level), so
# seen and unseen prompts can be scored side by side; every one has >= 261 training digits.
SEEN_EVAL = (
    (0, 1, 0), (1, 0, 2), (2, 2, 0), (3, 0, 1), (4, 1, 2), (5, 0, 0), (6, 2, 2), (7, 1, 1), (8, 0, 2), (9, 2, 1),
)

# {D} digit, {T} thickness word, {S} slant phrase. Keys say which attributes a template names.
TRAIN_TEMPLATES: dict[str, tuple[str, ...]] = {
    "both": (
        "a {T} {D} {S}",
        "a {T} handwritten {D} {S}",
        "a {D}, {T}, {S}",
        "a {D}, {S}, {T}",
        "the digit {D}, {T} and {S}",
        "the digit {D}, {S} and {T}",
        "a handwritten {D} that is {T} and {S}",
        "a handwritten {D} that is {S} and {T}",
        "{T} {D}, {S}",
        "number {D}, {S}, {T}",
    ),
    "thickness": ("a {T} {D}", "a {T} handwritten {D}", "the digit {D}, {T}", "a handwritten {D} that is {T}",
                  "{T} {D}"),
    "slant": ("a {D} {S}", "a handwritten {D} {S}", "the digit {D}, {S}", "a handwritten {D} that is {S}",
              "number {D}, {S}"),
    "none": ("a {D}", "the digit {D}", "a handwritten {D}", "{D}", "number {D}"),
}
EVAL_TEMPLATES: dict[str, tuple[str, ...]] = {
    "both": ("an image of a {T} {D} {S}", "a picture of the digit {D}, {S} and {T}",
             "handwriting: {D}, {T}, {S}", "a sample of a {D} drawn {S} with a {T} stroke"),
    "thickness": ("an image of a {T} {D}", "a picture of the digit {D}, {T}", "a sample of a {D} with a {T} stroke"),
    "slant": ("an image of a {D} {S}", "a picture of the digit {D}, {S}", "a sample of a {D} drawn {S}"),
    "none": ("an image of a {D}", "a picture of the digit {D}", "handwriting: {D}"),
}
MODES = ("both", "thickness", "slant", "none")
DEFAULT_MODE_PROBS = (0.55, 0.15, 0.15, 0.15)  # how often a training caption names both / one / no attribute

_AN = re.compile(r"\b([Aa]) (?=8\b|eight\b|(?!one\b)[aeiou])")


def _article(text: str) -> str:
    """``a 8`` -> ``an 8``, ``a eight`` -> ``an eight``, ``a upright`` -> ``an upright`` (``a one`` stays)."""
    return _AN.sub(lambda m: m.group(1) + "n ", text)


# ---------------------------------------------------------------- measures
def _as_28(images: np.ndarray) -> np.ndarray:
    """uint8 digits (N, 28|32, 28|32), optionally with a channel axis of 1 (NHWC or NCHW) -> (N, 28, 28).

    32-px images are MNIST padded by 2 pixels on each side (as ``build_dataset("mnist", 32)`` makes
    them): the padding is cropped, never resampled, so the measures stay exact.
    """
    x = np.asarray(images)
    if x.ndim == 4:
        if x.shape[-1] == 1:
            x = x[..., 0]
        elif x.shape[1] == 1:
            x = x[:, 0]
        else:
            raise ValueError(f"expected one channel, got images of shape {x.shape}")
    if x.ndim != 3 or x.shape[1] != x.shape[2] or x.shape[1] not in (28, 32):
        raise ValueError(f"expected (N, 28, 28) or (N, 32, 32) digits, got shape {x.shape}")
    if x.dtype != np.uint8:
        raise ValueError(f"expected uint8 images (0..255), got {x.dtype}")
    return x[:, 2:30, 2:30] if x.shape[1] == 32 else x


def thickness(images: np.ndarray) -> np.ndarray:
    """(N, 28, 28) uint8 -> (N,) float64: ink pixels / (boundary ink pixels / 2); 0 for a blank image."""
    ink = _as_28(images) > 127  # (N, 28, 28)
    p = np.pad(ink, ((0, 0), (1, 1), (1, 1)))  # outside the image is not ink
    interior = p[:, 1:-1, 1:-1] & p[:, :-2, 1:-1] & p[:, 2:, 1:-1] & p[:, 1:-1, :-2] & p[:, 1:-1, 2:]
    n_ink = ink.sum(axis=(1, 2))
    n_boundary = (ink & ~interior).sum(axis=(1, 2))
    return np.where(n_boundary > 0, n_ink / np.maximum(n_boundary, 1) * 2.0, 0.0)


def slant(images: np.ndarray) -> np.ndarray:
    """(N, 28, 28) uint8 -> (N,) float64: -mu11 / mu02 of the intensity-weighted ink (y down); 0 if undefined."""
    x = _as_28(images)
    w = np.where(x > 127, x, 0).astype(np.float64)  # (N, H, W): ink pixels weighted by intensity
    ys = np.arange(x.shape[1], dtype=np.float64)
    xs = np.arange(x.shape[2], dtype=np.float64)
    m00 = w.sum(axis=(1, 2))
    row = w.sum(axis=2)  # (N, H): mass of each row
    wx = w @ xs  # (N, H): sum over x of w * x, per row
    safe = np.maximum(m00, 1e-12)
    xbar, ybar = wx.sum(1) / safe, row @ ys / safe
    mu11 = wx @ ys - m00 * xbar * ybar  # sum w (x - xbar)(y - ybar)
    mu02 = row @ (ys**2) - m00 * ybar**2  # sum w (y - ybar)^2
    ok = (m00 > 0) & (mu02 > 1e-9 * np.maximum(m00, 1))
    return np.where(ok, -mu11 / np.where(ok, mu02, 1.0), 0.0)


def levels(values: np.ndarray, cuts: Sequence[float]) -> np.ndarray:
    """Values -> 0, 1, 2 by two cuts (a value equal to a cut goes to the upper level)."""
    v = np.asarray(values)
    return (v >= cuts[0]).astype(np.int64) + (v >= cuts[1])


def attribute_levels(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(thickness level, slant level), each (N,) int64 in {0, 1, 2}, of 28- or 32-px uint8 digits."""
    return levels(thickness(images), THICKNESS_CUTS), levels(slant(images), SLANT_CUTS)


def tercile_cuts(values: np.ndarray) -> tuple[float, float]:
    """The two cuts that split ``values`` into thirds (how the stored cuts were computed)."""
    q = np.quantile(np.asarray(values, dtype=np.float64), [1 / 3, 2 / 3])
    return float(q[0]), float(q[1])


def is_held_out(digit, thickness_level, slant_level) -> np.ndarray:
    """Whether each (digit, thickness level, slant level) is one of the 10 held-out combinations."""
    code = (np.asarray(digit) * 3 + np.asarray(thickness_level)) * 3 + np.asarray(slant_level)
    return np.isin(code, [(d * 3 + t) * 3 + s for d, t, s in HELD_OUT])


def mnist_attributes(split: str = "train") -> dict[str, np.ndarray]:
    """MNIST ``split`` with its measures: images (N, 28, 28) uint8, labels, thickness, slant (floats),
    thickness_level, slant_level (int64) and held_out (bool)."""
    from ditlab.data.builtin import _load_mnist_arrays

    arrays = _load_mnist_arrays()
    images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    th, sl = thickness(images), slant(images)
    t_lvl, s_lvl = levels(th, THICKNESS_CUTS), levels(sl, SLANT_CUTS)
    return {"images": images, "labels": labels, "thickness": th, "slant": sl, "thickness_level": t_lvl,
            "slant_level": s_lvl, "held_out": is_held_out(labels, t_lvl, s_lvl)}


def captioned_mnist(split: str = "train", k: int = 4, seed: int = 0, drop_held_out: bool | None = None
                    ) -> dict[str, np.ndarray | list[list[str]]]:
    """What a captioned-MNIST dataset needs: :func:`mnist_attributes` plus ``index`` (the MNIST
    index of each digit kept) and ``captions`` (``k`` per digit, see :func:`training_captions`).

    ``drop_held_out`` (default: True for ``train``, False for ``test``) removes the digits whose
    (digit, thickness, slant) is in ``HELD_OUT``; each kept digit keeps the captions it has in the full set.
    """
    a = mnist_attributes(split)
    drop = (split == "train") if drop_held_out is None else drop_held_out
    keep = ~a["held_out"] if drop else np.ones(len(a["labels"]), dtype=bool)
    out = {key: v[keep] for key, v in a.items()}
    out["index"] = np.flatnonzero(keep)
    out["captions"] = training_captions(out["labels"], out["thickness_level"], out["slant_level"], k=k,
                                        seed=seed, index=out["index"])
    return out


# ---------------------------------------------------------------- captions
def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijective scramble of uint64s."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _uniform(seed: int, index: np.ndarray, k: int, field: int) -> np.ndarray:
    """A uniform in [0, 1) for each (seed, index, k, field), independent of everything else."""
    with np.errstate(over="ignore"):
        h = _mix(np.full(index.shape, seed & 0xFFFFFFFFFFFFFFFF, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15))
        h = _mix(h ^ index.astype(np.uint64))
        h = _mix(h ^ np.uint64((k << 8) | field))
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53


def render(template: str, digit: int, thickness_word: str | None, slant_phrase: str | None, word: bool) -> str:
    """Fill one template (digit as a word or a numeral) and fix the article."""
    d = DIGIT_WORDS[digit] if word else str(digit)
    return _article(template.format(D=d, T=thickness_word or "", S=slant_phrase or ""))


def training_captions(digits, thickness_levels, slant_levels, k: int = 1, seed: int = 0, index=None,
                      mode_probs: Sequence[float] = DEFAULT_MODE_PROBS) -> list[list[str]]:
    """``k`` training captions per image, a pure function of (seed, index[i], caption number).

    Args:
        digits, thickness_levels, slant_levels: (N,) ints.
        k: captions per image.
        seed: changes every choice.
        index: (N,) global image numbers (default 0..N-1); pass the original MNIST indices so a
            subset (e.g. without the held-out digits) keeps each image's captions.
        mode_probs: probabilities of naming both attributes, only thickness, only slant, neither.
    """
    d = np.asarray(digits, dtype=np.int64)
    t, s = np.asarray(thickness_levels, dtype=np.int64), np.asarray(slant_levels, dtype=np.int64)
    idx = np.arange(len(d)) if index is None else np.asarray(index, dtype=np.int64)
    cum = np.cumsum(np.asarray(mode_probs, dtype=np.float64) / np.sum(mode_probs))
    out: list[list[str]] = [[] for _ in range(len(d))]
    for j in range(k):
        u = [_uniform(seed, idx, j, f) for f in range(5)]
        mode = np.minimum(np.searchsorted(cum, u[0], side="right"), 3)
        for i in range(len(d)):
            m = MODES[mode[i]]
            templates = TRAIN_TEMPLATES[m]
            tw = THICKNESS_WORDS[t[i]][int(u[2][i] * 3)] if m in ("both", "thickness") else None
            sw = SLANT_WORDS[s[i]][int(u[3][i] * 3)] if m in ("both", "slant") else None
            out[i].append(render(templates[int(u[1][i] * len(templates))], int(d[i]), tw, sw, u[4][i] < 0.5))
    return out


def all_training_captions() -> list[str]:
    """Every caption the training templates can produce (18,100), sorted."""
    return sorted(_enumerate(TRAIN_TEMPLATES))


def _enumerate(templates: dict[str, tuple[str, ...]]) -> set[str]:
    found = set()
    for mode, temps in templates.items():
        t_opts = [w for ws in THICKNESS_WORDS for w in ws] if mode in ("both", "thickness") else [None]
        s_opts = [w for ws in SLANT_WORDS for w in ws] if mode in ("both", "slant") else [None]
        for tpl in temps:
            for digit in range(10):
                for word in (False, True):
                    for tw in t_opts:
                        for sw in s_opts:
                            found.add(render(tpl, digit, tw, sw, word))
    return found


def eval_prompts(digit: int, thickness_level: int | None, slant_level: int | None, n: int) -> list[str]:
    """``n`` evaluation prompts for one combination (``None`` = attribute not asked), deterministic.

    They cycle through the evaluation templates, the synonyms and numeral/word, and are never
    verbatim training captions.
    """
    mode = {(True, True): "both", (True, False): "thickness", (False, True): "slant", (False, False): "none"}[
        (thickness_level is not None, slant_level is not None)]
    templates = EVAL_TEMPLATES[mode]
    out = []
    for i in range(n):
        tw = THICKNESS_WORDS[thickness_level][i % 3] if thickness_level is not None else None
        sw = SLANT_WORDS[slant_level][(i // 3) % 3] if slant_level is not None else None
        out.append(render(templates[i % len(templates)], digit, tw, sw, word=(i // 9) % 2 == 1))
    return out


def eval_requests(combinations: Sequence[tuple[int, int | None, int | None]], n: int
                  ) -> tuple[list[str], np.ndarray, list[int | None], list[int | None]]:
    """``n`` evaluation prompts per combination, with what each asks, ready for ``text_adherence``:
    (prompts, digits (N,), thickness levels, slant levels) in combination order."""
    prompts, digits, thick, slants = [], [], [], []
    for d, t, s in combinations:
        prompts += eval_prompts(d, t, s, n)
        digits += [d] * n
        thick += [t] * n
        slants += [s] * n
    return prompts, np.asarray(digits, dtype=np.int64), thick, slants
