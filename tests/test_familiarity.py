"""Familiarity statistics (fer_diag.stats) and FamiliarityAnalyzer: known answers, references, merging."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats as sst
from sklearn.metrics import roc_auc_score, roc_curve

from fer_diag import stats
from fer_diag.analyzers.baselines import BASELINES, BaselineAnalyzer
from fer_diag.analyzers.sparsity import SparsityAnalyzer
from fer_diag.capture import ActivationBatch
from fer_diag.data.suite import SetKind
from fer_diag.familiarity import familiarity

HOOK = "blocks.1.hook_resid_post"


# --------------------------------------------------------------------------- stats
def test_auroc_by_hand_and_vs_sklearn_with_ties():
    # pairs (id, ood): (1,2)=1 (2,2)=½ (3,2)=0, and 4 beats all three → 4.5 / 6
    assert stats.auroc([1, 2, 3], [2, 4]) == 0.75
    rng = np.random.default_rng(0)
    x = rng.integers(0, 6, size=(5, 40)).astype(float)  # many ties
    y = rng.integers(1, 7, size=(5, 30)).astype(float)
    got = stats.auroc(x, y)
    for k in range(5):
        want = roc_auc_score(np.r_[np.zeros(40), np.ones(30)], np.r_[x[k], y[k]])
        assert got[k] == pytest.approx(want, abs=1e-12)
    with pytest.raises(ValueError, match="NaN"):
        stats.auroc([1.0, float("nan")], [2.0])


def test_fpr_at_95_tpr_by_hand_and_vs_roc_curve():
    ood = np.arange(1, 21, dtype=float)  # TPR ≥ 0.95 needs 19 of 20 → threshold 2
    idd = np.array([0.0, 2.5, 5.0, 19.5])  # 3 of 4 at or above 2
    assert stats.fpr_at_tpr(idd, ood) == 0.75
    rng = np.random.default_rng(1)
    for _ in range(5):
        x, y = rng.normal(size=37).round(1), rng.normal(0.8, size=23).round(1)
        fpr, tpr, _ = roc_curve(np.r_[np.zeros(37), np.ones(23)], np.r_[x, y], drop_intermediate=False)
        assert stats.fpr_at_tpr(x, y) == pytest.approx(fpr[tpr >= 0.95].min())


def test_bootstrap_replicates_are_exact_and_seeded():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(3, 25)).round(1), rng.normal(0.5, size=(3, 20)).round(1)
    counts = (stats.bootstrap_counts(25, 50, rng), stats.bootstrap_counts(20, 50, rng))
    assert (counts[0].sum(1) == 25).all() and (counts[1].sum(1) == 20).all()
    reps = stats.auroc_bootstrap(x, y, counts=counts)
    assert reps.shape == (3, 50)
    for b in (0, 17, 49):  # a replicate is the AUROC of the resampled sets
        xb, yb = np.repeat(x[1], counts[0][b]), np.repeat(y[1], counts[1][b])
        assert reps[1, b] == pytest.approx(stats.auroc(xb, yb), abs=1e-12)
    w, v = (torch.from_numpy(c) for c in counts)
    assert np.array_equal(stats._boot_kernel(x, y, w, v), stats._boot_placements(x, y, w, v))
    a, b = stats.auroc_bootstrap(x, y, n_boot=30, seed=7), stats.auroc_bootstrap(x, y, n_boot=30, seed=7)
    assert np.array_equal(a, b)
    lo, hi = stats.percentile_ci(stats.auroc_bootstrap(x, y, n_boot=400, seed=0))
    assert (lo <= stats.auroc(x, y)).all() and (stats.auroc(x, y) <= hi).all()


def test_stratified_auroc_by_hand():
    # stratum 0: id [1, 2], ood [3] → 1 (2 pairs); stratum 1: id [5], ood [4, 6] → ½ (2 pairs)
    # stratum 2 has only OOD windows: never compared. Pooled AUROC would differ.
    x, y = [1.0, 2.0, 5.0], [3.0, 4.0, 6.0, 0.0]
    auc, frac = stats.stratified_auroc(x, y, [0, 0, 1], [0, 1, 1, 2])
    assert auc == pytest.approx(3 / 4)
    assert frac == pytest.approx(4 / 12)
    assert stats.auroc(x, y) == pytest.approx(7 / 12)
    nan, none = stats.stratified_auroc(x, y, [0, 0, 0], [1, 1, 1, 1])
    assert math.isnan(nan) and none == 0.0
    sid, sood = stats.length_strata([127] * 5, [127] * 3)
    assert len(set(sid) | set(sood)) == 1  # one stratum when every window has the same length


def test_correlations_vs_scipy_and_fisher_by_hand():
    rng = np.random.default_rng(3)
    level = np.repeat([0.0, 5, 10, 20, 40], 12)
    scores = np.c_[level + rng.normal(0, 8, 60), rng.integers(0, 4, 60), -level]
    rho = stats.spearman(level, scores)
    for c in range(3):
        assert rho[c] == pytest.approx(sst.spearmanr(level, scores[:, c]).statistic, abs=1e-12)
        assert stats.pearson(level, scores[:, c]) == pytest.approx(np.corrcoef(level, scores[:, c])[0, 1])
    assert rho[2] == pytest.approx(-1.0)
    lo, hi = stats.fisher_ci(0.5, 28)  # atanh(0.5) ± 1.96/√25
    z = math.atanh(0.5)
    q = sst.norm.ppf(0.975)
    assert (float(lo), float(hi)) == pytest.approx((math.tanh(z - q / 5), math.tanh(z + q / 5)))
    lo, _ = stats.fisher_ci(0.5, 28, var_scale=stats.SPEARMAN_FISHER_VAR)
    assert float(lo) == pytest.approx(math.tanh(z - q * math.sqrt(1.06 / 25)))


def test_level_means_pearson():
    level = np.repeat([0.0, 1.0, 3.0], 4)
    noise = np.tile([-1.0, 1.0, -0.5, 0.5], 3)
    out = stats.level_means_pearson(level, np.c_[2 * level + noise, noise], n_boot=200)
    assert out["levels"].tolist() == [0.0, 1.0, 3.0]
    assert out["means"][:, 0].tolist() == pytest.approx([0.0, 2.0, 6.0])
    assert out["r"][0] == pytest.approx(1.0)  # level means exactly linear
    assert math.isnan(out["r"][1])  # constant means
    assert out["ci_low"][0] <= 1.0 <= out["ci_high"][0] + 1e-12
    two = stats.level_means_pearson(level[level < 2], np.c_[level[level < 2]], n_boot=10)
    assert math.isnan(two["r"][0])  # two levels: r would be ±1 by construction


# --------------------------------------------------------------------------- analyzer
def _batch(name, kind, level, start, sparse_frac, nll_shift, n=8, t=12, d=40, axis=None, seed=0, lengths=None):
    """Windows whose activations keep a fraction ``sparse_frac`` of the dims (1 = dense)."""
    g = torch.Generator().manual_seed(seed)
    keep = max(1, round(sparse_frac * d))
    acts = torch.randn(n, t, d, generator=g)
    acts[..., keep:] *= 0.01
    mask = torch.ones(n, t, dtype=torch.bool)
    mask[:, 0] = False
    if lengths is not None:
        for i, length in enumerate(lengths):
            mask[i, length:] = False
    nll = 2.0 + nll_shift + 0.1 * torch.rand(n, t, generator=g)
    nll[:, 0] = float("nan")
    return ActivationBatch(
        set_name=name,
        kind=kind,
        level=level,
        tokens=torch.zeros(n, t, dtype=torch.long),
        mask=mask,
        seq_index=torch.arange(start, start + n),
        acts={HOOK: acts},
        token_nll=nll,
        token_entropy=nll / 2,
        token_maxprob=torch.exp(-nll),
        meta={"axis": axis},
    )


def _suite():
    out = []
    for i, start in enumerate((0, 8)):
        out.append(_batch("fortunes", SetKind.IN_DISTRIBUTION, None, start, 1.0, 0.0, seed=10 + i))
        out.append(_batch("code", SetKind.SHIFTED, None, start, 0.1, 1.0, seed=20 + i))
        for j, level in enumerate((0.0, 10.0, 40.0)):
            frac = 1.0 - level / 50  # sparser the farther the shift
            out.append(
                _batch(
                    f"noise@{level:g}",
                    SetKind.GRADED,
                    level,
                    start,
                    frac,
                    level / 20,
                    axis="noise",
                    seed=30 + 3 * i + j,
                )
            )
    return out


def _run(batches, massive=None):
    sp, fam = SparsityAnalyzer(massive_dims=massive), BaselineAnalyzer()
    for b in batches:
        sp.update(b)
        fam.update(b)
    return sp, fam


def test_detects_a_sparser_shifted_set():
    sp, fam = _run(_suite())
    res = familiarity(sp.compute(), fam.compute(), n_boot=200)
    assert res.reference_set == "fortunes"
    (hoyer,) = res.rows(metric="hoyer", set_name="code", masked=False, reduce="mean")
    assert (hoyer.auroc, hoyer.direction, hoyer.sparsity_direction) == (1.0, "higher_is_ood", "sparser_is_ood")
    # perfect separation of 16 vs 16: the score interval does not collapse to [1, 1]
    assert hoyer.auroc_ci[1] == 1.0 and 0.8 < hoyer.auroc_ci[0] < 0.95 and hoyer.fpr_at_95tpr == 0.0
    assert "Newcombe" in res.settings["ci_methods"]["auroc"]
    assert (hoyer.n_id, hoyer.n_ood, hoyer.length_matched_pair_frac) == (16, 16, 1.0)
    assert hoyer.auroc_length_matched == 1.0  # all windows have the same length: one stratum
    (entropy,) = res.rows(metric="part_entropy_l2", set_name="code", masked=False, reduce="mean")
    assert (entropy.auroc, entropy.direction, entropy.sparsity_direction) == (0.0, "lower_is_ood", "sparser_is_ood")
    assert entropy.auroc_oriented == 1.0 and entropy.auroc_oriented_ci == hoyer.auroc_ci
    (norm,) = res.rows(metric="l2_norm", set_name="code", masked=False, reduce="mean")
    assert norm.sparsity_direction is None
    # baselines on the same windows: higher NLL, lower max-probability on the shifted set
    (nll,) = res.rows(source="baseline", metric="nll", set_name="code")
    (maxprob,) = res.rows(source="baseline", metric="maxprob", set_name="code")
    assert (nll.auroc, nll.direction) == (1.0, "higher_is_ood")
    assert (maxprob.auroc, maxprob.direction, maxprob.auroc_oriented) == (0.0, "lower_is_ood", 1.0)
    assert {r.metric for r in res.rows(source="baseline", set_name="code")} == set(BASELINES)
    # no massive dims: each masked row is flagged as a copy of the unmasked one
    (masked,) = res.rows(metric="hoyer", set_name="code", masked=True, reduce="mean")
    assert masked.masked_same_as_unmasked and masked.auroc == hoyer.auroc
    json.dumps(res.to_dict())


def test_graded_axis_correlations():
    sp, fam = _run(_suite())
    res = familiarity(sp.compute(), fam.compute(), n_boot=100)
    (hoyer,) = res.rows("graded", metric="hoyer", masked=False, reduce="mean")
    assert hoyer.axis == "noise" and hoyer.levels == [0.0, 10.0, 40.0] and not hoyer.reference_as_level0
    assert hoyer.n_seqs == 48
    assert hoyer.spearman_rho > 0.8 and hoyer.spearman_ci[0] > 0.5
    assert hoyer.pearson_r_means > 0.9 and hoyer.sparsity_direction == "sparser_with_shift"
    (ent,) = res.rows("graded", metric="part_entropy_l1", masked=False, reduce="mean")
    assert ent.spearman_rho < -0.8 and ent.sparsity_direction == "sparser_with_shift"
    (nll,) = res.rows("graded", source="baseline", metric="nll")
    assert nll.spearman_rho > 0.8
    # without a level-0 set the reference stands in as level 0
    no_zero = [b for b in _suite() if b.set_name != "noise@0"]
    sp2, fam2 = _run(no_zero)
    (row,) = familiarity(sp2.compute(), fam2.compute(), n_boot=0).rows(
        "graded", metric="hoyer", masked=False, reduce="mean"
    )
    assert row.reference_as_level0 and row.levels == [0.0, 10.0, 40.0] and row.pearson_ci is None


def test_length_matching_removes_a_length_confound():
    # the shifted set holds copies of the reference windows, but mostly the short ones: the window
    # participation ratio (≤ counted tokens − 1) is confounded with length; within a length stratum
    # every reference window is copied equally often, so the matched AUROC is exactly ½
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(8, 30, 40, generator=g)
    mask = torch.ones(8, 30, dtype=torch.bool)
    mask[:, 0] = False
    mask[4:, 8:] = False  # windows 4..7 count 7 tokens, windows 0..3 count 29
    copy = [4, 5, 6, 7, 4, 5, 6, 7, 0, 1, 2, 3]

    def make(name, kind, a, m):
        tokens = torch.zeros(m.shape, dtype=torch.long)
        return ActivationBatch(name, kind, None, tokens, m, torch.arange(len(m)), {HOOK: a})

    sp, fam = _run(
        [make("id", SetKind.IN_DISTRIBUTION, acts, mask), make("ood", SetKind.SHIFTED, acts[copy], mask[copy])]
    )
    res = familiarity(sp.compute(), fam.compute(), n_boot=0)
    (pr,) = res.rows(metric="participation_ratio", masked=False, set_name="ood")
    # pooled: short OOD never beat long ID, tie-like ½ within a length, long OOD beat short ID
    assert pr.auroc == pytest.approx((8 * 4 * 0.5 + 4 * 4 * 0.5 + 4 * 4 * 1.0) / (12 * 8))
    assert pr.auroc_length_matched == pytest.approx(0.5)
    assert pr.length_matched_pair_frac == pytest.approx((4 * 8 + 4 * 4) / (8 * 12))


def test_merge_equals_one_pass():
    batches = _suite()
    _, one = _run(batches)
    sp, _ = _run(batches)
    half = len(batches) // 2
    _, left = _run(batches[:half])
    _, right = _run(batches[half:][::-1])
    merged = left.merge(right)
    a = familiarity(sp.compute(), merged.compute(), n_boot=50).to_dict()
    b = familiarity(sp.compute(), one.compute(), n_boot=50).to_dict()
    assert a == b


def test_reference_selection_and_baseline_only():
    batches = [b for b in _suite() if b.kind is not SetKind.GRADED]
    _, fam = _run(batches)
    res = familiarity(None, fam.compute(), n_boot=0)  # baselines only, no sparsity result
    assert {r.source for r in res.detection} == {"baseline"}
    assert res.settings["reference_set"] == "fortunes"
    fam.update(_batch("held_out", SetKind.IN_DISTRIBUTION, None, 0, 1.0, 0.0))
    with pytest.raises(ValueError, match="reference_set"):
        familiarity(None, fam.compute())
    res = familiarity(None, fam.compute(), reference_set="held_out", n_boot=0)
    assert {r.set_name for r in res.detection} == {"fortunes", "code"}
    with pytest.raises(KeyError, match="not seen"):
        familiarity(None, fam.compute(), reference_set="nope")
