"""Does a text-to-image MNIST model draw what the prompt asks? Digit, thickness and slant, scored.

Each generated digit is checked three ways against its prompt's request:

- digit: the independent ccexam classifier (:mod:`ditlab.evaluation.mnist_classifier`, 99% on the
  MNIST test set) must predict the asked digit;
- thickness and slant: the sample's measured level (:mod:`ditlab.data.mnist_captions`, the same
  measures and cuts that captioned the training digits) must equal the asked level.

A prompt may leave thickness or slant out (``None``); that attribute is then not scored for that
sample, and "all right" only needs what was asked. Scores come overall and per requested
combination, as plain floats ready for ``metrics.json``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ditlab.data.mnist_captions import SLANT_NAMES, THICKNESS_NAMES, attribute_levels
from ditlab.evaluation.mnist_classifier import MNISTClassifier, classify, load_classifier


def _requested(levels: Sequence[int | None] | np.ndarray | None, n: int, what: str) -> np.ndarray:
    """Requested levels -> (N,) int64 with -1 where not asked."""
    if levels is None:
        return np.full(n, -1, dtype=np.int64)
    out = np.array([-1 if v is None else int(v) for v in levels], dtype=np.int64)
    if out.shape != (n,):
        raise ValueError(f"{what}: expected {n} requested levels, got {out.shape[0]}")
    if ((out < -1) | (out > 2)).any():
        raise ValueError(f"{what}: levels are 0, 1, 2 (or None / -1 for not asked)")
    return out


def combination_name(digit: int, thickness_level: int | None, slant_level: int | None) -> str:
    """``"3/thick/upright"``; an attribute not asked is ``-`` (``"4/-/leaning right"``)."""
    t = THICKNESS_NAMES[thickness_level] if thickness_level is not None and thickness_level >= 0 else "-"
    s = SLANT_NAMES[slant_level] if slant_level is not None and slant_level >= 0 else "-"
    return f"{int(digit)}/{t}/{s}"


def _scores(digit_ok, t_ok, t_asked, s_ok, s_asked) -> dict[str, float | int | None]:
    all_ok = digit_ok & (t_ok | ~t_asked) & (s_ok | ~s_asked)
    return {
        "num_samples": int(digit_ok.size),
        "digit_accuracy": float(digit_ok.mean()) if digit_ok.size else None,
        "thickness_right": float(t_ok[t_asked].mean()) if t_asked.any() else None,
        "slant_right": float(s_ok[s_asked].mean()) if s_asked.any() else None,
        "all_right": float(all_ok.mean()) if digit_ok.size else None,
    }


def text_adherence(
    images: np.ndarray,
    digits: Sequence[int] | np.ndarray,
    thickness: Sequence[int | None] | np.ndarray | None = None,
    slant: Sequence[int | None] | np.ndarray | None = None,
    *,
    classifier: MNISTClassifier | None = None,
    details: bool = False,
) -> dict:
    """Score generated digits against the (digit, thickness level, slant level) each was asked for.

    Args:
        images: uint8 samples (N, H, W, 1), (N, 1, H, W) or (N, H, W); 28 px, or 32 px as MNIST
            padded by 2 pixels per side.
        digits: (N,) asked digits.
        thickness, slant: (N,) asked levels 0/1/2, ``None`` (or -1) per sample where the prompt
            did not ask; ``None`` for the whole argument when no prompt asked.
        classifier: a loaded ccexam classifier (loaded here when omitted).
        details: also return the per-sample predictions and measured levels.

    Returns:
        ``{"overall": scores, "per_combination": {name: scores}}`` where scores are
        ``num_samples, digit_accuracy, thickness_right, slant_right, all_right`` (fractions in [0, 1];
        ``None`` for an attribute no sample of the group asked for); with ``details``, also
        ``"predicted_digit"``, ``"thickness_level"``, ``"slant_level"`` (N,) lists.
    """
    images = np.asarray(images)
    n = images.shape[0]
    asked_d = np.asarray(digits, dtype=np.int64)
    if asked_d.shape != (n,):
        raise ValueError(f"digits: expected {n} asked digits, got shape {asked_d.shape}")
    asked_t = _requested(thickness, n, "thickness")
    asked_s = _requested(slant, n, "slant")
    pred, _ = classify(images, classifier or load_classifier()) if n else (np.zeros(0, np.int64), None)
    got_t, got_s = attribute_levels(images) if n else (np.zeros(0, np.int64),) * 2
    digit_ok = pred == asked_d
    t_asked, s_asked = asked_t >= 0, asked_s >= 0
    t_ok, s_ok = got_t == asked_t, got_s == asked_s
    out: dict = {"overall": _scores(digit_ok, t_ok, t_asked, s_ok, s_asked), "per_combination": {}}
    codes = (asked_d * 4 + asked_t + 1) * 4 + asked_s + 1  # one integer per asked combination
    for code in np.unique(codes):
        m = codes == code
        i = int(np.flatnonzero(m)[0])
        name = combination_name(asked_d[i], asked_t[i], asked_s[i])
        out["per_combination"][name] = _scores(digit_ok[m], t_ok[m], t_asked[m], s_ok[m], s_asked[m])
    if details:
        out.update(predicted_digit=pred.tolist(), thickness_level=got_t.tolist(), slant_level=got_s.tolist())
    return out


def mean_over(result: dict, combinations: Sequence[tuple[int, int | None, int | None]]) -> dict[str, float | None]:
    """Scores pooled over some combinations of a :func:`text_adherence` result (e.g. the held-out ten),
    weighting each combination by its number of samples."""
    groups = [result["per_combination"].get(combination_name(*c)) for c in combinations]
    groups = [g for g in groups if g is not None]
    total = sum(g["num_samples"] for g in groups)
    pooled: dict[str, float | None] = {"num_samples": total}
    for key in ("digit_accuracy", "thickness_right", "slant_right", "all_right"):
        parts = [(g[key], g["num_samples"]) for g in groups if g[key] is not None]
        weight = sum(w for _, w in parts)
        pooled[key] = sum(v * w for v, w in parts) / weight if weight else None
    return pooled
