"""What shifts: the SAE latents whose firing rate changes most from in-distribution to each shifted set.

Fed batches in an SAE basis (``SAEBasis.read``). Per hook and text set it counts,
over counted tokens, how often each latent fires (f > 0): int64 counts, exactly
mergeable. The firing rate of latent j on a set is count_j / tokens; for each
shifted or graded set the latents are ranked by rate_set − rate_ref (the
reference pools the in-distribution sets): the most *gained* and the most
*lost*.

Each latent is illustrated by its top-activating in-distribution contexts: a
bounded top-``n_contexts`` per latent of (activation, set, window, position,
token ids of ``context`` tokens either side) kept during ``update`` — memory is
O(d_sae · n_contexts · context), independent of the corpus. Text is decoded at
``compute`` time with the tokenizer given there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

import torch

from fer_diag.analyzers.base import Analyzer
from fer_diag.capture import ActivationBatch
from fer_diag.data.suite import SetKind

PAD = -1


@dataclass
class _TopContexts:
    """Top-n contexts per latent: ``values [d_sae, n]`` (−inf = empty) and ``meta [d_sae, n, 3 + 2c + 1]``.

    ``meta[..., :3]`` = (set id, window index, position); the rest are token ids of
    the window ``position − c … position + c`` (``PAD`` outside the window).
    """

    values: torch.Tensor
    meta: torch.Tensor

    @classmethod
    def empty(cls, d_sae: int, n: int, context: int) -> _TopContexts:
        return cls(torch.full((d_sae, n), float("-inf")), torch.full((d_sae, n, 4 + 2 * context), PAD))

    def add(self, values: torch.Tensor, meta: torch.Tensor) -> None:
        """Fold in candidates ``values [d_sae, m]`` with ``meta [d_sae, m, …]``; keep the top n per latent."""
        vals = torch.cat([self.values, values], dim=1)
        metas = torch.cat([self.meta, meta], dim=1)
        top = vals.topk(self.values.shape[1], dim=1)
        self.values = top.values
        self.meta = metas.gather(1, top.indices[..., None].expand(-1, -1, metas.shape[-1]))


class ShiftedLatentsAnalyzer(Analyzer):
    """Latents gained / lost on each shifted set vs in-distribution, with top in-distribution contexts."""

    name = "shifted_latents"

    def __init__(self, n_contexts: int = 5, context: int = 8, top_latents: int = 10) -> None:
        self.n_contexts = n_contexts
        self.context = context
        self.top_latents = top_latents
        self.counts: dict[str, dict[str, torch.Tensor]] = {}  # hook → set → [d_sae] int64
        self.tokens: dict[str, dict[str, int]] = {}
        self.kinds: dict[str, SetKind] = {}
        self.set_ids: dict[str, int] = {}
        self.top: dict[str, _TopContexts] = {}

    def update(self, batch: ActivationBatch) -> None:
        if batch.basis == "raw":
            raise ValueError("ShiftedLatentsAnalyzer needs SAE latents: pass SAEBasis(saes).read(batch)")
        self.kinds[batch.set_name] = batch.kind
        for hook, acts in batch.acts.items():
            f = acts[batch.mask]
            counts = self.counts.setdefault(hook, {})
            prev = counts.get(batch.set_name)
            fired = (f > 0).sum(0, dtype=torch.int64)
            counts[batch.set_name] = fired if prev is None else prev + fired
            tokens = self.tokens.setdefault(hook, {})
            tokens[batch.set_name] = tokens.get(batch.set_name, 0) + len(f)
            if batch.kind is SetKind.IN_DISTRIBUTION and len(f):
                self._add_contexts(hook, batch, f)

    def _add_contexts(self, hook: str, batch: ActivationBatch, f: torch.Tensor) -> None:
        set_id = self.set_ids.setdefault(batch.set_name, len(self.set_ids))
        m = min(self.n_contexts, len(f))
        top = f.topk(m, dim=0)  # [m, d_sae]
        rows, pos = batch.mask.nonzero(as_tuple=True)
        r, p = rows[top.indices], pos[top.indices]  # [m, d_sae]
        offsets = torch.arange(-self.context, self.context + 1)
        cols = p[..., None] + offsets  # [m, d_sae, 2c+1]
        inside = (cols >= 0) & (cols < batch.tokens.shape[1])
        ids = batch.tokens[r[..., None].expand_as(cols), cols.clamp(0, batch.tokens.shape[1] - 1)]
        ids = torch.where(inside, ids, PAD)
        head = torch.stack([torch.full_like(r, set_id), batch.seq_index[r], p], dim=-1)
        meta = torch.cat([head, ids], dim=-1).transpose(0, 1)  # [d_sae, m, …]
        store = self.top.get(hook)
        if store is None:
            store = self.top[hook] = _TopContexts.empty(f.shape[1], self.n_contexts, self.context)
        store.add(top.values.T.float(), meta)

    def merge(self, other: Self) -> Self:
        self._check_mergeable(other)
        if (other.n_contexts, other.context) != (self.n_contexts, self.context):
            raise ValueError("cannot merge ShiftedLatentsAnalyzers with different n_contexts / context")
        for hook, sets in other.counts.items():
            mine = self.counts.setdefault(hook, {})
            toks = self.tokens.setdefault(hook, {})
            for s, c in sets.items():
                mine[s] = c.clone() if s not in mine else mine[s] + c
                toks[s] = toks.get(s, 0) + other.tokens[hook][s]
        self.kinds.update(other.kinds)
        remap = torch.tensor([self.set_ids.setdefault(s, len(self.set_ids)) for s in _ordered(other.set_ids)] or [0])
        for hook, theirs in other.top.items():
            meta = theirs.meta.clone()
            filled = theirs.values > float("-inf")
            meta[..., 0] = torch.where(filled, remap[meta[..., 0].clamp(min=0)], PAD)
            store = self.top.get(hook)
            if store is None:
                self.top[hook] = _TopContexts(theirs.values.clone(), meta)
            else:
                store.add(theirs.values, meta)
        return self

    def compute(self, tokenizer=None) -> dict[str, Any]:
        """``{"reference_sets", "hooks": {hook: {set: {"gained": [...], "lost": [...]}}}}``.

        Each latent entry: ``latent``, ``rate_reference``, ``rate``, ``change``
        (rate − rate_reference) and ``contexts`` (top in-distribution contexts:
        ``activation``, ``set``, ``seq_index``, ``position``, ``token_ids`` and, with
        a tokenizer, ``text`` with the token in ⟦ ⟧).
        """
        ref_sets = [s for s, k in self.kinds.items() if k is SetKind.IN_DISTRIBUTION]
        names = _ordered(self.set_ids)
        out: dict[str, Any] = {}
        for hook, sets in self.counts.items():
            toks = self.tokens[hook]
            ref_n = sum(toks[s] for s in ref_sets if s in sets)
            if not ref_n:
                continue
            ref_rate = sum(sets[s] for s in ref_sets if s in sets).double() / ref_n
            rows = {}
            for s, c in sets.items():
                if self.kinds[s] is SetKind.IN_DISTRIBUTION or not toks[s]:
                    continue
                rate = c.double() / toks[s]
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
                            "contexts": self._contexts(hook, int(j), names, tokenizer),
                        }
                        for v, j in zip(order.values, order.indices, strict=True)
                        if v > 0
                    ]
                rows[s] = entry
            out[hook] = rows
        return {"reference_sets": ref_sets, "hooks": out}

    def _contexts(self, hook: str, latent: int, names: list[str], tokenizer) -> list[dict[str, Any]]:
        store = self.top.get(hook)
        if store is None:
            return []
        out = []
        for v, meta in zip(store.values[latent], store.meta[latent], strict=True):
            if not v > 0:
                continue
            ids = meta[3:].tolist()
            c = self.context
            item = {
                "activation": float(v),
                "set": names[int(meta[0])],
                "seq_index": int(meta[1]),
                "position": int(meta[2]),
                "token_ids": ids,
            }
            if tokenizer is not None:
                left = [t for t in ids[:c] if t != PAD]
                right = [t for t in ids[c + 1 :] if t != PAD]
                item["text"] = f"{tokenizer.decode(left)}⟦{tokenizer.decode([ids[c]])}⟧{tokenizer.decode(right)}"
            out.append(item)
        return out


def _ordered(ids: dict[str, int]) -> list[str]:
    return sorted(ids, key=ids.__getitem__)
