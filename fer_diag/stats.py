"""Statistics of a familiarity signal (DESIGN §5), vectorised over many scores at once.

Conventions
-----------
* Detection: the shifted (OOD) set is the **positive** class and a **higher score
  means more OOD**. ``auroc`` is the Mann–Whitney probability P(s_ood > s_id) +
  ½ P(s_ood = s_id), i.e. ``sklearn.metrics.roc_auc_score`` with OOD labelled 1.
* Scores come as ``[..., n]`` arrays: leading axes index *different scores* of the
  same sequences (hooks × metrics), the last axis the sequences. Everything is
  computed for all scores in one pass.
* Bootstrap: sequences are resampled with replacement within each set
  (multinomial counts), the same resamples for every score of a set pair (a paired
  bootstrap, so sparsity scores and baselines are compared on the same draws).
  CIs are percentile intervals.
* Correlations: Spearman ρ (midranks for ties) with a Fisher-z interval using
  var(z) = 1.06 / (n − 3) (Fieller, Hartley & Pearson 1957); Pearson r on level
  means (Jin et al. 2026, arXiv 2603.03415) with a stratified bootstrap
  interval (sequences resampled within each level), because the number of levels
  is too small for a Fisher interval.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import torch
from scipy import stats as sst

from fer_diag.threads import thread_map

#: Fieller, Hartley & Pearson (1957): var(atanh ρ_Spearman) ≈ 1.06 / (n − 3)
SPEARMAN_FISHER_VAR = 1.06

_CHUNK_ELEMENTS = 1 << 24  # bootstrap working set per chunk (4-byte elements, 64 MB)
_KERNEL_MAX_PAIRS = 1 << 18  # bootstrap by matrix product up to this many (ID, OOD) pairs


def _scores(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 0 or a.shape[-1] == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return a


def _pair(scores_id, scores_ood) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """Both score arrays as ``[K, n]`` with the same leading shape, and that shape."""
    x, y = _scores(scores_id, "scores_id"), _scores(scores_ood, "scores_ood")
    lead = np.broadcast_shapes(x.shape[:-1], y.shape[:-1])
    x = np.array(np.broadcast_to(x, (*lead, x.shape[-1])).reshape(-1, x.shape[-1]))  # writable, C-ordered
    y = np.array(np.broadcast_to(y, (*lead, y.shape[-1])).reshape(-1, y.shape[-1]))
    return x, y, lead


def _placements(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """Sort order of each ID row, and for every OOD score the number of ID scores ``<`` and ``≤`` it."""
    order = np.argsort(x, axis=1, kind="stable")
    xs = torch.from_numpy(np.ascontiguousarray(np.take_along_axis(x, order, axis=1)))
    yt = torch.from_numpy(np.ascontiguousarray(y))
    return order, torch.searchsorted(xs, yt), torch.searchsorted(xs, yt, right=True)


def _shape(values: np.ndarray, lead: tuple[int, ...]) -> np.ndarray | float:
    out = values.reshape(lead + values.shape[1:])
    return float(out) if out.ndim == 0 else out


def auroc(scores_id, scores_ood) -> np.ndarray | float:
    """AUROC with OOD positive and higher score = OOD; ties count ½ (= ``roc_auc_score``).

    ``scores_id [..., n0]``, ``scores_ood [..., n1]`` → ``[...]`` (a float for 1-D input).
    Computed from placements: Σ_j (#id < y_j + #id ≤ y_j) / (2 n0 n1).
    """
    x, y, lead = _pair(scores_id, scores_ood)
    _, lo, hi = _placements(x, y)
    a = (lo + hi).sum(1).double().numpy() / (2.0 * x.shape[1] * y.shape[1])
    return _shape(a, lead)


def bootstrap_counts(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_boot, n]`` int32 multinomial counts: how often each of n items is drawn in each resample."""
    draws = rng.integers(0, n, size=(n_boot, n)) + (np.arange(n_boot) * n)[:, None]
    return np.bincount(draws.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(np.int32)


def pair_rng(seed: int, *names: str) -> np.random.Generator:
    """A generator seeded by ``seed`` and names (e.g. the two set names): the same draws whatever else runs."""
    return np.random.default_rng([seed, *(zlib.crc32(n.encode()) for n in names)])


def auroc_bootstrap(
    scores_id,
    scores_ood,
    n_boot: int = 1000,
    seed: int = 0,
    counts: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Bootstrap replicates of :func:`auroc`: ``[..., n_boot]``.

    ``counts`` = (``[n_boot, n0]``, ``[n_boot, n1]``) resample counts (from
    :func:`bootstrap_counts`) to share between calls; else drawn from ``seed``.
    A replicate is wᵀ K v / (n0 n1) with w, v the counts and K_ij = 1[y_j > x_i] +
    ½·1[y_j = x_i]: one matrix product per score while n0·n1 ≤ 2¹⁸, beyond that
    Σ_j v_j (C[lo_j] + C[hi_j]) / (2 n0 n1) with C the cumulative ID counts in
    sorted order (O(n) per replicate). Both are exact.
    """
    x, y, lead = _pair(scores_id, scores_ood)
    n0, n1 = x.shape[1], y.shape[1]
    if counts is None:
        rng = np.random.default_rng(seed)
        counts = (bootstrap_counts(n0, n_boot, rng), bootstrap_counts(n1, n_boot, rng))
    w, v = (torch.from_numpy(np.ascontiguousarray(c, dtype=np.int32)) for c in counts)
    if w.shape[1] != n0 or v.shape[1] != n1 or w.shape[0] != v.shape[0]:
        raise ValueError(f"counts must be [n_boot, {n0}] and [n_boot, {n1}]")
    boot = _boot_kernel if n0 * n1 <= _KERNEL_MAX_PAIRS else _boot_placements
    return boot(x, y, w, v).reshape(*lead, w.shape[0])


def _boot_kernel(x: np.ndarray, y: np.ndarray, w: torch.Tensor, v: torch.Tensor) -> np.ndarray:
    n_boot, (k, n0), n1 = w.shape[0], x.shape, y.shape[1]
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    wf, vf = w.float(), v.float()  # all partial sums are multiples of ½ below 2²⁴: exact in float32
    out = np.empty((k, n_boot))
    step = max(1, _CHUNK_ELEMENTS // (n0 * n1 + n_boot * n1))
    for c in range(0, k, step):
        xc, yc = xt[c : c + step, :, None], yt[c : c + step, None, :]
        kern = (yc > xc).float() + 0.5 * (yc == xc).float()  # [c, n0, n1]
        out[c : c + step] = ((wf @ kern) * vf).sum(-1, dtype=torch.float64).numpy() / (n0 * n1)
    return out


def _boot_placements(x: np.ndarray, y: np.ndarray, w: torch.Tensor, v: torch.Tensor) -> np.ndarray:
    n_boot, (k, n0), n1 = w.shape[0], x.shape, y.shape[1]
    order, lo, hi = _placements(x, y)
    order_t = torch.from_numpy(order)
    out = np.empty((k, n_boot))
    step = max(1, _CHUNK_ELEMENTS // (n_boot * (n0 + n1 + 1)))
    for c in range(0, k, step):
        sl = slice(c, c + step)
        cum = torch.nn.functional.pad(w[:, order_t[sl]].cumsum(-1, dtype=torch.int32), (1, 0))  # [B, c, n0+1]
        size = cum.shape[1]
        two_a = cum.gather(2, lo[sl].expand(n_boot, size, n1)) + cum.gather(2, hi[sl].expand(n_boot, size, n1))
        out[sl] = ((two_a * v[:, None, :]).sum(-1).double() / (2.0 * n0 * n1)).T.numpy()
    return out


def percentile_ci(replicates, level: float = 0.95) -> tuple[np.ndarray | float, np.ndarray | float]:
    """Percentile interval of bootstrap replicates along the last axis."""
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(np.asarray(replicates, dtype=np.float64), [alpha, 1.0 - alpha], axis=-1)
    return (float(lo), float(hi)) if np.ndim(lo) == 0 else (lo, hi)


def fpr_at_tpr(scores_id, scores_ood, tpr: float = 0.95) -> np.ndarray | float:
    """False-positive rate at the largest threshold whose TPR is ≥ ``tpr`` (OOD positive, higher = OOD).

    The threshold t is the ⌈tpr·n1⌉-th largest OOD score; FPR = #{id ≥ t}/n0 —
    the smallest FPR among ROC points with TPR ≥ ``tpr``.
    """
    x, y, lead = _pair(scores_id, scores_ood)
    n1 = y.shape[1]
    m = min(max(math.ceil(tpr * n1 - 1e-9), 1), n1)
    t = -np.partition(-y, m - 1, axis=1)[:, m - 1]
    return _shape((x >= t[:, None]).mean(1), lead)


def length_strata(len_id, len_ood, n_bins: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Length strata: quantile bins of the pooled lengths (equal edges merged; one stratum if all equal)."""
    a, b = np.asarray(len_id, np.float64), np.asarray(len_ood, np.float64)
    edges = np.unique(np.quantile(np.concatenate([a, b]), np.linspace(0, 1, n_bins + 1)[1:-1]))
    return np.searchsorted(edges, a, side="right"), np.searchsorted(edges, b, side="right")


def stratified_auroc(scores_id, scores_ood, strata_id, strata_ood) -> tuple[np.ndarray | float, float]:
    """AUROC over (ID, OOD) pairs of the same stratum only, and the fraction of all pairs that are compared.

    Pairs from different strata are never compared, so a confound that is
    constant within a stratum (e.g. window length) cannot drive it. NaN if no
    stratum holds both sets.
    """
    x, y, lead = _pair(scores_id, scores_ood)
    sid, sood = np.asarray(strata_id), np.asarray(strata_ood)
    num = np.zeros(x.shape[0])
    pairs = 0
    for s in np.intersect1d(sid, sood):
        xi, yj = x[:, sid == s], y[:, sood == s]
        _, lo, hi = _placements(xi, yj)
        num += (lo + hi).sum(1).double().numpy()
        pairs += 2 * xi.shape[1] * yj.shape[1]
    a = num / pairs if pairs else np.full(x.shape[0], np.nan)
    return _shape(a, lead), pairs / (2.0 * x.shape[1] * y.shape[1])


def pearson(x, y) -> np.ndarray | float:
    """Pearson r of ``x [n]`` with each column of ``y [n, ...]`` (NaN where either is constant)."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    xc = x - x.mean()
    xc = xc.reshape(-1, *([1] * (y.ndim - 1)))
    yc = y - y.mean(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc * yc).sum(0) / np.sqrt((xc * xc).sum(0) * (yc * yc).sum(0))
    r = np.clip(r, -1.0, 1.0)
    return float(r) if np.ndim(r) == 0 else r


def spearman(x, y) -> np.ndarray | float:
    """Spearman ρ of ``x [n]`` with each column of ``y [n, ...]``: Pearson r of midranks (as scipy's spearmanr)."""
    return pearson(sst.rankdata(x), sst.rankdata(np.asarray(y, np.float64), axis=0))


def fisher_ci(r, n: int, level: float = 0.95, var_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Fisher-z interval tanh(atanh r ± z_{α/2} √(var_scale/(n−3))); NaN for n ≤ 3."""
    r = np.asarray(r, np.float64)
    if n <= 3:
        nan = np.full(r.shape, np.nan)
        return nan, nan
    z = np.arctanh(np.clip(r, -1 + 1e-12, 1 - 1e-12))
    half = sst.norm.ppf(0.5 + level / 2.0) * math.sqrt(var_scale / (n - 3))
    return np.tanh(z - half), np.tanh(z + half)


def level_means_pearson(
    levels, scores, n_boot: int = 1000, rng: np.random.Generator | None = None, level: float = 0.95
) -> dict[str, np.ndarray]:
    """Pearson r between shift level and per-level mean score (Jin et al. 2026), with a stratified bootstrap CI.

    ``levels [n]``, ``scores [n, C]`` → ``{"levels" [L], "means" [L, C], "r" [C], "ci_low" [C], "ci_high" [C]}``.
    Needs ≥ 3 distinct levels (r is ±1 with two); otherwise r and CI are NaN.
    """
    levels = np.asarray(levels, np.float64)
    scores = np.asarray(scores, np.float64).reshape(len(levels), -1)
    uniq = np.unique(levels)
    groups = [scores[levels == u] for u in uniq]
    means = np.stack([g.mean(0) for g in groups])
    nan = np.full(scores.shape[1], np.nan)
    if len(uniq) < 3:
        return {"levels": uniq, "means": means, "r": nan, "ci_low": nan, "ci_high": nan}
    r = pearson(uniq, means)
    lo = hi = nan
    if n_boot:
        rng = rng or np.random.default_rng(0)
        boot = np.stack([bootstrap_counts(len(g), n_boot, rng) @ g / len(g) for g in groups], axis=1)  # [B, L, C]
        lo, hi = percentile_ci(np.moveaxis(pearson(uniq, np.moveaxis(boot, 1, 0)), 0, -1), level)
    return {"levels": uniq, "means": means, "r": np.atleast_1d(r), "ci_low": lo, "ci_high": hi}


# ---------------------------------------------------------------- AUROC interval that never collapses

#: The name the report prints for :func:`auroc_score_ci`.
AUROC_CI_METHOD = "Newcombe (2006) score interval (method 5)"


def _newcombe_var(theta: np.ndarray, n0: int, n1: int) -> np.ndarray:
    """Newcombe's (2006) variance of the Mann–Whitney AUC as a function of the true θ.

    Hanley & McNeil's (1982) V = θ(1−θ)/(n0 n1) · [1 + (n1−1)(1−θ)/(2−θ) + (n0−1)θ/(1+θ)]
    with both n0 − 1 and n1 − 1 replaced by N* − 1, N* = (n0 + n1)/2.
    """
    k = (n0 + n1) / 2.0 - 1.0
    return theta * (1.0 - theta) / (n0 * n1) * (1.0 + k * (1.0 - theta) / (2.0 - theta) + k * theta / (1.0 + theta))


def auroc_score_ci(scores_id, scores_ood, level: float = 0.95, *, iterations: int = 60):
    """AUROC with a score-type interval that never collapses to a point at 0 or 1: ``(auroc, lo, hi)``.

    Newcombe RG (2006), "Confidence intervals for an effect size measure based on
    the Mann–Whitney statistic. Part 2: Asymptotic methods and evaluation",
    Statistics in Medicine 25:559–573, **method 5**: the set of θ with
    (Â − θ)² ≤ z²_{α/2} V(θ), V the Hanley–McNeil variance with N* = (n0 + n1)/2
    (:func:`_newcombe_var`) evaluated at θ itself rather than at Â — the same idea
    as Wilson's score interval for a proportion. At Â = 1 the upper end is 1 and the
    lower end solves (1 − θ)² = z² V(θ), strictly below 1 (0.959 for 48 vs 48, 0.980 for 96 vs 96);
    its width shrinks like 1/n. Newcombe found its coverage close to nominal
    across AUCs and sample sizes (our check, two unit normals 1 SD apart, 30 vs 30:
    95.7 % of 300 intervals cover Φ(1/√2) = 0.760).

    ``scores_id [..., n0]``, ``scores_ood [..., n1]`` (OOD positive, higher = OOD, as
    :func:`auroc`) → three ``[...]`` arrays (floats for 1-D input). Both ends are
    found by bisection on [0, Â] and [Â, 1] (``iterations`` halvings: 2⁻⁶⁰).
    """
    x, y, lead = _pair(scores_id, scores_ood)
    n0, n1 = x.shape[1], y.shape[1]
    a = np.asarray(auroc(x, y), np.float64).reshape(-1)
    z2 = sst.norm.ppf(0.5 + level / 2.0) ** 2

    def outside(theta: np.ndarray) -> np.ndarray:  # θ is not in the interval
        return (a - theta) ** 2 > z2 * _newcombe_var(theta, n0, n1)

    ends = []
    for far in (0.0, 1.0):  # lower end in [0, Â], upper end in [Â, 1]
        out, inside = np.full_like(a, far), a.copy()  # invariant: `out` excluded (or the bound), `inside` included
        bound = ~outside(out)  # the whole side is inside: the end is 0 (resp. 1)
        for _ in range(iterations):
            mid = (out + inside) / 2.0
            excl = outside(mid)
            out = np.where(excl, mid, out)
            inside = np.where(excl, inside, mid)
        ends.append(np.where(bound, far, inside))
    return _shape(a, lead), _shape(ends[0], lead), _shape(ends[1], lead)


# ---------------------------------------------------------------- graded axes: cluster bootstrap, length control


def _tie_bounds(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column of ``values [n, C]``: the sort order, and for each sorted position the first and last
    sorted position of its tie group (``[n, C]`` each)."""
    order = np.argsort(values, axis=0, kind="stable")
    v = np.take_along_axis(values, order, axis=0)
    pos = np.arange(len(v))[:, None]
    new_group = np.r_[np.ones((1, v.shape[1]), bool), v[1:] != v[:-1]]
    first = np.maximum.accumulate(np.where(new_group, pos, 0), axis=0)
    last_group = np.r_[v[1:] != v[:-1], np.ones((1, v.shape[1]), bool)]
    last = np.flip(np.minimum.accumulate(np.flip(np.where(last_group, pos, len(v)), 0), axis=0), 0)
    return order, first, last


def _sorted_midranks(ws: np.ndarray, first: np.ndarray | None, last: np.ndarray | None) -> np.ndarray:
    """Midranks in sorted order of a sample where sorted item i appears ``ws[b, i, c]`` times.

    A tie group occupying ranks L+1 … L+T (T copies in all) gets L + (T + 1)/2 —
    ``scipy.stats.rankdata`` of the expanded sample. ``first`` / ``last`` (from
    :func:`_tie_bounds`) are None when the columns have no ties.
    """
    cs = np.cumsum(ws, axis=1)
    if first is None:
        return cs - (ws - 1.0) / 2.0
    before = np.take_along_axis(cs - ws, first[None], axis=1)
    return (before + np.take_along_axis(cs, last[None], axis=1) + 1.0) / 2.0


def _centred_ranks(values: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted midranks of ``values [n]`` in each weighted sample ``w [B, n]``, centred, and their weighted SS."""
    order, first, last = _tie_bounds(values[:, None])
    ranks = np.empty_like(w)
    ranks[:, order[:, 0]] = _sorted_midranks(w[:, order[:, 0], None], first, last)[:, :, 0]
    ranks -= (w.sum(1)[:, None] + 1.0) / 2.0  # the weighted mean of midranks is (N + 1)/2
    return ranks, (w * ranks * ranks).sum(1)


def _partial(rxy: np.ndarray, rxz: np.ndarray, ryz: np.ndarray) -> np.ndarray:
    """First-order partial correlation r_xy·z = (r_xy − r_xz r_yz)/√((1 − r_xz²)(1 − r_yz²))."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.clip((rxy - rxz * ryz) / np.sqrt((1.0 - rxz**2) * (1.0 - ryz**2)), -1.0, 1.0)


def _rank_corrs(level: np.ndarray, scores: np.ndarray, covariate: np.ndarray | None, w: np.ndarray) -> np.ndarray:
    """(Partial) Spearman ρ of each column of ``scores [n, C]`` with ``level [n]`` in weighted samples → ``[B, C]``.

    ``w [B, n]`` are multiplicities (a bootstrap draw; ones for the sample itself).
    Each value is the exact Spearman ρ (Pearson r of midranks, ties shared) of the
    sample with item i repeated ``w[b, i]`` times, computed without expanding it:
    midranks from cumulative weights in each column's sort order (sorted once).
    """
    bases = [level] if covariate is None else [level, covariate]
    centred = [_centred_ranks(v, w) for v in bases]
    n_tot = w.sum(1)[:, None]
    order, first, last = _tie_bounds(scores)
    tied = (first != last).any(0)
    out = np.empty((len(bases), w.shape[0], scores.shape[1]))
    # columns per chunk: bounded by memory, and at most an equal share of the threads
    step = max(1, min((_CHUNK_ELEMENTS // 2) // w.size, -(-scores.shape[1] // torch.get_num_threads())))

    def chunk(c: int) -> None:  # columns c … c + step, in threads (disjoint slices of out)
        sl = slice(c, c + step)
        o = order[:, sl]
        ws = w[:, o]  # [B, n, c] weights in each column's sort order
        ties = tied[sl].any()
        rs = _sorted_midranks(ws, first[:, sl] if ties else None, last[:, sl] if ties else None)
        wr = ws * rs
        ss = (wr * rs).sum(1) - n_tot * ((n_tot + 1.0) / 2.0) ** 2  # weighted SS of the score's midranks
        with np.errstate(invalid="ignore", divide="ignore"):
            for k, (rb, ssb) in enumerate(centred):
                out[k, :, sl] = (wr * rb[:, o]).sum(1) / np.sqrt(ssb[:, None] * ss)

    thread_map(chunk, range(0, scores.shape[1], step))
    rho = np.clip(out[0], -1.0, 1.0)
    if covariate is None:
        return rho
    (rl, ssl), (rz, ssz) = centred
    with np.errstate(invalid="ignore", divide="ignore"):
        rlz = ((w * rl * rz).sum(1) / np.sqrt(ssl * ssz))[:, None]
    return _partial(rho, rlz, np.clip(out[1], -1.0, 1.0))


def _graded_inputs(level, scores, covariate=None, cluster_ids=None):
    level = _scores(level, "level").reshape(-1)
    n = len(level)
    s = _scores(scores, "scores")
    if s.shape[0] != n:
        raise ValueError(f"scores must be [n={n}, ...], got {list(s.shape)}")
    lead = s.shape[1:]
    s = s.reshape(n, -1)
    z = None if covariate is None else _scores(covariate, "covariate").reshape(-1)
    if z is not None and len(z) != n:
        raise ValueError(f"covariate must have n={n} entries, got {len(z)}")
    cl = None
    if cluster_ids is not None:
        cl = np.asarray(cluster_ids).reshape(-1)
        if len(cl) != n:
            raise ValueError(f"cluster_ids must have n={n} entries, got {len(cl)}")
    return level, s, z, cl, lead


def partial_spearman(level, scores, covariate) -> np.ndarray | float:
    """Partial Spearman ρ(level, score | covariate) for each column of ``scores [n, ...]``.

    Rank-transform all three (midranks), then the first-order partial correlation
    of the ranks, (ρ_ls − ρ_lc ρ_cs)/√((1 − ρ_lc²)(1 − ρ_cs²)) (Conover 1999, §5.4;
    the "rank partial correlation"). With ``covariate`` = counted tokens per window
    it is the length-controlled graded correlation of DESIGN §6: a score that
    follows only the length, where the length follows the level, gets ≈ 0.
    """
    level, s, z, _, lead = _graded_inputs(level, scores, covariate)
    rho = _rank_corrs(level, s, z, np.ones((1, len(level))))[0]
    out = rho.reshape(lead)
    return float(out) if out.ndim == 0 else out


def spearman_cluster_ci(
    level,
    scores,
    cluster_ids,
    n_boot: int = 1000,
    rng: np.random.Generator | None = None,
    ci: float = 0.95,
    *,
    covariate=None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spearman ρ(level, score) per column of ``scores [n, C]`` with a cluster-bootstrap interval: ``(rho, lo, hi)``.

    Graded shift levels perturb the *same* source texts, so windows of one text
    are not independent: the bootstrap resamples whole clusters (``cluster_ids [n]``,
    one id per source text) with replacement — the cluster (or "case resampling
    at the top level") bootstrap of Davison & Hinkley (1997, §3.8) and Field &
    Welsh (2007, Bootstrapping clustered data, JRSS B 69:369–390). Each replicate
    is the exact Spearman ρ of the expanded resample (midranks recomputed, ties
    shared), the same cluster draws for every column; the interval is the
    percentile interval of the replicates. It is wider than a window-level
    (Fisher) interval when clusters differ in how score follows level, and it
    collapses only when every resample gives the same ρ (a score that is an exact
    monotone function of the level, ρ = ±1); it is NaN with fewer than 3 clusters
    or a constant score. With ``covariate`` (e.g. tokens per window) ρ is
    :func:`partial_spearman` and the same bootstrap applies.

    Returns ``[C]`` arrays (or shaped like ``scores.shape[1:]``).
    """
    level, s, z, cl, lead = _graded_inputs(level, scores, covariate, cluster_ids)
    n = len(level)
    rho = _rank_corrs(level, s, z, np.ones((1, n)))[0]
    uniq, inv = np.unique(cl, return_inverse=True)
    k = len(uniq)
    lo = hi = np.full(rho.shape, np.nan)
    if k >= 3 and n_boot > 0:
        rng = rng or np.random.default_rng(0)
        counts = bootstrap_counts(k, n_boot, rng).astype(np.float64)[:, inv]  # [B, n] window weights
        boot = _rank_corrs(level, s, z, counts)
        lo, hi = percentile_ci(boot.T, ci)
        lo, hi = np.where(np.isnan(rho), np.nan, lo), np.where(np.isnan(rho), np.nan, hi)
    return rho.reshape(lead), np.asarray(lo).reshape(lead), np.asarray(hi).reshape(lead)


def partial_spearman_cluster_ci(
    level,
    scores,
    covariate,
    cluster_ids,
    n_boot: int = 1000,
    rng: np.random.Generator | None = None,
    ci: float = 0.95,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`partial_spearman` (e.g. controlling tokens per window) with the cluster bootstrap CI.

    Same as :func:`spearman_cluster_ci` with ``covariate``: ``(rho, lo, hi)``.
    """
    return spearman_cluster_ci(level, scores, cluster_ids, n_boot, rng, ci, covariate=covariate)


# ---------------------------------------------------------------- does a score add to NLL?


def cv_auroc_gain(
    nll_id,
    nll_ood,
    score_id,
    score_ood,
    n_splits: int = 5,
    seed: int = 0,
    n_boot: int = 1000,
    ci: float = 0.95,
) -> dict[str, np.ndarray | float]:
    """Cross-validated AUROC gain of (NLL + score) over NLL alone, with a paired bootstrap CI.

    Two standardised logistic regressions (``StandardScaler`` + L2 ``LogisticRegression``,
    C = 1) are fitted on the same ``StratifiedKFold(n_splits, shuffle, seed)`` folds:
    one on the mean token NLL alone, one on (NLL, score). Each window's out-of-fold
    probability is its prediction; ``auroc_nll`` / ``auroc_combined`` are the AUROCs
    (OOD positive) of the pooled out-of-fold predictions and ``gain`` their
    difference. Both arms are cross-validated so the comparison is fair (the
    models learn the direction of each input; ``auroc_nll`` can differ slightly from
    the raw NLL AUROC because fold models are pooled). The CI is the percentile
    interval of ``n_boot`` paired bootstrap replicates of the gain (windows resampled
    within each set, the same draws for both arms, as :func:`auroc_bootstrap`); it
    holds the fitted fold models fixed, so it does not include refitting variance.

    ``nll_id [n0]``, ``nll_ood [n1]``; ``score_id [..., n0]``, ``score_ood [..., n1]``
    → ``{"auroc_nll", "auroc_combined", "gain", "gain_ci_low", "gain_ci_high"}``,
    each shaped like the scores' leading axes (floats for 1-D scores).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    a0, a1 = _scores(nll_id, "nll_id").reshape(-1), _scores(nll_ood, "nll_ood").reshape(-1)
    x, y, lead = _pair(score_id, score_ood)
    n0, n1 = len(a0), len(a1)
    if x.shape[1] != n0 or y.shape[1] != n1:
        raise ValueError("nll and score arrays must cover the same windows")
    if min(n0, n1) < n_splits:
        raise ValueError(f"need at least n_splits={n_splits} windows per set, got {n0} and {n1}")
    labels = np.r_[np.zeros(n0, int), np.ones(n1, int)]
    nll = np.r_[a0, a1][:, None]
    folds = list(StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(nll, labels))

    def oof(features: np.ndarray) -> np.ndarray:
        pred = np.empty(len(labels))
        for train, test in folds:
            model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0))
            model.fit(features[train], labels[train])
            pred[test] = model.decision_function(features[test])
        return pred

    base = oof(nll)
    combined = np.stack([oof(np.column_stack([nll[:, 0], np.r_[xi, yi]])) for xi, yi in zip(x, y, strict=True)])
    preds = np.concatenate([base[None], combined])  # [1 + K, n0 + n1]
    auc = np.atleast_1d(auroc(preds[:, :n0], preds[:, n0:]))
    rng = np.random.default_rng([seed, 0x5C0E])
    counts = (bootstrap_counts(n0, n_boot, rng), bootstrap_counts(n1, n_boot, rng))
    boot = auroc_bootstrap(preds[:, :n0], preds[:, n0:], counts=counts)
    lo, hi = percentile_ci(boot[1:] - boot[:1], ci)
    out = {
        "auroc_nll": np.full(len(x), auc[0]),
        "auroc_combined": auc[1:],
        "gain": auc[1:] - auc[0],
        "gain_ci_low": np.atleast_1d(lo),
        "gain_ci_high": np.atleast_1d(hi),
    }
    return {key: _shape(v, lead) for key, v in out.items()}
