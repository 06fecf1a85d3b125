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

    def _real(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` training digits of the floor (seeded draw): uint8 (n, 1, H, W) and labels (n,)."""
        from ditlab.data import build_dataset

        images, labels = build_dataset("mnist", self.image_size, split="train").tensors()
        pick = np.random.default_rng(self.seed).choice(images.shape[0], size=n, replace=False)
        return images[pick].numpy(), labels[pick].numpy()

    def floor(self, n: int) -> float:
        """The Fréchet distance of ``n`` real training digits at this size (seeded draw; memoised)."""
        if n not in self._floors:
            from ditlab.evaluation.mnist_classifier import classify

            _, feats = classify(self._real(n)[0][:, 0], self._model)
            self._floors[n] = frechet_distance(*feature_statistics(feats), self._mu, self._sigma)
        return self._floors[n]

    def score_reconstructions(self, autoencoder, n: int, *, device="cpu", batch_size: int = 250) -> dict[str, float]:
        """``score`` of the autoencoder's reconstructions of the floor's ``n`` training digits: the best a
        diffusion model in its latent space can do (a ratio of 1 means nothing the classifier sees is lost)."""
        import torch

        images, labels = self._real(n)
        out = []
        with torch.no_grad():
            for i in range(0, n, batch_size):
                x = torch.from_numpy(images[i : i + batch_size]).float() / 127.5 - 1.0  # (B, 1, H, W) in [-1, 1]
                rec = autoencoder.decode(autoencoder.encode(x.to(device))).float().cpu()  # (B, 1, H, W)
                out.append(((rec.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
        return self.score(np.concatenate(out), labels)

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
    """The results table: one row per model and evaluated step, with size, tokens, Gflops, training compute
    and the metrics (for MNIST: Fréchet distance, its ratio to the real-data floor, class accuracy)."""
    from ditlab.evaluation.scaling_plots import training_compute

    metric = study["metric"]
    extra = ["mnist_fd_ratio", "mnist_accuracy"] if metric == "mnist_fd" else []
    head = ["model", "depth", "hidden", "heads", "patch", "tokens", "params (M)", "Gflops", "step",
            "compute (Gflops)", metric, *extra]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for m in study["models"]:
        for e in m["evals"]:
            compute = f"{training_compute(m['gflops'], m['batch'], e['step']):.4g}" if "batch" in m else "?"
            cells = [m["label"], m["depth"], m["hidden_size"], m["num_heads"], m["patch_size"], m["tokens"],
                     f"{m['params'] / 1e6:.3f}", f"{m['gflops']:.4f}", e["step"], compute, f"{e[metric]:.2f}",
                     *(f"{e[k]:.3f}" for k in extra)]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def correlation_markdown(study: dict[str, Any]) -> str:
    """Pearson's r between log10(Gflops) and each metric over the models, one row per checkpoint."""
    from ditlab.evaluation.scaling_plots import gflops_correlations

    corr = gflops_correlations(study)
    names = list(corr)
    steps = sorted({int(s) for v in corr.values() for s in v})
    lines = ["| step | " + " | ".join(f"r(log Gflops, {n})" for n in names) + " |", "|---:|" + "---:|" * len(names)]
    for s in steps:
        lines.append(f"| {s} | " + " | ".join(f"{corr[n].get(str(s), float('nan')):.3f}" for n in names) + " |")
    return "\n".join(lines)


def write_study(study: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``scaling.json`` (with the Gflops correlations), ``scaling.md`` and the three figures into
    ``out_dir``; returns their paths (``json``, ``markdown``, ``gflops_plot``, ``steps_plot``, ``compute_plot``)."""
    from ditlab.evaluation.scaling_plots import gflops_correlations, plot_study

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "scaling.json", out_dir / "scaling.md"
    study = {**study, "gflops_correlations": gflops_correlations(study)}
    _atomic_text(json_path, json.dumps(study, indent=2) + "\n")
    metric = study["metric"]
    header = f"Metric: {METRIC_LABELS.get(metric, metric)}, {study.get('eval_num', '?')} samples per evaluation."
    if study.get("floor"):
        header += f" Real-data floor: {study['floor']:.2f}."
    text = header + "\n\n" + study_markdown(study) + "\n\nCorrelation with log10(Gflops) over the models:\n\n" + \
        correlation_markdown(study) + "\n"
    _atomic_text(md_path, text)
    plots = plot_study(study, out_dir)
    return {"json": json_path, "markdown": md_path, **{f"{k}_plot": v for k, v in plots.items()}}


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
