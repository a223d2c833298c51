"""Verdict statistics: Newcombe's AUROC interval, cluster-bootstrap and length-controlled Spearman, CV AUROC gain."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import optimize
from scipy import stats as sst

from fer_diag import stats

Z95 = sst.norm.ppf(0.975)


# ---------------------------------------------------------------- Newcombe (2006) method 5


def newcombe_end(a_hat: float, n0: int, n1: int, lo: float, hi: float) -> float:
    """One end of Newcombe's method-5 interval, written out from the paper's formula and solved by brentq."""
    k = (n0 + n1) / 2 - 1  # N* − 1

    def f(t):
        v = t * (1 - t) / (n0 * n1) * (1 + k * (1 - t) / (2 - t) + k * t / (1 + t))
        return (a_hat - t) ** 2 - Z95**2 * v

    return optimize.brentq(f, lo, hi, xtol=1e-14)


def test_auroc_ci_perfect_separation_does_not_collapse():
    widths = []
    for n in (24, 48, 96):
        a, lo, hi = stats.auroc_score_ci(np.arange(n), np.arange(n) + n)
        assert a == 1.0 and hi == 1.0 and 0.9 < lo < 1.0
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]
    a, lo, hi = stats.auroc_score_ci(np.arange(48), np.arange(48) + 48)
    assert lo == pytest.approx(0.9587, abs=1e-4)
    # the percentile bootstrap collapses on the same data
    assert stats.percentile_ci(stats.auroc_bootstrap(np.arange(48), np.arange(48) + 48, n_boot=200)) == (1.0, 1.0)
    # perfectly wrong direction: the mirror image
    a, lo, hi = stats.auroc_score_ci(np.arange(48) + 48, np.arange(48))
    assert a == 0.0 and lo == 0.0 and hi == pytest.approx(1 - 0.9587, abs=1e-4)


def test_auroc_ci_hand_computed():
    # ID [1, 2, 3, 4] vs OOD [2.5, 3.5, 5, 6]: 2 + 3 + 4 + 4 = 13 of 16 pairs ordered → Â = 0.8125
    a, lo, hi = stats.auroc_score_ci([1, 2, 3, 4], [2.5, 3.5, 5, 6])
    assert a == 0.8125
    assert lo == pytest.approx(newcombe_end(0.8125, 4, 4, 1e-9, 0.8125), abs=1e-10)
    assert hi == pytest.approx(newcombe_end(0.8125, 4, 4, 0.8125, 1 - 1e-9), abs=1e-10)
    assert 0.3 < lo < 0.8125 < hi < 1.0
    # Â = 1 with 10 vs 15: the lower end solves (1 − θ) = z² θ/(n0 n1) [1 + k(1 − θ)/(2 − θ) + kθ/(1 + θ)]
    a, lo, hi = stats.auroc_score_ci(np.arange(10), np.arange(15) + 10)
    assert (a, hi) == (1.0, 1.0)
    assert lo == pytest.approx(newcombe_end(1.0, 10, 15, 1e-9, 1 - 1e-12), abs=1e-10)


def test_auroc_ci_coverage_and_shapes():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(300, 30)), rng.normal(1.0, size=(300, 30))
    true = sst.norm.cdf(1 / np.sqrt(2))  # P(Y > X) for unit normals one SD apart
    a, lo, hi = stats.auroc_score_ci(x, y)
    coverage = np.mean((lo <= true) & (true <= hi))
    assert 0.90 <= coverage <= 0.99  # 0.957 with this seed
    np.testing.assert_array_equal(a, stats.auroc(x, y))
    assert np.all((lo <= a) & (a <= hi))
    a3, lo3, hi3 = stats.auroc_score_ci(x[:6].reshape(2, 3, 30), y[0])
    assert a3.shape == lo3.shape == hi3.shape == (2, 3)
    one = stats.auroc_score_ci(x[4], y[0])
    assert isinstance(one[1], float) and one[1] == pytest.approx(lo3[1, 1])
    # a 90 % interval is narrower
    _, lo90, hi90 = stats.auroc_score_ci(x, y, level=0.90)
    assert np.all(hi90 - lo90 < hi - lo)


# ---------------------------------------------------------------- cluster bootstrap, partial Spearman


def expanded_partial(x, y, z) -> float:
    r = np.corrcoef(np.stack([sst.rankdata(x), sst.rankdata(y), sst.rankdata(z)]))
    p = np.linalg.inv(r)
    return -p[0, 1] / np.sqrt(p[0, 0] * p[1, 1])


def test_weighted_rank_correlations_equal_the_expanded_sample():
    rng = np.random.default_rng(0)
    n = 30
    level = rng.integers(0, 4, n).astype(float)
    scores = rng.normal(size=(n, 3))
    scores[:5, 0] = scores[5:10, 0]  # ties across items
    scores[:, 2] = rng.integers(0, 5, n)  # an integer score (SAE L0): many ties
    cov = rng.normal(size=n) + level
    w = rng.integers(0, 3, size=(5, n)).astype(float)
    rho = stats._rank_corrs(level, scores, None, w)
    part = stats._rank_corrs(level, scores, cov, w)
    for b in range(5):
        idx = np.repeat(np.arange(n), w[b].astype(int))
        for j in range(3):
            assert rho[b, j] == pytest.approx(sst.spearmanr(level[idx], scores[idx, j]).statistic, abs=1e-12)
            assert part[b, j] == pytest.approx(expanded_partial(level[idx], scores[idx, j], cov[idx]), abs=1e-12)
    expected = [expanded_partial(level, scores[:, j], cov) for j in range(3)]
    np.testing.assert_allclose(stats.partial_spearman(level, scores, cov), expected, atol=1e-12)


def graded(n_texts: int, rng, slope_sd: float = 0.0, per_level: int = 1):
    """Levels 0..4 applied to the same ``n_texts`` source texts (``per_level`` windows each)."""
    level = np.tile(np.repeat(np.arange(5.0), per_level), n_texts)
    cluster = np.repeat(np.arange(n_texts), 5 * per_level)
    slope = 0.4 + slope_sd * rng.normal(size=n_texts)
    return level, cluster, slope[cluster]


def test_spearman_cluster_ci_wider_than_fisher_with_correlated_clusters():
    rng = np.random.default_rng(1)
    level, cluster, slope = graded(20, rng, slope_sd=1.0, per_level=4)  # texts respond very differently
    scores = np.column_stack([slope * level + rng.normal(size=len(level)) for _ in range(3)])
    rho, lo, hi = stats.spearman_cluster_ci(level, scores, cluster, n_boot=500, rng=np.random.default_rng(0))
    np.testing.assert_allclose(rho, stats.spearman(level, scores), atol=1e-12)
    f_lo, f_hi = stats.fisher_ci(rho, len(level), 0.95, stats.SPEARMAN_FISHER_VAR)
    assert np.all(lo <= rho) and np.all(rho <= hi)
    assert np.all(hi - lo > 1.5 * (f_hi - f_lo))


def test_spearman_cluster_ci_singletons_match_a_plain_bootstrap():
    rng = np.random.default_rng(2)
    n = 120
    level = rng.integers(0, 5, n).astype(float)
    score = 0.3 * level + rng.normal(size=n)
    rho, lo, hi = stats.spearman_cluster_ci(level, score[:, None], np.arange(n), n_boot=1000, rng=rng)
    plain = []
    for _ in range(1000):
        i = rng.integers(0, n, n)
        plain.append(sst.spearmanr(level[i], score[i]).statistic)
    p_lo, p_hi = np.quantile(plain, [0.025, 0.975])
    assert (hi[0] - lo[0]) == pytest.approx(p_hi - p_lo, rel=0.15)
    assert lo[0] == pytest.approx(p_lo, abs=0.05) and hi[0] == pytest.approx(p_hi, abs=0.05)
    f_lo, f_hi = stats.fisher_ci(rho, n, 0.95, stats.SPEARMAN_FISHER_VAR)
    assert (hi[0] - lo[0]) == pytest.approx(float(f_hi[0] - f_lo[0]), rel=0.25)


def test_spearman_cluster_ci_degenerate_inputs():
    level = np.repeat(np.arange(5.0), 2)
    rho, lo, hi = stats.spearman_cluster_ci(level, np.c_[np.arange(10.0)], np.arange(10) % 2)  # 2 clusters
    assert rho[0] > 0.9 and np.isnan(lo[0]) and np.isnan(hi[0])
    rho, lo, hi = stats.spearman_cluster_ci(level, np.c_[np.ones(10)], np.arange(10))  # constant score
    assert np.isnan(rho[0]) and np.isnan(lo[0]) and np.isnan(hi[0])
    with pytest.raises(ValueError, match="cluster_ids"):
        stats.spearman_cluster_ci(level, np.c_[np.arange(10.0)], np.arange(9))


def test_partial_spearman_removes_a_length_confound():
    rng = np.random.default_rng(0)
    level, cluster, _ = graded(40, rng, per_level=2)
    n_tokens = 100 + 40 * level + rng.normal(0, 15, len(level))  # length follows the level
    length_only = 0.01 * n_tokens + rng.normal(0, 0.1, len(level))  # the score follows only the length
    real = 0.5 * level + 0.01 * n_tokens + rng.normal(0, 0.5, len(level))  # follows the level itself too
    scores = np.column_stack([length_only, real])
    plain = stats.spearman(level, scores)
    rho, lo, hi = stats.partial_spearman_cluster_ci(level, scores, n_tokens, cluster, n_boot=500, rng=rng)
    assert plain[0] > 0.7
    assert abs(rho[0]) < 0.1 and lo[0] < 0 < hi[0]
    assert rho[1] > 0.3 and lo[1] > 0
    np.testing.assert_allclose(rho, stats.partial_spearman(level, scores, n_tokens), atol=1e-12)


# ---------------------------------------------------------------- CV AUROC gain over NLL


def test_cv_auroc_gain():
    rng = np.random.default_rng(4)
    n = 150
    nll_id, nll_ood = rng.normal(0, 1, n), rng.normal(0.6, 1, n)
    informative = np.stack([rng.normal(0, 1, n), rng.normal(1.0, 1, n)])  # independent of NLL
    redundant = np.stack([nll_id + rng.normal(0, 0.3, n), nll_ood + rng.normal(0, 0.3, n)])  # NLL plus noise
    out = stats.cv_auroc_gain(
        nll_id,
        nll_ood,
        np.stack([informative[0], redundant[0]]),
        np.stack([informative[1], redundant[1]]),
        seed=0,
        n_boot=500,
    )
    assert set(out) == {"auroc_nll", "auroc_combined", "gain", "gain_ci_low", "gain_ci_high"}
    assert out["gain"].shape == (2,)
    assert out["auroc_nll"][0] == pytest.approx(stats.auroc(nll_id, nll_ood), abs=0.03)
    assert out["gain"][0] > 0.1 and out["gain_ci_low"][0] > 0.03
    assert abs(out["gain"][1]) < 0.03 and out["gain_ci_low"][1] < 0 < out["gain_ci_high"][1]
    np.testing.assert_allclose(out["gain"], out["auroc_combined"] - out["auroc_nll"])
    one = stats.cv_auroc_gain(nll_id, nll_ood, informative[0], informative[1], seed=0, n_boot=500)
    assert isinstance(one["gain"], float) and one["gain"] == pytest.approx(out["gain"][0])
    with pytest.raises(ValueError, match="same windows"):
        stats.cv_auroc_gain(nll_id, nll_ood, informative[0][:-1], informative[1])
