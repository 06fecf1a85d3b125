"""Fréchet distance and feature statistics against closed forms."""
from __future__ import annotations

import numpy as np
import pytest

from ditlab.errors import DataError
from ditlab.evaluation.frechet import feature_statistics, frechet_distance, frechet_distance_to_features


def test_diagonal_gaussians_closed_form():
    # For diagonal covariances, d² = ||mu1-mu2||² + sum_i (sqrt(a_i) - sqrt(b_i))².
    rng = np.random.default_rng(0)
    d = 16
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    a, b = rng.uniform(0.1, 3.0, size=d), rng.uniform(0.1, 3.0, size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(expected, rel=1e-10)


def test_commuting_full_covariances_closed_form():
    # Covariances sharing eigenvectors Q: d² = ||dmu||² + sum (sqrt(l_i) - sqrt(m_i))².
    rng = np.random.default_rng(1)
    d = 12
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    lam, mlam = rng.uniform(0.2, 2.0, size=d), rng.uniform(0.2, 2.0, size=d)
    s1, s2 = q @ np.diag(lam) @ q.T, q @ np.diag(mlam) @ q.T
    mu = rng.normal(size=d)
    expected = np.sum((np.sqrt(lam) - np.sqrt(mlam)) ** 2)
    assert frechet_distance(mu, s1, mu, s2) == pytest.approx(expected, rel=1e-9)


def test_general_covariances_match_symmetric_form():
    # Tr((S1 S2)^{1/2}) = Tr((S1^{1/2} S2 S1^{1/2})^{1/2}) = sum sqrt(eig of the PSD form).
    rng = np.random.default_rng(2)
    d = 20
    x, y = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = x @ x.T / d + 0.1 * np.eye(d), y @ y.T / d + 0.1 * np.eye(d)
    w, v = np.linalg.eigh(s1)
    r1 = v @ np.diag(np.sqrt(w)) @ v.T
    tr = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(r1 @ s2 @ r1), 0, None)))
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_identical_is_zero_and_singular_is_finite():
    rng = np.random.default_rng(3)
    feats = rng.normal(size=(10, 32))  # N < D: singular covariance
    mu, sigma = feature_statistics(feats)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-5
    mu2, sigma2 = feature_statistics(rng.normal(size=(10, 32)) + 1.0)
    d = frechet_distance(mu, sigma, mu2, sigma2)
    assert np.isfinite(d) and d > 32 * 0.5  # mean shift of 1 per dimension dominates


def test_feature_statistics_unbiased_float64():
    feats = np.array([[1.0, 2.0], [3.0, 6.0], [5.0, 7.0]], dtype=np.float32)
    mu, sigma = feature_statistics(feats)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    np.testing.assert_allclose(mu, [3.0, 5.0])
    # var(x) = ((-2)² + 0 + 2²) / 2 = 4; cov(x, y) = (-2*-3 + 0 + 2*2) / 2 = 5; var(y) = (9+1+4)/2 = 7
    np.testing.assert_allclose(sigma, [[4.0, 5.0], [5.0, 7.0]])


def test_bad_inputs():
    with pytest.raises(DataError, match="at least 2"):
        feature_statistics(np.zeros((1, 4)))
    with pytest.raises(DataError, match="dimensions"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


@pytest.mark.parametrize("n", [5, 40, 90])
def test_low_rank_form_equals_sqrtm(n):
    # Few samples (n <= D) and many (n > D): the N x N eigenproblem gives the sqrtm answer.
    rng = np.random.default_rng(n)
    d = 64
    feats = np.abs(rng.normal(size=(n, d)))  # non-negative like pool3 features
    other = np.abs(rng.normal(loc=0.2, size=(70, d)))
    mu2, sigma2 = feature_statistics(other)
    mu1, sigma1 = feature_statistics(feats)
    expected = frechet_distance(mu1, sigma1, mu2, sigma2)
    assert frechet_distance_to_features(feats, mu2, sigma2) == pytest.approx(expected, rel=1e-6)
