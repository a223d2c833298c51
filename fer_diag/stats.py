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
