"""What shifts: the SAE latents whose firing rate changes most from in-distribution to each shifted set.

Fed batches in an SAE basis (``SAEBasis.read``). Per hook and text set it counts,
over counted tokens, how often each latent fires (f > 0): int64 counts, exactly
mergeable. The firing rate of latent j on a set is count_j / tokens; for each
shifted or graded set the latents are ranked by rate_set − rate_ref (the
reference pools the in-distribution sets): the most *gained* and the most
*lost*.

Each latent is illustrated by its top-activating in-distribution contexts: a
bounded top-``n_contexts`` per latent and text set of (activation, window,
position, token ids of ``context`` tokens either side) kept during ``update`` —
memory is O(d_sae · n_contexts · context) per set, independent of the corpus.
Ties are broken by window then position, so the kept contexts do not depend on
the order batches or shards arrive in. Text is decoded at ``compute`` time with
the ``tokenizer`` handle given to ``__init__``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fer_diag.analyzers.base import Analyzer, Reading, accumulate
from fer_diag.analyzers.persequence import record_set
from fer_diag.capture import ActivationBatch

PAD = -1


@dataclass
class TopContexts:
    """Top-n contexts per latent: ``values [d_sae, n]`` (−inf = empty) and ``meta [d_sae, n, 2 + 2c + 1]``.

    ``meta[..., :2]`` = (window index, position); the rest are token ids of the
    window ``position − c … position + c`` (``PAD`` outside the window). Order:
    activation descending, then window, then position ascending.
    """

    values: torch.Tensor
    meta: torch.Tensor

    @classmethod
    def empty(cls, d_sae: int, n: int, context: int) -> TopContexts:
        return cls(torch.full((d_sae, n), float("-inf")), torch.full((d_sae, n, 3 + 2 * context), PAD))

    def add(self, values: torch.Tensor, meta: torch.Tensor) -> None:
        """Fold in candidates ``values [d_sae, m]`` with ``meta [d_sae, m, …]``; keep the top n per latent."""
        vals = torch.cat([self.values, values], dim=1)
        metas = torch.cat([self.meta, meta], dim=1)
        order = torch.arange(vals.shape[1]).expand_as(vals)
        for key in (metas[..., 1], metas[..., 0], -vals):  # stable sorts: least significant key first
            idx = key.gather(1, order).sort(dim=1, stable=True).indices
            order = order.gather(1, idx)
        keep = order[:, : self.values.shape[1]]
        self.values = vals.gather(1, keep)
        self.meta = metas.gather(1, keep[..., None].expand(-1, -1, metas.shape[-1]))

    def merge(self, other: TopContexts) -> TopContexts:
        self.add(other.values, other.meta)
        return self


class ShiftedLatentsAnalyzer(Analyzer):
    """Latents gained / lost on each shifted set vs in-distribution, with top in-distribution contexts."""

    name = "shifted_latents"
    reads = frozenset({Reading.SAE})
    handles = ("tokenizer",)

    def __init__(self, n_contexts: int = 5, context: int = 8, top_latents: int = 10, tokenizer=None) -> None:
        self.n_contexts = n_contexts
        self.context = context
        self.top_latents = top_latents
        self.tokenizer = tokenizer
        self.add_state("sets", {}, "union")
        self.add_state("counts", {}, "sum")  # (hook, set) → [d_sae] int64 tokens where the latent fired
        self.add_state("tokens", {}, "sum")  # (hook, set) → counted tokens
        self.add_state("top", {}, "merge")  # (hook, set) → TopContexts (in-distribution sets)

    def update(self, batch: ActivationBatch) -> None:
        if batch.basis == "raw":
            raise ValueError("ShiftedLatentsAnalyzer needs SAE latents: pass SAEBasis(saes).read(batch)")
        info = record_set(self.sets, batch)
        for hook, acts in batch.acts.items():
            f = acts[batch.mask]
            key = (hook, batch.set_name)
            fired = (f > 0).sum(0, dtype=torch.int64)
            accumulate(self.counts, key, fired)
            accumulate(self.tokens, key, len(f))
            if info.kind == "in_distribution" and len(f):
                self._add_contexts(key, batch, f)

    def _add_contexts(self, key: tuple[str, str], batch: ActivationBatch, f: torch.Tensor) -> None:
        m = min(self.n_contexts, len(f))
        top = f.topk(m, dim=0)  # [m, d_sae]
        rows, pos = batch.mask.nonzero(as_tuple=True)
        r, p = rows[top.indices], pos[top.indices]  # [m, d_sae]
        offsets = torch.arange(-self.context, self.context + 1)
        cols = p[..., None] + offsets  # [m, d_sae, 2c+1]
        inside = (cols >= 0) & (cols < batch.tokens.shape[1])
        ids = batch.tokens[r[..., None].expand_as(cols), cols.clamp(0, batch.tokens.shape[1] - 1)]
        ids = torch.where(inside, ids, PAD)
        head = torch.stack([batch.seq_index[r], p], dim=-1)
        meta = torch.cat([head, ids], dim=-1).transpose(0, 1)  # [d_sae, m, …]
        store = self.top.get(key)
        if store is None:
            store = self.top[key] = TopContexts.empty(f.shape[1], self.n_contexts, self.context)
        store.add(top.values.T.float(), meta)

    def compute(self) -> dict[str, Any]:
        """``{"reference_sets", "hooks": {hook: {set: {"gained": [...], "lost": [...]}}}}``.

        Each latent entry: ``latent``, ``rate_reference``, ``rate``, ``change``
        (rate − rate_reference) and ``contexts`` (top in-distribution contexts:
        ``activation``, ``set``, ``seq_index``, ``position``, ``token_ids`` and, with
        a tokenizer, ``text`` with the token in ⟦ ⟧).
        """
        ref_sets = sorted(s for s, info in self.sets.items() if info.kind == "in_distribution")
        out: dict[str, Any] = {}
        for hook in dict.fromkeys(h for h, _ in self.counts):
            ref_n = sum(self.tokens.get((hook, s), 0) for s in ref_sets)
            if not ref_n:
                continue
            ref_rate = sum(self.counts[(hook, s)] for s in ref_sets if (hook, s) in self.counts).double() / ref_n
            rows = {}
            for (h, s), c in self.counts.items():
                if h != hook or s in ref_sets or not self.tokens[(h, s)]:
                    continue
                rate = c.double() / self.tokens[(h, s)]
                change = rate - ref_rate
                k = min(self.top_latents, len(change))
                entry: dict[str, list[dict[str, Any]]] = {}
                for label, order in (("gained", change.topk(k)), ("lost", (-change).topk(k))):
                    entry[label] = [
                        {
                            "latent": int(j),
                            "rate_reference": float(ref_rate[j]),
                            "rate": float(rate[j]),
                            "change": float(change[j]),
                            "contexts": self._contexts(hook, int(j), ref_sets),
                        }
                        for v, j in zip(order.values, order.indices, strict=True)
                        if v > 0
                    ]
                rows[s] = entry
            out[hook] = rows
        return {"reference_sets": ref_sets, "hooks": out}

    def _contexts(self, hook: str, latent: int, ref_sets: list[str]) -> list[dict[str, Any]]:
        found = []
        for s in ref_sets:
            store = self.top.get((hook, s))
            if store is None:
                continue
            for v, meta in zip(store.values[latent].tolist(), store.meta[latent], strict=True):
                if v > 0:
                    found.append((-v, s, int(meta[0]), int(meta[1]), meta[2:].tolist()))
        c = self.context
        out = []
        for neg_v, s, seq, pos, ids in sorted(found)[: self.n_contexts]:
            item = {"activation": -neg_v, "set": s, "seq_index": seq, "position": pos, "token_ids": ids}
            if self.tokenizer is not None:
                left = [t for t in ids[:c] if t != PAD]
                right = [t for t in ids[c + 1 :] if t != PAD]
                tok = self.tokenizer
                item["text"] = f"{tok.decode(left)}⟦{tok.decode([ids[c]])}⟧{tok.decode(right)}"
            out.append(item)
        return out
