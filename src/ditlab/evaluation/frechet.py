"""Gaussian feature statistics and the Fréchet distance between two Gaussians (the "F" in FID).

FID (Heusel et al. 2017) fits a Gaussian to each set of Inception features and reports

    d² = ||mu1 - mu2||² + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^{1/2}),

the squared 2-Wasserstein distance between N(mu1, S1) and N(mu2, S2). We compute it the way
pytorch-fid and the ADM evaluator do (float64, unbiased covariance, ``scipy.linalg.sqrtm`` with a
small diagonal offset when the product is singular), so numbers are comparable with theirs.
"""
from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg

from ditlab.errors import DataError


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (divisor N-1) of ``features`` (N, D), in float64.

    Raises ``DataError`` for fewer than two rows: a covariance needs at least two samples.
    """
    feats = np.asarray(features, dtype=np.float64)
    if feats.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {feats.shape}")
    if feats.shape[0] < 2:
        raise DataError(
            f"need at least 2 images to estimate feature statistics, got {feats.shape[0]};"
            " add more images"
        )
    mu = feats.mean(axis=0)  # (D,)
    sigma = np.cov(feats, rowvar=False)  # (D, D), divisor N-1 as pytorch-fid
    return mu, np.atleast_2d(sigma)


def _sqrtm_real(a: np.ndarray) -> np.ndarray:
    """``scipy.linalg.sqrtm`` without its deprecated error-estimate return (scipy >= 1.16)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        # "singular matrix" warnings: the caller checks finiteness and regularises instead.
        warnings.simplefilter("ignore", category=linalg.LinAlgWarning)
        out = linalg.sqrtm(a)
    return out[0] if isinstance(out, tuple) else out


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    eps: float = 1e-6,
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (the FID when fed Inception stats).

    Args:
        mu1, mu2: means, shape (D,).
        sigma1, sigma2: covariances, shape (D, D).
        eps: diagonal offset added to both covariances when ``sqrtm`` of their product is not
            finite (singular covariances, e.g. fewer samples than feature dimensions), as pytorch-fid.
    """
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if mu1.shape != mu2.shape:
        raise DataError(
            f"feature statistics have different dimensions ({mu1.shape[0]} vs {mu2.shape[0]});"
            " compute both with the same feature extractor"
        )
    if sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0], mu1.shape[0]):
        raise DataError(
            f"covariance shapes {sigma1.shape} / {sigma2.shape} do not match mean dimension"
            f" {mu1.shape[0]}; recompute the statistics"
        )

    diff = mu1 - mu2
    covmean = _sqrtm_real(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        # Singular product: regularise both covariances slightly, as the standard tools do.
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm_real((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        # S1 S2 is similar to a PSD matrix, so its eigenvalues are real and >= 0; imaginary parts
        # are round-off. pytorch-fid raises above 1e-3 on the diagonal; we keep the real part
        # but warn, because few samples (N < D) make this common and the real part is still right.
        imag = np.max(np.abs(np.diagonal(covmean).imag))
        if imag > 1e-3:
            warnings.warn(
                f"sqrtm had an imaginary component {imag:.3g}; the FID may be inaccurate"
                " (too few samples for the feature dimension?)",
                RuntimeWarning,
                stacklevel=2,
            )
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def frechet_distance_to_features(
    features: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Fréchet distance between the Gaussian fit of ``features`` (N, D) and N(mu2, sigma2), exactly.

    With N <= D samples the covariance S1 = Xᵀ X / (N-1) (X centred) has rank < N, and the nonzero
    eigenvalues of S1 S2 are those of the small PSD matrix X S2 Xᵀ / (N-1). So
    Tr((S1 S2)^{1/2}) = Σ sqrt(eig(X S2 Xᵀ / (N-1))): an N x N eigenproblem instead of a D x D
    ``sqrtm`` (minutes for D = 2048 on a busy CPU), with no regularising offset. Equals
    ``frechet_distance`` to round-off (the tests check it). Use it when N is small; for N > D it
    still holds but is no cheaper.
    """
    mu1, sigma1 = feature_statistics(features)
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if mu1.shape != mu2.shape or sigma2.shape != sigma1.shape:
        raise DataError(
            f"feature statistics have different dimensions ({mu1.shape[0]} vs {mu2.shape[0]});"
            " compute both with the same feature extractor"
        )
    x = np.asarray(features, dtype=np.float64) - mu1  # (N, D), centred
    small = x @ sigma2 @ x.T / (x.shape[0] - 1)  # (N, N), PSD
    eig = np.linalg.eigvalsh((small + small.T) / 2)
    tr_covmean = np.sqrt(np.clip(eig, 0.0, None)).sum()  # round-off can make tiny eigenvalues < 0
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)
