"""Massive activations (Sun et al. 2024, arXiv 2402.17762).

A coordinate h_{b,t,j} of a hook is *massive* when |h| > ``abs_threshold`` (100)
and |h| ≥ ``ratio`` (1000) × the median |h| of the hook. Massive activations sit
at the first token (BOS) and at delimiter tokens, so detection looks at every
position that is not padding — position 0 included, although ``batch.mask``
excludes it from the statistics.

:func:`detect_massive` is the functional core on one tensor (its own exact
median). :class:`MassiveAnalyzer` streams: the median must be the hook's median
over *everything* seen, not per batch (else results depend on how windows are
batched), so it keeps a fixed log-spaced histogram of |h| — the bin of a value
is its float32 bit pattern shifted right, i.e. the exponent and the top
``MANTISSA_BITS`` mantissa bits: 32 bins per octave, each 2.2 % wide, over the
whole float range, with no logarithm to compute; counts are exactly mergeable —
over every ``HIST_STRIDE``-th coordinate of each vector (a fixed subsample, tens
of thousands of values per batch), and estimates the median inside its bin by
geometric interpolation (relative
error below ``BIN_RATIO`` − 1 ≈ 2.2 %). Candidates (|h| > ``abs_threshold``) are
accumulated per (hook, dim, bin of |h|); ``compute`` keeps the bins whose
geometric centre clears ``ratio`` × median, so the ratio test is applied at the
histogram's resolution and the result does not depend on batching or sharding.

The analyzer reports per hook the dims found, hit counts at the
first vs later positions and the token ids there, value statistics with the
coefficient of variation across inputs (small = input-agnostic), the share of
‖h‖² the hits carry at their tokens, and the first layer where any appears.
:func:`massive_dims` turns a result into the ``hook → dims`` map that
:class:`~fer_diag.analyzers.sparsity.SparsityAnalyzer` masks, and
:func:`fer_diag.scaffold.scaffold_intervention` repeats Sun et al.'s test (it runs
the model, so it lives outside the analyzers).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import NamedTuple

import numpy as np
import torch

from fer_diag.analyzers.base import Analyzer, Reading, accumulate
from fer_diag.capture import ActivationBatch, hook_layer
from fer_diag.threads import thread_map


class MassiveHit(NamedTuple):
    """One massive coordinate: window row in the batch, position, dim and signed value."""

    row: int
    position: int
    dim: int
    value: float


@dataclass
class MassiveHits:
    """All massive coordinates of one ``[B, T, d]`` tensor (1-D tensors, one entry per hit).

    ``median`` is the median |h| of the tensor's non-padding positions, or NaN when
    no value cleared ``abs_threshold`` (then it is not needed and not computed).
    Iterating yields :class:`MassiveHit` s.
    """

    rows: torch.Tensor
    positions: torch.Tensor
    dims: torch.Tensor
    values: torch.Tensor
    median: float

    def __len__(self) -> int:
        return len(self.values)

    def __iter__(self) -> Iterator[MassiveHit]:
        cols = (self.rows.tolist(), self.positions.tolist(), self.dims.tolist(), self.values.tolist())
        return (MassiveHit(*hit) for hit in zip(*cols, strict=True))


def detect_massive(
    acts: torch.Tensor,
    mask: torch.Tensor | None = None,
    abs_threshold: float = 100.0,
    ratio: float = 1000.0,
) -> MassiveHits:
    """Massive activations of ``acts [B, T, d]`` (Sun et al. 2024).

    ``mask [B, T]`` is ``batch.mask``; detection uses the positions where it is
    True *or* the position is 0 (the first token is never padding), so BOS
    counts but padding does not. The median is over those positions' |h| (lower
    median for an even count, as ``torch.median``).
    """
    if acts.ndim != 3:
        raise ValueError(f"acts must be [batch, pos, d], got {list(acts.shape)}")
    x = acts.detach().cpu()
    valid = torch.ones(x.shape[:2], dtype=torch.bool) if mask is None else mask.bool().cpu().clone()
    valid[:, 0] = True
    cand = valid & (x.abs().amax(-1) > abs_threshold)  # positions holding any |h| > abs_threshold
    if not cand.any():
        empty = torch.zeros(0, dtype=torch.long)
        return MassiveHits(empty, empty, empty, torch.zeros(0), float("nan"))
    flat = x[valid].numpy().ravel()  # a copy: |·| and selection in place
    np.abs(flat, out=flat)
    k = (flat.size - 1) // 2
    flat.partition(k)  # O(n) selection; ~5× faster than torch.median on CPU
    median = float(flat[k])
    rows, pos = cand.nonzero(as_tuple=True)
    sub = x[rows, pos].float()  # [n_candidate_positions, d]
    i, dims = ((sub.abs() > abs_threshold) & (sub.abs() >= ratio * median)).nonzero(as_tuple=True)
    return MassiveHits(rows[i], pos[i], dims, sub[i, dims], median)


# --------------------------------------------------------------------------- histogram
#: bins per octave of |h|: the top MANTISSA_BITS of the float32 mantissa, next to the exponent
MANTISSA_BITS = 5
#: ratio of a bin's upper to lower edge (≈ 1.022)
BIN_RATIO = 2.0 ** (1 / 2**MANTISSA_BITS)
#: every non-negative float32 (zero and subnormals in the first bins) has a bin
N_BINS = 256 << MANTISSA_BITS
#: the median is estimated from every HIST_STRIDE-th coordinate of each counted vector
HIST_STRIDE = 4
_SHIFT = 23 - MANTISSA_BITS


def abs_bins(a: np.ndarray) -> np.ndarray:
    """Histogram bin of each |h| value ``a ≥ 0``: its float32 bits shifted right (monotone in the value, no log)."""
    return np.ascontiguousarray(a, dtype=np.float32).view(np.int32) >> _SHIFT


def _edge(b: np.ndarray | int) -> np.ndarray:
    """Lower edge of bin ``b`` (the float32 whose bits are ``b`` shifted back)."""
    return (np.asarray(b, dtype=np.int64) << _SHIFT).astype(np.int32).view(np.float32).astype(np.float64)


def bin_centre(b: np.ndarray | int) -> np.ndarray:
    """Geometric centre of bin ``b`` (its lower edge for the zero / subnormal bins)."""
    lo = _edge(b)
    return np.where(lo > np.finfo(np.float32).tiny, lo * np.sqrt(BIN_RATIO), lo)


def histogram_median(hist: np.ndarray) -> float:
    """Lower median of the values counted in ``hist``, interpolated geometrically inside its bin."""
    n = int(hist.sum())
    if n == 0:
        return float("nan")
    k = (n - 1) // 2
    cum = np.cumsum(hist)
    b = int(np.searchsorted(cum, k, side="right"))
    lo = float(_edge(b))
    if lo <= np.finfo(np.float32).tiny:
        return lo
    frac = (k - (cum[b] - hist[b]) + 0.5) / hist[b]
    return lo * BIN_RATIO**frac


# --------------------------------------------------------------------------- results
@dataclass
class MassiveDim:
    """One massive dim of a hook. ``value_mean`` / ``value_cv`` are over windows where it fires.

    Per window the value is its hit of largest |h|; CV = std/|mean| of those
    values (small: input-agnostic, as Sun et al. report).
    """

    dim: int
    n_hits: int
    n_seqs: int
    seq_frac: float
    hits_first_position: int
    hits_later_positions: int
    max_abs: float
    value_mean: float
    value_cv: float | None
    top_tokens: list[tuple[int, int]]  # (token id, hits), most frequent first


@dataclass
class MassiveHook:
    """Massive activations of one hook."""

    hook: str
    layer: int | None
    n_seqs: int
    n_positions: int
    median_abs: float | None  # median |h| over every non-padding position seen (histogram estimate)
    threshold: float | None  # max(abs_threshold, ratio × median_abs): the |h| a hit must reach
    n_hits: int
    n_hit_tokens: int
    energy_share_mean: float | None  # mean over hit tokens of Σ_{|h_j| > abs_threshold} h_j² / ‖h‖²
    energy_share_max: float | None
    dims: list[MassiveDim]


@dataclass
class MassiveResult:
    """What :meth:`MassiveAnalyzer.compute` returns."""

    abs_threshold: float
    ratio: float
    bin_ratio: float  # width of the |h| histogram's bins (upper / lower edge)
    hooks: dict[str, MassiveHook]
    first_layer: int | None  # smallest block index with any hit, over the analysed hooks
    first_hook: str | None

    def to_dict(self) -> dict:
        return asdict(self)


def massive_dims(result: MassiveResult, min_seq_frac: float = 0.0) -> dict[str, list[int]]:
    """``hook → sorted dims`` firing in more than ``min_seq_frac`` of the windows (input to sparsity masking)."""
    return {hook: sorted(m.dim for m in h.dims if m.seq_frac > min_seq_frac) for hook, h in result.hooks.items()}


def calibrate_massive_dims(batch: ActivationBatch, abs_threshold: float, ratio: float) -> dict[str, list[int]]:
    """Massive dims per hook found in one batch (the audit's first in-distribution batch).

    Masking them in the sparsity metrics needs the dims before the main pass; the
    full-run analyzer later reports every dim it finds, beside these.
    """
    probe = MassiveAnalyzer(abs_threshold=abs_threshold, ratio=ratio)
    probe.update(batch)
    return massive_dims(probe.compute())


# --------------------------------------------------------------------------- analyzer
@dataclass(frozen=True)
class Tally:
    """Statistics per int64 id: sorted unique ``ids``, summed columns ``sums [n, k]``, maxima ``maxes [n, m]``.

    ``+`` combines two exactly (sums add, maxima take the larger), so a tally is
    a ``"sum"`` state whose size is bounded by the ids, not by the data.
    """

    ids: np.ndarray
    sums: np.ndarray
    maxes: np.ndarray

    @classmethod
    def of(cls, ids: np.ndarray, sums: np.ndarray | None = None, maxes: np.ndarray | None = None) -> Tally:
        """Rows grouped by id (any order, repeats allowed): ``sums`` added, ``maxes`` maximised.

        Without ``sums`` it counts the ids (one int64 column).
        """
        ids = np.asarray(ids, dtype=np.int64)
        sums = np.ones((len(ids), 1), dtype=np.int64) if sums is None else _columns(sums)
        maxes = np.zeros((len(ids), 0)) if maxes is None else _columns(maxes)
        if not len(ids):
            return cls(ids, sums, maxes)
        order = np.argsort(ids, kind="stable")
        ids = ids[order]
        starts = np.flatnonzero(np.diff(ids, prepend=ids[0] - 1))  # first of each run of equal ids
        reduced = [np.add.reduceat(sums[order], starts), np.maximum.reduceat(maxes[order], starts)]
        return cls(ids[starts], *reduced)

    def __add__(self, other: Tally) -> Tally:
        big, small = (self, other) if len(self.ids) >= len(other.ids) else (other, self)
        at = np.searchsorted(big.ids, small.ids)  # the small one goes into the big one: no sort of the big one
        seen = big.ids[np.minimum(at, len(big.ids) - 1)] == small.ids if len(big.ids) else np.zeros(0, bool)
        sums = big.sums.astype(np.result_type(big.sums, small.sums))  # a copy
        maxes = big.maxes.astype(np.result_type(big.maxes, small.maxes))
        sums[at[seen]] += small.sums[seen]
        maxes[at[seen]] = np.maximum(maxes[at[seen]], small.maxes[seen])
        new, where = ~seen, at[~seen]
        return Tally(
            np.insert(big.ids, where, small.ids[new]),
            np.insert(sums, where, small.sums[new], axis=0),
            np.insert(maxes, where, small.maxes[new], axis=0),
        )

    def select(self, keep: np.ndarray) -> Tally:
        """The ids where ``keep`` is True."""
        return Tally(self.ids[keep], self.sums[keep], self.maxes[keep])

    def top(self, n: int) -> list[tuple[int, int]]:
        """The ``n`` ids of largest first sum ``(id, sum)``, ties by id: independent of arrival order."""
        order = np.lexsort((self.ids, -self.sums[:, 0]))[:n]
        return list(zip(self.ids[order].tolist(), self.sums[order, 0].tolist(), strict=True))


def _columns(values: np.ndarray) -> np.ndarray:
    """``[n]`` or ``[n, k]`` values as ``[n, k]`` columns."""
    return values[:, None] if values.ndim == 1 else values


#: a candidate's (dim, bin of |h|) packs into one int64 ``dim << BIN_BITS | bin``; with its token id
#: (low TOKEN_BITS) into ``dim << DIM_SHIFT | bin << TOKEN_BITS | token``
TOKEN_BITS = 24
BIN_BITS = (N_BINS - 1).bit_length()
_DIM_SHIFT = TOKEN_BITS + BIN_BITS  # dims get the remaining 26 bits


def _pack(dims: np.ndarray, bins: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Codes of candidates, ordered as the ``(dim, bin, token)`` tuples."""
    if tokens.min() < 0 or tokens.max() >> TOKEN_BITS:
        raise ValueError(f"token ids must lie in [0, 2**{TOKEN_BITS})")
    return dims.astype(np.int64) << _DIM_SHIFT | bins.astype(np.int64) << TOKEN_BITS | tokens.astype(np.int64)


class MassiveAnalyzer(Analyzer):
    """Massive activations per hook (raw basis only; see the module docstring for the streaming median).

    Parameters
    ----------
    hooks: hooks to analyse (default: every hook of each batch).
    abs_threshold, ratio: the Sun et al. criterion (|h| > 100 and ≥ 1000 × median |h|).
    top_tokens: token ids listed per dim.

    Memory: an ``N_BINS`` histogram per hook, and :class:`Tally` s of the
    candidates above ``abs_threshold`` per (dim, bin of |h|) and per (dim, bin,
    token id) — bounded by the vocabulary and the bins, not by the corpus.
    """

    name = "massive"
    reads = frozenset({Reading.RAW})

    def __init__(
        self,
        hooks: Sequence[str] | None = None,
        abs_threshold: float = 100.0,
        ratio: float = 1000.0,
        top_tokens: int = 10,
    ) -> None:
        self.hooks = None if hooks is None else list(hooks)
        self.abs_threshold = abs_threshold
        self.ratio = ratio
        self.top_tokens = top_tokens
        self.add_state("hist", {}, "sum")  # hook → [N_BINS] counts of |h| over non-padding positions
        self.add_state("n_seqs", {}, "sum")  # hook → windows
        self.add_state("n_positions", {}, "sum")  # hook → non-padding positions
        # hook → Tally of the candidates |h| > abs_threshold per (dim, bin): sums (hits, hits at position 0),
        # maxes (largest |h|)
        self.add_state("hits", {}, "sum")
        self.add_state("hit_tokens", {}, "sum")  # hook → Tally counting the candidates' (dim, bin, token) codes
        # hook → Tally of the candidate of largest |h| per (window, dim), per (dim, bin of that |h|):
        # sums (windows, Σ value, Σ value²)
        self.add_state("seq_values", {}, "sum")
        # hook → Tally of the tokens holding a candidate, per bin of the token's largest candidate:
        # sums (tokens, Σ energy share), maxes (largest share)
        self.add_state("shares", {}, "sum")

    def update(self, batch: ActivationBatch) -> None:
        if batch.basis != "raw":
            return
        valid = batch.mask.bool().cpu().clone()
        valid[:, 0] = True  # BOS counts for detection; padding does not
        hooks = batch.hooks if self.hooks is None else list(dict.fromkeys(h for h in self.hooks if h in batch.acts))
        tokens = batch.tokens.cpu()
        for hook in hooks:  # each thread below reads and writes only its own hook's entries
            accumulate(self.n_seqs, hook, batch.acts[hook].shape[0])
            accumulate(self.n_positions, hook, int(valid.sum()))
        thread_map(partial(self._update_hook, valid, tokens, batch), hooks)

    def _update_hook(self, valid: torch.Tensor, tokens: torch.Tensor, batch: ActivationBatch, hook: str) -> None:
        x = batch.acts[hook].detach().cpu()
        # the median's histogram reads every HIST_STRIDE-th coordinate of the non-padding positions:
        # a fixed rule (the same for any batching or shard), a quarter of the work
        a = x[..., ::HIST_STRIDE][valid].abs().numpy()  # strided first: a quarter of the copy
        counts = np.bincount(abs_bins(a.ravel()), minlength=N_BINS)
        accumulate(self.hist, hook, counts)
        self._candidates(hook, x, valid, tokens)

    def _candidates(self, hook: str, x: torch.Tensor, valid: torch.Tensor, tokens: torch.Tensor) -> None:
        cand = valid & (x.abs().amax(-1) > self.abs_threshold)
        if not cand.any():
            return
        rows, pos = cand.nonzero(as_tuple=True)
        sub = x[rows, pos].double()  # [n_tokens_with_candidates, d]
        big = sub.abs() > self.abs_threshold
        i, dims = big.nonzero(as_tuple=True)
        vals = sub[i, dims].numpy()
        size = np.abs(vals)
        bins = abs_bins(size)
        r, p, d, tok = rows[i].numpy(), pos[i].numpy(), dims.numpy(), tokens[rows[i], pos[i]].numpy()
        dim_bin = d.astype(np.int64) << BIN_BITS | bins
        accumulate(self.hits, hook, Tally.of(dim_bin, np.stack([np.ones_like(p), p == 0], 1), size))
        accumulate(self.hit_tokens, hook, Tally.of(_pack(d, bins, tok)))
        # per (window, dim): the candidate of largest |h| (ties: first position), summed per (dim, bin)
        order = np.lexsort((p, -size, d, r))
        _, first = np.unique(r[order].astype(np.int64) * x.shape[-1] + d[order], return_index=True)
        top = order[first]
        v = vals[top]
        accumulate(self.seq_values, hook, Tally.of(dim_bin[top], np.stack([np.ones_like(v), v, v * v], 1)))
        # per token: share of ‖h‖² above the absolute threshold, binned by the token's largest candidate
        share = (torch.where(big, sub, 0.0).square().sum(1) / sub.square().sum(1)).numpy()
        tok_bins = abs_bins(sub.abs().amax(1).numpy())
        accumulate(self.shares, hook, Tally.of(tok_bins, np.stack([np.ones_like(share), share], 1), share))

    def compute(self) -> MassiveResult:
        hooks = {h: self._hook(h) for h in self.hist}
        found = [(r.layer, h) for h, r in hooks.items() if r.n_hits and r.layer is not None]
        first_layer, first_hook = min(found) if found else (None, None)
        return MassiveResult(self.abs_threshold, self.ratio, BIN_RATIO, hooks, first_layer, first_hook)

    def _hook(self, hook: str) -> MassiveHook:
        median = histogram_median(self.hist[hook])
        threshold = max(self.abs_threshold, self.ratio * median) if np.isfinite(median) else None

        def kept(tally: Tally | None) -> Tally:
            """The entries whose bin (the ids' low bits) has a geometric centre clearing the threshold."""
            if tally is None or threshold is None:
                return Tally.of(np.zeros(0, np.int64))
            return tally.select(bin_centre(tally.ids & (N_BINS - 1)) >= threshold)

        hits, seqs = kept(self.hits.get(hook)), kept(self.seq_values.get(hook))
        n_seqs = self.n_seqs[hook]
        tops = self._top_tokens(hook, threshold) if len(hits.ids) else {}
        dims = []
        for dim in np.unique(hits.ids >> BIN_BITS).tolist():
            h = hits.select(hits.ids >> BIN_BITS == dim)
            s = seqs.select(seqs.ids >> BIN_BITS == dim).sums.sum(0) if len(seqs.ids) else np.zeros(3)
            n = int(s[0])
            mean = s[1] / n if n else 0.0
            var = max(s[2] / n - mean * mean, 0.0) if n else 0.0
            n_hits, first = (int(c) for c in h.sums.sum(0))
            dims.append(
                MassiveDim(
                    dim=dim,
                    n_hits=n_hits,
                    n_seqs=n,
                    seq_frac=n / max(n_seqs, 1),
                    hits_first_position=first,
                    hits_later_positions=n_hits - first,
                    max_abs=float(h.maxes.max()),
                    value_mean=float(mean),
                    value_cv=float(np.sqrt(var) / abs(mean)) if mean else None,
                    top_tokens=tops[dim],
                )
            )
        dims.sort(key=lambda m: (-m.n_hits, m.dim))
        shares = kept(self.shares.get(hook))
        n_tok = int(shares.sums[:, 0].sum()) if len(shares.ids) else 0
        return MassiveHook(
            hook=hook,
            layer=hook_layer(hook),
            n_seqs=n_seqs,
            n_positions=self.n_positions[hook],
            median_abs=median if np.isfinite(median) else None,
            threshold=threshold,
            n_hits=sum(m.n_hits for m in dims),
            n_hit_tokens=n_tok,
            energy_share_mean=float(shares.sums[:, 1].sum()) / n_tok if n_tok else None,
            energy_share_max=float(shares.maxes.max()) if n_tok else None,
            dims=dims,
        )

    def _top_tokens(self, hook: str, threshold: float) -> dict[int, list[tuple[int, int]]]:
        """``dim → top_tokens`` of a hook's candidates in the bins whose centre clears ``threshold``."""
        codes = self.hit_tokens[hook]
        codes = codes.select(bin_centre((codes.ids >> TOKEN_BITS) & (N_BINS - 1)) >= threshold)
        dims, tokens = codes.ids >> _DIM_SHIFT, codes.ids & ((1 << TOKEN_BITS) - 1)
        tops = {}
        for dim in np.unique(dims).tolist():
            lo, hi = np.searchsorted(dims, [dim, dim + 1])  # codes sort by dim first
            tops[dim] = Tally.of(tokens[lo:hi], codes.sums[lo:hi]).top(self.top_tokens)
        return tops
