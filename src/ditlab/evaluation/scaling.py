"""Sample scorers against a reference set, and the tables and plots of a scaling study.

Two scorers take uint8 samples (N, H, W, C) and their class labels:

* ``InceptionFID``: FID against the Inception statistics of reference images (cached on disk by the
  images' content, so a training set is embedded once for every run and checkpoint that uses it);
* ``MnistFrechet``: the MNIST classifier's class accuracy and Fréchet distance in its 128-d feature
  space (``mnist_classifier``), against real MNIST test digits *at the samples' resolution*, so that
  a model trained on 8-px digits is compared with 8-px digits and not with the blur of its resolution.
  At 28 or 32 px its numbers are those of ``mnist_sample_metrics``.

The study helpers (``shrink_config``, ``write_study``) turn per-model results into the JSON +
Markdown table and the two plots of ``ditlab scale`` (Peebles & Xie 2023, Fig. 2 / Fig. 8 style).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ditlab.errors import ConfigError, DataError
from ditlab.evaluation.frechet import feature_statistics, frechet_distance
from ditlab.evaluation.metrics import FeatureStats, fid

METRIC_LABELS = {
    "fid": "FID (Inception-v3 pool3, vs training-set statistics)",
    "mnist_fd": "MNIST-classifier Fréchet distance (128-d features, vs real test digits at the same size)",
}


class InceptionFID:
    """FID of samples against fixed reference statistics (``FeatureStats``)."""

    name = "fid"

    def __init__(self, reference: FeatureStats, extractor):
        self.reference = reference
        self.extractor = extractor

    @classmethod
    def from_images(cls, images: np.ndarray, extractor, *, cache: bool = True, progress: bool = True) -> InceptionFID:
        """Reference statistics of uint8 (N, H, W, C) images, cached under ``$DITLAB_CACHE/inception``
        by a hash of the images' bytes and of the Inception weights and preprocessing."""
        from ditlab.evaluation.sources import cache_dir

        images = np.ascontiguousarray(images)
        if len(images) < 2:
            raise DataError(f"the FID reference set holds {len(images)} image(s): use at least 2 (thousands for a "
                            f"meaningful FID)")
        h = hashlib.sha1(str(images.shape).encode() + images.tobytes())
        key = hashlib.sha1(f"{h.hexdigest()}:{extractor.weights_id}".encode()).hexdigest()
        path = cache_dir() / "inception" / f"stats-{key}.npz"
        if cache and path.is_file():
            with np.load(path, allow_pickle=False) as z:
                return cls(FeatureStats(z["mu"], z["sigma"], int(z["num"])), extractor)
        feats, _ = extractor.extract((images[i : i + 256] for i in range(0, len(images), 256)), total=len(images),
                                     progress=progress, desc="FID reference")
        stats = FeatureStats.from_features(feats)
        if cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
            np.savez(tmp, mu=stats.mu, sigma=stats.sigma, num=np.int64(stats.num))
            os.replace(tmp, path)  # never a half-written cache entry
        return cls(stats, extractor)

    def score(self, images: np.ndarray, labels: np.ndarray | None = None) -> dict[str, float]:
        """``{"fid": ...}`` of uint8 (N, H, W, C) samples (N >= 2)."""
        feats, _ = self.extractor.extract([images], total=len(images), progress=False)  # (N, 2048)
        return {"fid": fid(feats, self.reference)}


_MNIST_TEST_STATS: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # image size -> (mu, sigma) of the test set


class MnistFrechet:
    """MNIST classifier metrics at a given image size: accuracy, Fréchet distance, real-data floor.

    The reference is the MNIST test split built at ``image_size`` (as the training data was); the
    floor is the distance that ``N`` real training digits at that size get (seeded draw), the best a
    sample of that size can do. ``ratio = distance / floor``.
    """

    name = "mnist_fd"

    def __init__(self, image_size: int, *, seed: int = 0):
        from ditlab.data import build_dataset
        from ditlab.evaluation.mnist_classifier import classify, load_classifier

        self.image_size = int(image_size)
        self.seed = seed
        self._model = load_classifier()
        if self.image_size not in _MNIST_TEST_STATS:  # 10k digits through the CNN: once per process and size
            test, _ = build_dataset("mnist", self.image_size, split="test").tensors()  # (N, 1, H, W) uint8
            _MNIST_TEST_STATS[self.image_size] = feature_statistics(classify(test[:, 0].numpy(), self._model)[1])
        self._mu, self._sigma = _MNIST_TEST_STATS[self.image_size]
        self._floors: dict[int, float] = {}

    def floor(self, n: int) -> float:
        """The Fréchet distance of ``n`` real training digits at this size (seeded draw; memoised)."""
        if n not in self._floors:
            from ditlab.data import build_dataset
            from ditlab.evaluation.mnist_classifier import classify

            train, _ = build_dataset("mnist", self.image_size, split="train").tensors()
            pick = np.random.default_rng(self.seed).choice(train.shape[0], size=n, replace=False)
            _, feats = classify(train[pick, 0].numpy(), self._model)
            self._floors[n] = frechet_distance(*feature_statistics(feats), self._mu, self._sigma)
        return self._floors[n]

    def score(self, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """Accuracy against ``labels``, Fréchet distance, its floor and their ratio."""
        from ditlab.evaluation.mnist_classifier import classify

        pred, feats = classify(images, self._model)
        distance = frechet_distance(*feature_statistics(feats), self._mu, self._sigma)
        floor = self.floor(len(images))
        return {
            "mnist_accuracy": float((pred == np.asarray(labels)).mean()),
            "mnist_fd": float(distance),
            "mnist_fd_floor": float(floor),
            "mnist_fd_ratio": float(distance / floor),
        }


# ----------------------------------------------------------------------------------------- the study
def shrink_config(name: str, shrink: float = 1.0) -> dict[str, Any]:
    """Depth, width, heads and patch of a registered model divided by ``shrink``, keeping the head width.

    The paper's sizes all have 64-wide heads (XL: 72), so dividing depth and heads by the same
    factor keeps their order: with ``shrink=3``, S (12, 384, 6) -> (4, 128, 2) and B (12, 768, 12) ->
    (4, 256, 4). ``shrink=1`` is the registered size.
    """
    from ditlab.models.config import config_for

    cfg = config_for(name)
    if shrink < 1:
        raise ConfigError(f"--shrink must be >= 1, got {shrink}")
    heads = max(1, round(cfg.num_heads / shrink))
    return {
        "depth": max(1, round(cfg.depth / shrink)),
        "hidden_size": heads * (cfg.hidden_size // cfg.num_heads),
        "num_heads": heads,
        "patch_size": cfg.patch_size,
    }


def study_markdown(study: dict[str, Any]) -> str:
    """The results table: one row per model and evaluated step, with size, tokens, Gflops and metric."""
    metric = study["metric"]
    extra = ["mnist_accuracy"] if metric == "mnist_fd" else []
    head = ["model", "depth", "hidden", "heads", "patch", "tokens", "params (M)", "Gflops", "step", metric, *extra]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for m in study["models"]:
        for e in m["evals"]:
            cells = [m["label"], m["depth"], m["hidden_size"], m["num_heads"], m["patch_size"], m["tokens"],
                     f"{m['params'] / 1e6:.3f}", f"{m['gflops']:.4f}", e["step"], f"{e[metric]:.2f}",
                     *(f"{e[k]:.3f}" for k in extra)]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def plot_study(study: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Two PNGs: metric vs training steps (one line per model), metric vs Gflops (one series per step)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    out_dir = Path(out_dir)
    metric = study["metric"]
    label = METRIC_LABELS.get(metric, metric)
    floor = study.get("floor")
    models = sorted(study["models"], key=lambda m: m["gflops"])
    paths = (out_dir / "scaling_steps.png", out_dir / "scaling_gflops.png")

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for m in models:
        ax.plot([e["step"] for e in m["evals"]], [e[metric] for e in m["evals"]], marker="o", label=m["label"])
    if floor:
        ax.axhline(floor, color="gray", linestyle=":", label="real data (floor)")
    ax.set(xlabel="training steps", ylabel=metric, yscale="log", title=f"{metric} vs training steps")
    ax.legend(fontsize=7)
    fig.text(0.01, 0.01, label, fontsize=6)
    fig.tight_layout()
    _save_fig(fig, paths[0])
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    steps = sorted({e["step"] for m in models for e in m["evals"]})
    families: dict[str, list] = {}  # one line per size (depth, width), through its patch sizes, as Fig. 2
    for m in models:
        families.setdefault(m["name"].split("/")[0], []).append(m)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (family, members) in enumerate(families.items()):
        for s in steps:
            pts = [(m["gflops"], e[metric]) for m in members for e in m["evals"] if e["step"] == s]
            if not pts:
                continue
            last = s == steps[-1]
            ax.plot(*zip(*pts, strict=True), marker="o", color=colors[k % len(colors)], linestyle="-" if last else ":",
                    alpha=1.0 if last else 0.35, label=f"{family} step {s}" if last or s == steps[0] else None)
    for m in models:
        final = m["evals"][-1]
        ax.annotate(m["label"], (m["gflops"], final[metric]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    if floor:
        ax.axhline(floor, color="gray", linestyle=":", label="real data (floor)")
    ax.set(xlabel="Gflops per forward pass", ylabel=metric, xscale="log", yscale="log",
           title=f"{metric} vs Gflops (solid: step {steps[-1]}; dotted: earlier)")
    ax.xaxis.set_minor_formatter(NullFormatter())  # crowded minor labels on a short axis
    ax.legend(fontsize=7)
    fig.text(0.01, 0.01, label, fontsize=6)
    fig.tight_layout()
    _save_fig(fig, paths[1])
    plt.close(fig)
    return paths


def _save_fig(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)


def write_study(study: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``scaling.json``, ``scaling.md`` and the two plots into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "scaling.json", out_dir / "scaling.md"
    _atomic_text(json_path, json.dumps(study, indent=2) + "\n")
    metric = study["metric"]
    header = f"Metric: {METRIC_LABELS.get(metric, metric)}, {study.get('eval_num', '?')} samples per evaluation."
    if study.get("floor"):
        header += f" Real-data floor: {study['floor']:.2f}."
    _atomic_text(md_path, header + "\n\n" + study_markdown(study) + "\n")
    steps_png, gflops_png = plot_study(study, out_dir)
    return {"json": json_path, "markdown": md_path, "steps_plot": steps_png, "gflops_plot": gflops_png}


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
