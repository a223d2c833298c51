"""Sparsity of hook vectors (DESIGN §5) and the streaming :class:`SparsityAnalyzer`.

Per token, for h ∈ ℝ^d and a = |h| sorted ascending a_(1..d):

* ``hoyer``: (√d − ‖h‖₁/‖h‖₂)/(√d − 1) ∈ [0, 1] (Hoyer 2004); 1 = one-hot.
* ``gini``: 2 Σ i·a_(i) / (d Σ a) − (d+1)/d ∈ [0, (d−1)/d] (Hurley & Rickard 2009).
* ``top{p}_energy``: Σ_{top k} a² / Σ a² with k = max(1, ⌊p·d/100⌋), p ∈ {1, 5, 10};
  ``top{p}_energy_l1`` the same with a instead of a².
* ``thresh_density``: mean[a_i > mean(a) + std(a)] (population std), the
  thresholded "L0" of Jin et al. 2026 (arXiv 2603.03415). Not monotone at the
  extremes (exactly uniform → 0, one-hot → 1/d): over real activations fewer
  coordinates clear the bar when a few dominate.
* ``part_entropy_l1`` / ``part_entropy_l2``: exp(−Σ p_i ln p_i)/d ∈ [1/d, 1] with
  p = a/‖a‖₁, resp. p = h²/‖h‖² — an effective number of used coordinates over
  d (not a matrix rank).
* ``l1_norm``, ``l2_norm``; for SAE latents also ``l0`` = #{j: f_j ≠ 0} (= f_j > 0
  for the non-negative latents of ReLU / JumpReLU / TopK SAEs) and ``l0_frac`` = l0/d.

Per window (rotation-invariant reference): ``participation_ratio`` = (Σλ)²/Σλ² of
the covariance of the window's counted tokens, = ‖X_c‖_F⁴ / ‖X_c X_cᵀ‖_F² (Gram
trick, X_c the centred ``[T, d]`` tokens). Any orthogonal change of basis leaves
it unchanged; it is a per-window covariance PR, so it is bounded by
min(T − 1, d).

Zero vector: scale-invariant metrics take their one-hot value (hoyer 1, gini
(d−1)/d, top-p energies 1, thresh_density and part_entropy 1/d) — the limit of
ε·e_j, i.e. "nothing active" counts as maximally sparse, consistent with l0 = 0
for SAE latents; norms and l0 are 0. A window with no variance has PR 0.

``exclude_dims`` (the massive-activation dims of a hook, Sun et al. 2024, arXiv
2402.17762) drops those coordinates: every metric is then computed on the
remaining d − k coordinates.

Cost: per hook and batch, |h| of the counted tokens is sorted once (numpy's SIMD
sort), with the masked dims zeroed; the masked metrics come from that sort and the
unmasked ones by adding the removed values back to the row sums (exact, and
without the precision loss of subtracting a 10⁴-sized value). The window PR is one
batched T×T Gram product; the unmasked Gram adds the masked dims' rank-k part.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from fer_diag.analyzers.base import Analyzer, Reading, accumulate
from fer_diag.analyzers.persequence import SequenceSample, SetInfo, record_set
from fer_diag.capture import ActivationBatch
from fer_diag.threads import thread_map

TOP_P = (1, 5, 10)
TOKEN_METRICS = (
    "hoyer",
    "gini",
    *(f"top{p}_energy" for p in TOP_P),
    *(f"top{p}_energy_l1" for p in TOP_P),
    "thresh_density",
    "part_entropy_l1",
    "part_entropy_l2",
    "l1_norm",
    "l2_norm",
)
LATENT_METRICS = ("l0", "l0_frac")
WINDOW_METRICS = ("participation_ratio",)

#: +1: a higher value means sparser; −1: a higher value means denser; 0: not a sparsity measure.
METRIC_SENSE: dict[str, int] = {
    "hoyer": 1,
    "gini": 1,
    **{f"top{p}_energy": 1 for p in TOP_P},
    **{f"top{p}_energy_l1": 1 for p in TOP_P},
    "thresh_density": -1,
    "part_entropy_l1": -1,
    "part_entropy_l2": -1,
    "participation_ratio": -1,
    "l0": -1,
    "l0_frac": -1,
    "l1_norm": 0,
    "l2_norm": 0,
}

VARIANTS = {False: "unmasked", True: "masked"}


# --------------------------------------------------------------------------- per token
def _sorted_abs(h: torch.Tensor, zero_dims: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """|h| sorted ascending per row, with the ``zero_dims`` columns zeroed first (so they sort to the front).

    Returns the sorted rows and the removed ``|h[:, zero_dims]|`` (or None).
    numpy's SIMD sort is ~20× faster than ``torch.sort`` on CPU.
    """
    h = h.detach().cpu()
    a = np.abs((h if h.dtype in (torch.float32, torch.float64) else h.float()).numpy())
    removed = None
    if zero_dims is not None:
        removed = torch.from_numpy(a[:, zero_dims.numpy()])
        a[:, zero_dims.numpy()] = 0
    a.sort(axis=1)
    return torch.from_numpy(a), removed


def _sorted_latents(h: torch.Tensor) -> tuple[torch.Tensor, int, np.ndarray]:
    """Sparse rows (SAE latents): the ``K`` largest |h| per row, ascending, with K = the most nonzeros of any row.

    Returns those ``[N, K]`` values, the number ``d − K`` of zeros left out of every
    row (all of its other entries are zero), and per column the number of rows
    where it is nonzero. Gathering the nonzeros (O(nnz)) and sorting K ≪ d columns
    replaces sorting all d (``_row_stats(..., zeros=d − K)`` puts the zeros back).
    """
    h = h.detach().cpu()
    a = np.abs((h if h.dtype in (torch.float32, torch.float64) else h.float()).numpy())
    n, d = a.shape
    flat = torch.from_numpy(a).view(-1).nonzero().squeeze(1).numpy()  # row-major; 4× faster than np.nonzero
    rows, cols = np.divmod(flat, d)
    active = np.bincount(cols, minlength=d).astype(np.int64)
    counts = np.bincount(rows, minlength=n)
    k = max(1, int(counts.max(initial=0)))
    if 4 * k > d:  # not sparse enough to gain: sort everything
        a.sort(axis=1)
        return torch.from_numpy(a), 0, active
    slot = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)  # place of each nonzero in its row
    top = np.zeros((n, k), dtype=a.dtype)
    top[rows, slot] = a.reshape(-1)[flat]
    top.sort(axis=1)
    return torch.from_numpy(top), d - k, active


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot product (numpy einsum: one pass, no temporary), returned as float64."""
    return torch.from_numpy(np.einsum("ij,ij->i", a.numpy(), b.numpy())).double()


def _top_k(d: int, p: int) -> int:
    """Entries in the top p % of d coordinates: max(1, ⌊p·d/100⌋)."""
    return max(1, d * p // 100)


def _threshold(l1: torch.Tensor, sq: torch.Tensor, d: int) -> torch.Tensor:
    """mean(a) + std(a) (population std) from the row sums."""
    mu = l1 / d
    return mu + (sq / d - mu.square()).clamp_min(0).sqrt()


def _count_above(s: torch.Tensor, thr: torch.Tensor) -> torch.Tensor:
    """#{entries of each ascending row of ``s`` > thr}."""
    return (s.shape[1] - torch.searchsorted(s, thr.to(s.dtype)[:, None].contiguous(), right=True)[:, 0]).double()


@dataclass
class _RowStats:
    """Sufficient per-row statistics of a = |h| over d coordinates (float64 ``[N]`` each)."""

    d: int
    l1: torch.Tensor  # Σ a
    sq: torch.Tensor  # Σ a²
    ranked: torch.Tensor  # Σ i·a_(i), a ascending
    alog: torch.Tensor  # Σ a ln a
    a2log: torch.Tensor  # Σ a² ln a
    above: torch.Tensor  # #{a_i > mean(a) + std(a)}
    nonzero: torch.Tensor  # #{a_i ≠ 0}
    top1: dict[int, torch.Tensor]  # k → Σ of the k largest a, for k = max(1, ⌊p·d/100⌋)
    top2: dict[int, torch.Tensor]  # the same for a²
    cum1: torch.Tensor | None = None  # [N, K + 1] sums of the largest 0..K a (kept part, see _add_removed)
    cum2: torch.Tensor | None = None  # the same for a²


def _row_stats(s: torch.Tensor, k0: int = 0, zeros: int = 0) -> _RowStats:
    """Statistics of ascending rows ``s [N, k0 + d]`` whose first ``k0`` columns are zero placeholders.

    About seven vectorised passes over ``s`` (float32 accumulation: ~1e-6 relative);
    the rest is per-row scalars. ``cum1``/``cum2`` reach the top-10 % size of all
    ``k0 + d`` coordinates, so that :func:`_add_removed` can restore the placeholders.
    ``zeros`` counts zero coordinates left out of ``s`` (below all of its columns,
    :func:`_sorted_latents`); they are part of the d coordinates.
    """
    n, width = s.shape
    d = width - k0 + zeros
    if d < 2:
        raise ValueError(f"sparsity metrics need d ≥ 2 coordinates, got {d}")
    a = s.numpy()
    ranks = np.arange(1 - k0 + zeros, d + 1, dtype=a.dtype)  # placeholders are 0: their rank is irrelevant
    # numpy's row sums and SIMD log: ~3× and ~1.5× faster than torch's here. No BLAS: OpenBLAS threads
    # spin after each call and slowed every analyzer by ~30 % when the matrix-vector products used it
    l1, ranked = torch.from_numpy(a.sum(1)).double(), torch.from_numpy(np.einsum("ij,j->i", a, ranks)).double()
    sq = _rowdot(s, s)
    xl = np.maximum(a, np.finfo(a.dtype).tiny)
    xl = torch.from_numpy(np.multiply(np.log(xl, out=xl), a, out=xl))  # a ln a, with 0 ln 0 = 0
    # an entry equal to the row minimum never exceeds mean + std: the max() only removes rounding on flat rows
    low = s[:, k0].double() if not zeros else torch.zeros(n, dtype=torch.float64)
    thr = torch.maximum(_threshold(l1, sq, d), low)
    n_top = _top_k(width + zeros, max(TOP_P))  # may exceed the kept dims: _add_removed reads that far
    top = s[:, max(0, width - n_top) :].flip(1).double()  # largest first
    cum1 = _cumulative(top, n_top)
    cum2 = _cumulative(top.square(), n_top)
    ks = [_top_k(d, p) for p in TOP_P]
    return _RowStats(
        d=d,
        l1=l1,
        sq=sq,
        ranked=ranked,
        alog=xl.sum(1).double(),
        a2log=_rowdot(s, xl),
        above=_count_above(s, thr),
        nonzero=_count_above(s, torch.zeros(n)),
        top1={k: cum1[:, k] for k in ks},
        top2={k: cum2[:, k] for k in ks},
        cum1=cum1,
        cum2=cum2,
    )


def _cumulative(top: torch.Tensor, n: int) -> torch.Tensor:
    """``[N, n + 1]`` sums of the largest 0..n entries, from the ``top [N, ≤ n]`` largest ones (the rest are 0)."""
    cum = torch.nn.functional.pad(top.cumsum(1), (1, 0))
    extra = n + 1 - cum.shape[1]
    return torch.cat([cum, cum[:, -1:].expand(-1, extra)], 1) if extra > 0 else cum


def _add_removed(st: _RowStats, s: torch.Tensor, removed: torch.Tensor) -> _RowStats:
    """Statistics of the full vectors from those of the kept part ``s`` (placeholders first) and ``removed [N, k]``.

    Only additions to the kept sums, so huge removed values (massive
    activations) cost no precision; ranks are re-derived from where each removed
    value falls among the kept ones (ties: kept first — sums are unaffected).
    """
    r = removed.double().sort(1).values  # ascending
    k = r.shape[1]
    k0, d = s.shape[1] - st.d, st.d + k
    rlog = torch.special.xlogy(r, r)
    l1, sq = st.l1 + r.sum(1), st.sq + r.square().sum(1)
    # kept entries ≤ each removed value (the k0 zero placeholders are ≤ every r ≥ 0)
    n_le = torch.searchsorted(s, r.to(s.dtype).contiguous(), right=True) - k0
    kept_le = s.cumsum(1).gather(1, n_le + (k0 - 1)).double()  # prefix sums; k0 ≥ 1 placeholders come first
    # every kept entry above r_(j) moves up one rank; r_(j) itself lands at rank n_le + j
    ranked = st.ranked + (st.l1[:, None] - kept_le).sum(1) + (r * (n_le + torch.arange(1, k + 1))).sum(1)
    thr = torch.maximum(_threshold(l1, sq, d), torch.minimum(s[:, k0].double(), r[:, 0]))
    r_desc = torch.nn.functional.pad(r.flip(1), (1, 0))
    r1, r2 = r_desc.cumsum(1), r_desc.square().cumsum(1)
    top1, top2 = {}, {}
    for kp in (_top_k(d, p) for p in TOP_P):  # top-k sum of a union = best split between kept and removed
        m = torch.arange(min(k, kp) + 1)
        top1[kp] = (st.cum1[:, kp - m] + r1[:, m]).max(1).values
        top2[kp] = (st.cum2[:, kp - m] + r2[:, m]).max(1).values
    return _RowStats(
        d=d,
        l1=l1,
        sq=sq,
        ranked=ranked,
        alog=st.alog + rlog.sum(1),
        a2log=st.a2log + (r * rlog).sum(1),
        above=_count_above(s, thr) + (r > thr[:, None]).sum(1),
        nonzero=st.nonzero + (r > 0).sum(1),
        top1=top1,
        top2=top2,
    )


def _metrics(st: _RowStats, latents: bool = False) -> dict[str, torch.Tensor]:
    """The per-token metrics (module docstring) from row statistics."""
    d = st.d
    zero = st.l1 == 0
    l1, sq = torch.where(zero, 1.0, st.l1), torch.where(zero, 1.0, st.sq)
    out = {
        "hoyer": (math.sqrt(d) - l1 / sq.sqrt()) / (math.sqrt(d) - 1),
        "gini": 2 * st.ranked / (d * l1) - (d + 1) / d,
    }
    for p in TOP_P:
        out[f"top{p}_energy"] = st.top2[_top_k(d, p)] / sq
        out[f"top{p}_energy_l1"] = st.top1[_top_k(d, p)] / l1
    out["thresh_density"] = st.above / d
    out["part_entropy_l1"] = (l1.log() - st.alog / l1).exp() / d
    out["part_entropy_l2"] = (sq.log() - 2 * st.a2log / sq).exp() / d
    out["l1_norm"], out["l2_norm"] = st.l1, st.sq.sqrt()
    if latents:
        out["l0"], out["l0_frac"] = st.nonzero, st.nonzero / d
    bounds = {"hoyer": (0, 1), "gini": (0, 1), "part_entropy_l1": (1 / d, 1), "part_entropy_l2": (1 / d, 1)}
    for name, (lo, hi) in bounds.items():
        out[name] = out[name].clamp(lo, hi)  # rounding only
    if zero.any():
        one_hot = {"hoyer": 1.0, "gini": (d - 1) / d, "thresh_density": 1 / d}
        one_hot |= {name: 1 / d for name in ("part_entropy_l1", "part_entropy_l2")}
        one_hot |= {name: 1.0 for name in out if name.startswith("top")}
        for name, value in one_hot.items():
            out[name] = torch.where(zero, value, out[name])
    return out


def _dims(exclude_dims: Iterable[int] | torch.Tensor | None, d: int) -> torch.Tensor | None:
    if exclude_dims is None:
        return None
    dims = torch.as_tensor(list(exclude_dims) if not torch.is_tensor(exclude_dims) else exclude_dims).long()
    if len(dims) == 0:
        return None
    if len(torch.unique(dims)) != len(dims) or int(dims.min()) < 0 or int(dims.max()) >= d or len(dims) > d - 2:
        raise ValueError(f"exclude_dims must be distinct indices in [0, {d}) leaving ≥ 2 dims, got {dims.tolist()}")
    return dims


def token_metrics(
    h: torch.Tensor, exclude_dims: Sequence[int] | torch.Tensor | None = None, latents: bool = False
) -> dict[str, torch.Tensor]:
    """Per-token sparsity metrics of ``h [N, d]`` (module docstring) → ``{name: float64 [N]}``.

    ``exclude_dims`` drops those coordinates (d shrinks). ``latents=True`` reads
    ``h`` as SAE latents and adds ``l0`` / ``l0_frac``; it cannot be combined with
    ``exclude_dims``.
    """
    if h.ndim != 2:
        raise ValueError(f"h must be [n_tokens, d], got {list(h.shape)}")
    dims = _dims(exclude_dims, h.shape[1])
    if latents and dims is not None:
        raise ValueError("exclude_dims are raw-basis coordinates; they do not apply to SAE latents")
    if latents:
        s, zeros, _ = _sorted_latents(h)
        return _metrics(_row_stats(s, zeros=zeros), latents)
    s, _ = _sorted_abs(h, dims)
    return _metrics(_row_stats(s, 0 if dims is None else len(dims)), latents)


# --------------------------------------------------------------------------- per window
def _centred(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Tokens of each window centred over its counted positions; uncounted positions zeroed."""
    m = mask.to(x.dtype)
    mean = (m[:, None, :] @ x) / m.sum(1).clamp_min(1)[:, None, None]  # [B, 1, d], one pass
    return (x - mean).mul_(m[..., None])  # 5× faster than zeroing through a boolean index


def _gram(xc: torch.Tensor) -> torch.Tensor:
    """X_c X_cᵀ (T×T) or X_cᵀ X_c (d×d), whichever is smaller: the same nonzero spectrum."""
    return xc @ xc.mT if xc.shape[1] <= xc.shape[2] else xc.mT @ xc


def _pr(g: torch.Tensor) -> torch.Tensor:
    """(tr G)² / ‖G‖_F² per window; 0 where tr G = 0 (no variance)."""
    tr = g.diagonal(dim1=1, dim2=2).sum(-1)
    fro2 = g.square().sum((1, 2))
    return torch.where(tr > 0, tr.square() / torch.where(tr > 0, fro2, 1.0), 0.0)


def participation_ratio(
    x: torch.Tensor, mask: torch.Tensor | None = None, exclude_dims: Sequence[int] | torch.Tensor | None = None
) -> torch.Tensor:
    """Covariance participation ratio (Σλ)²/Σλ² of each window's counted tokens: ``x [B, T, d]`` → ``[B]``.

    Computed as ‖X_c‖_F⁴/‖X_c X_cᵀ‖_F² (no eigendecomposition); invariant under
    x → x Q for orthogonal Q. ``exclude_dims`` drops coordinates first.
    """
    if x.ndim != 3:
        raise ValueError(f"x must be [batch, pos, d], got {list(x.shape)}")
    mask = torch.ones(x.shape[:2], dtype=torch.bool) if mask is None else mask
    xc = _centred(x, mask)
    dims = _dims(exclude_dims, x.shape[2])
    if dims is not None:
        xc[..., dims] = 0
    return _pr(_gram(xc))


def _window_pr(x: torch.Tensor, mask: torch.Tensor, dims: torch.Tensor | None) -> list[torch.Tensor]:
    """Window PR ``[B]`` of ``x [B, T, d]``, and with ``dims`` also with those coordinates dropped."""
    xc = _centred(x, mask)
    if dims is None:
        return [_pr(_gram(xc))]
    xc_massive = xc[..., dims]  # a copy
    xc[..., dims] = 0
    g_kept = xc @ xc.mT  # T×T Grams add up over coordinates: one big product for both
    return [_pr(g_kept + xc_massive @ xc_massive.mT), _pr(g_kept)]


# --------------------------------------------------------------------------- results
@dataclass
class SeqTable:
    """Per-window scores of one (basis, hook, set), sorted by ``seq_index`` (at most ``max_seqs_per_set`` rows).

    ``columns[c] = (metric, masked, reduce)``; reduce is ``"mean"`` (mean over the
    window's counted tokens), ``"last"`` (last counted token) or ``"window"``
    (participation ratio). Masked columns exist only where dims were masked.
    """

    seq_index: np.ndarray
    level: np.ndarray
    n_tokens: np.ndarray
    columns: list[tuple[str, bool, str]]
    values: np.ndarray  # [n, len(columns)] float32

    def score(self, metric: str, masked: bool = False, reduce: str = "mean") -> np.ndarray:
        """One score column; ``masked=True`` falls back to unmasked where nothing was masked."""
        for key in ((metric, masked, reduce), (metric, False, reduce)):
            if key in self.columns:
                return self.values[:, self.columns.index(key)]
        raise KeyError(f"no score {metric!r} / reduce {reduce!r}; have {sorted({c[0] for c in self.columns})}")

    def to_frame(self):
        """A pandas DataFrame: seq_index, level, n_tokens, then one column per score named ``metric|masked|reduce``."""
        import pandas as pd

        df = pd.DataFrame({"seq_index": self.seq_index, "level": self.level, "n_tokens": self.n_tokens})
        names = [f"{m}|{'masked' if k else 'unmasked'}|{r}" for m, k, r in self.columns]
        return pd.concat([df, pd.DataFrame(self.values, columns=names)], axis=1)


@dataclass
class Profile:
    """Aggregates of one (basis, hook, set): ``metrics[metric]["unmasked" | "masked"]`` → statistics.

    Token metrics: ``mean``, ``std`` (over all counted tokens), ``n_tokens``;
    ``seq_mean``, ``seq_std`` (over windows of the per-window token mean),
    ``last_mean``, ``last_std`` (of the last counted token), ``n_seqs``. The
    participation ratio has the per-window ``seq_mean``, ``seq_std``, ``n_seqs``.
    All over every window seen (not only the stored sample).
    """

    n_tokens: int
    n_seqs: int
    masked_dims: list[int]
    masked_same_as_unmasked: bool
    metrics: dict[str, dict[str, dict[str, float]]]

    def to_dict(self) -> dict:
        return {
            "n_tokens": self.n_tokens,
            "n_seqs": self.n_seqs,
            "masked_dims": self.masked_dims,
            "masked_same_as_unmasked": self.masked_same_as_unmasked,
            "metrics": self.metrics,
        }


@dataclass
class FeatureDensity:
    """Firing of SAE latents over a text set: ``counts[j]`` = #counted tokens with latent j ≠ 0 (active)."""

    counts: np.ndarray
    n_tokens: int
    dense_threshold: float

    @property
    def density(self) -> np.ndarray:
        return self.counts / max(self.n_tokens, 1)

    @property
    def dead_frac(self) -> float:
        """Fraction of latents that never fired on this set."""
        return float((self.counts == 0).mean())

    @property
    def dense_frac(self) -> float:
        """Fraction of latents firing on more than ``dense_threshold`` of the tokens."""
        return float((self.density > self.dense_threshold).mean())

    def to_dict(self) -> dict:
        alive = self.density[self.counts > 0]
        q = np.quantile(np.log10(alive), [0.1, 0.5, 0.9]).tolist() if len(alive) else [None] * 3
        return {
            "n_latents": len(self.counts),
            "n_tokens": self.n_tokens,
            "dead_frac": self.dead_frac,
            "dense_frac": self.dense_frac,
            "dense_threshold": self.dense_threshold,
            "log10_density_q10_q50_q90": q,
            "mean_l0": float(self.counts.sum() / max(self.n_tokens, 1)),
        }


Key = tuple[str, str, str]  # (basis, hook, set)


def _nest(items: dict[Key, object]) -> dict:
    out: dict = {}
    for (basis, hook, set_name), value in items.items():
        out.setdefault(basis, {}).setdefault(hook, {})[set_name] = value.to_dict()
    return out


@dataclass
class SparsityResult:
    """What :meth:`SparsityAnalyzer.compute` returns; keys are ``(basis, hook, set)``."""

    profiles: dict[Key, Profile]
    tables: dict[Key, SeqTable]
    feature_density: dict[Key, FeatureDensity]
    sets: dict[str, SetInfo]
    massive_dims: dict[str, list[int]]
    max_seqs_per_set: int

    def table(self, basis: str, hook: str, set_name: str) -> SeqTable:
        """Per-window scores (the input of the familiarity analysis)."""
        return self.tables[(basis, hook, set_name)]

    @property
    def keys(self) -> list[Key]:
        return list(self.profiles)

    def to_dict(self) -> dict:
        """JSON-ready: ``profiles[basis][hook][set]``, ``feature_density[basis][hook][set]``, sets, settings."""
        return {
            "max_seqs_per_set": self.max_seqs_per_set,
            "massive_dims": self.massive_dims,
            "metric_sense": METRIC_SENSE,
            "sets": {name: info.to_dict() for name, info in self.sets.items()},
            "profiles": _nest(self.profiles),
            "feature_density": _nest(self.feature_density),
        }


# --------------------------------------------------------------------------- analyzer
@dataclass(frozen=True)
class _Layout:
    """Columns of one (basis, hook, set): token metrics (same order in every variant), table columns, masked dims."""

    metrics: tuple[str, ...]
    columns: tuple[tuple[str, bool, str], ...]
    masked_dims: tuple[int, ...]

    @classmethod
    def new(cls, latents: bool, masked_dims: Sequence[int], window: bool = True) -> _Layout:
        metrics = TOKEN_METRICS + (LATENT_METRICS if latents else ())
        variants = [False, True] if masked_dims else [False]
        columns = [(m, v, r) for r in ("mean", "last") for v in variants for m in metrics]
        if window:
            columns += [(m, v, "window") for v in variants for m in WINDOW_METRICS]
        return cls(metrics, tuple(columns), tuple(masked_dims))

    @property
    def window(self) -> bool:
        return any(r == "window" for _, _, r in self.columns)


def _stats(total: np.ndarray, total_sq: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    mean = total / max(n, 1)
    return mean, np.sqrt(np.maximum(total_sq / max(n, 1) - mean * mean, 0.0))


class SparsityAnalyzer(Analyzer):
    """Sparsity profiles and per-window scores per (basis, hook, text set).

    Parameters
    ----------
    hooks: hooks to analyse (default: every hook of each batch).
    massive_dims: ``hook → dims`` to mask (from :func:`fer_diag.analyzers.massive.massive_dims`);
        masking applies in the raw basis only. Each metric is reported unmasked
        and masked; where nothing is masked the two are the same (marked).
    max_seqs_per_set: per-window rows kept per (basis, hook, set): the windows with
        the smallest ``seq_index``. Memory ≈ 4 B × (4·M + 2) × this, M ≈ 13
        metrics (×2 when masking). Aggregates always cover every window.
    dense_threshold: SAE latents firing on more than this fraction of tokens are "dense".

    ``update`` sorts each hook's ``[n_tokens, d]`` block once (counted tokens:
    ``batch.mask``), computes every metric from it, and reduces to per-window means
    and last-token values; the window PR is one batched Gram product. Hooks run
    in threads (one per torch thread): each fills only its own keys. Reads raw
    activations, their generic rotations and SAE latents (each basis is its own key;
    massive dims are masked in the raw basis only).
    """

    name = "sparsity"
    reads = frozenset({Reading.RAW, Reading.SAE, Reading.ROTATED})

    def __init__(
        self,
        hooks: Sequence[str] | None = None,
        massive_dims: dict[str, list[int]] | None = None,
        max_seqs_per_set: int = 4096,
        dense_threshold: float = 0.1,
    ) -> None:
        self.hooks = None if hooks is None else list(hooks)
        self.massive_dims = {h: sorted(int(d) for d in dims) for h, dims in (massive_dims or {}).items()}
        self.max_seqs_per_set = max_seqs_per_set
        self.dense_threshold = dense_threshold
        self.add_state("sets", {}, "union")  # set name → SetInfo
        self.add_state("layout", {}, "union")  # Key → _Layout
        self.add_state("tok_sum", {}, "sum")  # Key → [V·M] Σ over tokens
        self.add_state("tok_sumsq", {}, "sum")
        self.add_state("col_sum", {}, "sum")  # Key → [columns] Σ over windows
        self.add_state("col_sumsq", {}, "sum")
        self.add_state("n_tokens", {}, "sum")
        self.add_state("n_seqs", {}, "sum")
        self.add_state("fires", {}, "sum")  # Key → [d_sae] tokens with latent j active (SAE bases)
        self.add_state("samples", {}, "merge")  # Key → SequenceSample of table rows

    def update(self, batch: ActivationBatch) -> None:
        record_set(self.sets, batch)
        mask = batch.mask.bool()
        hooks = batch.hooks if self.hooks is None else list(dict.fromkeys(h for h in self.hooks if h in batch.acts))
        for key in ((batch.basis, h, batch.set_name) for h in hooks):  # declared here: the threads only fill them
            if key not in self.layout:
                masked = self.massive_dims.get(key[1], []) if batch.basis == "raw" else []
                # the window PR is rotation-invariant: in a rotated basis it equals the raw one, not recomputed
                self.layout[key] = _Layout.new(batch.is_latent, masked, window=not batch.basis.startswith("raw@"))
                self.samples[key] = SequenceSample(len(self.layout[key].columns), self.max_seqs_per_set)
        # each hook's key is its own: hooks run in threads (numpy's sort and reductions release the GIL)
        thread_map(partial(self._update_hook, batch, mask), hooks)

    def _update_hook(self, batch: ActivationBatch, mask: torch.Tensor, hook: str) -> None:
        n_tok = mask.sum(1)
        has = n_tok > 0
        seq_of_row = torch.repeat_interleave(torch.arange(len(n_tok)), n_tok)
        last_row = n_tok.cumsum(0)[has] - 1  # = batch.last_index() of each window, as a row of x[mask]
        latents = batch.is_latent
        x = batch.acts[hook]
        key = (batch.basis, hook, batch.set_name)
        layout = self.layout[key]
        rows = x[mask]
        dims = _dims(layout.masked_dims, rows.shape[1])
        if latents:
            s, zeros, fires = _sorted_latents(rows)
            accumulate(self.fires, key, fires)
            variants = [_metrics(_row_stats(s, zeros=zeros), latents)]
        elif dims is None:
            s, _ = _sorted_abs(rows)
            variants = [_metrics(_row_stats(s), latents)]
        else:
            s, removed = _sorted_abs(rows, dims)
            kept = _row_stats(s, len(dims))
            variants = [_metrics(_add_removed(kept, s, removed)), _metrics(kept)]
        pr = _window_pr(x, mask, dims) if layout.window else []
        v64 = torch.stack([v[m] for v in variants for m in layout.metrics], 1).double()  # [N, V·M]
        accumulate(self.tok_sum, key, v64.sum(0).numpy())
        accumulate(self.tok_sumsq, key, v64.square().sum(0).numpy())
        accumulate(self.n_tokens, key, len(v64))
        means = torch.zeros(len(n_tok), v64.shape[1], dtype=torch.float64).index_add_(0, seq_of_row, v64)
        means = means[has] / n_tok[has, None]
        parts = [means, v64[last_row]] + ([torch.stack(pr, 1)[has].double()] if pr else [])
        table = torch.cat(parts, 1).numpy()
        accumulate(self.col_sum, key, table.sum(0))
        accumulate(self.col_sumsq, key, np.square(table).sum(0))
        accumulate(self.n_seqs, key, len(table))
        self.samples[key].add(batch.seq_index[has].numpy(), batch.level, n_tok[has].numpy(), table.astype(np.float32))

    def compute(self) -> SparsityResult:
        profiles, tables, density = {}, {}, {}
        for key, layout in self.layout.items():
            profiles[key] = self._profile(key, layout)
            seq_index, level, n_tokens, values = self.samples[key].arrays()
            tables[key] = SeqTable(seq_index, level, n_tokens, list(layout.columns), values)
            if key in self.fires:
                density[key] = FeatureDensity(self.fires[key].copy(), self.n_tokens[key], self.dense_threshold)
        return SparsityResult(
            profiles, tables, density, dict(self.sets), dict(self.massive_dims), self.max_seqs_per_set
        )

    def _profile(self, key: Key, layout: _Layout) -> Profile:
        n_tokens, n_seqs = self.n_tokens[key], self.n_seqs[key]
        tok_mean, tok_std = _stats(self.tok_sum[key], self.tok_sumsq[key], n_tokens)
        col_mean, col_std = _stats(self.col_sum[key], self.col_sumsq[key], n_seqs)
        col = {c: i for i, c in enumerate(layout.columns)}
        variants = [False, True] if layout.masked_dims else [False]
        metrics: dict[str, dict[str, dict[str, float]]] = {}
        for vi, masked in enumerate(variants):
            for mi, m in enumerate(layout.metrics):
                i = vi * len(layout.metrics) + mi
                mean_c, last_c = col[(m, masked, "mean")], col[(m, masked, "last")]
                metrics.setdefault(m, {})[VARIANTS[masked]] = {
                    "mean": float(tok_mean[i]),
                    "std": float(tok_std[i]),
                    "n_tokens": n_tokens,
                    "seq_mean": float(col_mean[mean_c]),
                    "seq_std": float(col_std[mean_c]),
                    "last_mean": float(col_mean[last_c]),
                    "last_std": float(col_std[last_c]),
                    "n_seqs": n_seqs,
                }
            for m in WINDOW_METRICS if layout.window else ():
                c = col[(m, masked, "window")]
                metrics.setdefault(m, {})[VARIANTS[masked]] = {
                    "seq_mean": float(col_mean[c]),
                    "seq_std": float(col_std[c]),
                    "n_seqs": n_seqs,
                }
        if not layout.masked_dims:
            for stats in metrics.values():
                stats["masked"] = stats["unmasked"]
        return Profile(n_tokens, n_seqs, list(layout.masked_dims), not layout.masked_dims, metrics)
