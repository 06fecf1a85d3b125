"""KID, precision/recall, Inception Score and compute_metrics against closed forms and loops."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from ditlab.errors import ConfigError, DataError
from ditlab.evaluation.frechet import frechet_distance
from ditlab.evaluation.metrics import (
    FeatureStats,
    compute_metrics,
    fid,
    inception_score,
    kid,
    parse_metrics,
    precision_recall,
)


def _mmd2_loops(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased MMD² estimator of Bińkowski et al. written out term by term."""
    d = x.shape[1]
    k = lambda a, b: (a @ b / d + 1.0) ** 3  # noqa: E731
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
    xy = sum(k(a, b) for a in x for b in y) / (m * n)
    return xx + yy - 2 * xy


def test_kid_equals_the_estimator_written_out():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 5)), rng.normal(loc=0.5, size=(7, 5))
    # One subset holding every row: a permutation, which the estimator does not see.
    mean, std = kid(x, y, num_subsets=1, subset_size=100)
    assert mean == pytest.approx(_mmd2_loops(x, y), rel=1e-12) and std == 0.0
    # Subsets: the mean of the per-subset estimators, reproducible from the seed.
    mean, std = kid(x, y, num_subsets=5, subset_size=4, seed=3)
    rng = np.random.default_rng(3)
    vals = [_mmd2_loops(x[rng.choice(7, 4, replace=False)], y[rng.choice(7, 4, replace=False)]) for _ in range(5)]
    assert mean == pytest.approx(np.mean(vals), rel=1e-12) and std == pytest.approx(np.std(vals), rel=1e-9)


def test_kid_is_unbiased_near_zero_for_one_distribution():
    rng = np.random.default_rng(1)
    same = kid(rng.normal(size=(400, 16)), rng.normal(size=(400, 16)), num_subsets=20, subset_size=200)
    shifted = kid(rng.normal(size=(400, 16)), rng.normal(loc=1.0, size=(400, 16)), num_subsets=20, subset_size=200)
    assert abs(same[0]) < 3 * same[1] + 1e-3
    assert shifted[0] > 10 * abs(same[0]) and shifted[0] > 0


def _pr_loops(gen, ref, k):
    def radii(s):
        d = np.linalg.norm(s[:, None] - s[None], axis=-1)
        return np.sort(d, axis=1)[:, k]  # column 0 is the point itself

    def inside(manifold, r, q):
        d = np.linalg.norm(q[:, None] - manifold[None], axis=-1)
        return np.mean((d <= r[None]).any(axis=1))

    return inside(ref, radii(ref), gen), inside(gen, radii(gen), ref)


def test_precision_recall_hand_example():
    # Reference on a line at 0..9: with k=1 every ball has radius 1 and the union is [-1, 10].
    ref = np.arange(10.0)[:, None]
    gen = np.array([[5.5], [9.9], [10.5], [40.0], [41.0], [42.0]])
    p, r = precision_recall(gen, ref, k=1)
    assert p == pytest.approx(2 / 6)  # 5.5 and 9.9 fall inside
    # Generated balls: 5.5 r=4.4, 9.9 r=0.6, 10.5 r=0.6, 40..42 r=1 -> covers 2..9 of the reference.
    assert r == pytest.approx(8 / 10)


def test_precision_recall_equals_brute_force():
    rng = np.random.default_rng(2)
    ref, gen = rng.normal(size=(60, 8)), rng.normal(loc=0.4, scale=1.3, size=(50, 8))
    got = precision_recall(gen, ref, k=3, batch=16)  # batching must not change the answer
    assert got == pytest.approx(_pr_loops(gen, ref, 3), abs=1e-12)
    assert precision_recall(ref, ref, k=3) == (1.0, 1.0)


def test_inception_score_closed_forms():
    c = 10
    confident = np.full((40, c), -50.0)
    confident[np.arange(40), np.arange(40) % c] = 50.0  # every split holds each class equally
    mean, std = inception_score(confident, splits=4)
    assert mean == pytest.approx(c, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)
    assert inception_score(np.zeros((20, c)), splits=2) == pytest.approx((1.0, 0.0))
    # Two classes, p(y|x) = (0.9, 0.1) for half and (0.1, 0.9) for the rest: p(y) = (0.5, 0.5),
    # KL = 0.9 ln 1.8 + 0.1 ln 0.2.
    lg = np.log(np.array([[0.9, 0.1], [0.1, 0.9]] * 5))
    expected = np.exp(0.9 * np.log(1.8) + 0.1 * np.log(0.2))
    assert inception_score(lg, splits=1)[0] == pytest.approx(expected, rel=1e-12)


def test_compute_metrics_combines_and_checks():
    rng = np.random.default_rng(4)
    g, r = rng.normal(size=(30, 6)), rng.normal(loc=0.3, size=(40, 6))
    out = compute_metrics(g, r, "fid,kid,pr", kid_subsets=3, kid_subset_size=10)
    assert set(out) == {"fid", "kid_mean", "kid_std", "precision", "recall"}
    stats = FeatureStats.from_features(r)
    assert out["fid"] == pytest.approx(frechet_distance(g.mean(0), np.cov(g, rowvar=False), stats.mu, stats.sigma))
    assert compute_metrics(g, stats, ["fid"])["fid"] == pytest.approx(out["fid"], rel=1e-12)
    assert fid(g, stats) == pytest.approx(out["fid"], rel=1e-12)
    assert out["kid_mean"] == pytest.approx(kid(g, r, 3, 10)[0])
    logits = rng.normal(size=(30, 5))
    assert compute_metrics(g, r, "is", gen_logits=logits)["is_mean"] == pytest.approx(inception_score(logits)[0])


def test_compute_metrics_bad_requests():
    rng = np.random.default_rng(5)
    g = rng.normal(size=(10, 4))
    stats = FeatureStats.from_features(rng.normal(size=(10, 4)))
    with pytest.raises(DataError, match="statistics"):
        compute_metrics(g, stats, "fid,kid")
    with pytest.raises(ConfigError, match="classification head"):
        compute_metrics(g, g, "is")
    with pytest.raises(ConfigError, match="unknown metric"):
        parse_metrics("fid,lpips")
    assert parse_metrics(" FID, kid ,fid") == ("fid", "kid")
    with pytest.raises(DataError, match="more than 3"):
        precision_recall(g[:3], g, k=3)
    with pytest.raises(DataError, match="at least 2"):
        kid(g[:1], g)


def test_fid_uses_the_exact_low_rank_form_for_few_samples():
    rng = np.random.default_rng(6)
    g, r = np.abs(rng.normal(size=(8, 32))), np.abs(rng.normal(loc=0.3, size=(12, 32)))  # N < D
    sg, sr = FeatureStats.from_features(g), FeatureStats.from_features(r)
    expected = frechet_distance(sg.mu, sg.sigma, sr.mu, sr.sigma)  # the 32 x 32 sqrtm path
    assert fid(g, r) == pytest.approx(expected, rel=1e-6)
    assert fid(r, g) == pytest.approx(expected, rel=1e-6)
    assert fid(g, sr) == pytest.approx(expected, rel=1e-6)
    assert fid(sg, r) == pytest.approx(expected, rel=1e-6)
    assert fid(sg, sr) == pytest.approx(expected, rel=1e-9)
