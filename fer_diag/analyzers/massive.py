"""Massive activations (Sun et al. 2024, arXiv 2402.17762) and their scaffold intervention.

A coordinate h_{b,t,j} of a hook is *massive* when |h| > ``abs_threshold`` (100)
and |h| ≥ ``ratio`` (1000) × the median |h| over the hook's whole activation
tensor of that batch. Massive activations sit at the first token (BOS) and at
delimiter tokens, so detection looks at every position that is not padding —
position 0 included, although ``batch.mask`` excludes it from the statistics.

:class:`MassiveAnalyzer` reports per hook the dims found, hit counts at the
first vs later positions and the token ids there, value statistics with the
coefficient of variation across inputs (small = input-agnostic), the share of
‖h‖² the hits carry at their tokens, and the first layer where any appears.
:func:`massive_dims` turns a result into the ``hook → dims`` map that
:class:`~fer_diag.analyzers.sparsity.SparsityAnalyzer` masks, and
:func:`scaffold_intervention` repeats Sun et al.'s test: setting the massive
values to their mean across inputs barely changes the loss, zeroing them
destroys it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import NamedTuple, Self

import numpy as np
import torch

from fer_diag.analyzers.base import Analyzer
from fer_diag.capture import ActivationBatch, hook_layer, token_readouts


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
    median_abs_mean: float | None  # mean over batches of the median |h| (batches with a candidate only)
    n_hits: int
    n_hit_tokens: int
    energy_share_mean: float | None  # mean over hit tokens of Σ_hits h² / ‖h‖²
    energy_share_max: float | None
    dims: list[MassiveDim]


@dataclass
class MassiveResult:
    """What :meth:`MassiveAnalyzer.compute` returns."""

    abs_threshold: float
    ratio: float
    hooks: dict[str, MassiveHook]
    first_layer: int | None  # smallest block index with any hit, over the analysed hooks
    first_hook: str | None

    def to_dict(self) -> dict:
        return asdict(self)


def massive_dims(result: MassiveResult, min_seq_frac: float = 0.0) -> dict[str, list[int]]:
    """``hook → sorted dims`` firing in more than ``min_seq_frac`` of the windows (input to sparsity masking)."""
    return {hook: sorted(m.dim for m in h.dims if m.seq_frac > min_seq_frac) for hook, h in result.hooks.items()}


# --------------------------------------------------------------------------- analyzer
def _by_count(item: tuple[int, int]) -> tuple[int, int]:
    return -item[1], item[0]  # most hits first, then token id: independent of arrival order


@dataclass
class _DimAcc:
    n_hits: int = 0
    n_seqs: int = 0
    first: int = 0
    later: int = 0
    max_abs: float = 0.0
    seq_sum: float = 0.0
    seq_sumsq: float = 0.0
    tokens: Counter = field(default_factory=Counter)

    def merge(self, o: _DimAcc) -> None:
        for name in ("n_hits", "n_seqs", "first", "later", "seq_sum", "seq_sumsq"):
            setattr(self, name, getattr(self, name) + getattr(o, name))
        self.max_abs = max(self.max_abs, o.max_abs)
        self.tokens.update(o.tokens)


@dataclass
class _HookAcc:
    n_seqs: int = 0
    n_positions: int = 0
    median_sum: float = 0.0
    n_medians: int = 0
    n_hits: int = 0
    n_hit_tokens: int = 0
    share_sum: float = 0.0
    share_max: float = 0.0
    dims: dict[int, _DimAcc] = field(default_factory=dict)

    def add(self, x: torch.Tensor, tokens: torch.Tensor, hits: MassiveHits) -> None:
        if not len(hits):
            return
        self.median_sum += hits.median
        self.n_medians += 1
        self.n_hits += len(hits)
        rows, pos, dims, vals = (t.numpy() for t in (hits.rows, hits.positions, hits.dims, hits.values))
        # energy share of the hits at each hit token
        tok_id, tok_of_hit = np.unique(rows * x.shape[1] + pos, return_inverse=True)
        tr, tp = torch.from_numpy(tok_id // x.shape[1]), torch.from_numpy(tok_id % x.shape[1])
        norm2 = x[tr, tp].double().square().sum(-1).numpy()
        share = np.bincount(tok_of_hit, weights=vals.astype(np.float64) ** 2) / norm2
        self.n_hit_tokens += len(share)
        self.share_sum += float(share.sum())
        self.share_max = max(self.share_max, float(share.max()))
        tok = tokens[hits.rows, hits.positions].numpy()
        order = np.argsort(-np.abs(vals), kind="stable")  # per (window, dim): the hit of largest |h| comes first
        for dim in np.unique(dims):
            acc = self.dims.setdefault(int(dim), _DimAcc())
            sel = dims == dim
            acc.n_hits += int(sel.sum())
            acc.first += int((pos[sel] == 0).sum())
            acc.later += int((pos[sel] != 0).sum())
            acc.max_abs = max(acc.max_abs, float(np.abs(vals[sel]).max()))
            acc.tokens.update(tok[sel].tolist())
            o = order[sel[order]]
            _, first = np.unique(rows[o], return_index=True)
            per_seq = vals[o][first].astype(np.float64)
            acc.n_seqs += len(per_seq)
            acc.seq_sum += float(per_seq.sum())
            acc.seq_sumsq += float(np.square(per_seq).sum())

    def merge(self, o: _HookAcc) -> None:
        for name in ("n_seqs", "n_positions", "median_sum", "n_medians", "n_hits", "n_hit_tokens", "share_sum"):
            setattr(self, name, getattr(self, name) + getattr(o, name))
        self.share_max = max(self.share_max, o.share_max)
        for dim, acc in o.dims.items():
            self.dims.setdefault(dim, _DimAcc()).merge(acc)

    def result(self, hook: str, top_tokens: int) -> MassiveHook:
        dims = []
        for dim, a in self.dims.items():
            mean = a.seq_sum / a.n_seqs
            std = np.sqrt(max(a.seq_sumsq / a.n_seqs - mean * mean, 0.0))
            dims.append(
                MassiveDim(
                    dim=dim,
                    n_hits=a.n_hits,
                    n_seqs=a.n_seqs,
                    seq_frac=a.n_seqs / max(self.n_seqs, 1),
                    hits_first_position=a.first,
                    hits_later_positions=a.later,
                    max_abs=a.max_abs,
                    value_mean=mean,
                    value_cv=float(std / abs(mean)) if mean else None,
                    top_tokens=sorted(((int(t), int(c)) for t, c in a.tokens.items()), key=_by_count)[:top_tokens],
                )
            )
        dims.sort(key=lambda m: (-m.n_hits, m.dim))
        return MassiveHook(
            hook=hook,
            layer=hook_layer(hook),
            n_seqs=self.n_seqs,
            n_positions=self.n_positions,
            median_abs_mean=self.median_sum / self.n_medians if self.n_medians else None,
            n_hits=self.n_hits,
            n_hit_tokens=self.n_hit_tokens,
            energy_share_mean=self.share_sum / self.n_hit_tokens if self.n_hit_tokens else None,
            energy_share_max=self.share_max if self.n_hit_tokens else None,
            dims=dims,
        )


class MassiveAnalyzer(Analyzer):
    """Massive activations per hook (raw basis only; batches in other bases are ignored).

    Parameters
    ----------
    hooks: hooks to analyse (default: every hook of each batch).
    abs_threshold, ratio: the Sun et al. criterion (|h| > 100 and ≥ 1000 × median |h|).
    top_tokens: token ids listed per dim.

    Memory: counters per (hook, dim, token id) — bounded by the vocabulary.
    """

    name = "massive"

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
        self._acc: dict[str, _HookAcc] = {}

    def update(self, batch: ActivationBatch) -> None:
        if batch.basis != "raw":
            return
        n_positions = int((batch.mask.bool() | (torch.arange(batch.mask.shape[1]) == 0)).sum())
        hooks = batch.hooks if self.hooks is None else [h for h in self.hooks if h in batch.acts]
        for hook in hooks:
            x = batch.acts[hook]
            acc = self._acc.setdefault(hook, _HookAcc())
            acc.n_seqs += x.shape[0]
            acc.n_positions += n_positions
            acc.add(x, batch.tokens.cpu(), detect_massive(x, batch.mask, self.abs_threshold, self.ratio))

    def merge(self, other: MassiveAnalyzer) -> Self:
        self._check_mergeable(other)
        if (other.abs_threshold, other.ratio) != (self.abs_threshold, self.ratio):
            raise ValueError("cannot merge massive analyzers with different thresholds")
        for hook, acc in other._acc.items():
            self._acc.setdefault(hook, _HookAcc()).merge(acc)
        return self

    def compute(self) -> MassiveResult:
        hooks = {h: acc.result(h, self.top_tokens) for h, acc in self._acc.items()}
        found = [(r.layer, h) for h, r in hooks.items() if r.n_hits and r.layer is not None]
        first_layer, first_hook = min(found) if found else (None, None)
        return MassiveResult(self.abs_threshold, self.ratio, hooks, first_layer, first_hook)


# --------------------------------------------------------------------------- intervention
@torch.no_grad()
def scaffold_intervention(
    model,
    tokens: torch.Tensor,
    hook: str,
    dims: Sequence[int],
    positions: Sequence[int] | torch.Tensor,
    mean_values: Sequence[float] | torch.Tensor,
    loss_mask: torch.Tensor | None = None,
    clean_nll: torch.Tensor | None = None,
) -> dict:
    """Sun et al.'s test of massive activations as fixed biases: mean next-token NLL of three runs.

    * clean: the model as is;
    * mean: ``h[:, p, dims] := mean_values`` at ``hook`` for the positions ``p``;
    * zero: ``h[:, p, dims] := 0``.

    ``positions`` is a list of positions (e.g. ``[0]``) or a ``[B, T]`` bool mask
    (e.g. delimiter tokens); ``mean_values`` has one value per dim (their mean over
    inputs, e.g. ``MassiveDim.value_mean``). NLL is averaged over predicted tokens
    (positions ≥ 1, and where ``loss_mask`` is True). Works with any model that has
    ``run_with_hooks`` (HookedTransformer, TransformerBridge). ``clean_nll``, the
    clean run's per-token NLL of these tokens (:func:`fer_diag.capture.token_readouts`,
    as a capture with logits already has it), saves the clean forward pass.
    Expected for genuine massive activations: nll_mean ≈ nll_clean ≪ nll_zero.
    """
    tokens = torch.as_tensor(tokens)
    dims_t = torch.as_tensor(list(dims), dtype=torch.long)
    means = torch.as_tensor(mean_values, dtype=torch.float32).reshape(-1)
    if len(means) != len(dims_t):
        raise ValueError(f"need one mean value per dim: {len(dims_t)} dims, {len(means)} values")
    if torch.is_tensor(positions) and positions.dtype == torch.bool:
        where = positions.cpu()
    else:
        where = torch.zeros(tokens.shape, dtype=torch.bool)
        where[:, torch.as_tensor(list(positions), dtype=torch.long)] = True

    def setter(values: torch.Tensor):
        def edit(act: torch.Tensor, hook) -> torch.Tensor:
            sel = where.to(act.device)
            sub = act[:, :, dims_t.to(act.device)]
            sub[sel] = values.to(act.device, act.dtype)
            act[:, :, dims_t.to(act.device)] = sub
            return act

        return edit

    valid = torch.ones(tokens.shape, dtype=torch.bool) if loss_mask is None else loss_mask.bool().cpu()

    def mean_nll(per_token: torch.Tensor) -> float:
        keep = valid & torch.isfinite(per_token)  # NaN at position 0
        return float(per_token[keep].mean())

    def nll(fwd_hooks: list) -> float:
        logits = model.run_with_hooks(tokens, return_type="logits", fwd_hooks=fwd_hooks)
        return mean_nll(token_readouts(logits, tokens)[0])

    clean = nll([]) if clean_nll is None else mean_nll(clean_nll.cpu())
    mean = nll([(hook, setter(means))])
    zero = nll([(hook, setter(torch.zeros_like(means)))])
    return {
        "hook": hook,
        "dims": dims_t.tolist(),
        "n_positions": int(where.sum()),
        "nll_clean": clean,
        "nll_mean": mean,
        "nll_zero": zero,
        "delta_mean": mean - clean,
        "delta_zero": zero - clean,
    }
