"""Sample-quality metrics on Inception features: FID, KID, precision/recall, Inception Score.

All take features as float arrays (N, D); the numbers are comparable with the standard tools when
the features come from ``InceptionFeatures`` (the inception-2015-12-05 pool3 layer).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from ditlab.errors import ConfigError, DataError
from ditlab.evaluation.frechet import feature_statistics, frechet_distance, frechet_distance_to_features

METRICS = ("fid", "kid", "pr", "is")


@dataclass
class FeatureStats:
    """Gaussian statistics of a feature set: mean (D,), covariance (D, D), number of samples."""

    mu: np.ndarray
    sigma: np.ndarray
    num: int = 0

    @classmethod
    def from_features(cls, features: np.ndarray) -> FeatureStats:
        mu, sigma = feature_statistics(features)
        return cls(mu, sigma, int(len(features)))


def fid(gen: np.ndarray | FeatureStats, ref: np.ndarray | FeatureStats) -> float:
    """Fréchet Inception Distance between two feature sets or their statistics.

    When a side is given as features with fewer rows than dimensions (e.g. FID-1k on 2048-d
    features), the exact low-rank form is used instead of a 2048x2048 ``sqrtm``; same value.
    """
    sets = [s for s in (gen, ref) if not isinstance(s, FeatureStats) and len(s) <= np.shape(s)[1]]
    if sets:
        small = min(sets, key=len)
        other = ref if small is gen else gen
        o = other if isinstance(other, FeatureStats) else FeatureStats.from_features(other)
        return frechet_distance_to_features(small, o.mu, o.sigma)  # symmetric in its two sides
    g = gen if isinstance(gen, FeatureStats) else FeatureStats.from_features(gen)
    r = ref if isinstance(ref, FeatureStats) else FeatureStats.from_features(ref)
    return frechet_distance(g.mu, g.sigma, r.mu, r.sigma)


def _polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with the cubic kernel k(a, b) = (a·b / d + 1)³ (Bińkowski et al. 2018, eq. 3)."""
    m, d = x.shape
    n = y.shape[0]
    kxx = (x @ x.T / d + 1.0) ** 3  # (m, m)
    kyy = (y @ y.T / d + 1.0) ** 3  # (n, n)
    kxy = (x @ y.T / d + 1.0) ** 3  # (m, n)
    # Off-diagonal means make the within-set terms unbiased.
    xx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    yy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(xx + yy - 2.0 * kxy.mean())


def kid(
    gen: np.ndarray,
    ref: np.ndarray,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance: mean and std of the unbiased MMD² over random subsets.

    Each subset draws ``min(subset_size, len(gen), len(ref))`` rows from each set without
    replacement, as torch-fidelity and clean-fid do.
    """
    gen, ref = np.asarray(gen, np.float64), np.asarray(ref, np.float64)
    size = min(subset_size, len(gen), len(ref))
    if size < 2:
        raise DataError(f"KID needs at least 2 images in each set, got {len(gen)} and {len(ref)}")
    rng = np.random.default_rng(seed)
    values = [
        _polynomial_mmd2(
            gen[rng.choice(len(gen), size, replace=False)],
            ref[rng.choice(len(ref), size, replace=False)],
        )
        for _ in range(num_subsets)
    ]
    return float(np.mean(values)), float(np.std(values))


def _pairwise_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (len(a), len(b)) via the Gram trick, clamped at 0 for round-off."""
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return sq.clamp_min(0).sqrt()


def _knn_radii(feats: torch.Tensor, k: int, batch: int) -> torch.Tensor:
    """Distance from each point to its k-th nearest neighbour in the same set (self excluded)."""
    radii = [
        # The point itself is at distance 0, so the k-th neighbour is the (k+1)-th smallest.
        torch.kthvalue(_pairwise_dist(feats[i : i + batch], feats), k + 1, dim=1).values
        for i in range(0, len(feats), batch)
    ]
    return torch.cat(radii)


def _inside_manifold(manifold: torch.Tensor, radii: torch.Tensor, queries: torch.Tensor, batch: int) -> float:
    """Fraction of ``queries`` inside at least one ball (manifold_j, radii_j)."""
    inside = [
        (_pairwise_dist(queries[i : i + batch], manifold) <= radii[None, :]).any(dim=1)
        for i in range(0, len(queries), batch)
    ]
    return float(torch.cat(inside).double().mean())


def precision_recall(
    gen: np.ndarray, ref: np.ndarray, k: int = 3, device: str | torch.device = "cpu", batch: int = 4096
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN balls, k=3 as ADM.

    Precision: share of generated samples inside the reference manifold (union of balls reaching
    each reference point's k-th neighbour); recall: share of reference samples inside the
    generated manifold.
    """
    if min(len(gen), len(ref)) <= k:
        raise DataError(
            f"precision/recall with k={k} needs more than {k} images per set, got {len(gen)} and"
            f" {len(ref)}; add images or drop 'pr' from --metrics"
        )
    device = torch.device(device)
    dtype = torch.float64 if device.type == "cpu" else torch.float32
    g = torch.as_tensor(np.asarray(gen), dtype=dtype, device=device)
    r = torch.as_tensor(np.asarray(ref), dtype=dtype, device=device)
    precision = _inside_manifold(r, _knn_radii(r, k, batch), g, batch)
    recall = _inside_manifold(g, _knn_radii(g, k, batch), r, batch)
    return precision, recall


def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """Inception Score exp(E_x KL(p(y|x) || p(y))) (Salimans et al. 2016): mean and std over splits.

    Uses the softmax over all 1008 logits of the 2015 graph, as the original code.
    """
    logits = np.asarray(logits, dtype=np.float64)
    splits = max(1, min(splits, len(logits)))
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))  # (N, C) log p(y|x)
    scores = []
    for part in np.array_split(logp, splits):
        p = np.exp(part)
        log_py = np.log(p.mean(axis=0))  # (C,) log p(y) over this split
        scores.append(np.exp((p * (part - log_py)).sum(axis=1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


def parse_metrics(spec: str | Iterable[str]) -> tuple[str, ...]:
    """``"fid,kid"`` -> ("fid", "kid"); ``ConfigError`` for unknown names."""
    names = [s.strip().lower() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        raise ConfigError(
            f"unknown metric(s) {', '.join(unknown) or '(none)'}; choose from {','.join(METRICS)}"
        )
    return tuple(dict.fromkeys(names))


def compute_metrics(
    gen: np.ndarray | FeatureStats,
    ref: np.ndarray | FeatureStats,
    metrics: str | Iterable[str] = ("fid",),
    *,
    gen_logits: np.ndarray | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    pr_k: int = 3,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """The requested metrics of generated vs reference features.

    Args:
        gen, ref: features (N, D), or ``FeatureStats`` when only the statistics are known
            (then only ``fid`` can be computed).
        metrics: any of ``fid``, ``kid``, ``pr``, ``is`` (list or comma-separated string).
        gen_logits: Inception logits of ``gen`` (N, 1008), required for ``is``.
        device: where the k-NN distances of precision/recall are computed (float32 on GPU).

    Returns:
        ``fid``; ``kid_mean``, ``kid_std``; ``precision``, ``recall``; ``is_mean``, ``is_std``.
    """
    wanted = parse_metrics(metrics)
    for side, feats in (("generated", gen), ("reference", ref)):
        if isinstance(feats, FeatureStats) and any(m in ("kid", "pr") for m in wanted):
            raise DataError(
                f"the {side} set is given as statistics (mu/sigma) only; KID and precision/recall"
                " need images: pass an image folder or ADM .npz, or use --metrics fid"
            )
    if "is" in wanted and gen_logits is None:
        raise ConfigError(
            "the Inception Score needs a weights file with the classification head (pytorch-fid"
            " or torch-fidelity .pth, NVIDIA inception-2015-12-05.pt): pass --inception PATH, or"
            " drop 'is' from --metrics"
        )
    out: dict[str, float] = {}
    if "fid" in wanted:
        out["fid"] = fid(gen, ref)
    if "kid" in wanted:
        out["kid_mean"], out["kid_std"] = kid(gen, ref, kid_subsets, kid_subset_size, seed)
    if "pr" in wanted:
        out["precision"], out["recall"] = precision_recall(gen, ref, k=pr_k, device=device)
    if "is" in wanted:
        out["is_mean"], out["is_std"] = inception_score(gen_logits)
    return out
