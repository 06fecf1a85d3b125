"""The text demo's scoring (issue 12, item 5): does a captioned-MNIST model follow prompts it never saw?

Three sets of prompts, each sample scored by :func:`ditlab.evaluation.text_adherence.text_adherence`:

- **held out**: the 10 (digit, thickness, slant) combinations left out of training, ``per_combination``
  samples each, in evaluation phrasings that no training caption uses (``eval_requests``);
- **seen**: 10 combinations that training does see (``SEEN_EVAL``), the same way;
- **test captions**: one caption of each of ``fd_num`` MNIST test digits (seeded pick): the Fréchet
  distance of those samples in the ccexam classifier's feature space against the test set, next to the
  real-data floor (as in the class demo), and the digit accuracy against the captioned digits.

The bar: held out digit >= 95%, thickness >= 70%, slant >= 70%, all three >= 50%; seen: each attribute
>= 80%; Fréchet distance <= 3x the floor. ``generate(prompts) -> uint8 (N, H, W, C)`` makes the samples.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

BAR = {
    "held_out": {"digit_accuracy": 0.95, "thickness_right": 0.70, "slant_right": 0.70, "all_right": 0.50},
    "seen": {"digit_accuracy": 0.80, "thickness_right": 0.80, "slant_right": 0.80},
    "frechet_ratio_max": 3.0,
}


def captions_of_test_digits(num: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """One training-style caption of each of ``num`` MNIST test digits (a seeded pick) and their labels."""
    from ditlab.data.mnist_captions import captioned_mnist

    test = captioned_mnist("test", k=1, seed=seed + 1)  # other captions than the training digits' seed
    pick = np.sort(np.random.default_rng(seed).choice(len(test["labels"]), size=num, replace=False))
    return [test["captions"][i][0] for i in pick], np.asarray(test["labels"])[pick]


def _meets(scores: dict, bar: dict) -> bool:
    return all(scores.get(k) is not None and scores[k] >= v for k, v in bar.items())


def score_text_demo(generate: Callable[[list[str]], np.ndarray], *, per_combination: int = 100,
                    fd_num: int = 1000, seed: int = 0, log=None) -> tuple[dict, dict[str, np.ndarray]]:
    """Sample and score the three prompt sets; returns (metrics, {set name: uint8 samples})."""
    from ditlab.data.mnist_captions import HELD_OUT, SEEN_EVAL, eval_requests
    from ditlab.evaluation.mnist_classifier import load_classifier, mnist_sample_metrics
    from ditlab.evaluation.text_adherence import mean_over, text_adherence

    classifier = load_classifier()
    out: dict = {}
    samples: dict[str, np.ndarray] = {}
    seconds = {"sampling": 0.0, "scoring": 0.0}
    for name, combos in (("held_out", HELD_OUT), ("seen", SEEN_EVAL)):
        prompts, digits, thick, slant = eval_requests(combos, per_combination)
        t0 = time.perf_counter()
        images = generate(prompts)
        t1 = time.perf_counter()
        scores = text_adherence(images, digits, thick, slant, classifier=classifier)
        seconds["sampling"] += t1 - t0
        seconds["scoring"] += time.perf_counter() - t1
        pooled = mean_over(scores, combos)
        out[name] = {**pooled, "per_combination": scores["per_combination"], "example_prompts": prompts[:3]}
        samples[name] = images
        if log is not None:
            log(format_scores(name, out[name]))
    if fd_num:
        prompts, labels = captions_of_test_digits(fd_num, seed)
        t0 = time.perf_counter()
        images = generate(prompts)
        t1 = time.perf_counter()
        out["test_captions"] = mnist_sample_metrics(images, labels, seed=seed)
        seconds["sampling"] += t1 - t0
        seconds["scoring"] += time.perf_counter() - t1
        samples["test_captions"] = images
    out["bar"] = BAR
    checks = [_meets(out["held_out"], BAR["held_out"]), _meets(out["seen"], BAR["seen"])]
    if fd_num:
        checks.append(out["test_captions"]["frechet_ratio"] <= BAR["frechet_ratio_max"])
    out["meets_bar"] = bool(all(checks))
    out["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    return out, samples


def format_scores(name: str, s: dict) -> str:
    """``held_out: digit 96.0%, thickness 80.1%, slant 78.0%, all three 61.0%``."""
    parts = [f"{k.split('_')[0] if k != 'all_right' else 'all three'} {s[k]:.1%}"
             for k in ("digit_accuracy", "thickness_right", "slant_right", "all_right") if s.get(k) is not None]
    return f"{name}: " + ", ".join(parts)


def format_text_metrics(result: dict) -> list[str]:
    """The lines `ditlab train` prints for the text demo."""
    bar = result["bar"]
    held = result["held_out"]
    lines = [
        format_scores("held-out combinations", held)
        + f" (bar: digit >= {bar['held_out']['digit_accuracy']:.0%}, thickness and slant >= "
        f"{bar['held_out']['thickness_right']:.0%}, all three >= {bar['held_out']['all_right']:.0%})",
        format_scores("seen combinations", result["seen"]) + " (bar: each >= 80%)",
    ]
    if "test_captions" in result:
        tc = result["test_captions"]
        lines.append(f"test captions: digit accuracy {tc['accuracy']:.1%}; Frechet distance "
                     f"{tc['frechet_distance']:.2f} vs real-data floor {tc['frechet_floor']:.2f} = "
                     f"{tc['frechet_ratio']:.2f}x (bar <= 3x)")
    lines.append(f"-> {'MEETS' if result['meets_bar'] else 'MISSES'} the text demo's bar")
    return lines


def per_combination_table(result: dict, names: Sequence[str] = ("held_out", "seen")) -> list[str]:
    """Markdown rows ``| set | combination | digit | thickness | slant | all |`` for the docs."""
    rows = []
    for name in names:
        for combo, s in result[name]["per_combination"].items():
            rows.append(f"| {name} | {combo} | {s['digit_accuracy']:.2f} | {s['thickness_right']:.2f} | "
                        f"{s['slant_right']:.2f} | {s['all_right']:.2f} |")
    return rows
