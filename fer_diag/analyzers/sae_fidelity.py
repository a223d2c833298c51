"""SAE fidelity per hook × text set (DESIGN §5): does the SAE still describe the activations?

Over the counted tokens (``batch.mask``) of a text set, with x the hook vector
and x̂ = decode(encode(x)):

* ``explained_variance`` = 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖², x̄ the set's mean vector;
  kept exact and mergeable through the sufficient statistics n, Σx, Σ‖x‖² and
  Σ‖x − x̂‖² (Σ‖x − x̄‖² = Σ‖x‖² − ‖Σx‖²/n).
* ``cosine``: mean over tokens of cos(x, x̂).
* ``relative_mse`` = Σ‖x − x̂‖² / Σ‖x‖².
* ``l0``: mean number of non-zero latents per token.
* ``ce_score`` = (CE_abl − CE_sae)/(CE_abl − CE_clean), CE the mean next-token
  NLL with the hook left alone, replaced by x̂, or zero-ablated — from
  :meth:`fer_diag.basis.SAEBasis.ce_sums` on a bounded number of windows per set,
  passed in with :meth:`SAEFidelityAnalyzer.update_ce` (the analyzer never runs
  the model).

An SAE whose fidelity collapses on a shifted set makes its L0 there meaningless;
``ev_drop`` (reference EV − set EV, the reference being the pooled
in-distribution sets) is what the verdict reads.

With ``massive_dims`` (per hook, e.g. from the massive-activation analyzer) every
metric but L0 and CE is also reported over the remaining coordinates
(``massive_masked``): a few tokens carrying a massive activation (|h| ~ 2.5e4 in
SmolLM2's middle layers) otherwise dominate Σ‖x − x̄‖², so the plain EV mostly
says whether those tokens are reconstructed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Self

import torch
from sae_lens import SAE

from fer_diag.analyzers.base import Analyzer
from fer_diag.basis import CESums, SAEBasis
from fer_diag.capture import ActivationBatch
from fer_diag.data.suite import SetKind


@dataclass
class _Stats:
    """Sufficient statistics of one hook × set (float64 sums)."""

    tokens: int = 0
    sum_x: torch.Tensor | None = None
    sum_sq: float = 0.0
    sum_err: float = 0.0
    sum_cos: float = 0.0
    sum_l0: int = 0
    ce: CESums = field(default_factory=CESums)

    def add(self, x: torch.Tensor, x_hat: torch.Tensor, latents: torch.Tensor) -> None:
        x, x_hat = x.double(), x_hat.double()
        s = x.sum(0)
        self.sum_x = s if self.sum_x is None else self.sum_x + s
        self.tokens += len(x)
        self.sum_sq += float(x.pow(2).sum())
        self.sum_err += float((x - x_hat).pow(2).sum())
        self.sum_cos += float(torch.nn.functional.cosine_similarity(x, x_hat, dim=-1).sum())
        self.sum_l0 += int((latents != 0).sum())

    def merge(self, other: _Stats) -> None:
        if other.sum_x is not None:
            self.sum_x = other.sum_x.clone() if self.sum_x is None else self.sum_x + other.sum_x
        self.tokens += other.tokens
        self.sum_sq += other.sum_sq
        self.sum_err += other.sum_err
        self.sum_cos += other.sum_cos
        self.sum_l0 += other.sum_l0
        self.ce += other.ce

    def total_var(self) -> float:
        return self.sum_sq - float(self.sum_x.pow(2).sum()) / self.tokens

    def result(self) -> dict[str, Any]:
        n = self.tokens
        var = self.total_var() if n else 0.0
        ce = self.ce
        return {
            "tokens": n,
            "explained_variance": 1.0 - self.sum_err / var if var > 0 else None,
            "cosine": self.sum_cos / n if n else None,
            "relative_mse": self.sum_err / self.sum_sq if self.sum_sq > 0 else None,
            "l0": self.sum_l0 / n if n else None,
            "ce_score": ce.score(),
            "ce_clean": ce.clean / ce.tokens if ce.tokens else None,
            "ce_sae": ce.sae / ce.tokens if ce.tokens else None,
            "ce_ablated": ce.ablated / ce.tokens if ce.tokens else None,
            "ce_tokens": ce.tokens,
        }


class SAEFidelityAnalyzer(Analyzer):
    """Reconstruction fidelity of each hook's SAE on each text set (see module docstring).

    ``update(batch, latents)`` takes a raw batch and, optionally, the same batch
    already read in the SAE basis (``SAEBasis.read``), to avoid encoding twice.
    """

    name = "sae_fidelity"
    handles = ("basis",)

    def __init__(self, saes: dict[str, SAE], massive_dims: dict[str, list[int]] | None = None) -> None:
        self.basis = SAEBasis(saes)
        self.massive_dims = {h: sorted(d) for h, d in (massive_dims or {}).items() if h in saes and d}
        self.stats: dict[str, dict[str, _Stats]] = {h: {} for h in saes}
        self.masked: dict[str, dict[str, _Stats]] = {h: {} for h in self.massive_dims}
        self.kinds: dict[str, SetKind] = {}

    def update(self, batch: ActivationBatch, latents: ActivationBatch | None = None) -> None:
        if batch.basis != "raw":
            raise ValueError(f"SAEFidelityAnalyzer.update needs a raw batch, got basis {batch.basis!r}")
        latents = latents if latents is not None else self.basis.read(batch)
        self.kinds[batch.set_name] = batch.kind
        for hook in self.stats:
            if hook not in batch.acts:
                continue
            f = latents.acts[hook][batch.mask]
            x = batch.acts[hook][batch.mask].flatten(1)
            x_hat = self.basis.decode(hook, f).flatten(1)
            self._stats(hook, batch.set_name).add(x, x_hat, f)
            if hook in self.masked:
                keep = torch.ones(x.shape[1], dtype=torch.bool)
                keep[self.massive_dims[hook]] = False
                self.masked[hook].setdefault(batch.set_name, _Stats()).add(x[:, keep], x_hat[:, keep], f)

    def update_ce(self, set_name: str, sums: dict[str, CESums]) -> None:
        """Add CE-loss sums of ``set_name`` (from :meth:`fer_diag.basis.SAEBasis.ce_sums`)."""
        for hook, s in sums.items():
            self._stats(hook, set_name).ce += s

    def _stats(self, hook: str, set_name: str) -> _Stats:
        return self.stats[hook].setdefault(set_name, _Stats())

    def merge(self, other: Self) -> Self:
        self._check_mergeable(other)
        if set(other.stats) != set(self.stats) or other.massive_dims != self.massive_dims:
            raise ValueError("cannot merge SAE fidelity analyzers with different hooks or massive dims")
        for mine, theirs in ((self.stats, other.stats), (self.masked, other.masked)):
            for hook, sets in theirs.items():
                for set_name, s in sets.items():
                    mine[hook].setdefault(set_name, _Stats()).merge(s)
        self.kinds.update(other.kinds)
        return self

    def compute(self) -> dict[str, Any]:
        """``{"hooks": {hook: {"reference_ev", "massive_dims", "sets": {set: metrics}}}}``.

        Per set: the metrics of the module docstring, ``kind``, ``ev_drop`` and,
        for hooks with massive dims, ``massive_masked`` (EV, cosine, relative MSE
        and EV drop over the other coordinates).
        """
        out: dict[str, Any] = {}
        for hook, sets in self.stats.items():
            masked = self.masked.get(hook, {})
            ref_ev, ref_masked_ev = self._reference_ev(sets), self._reference_ev(masked)
            rows = {}
            for set_name, s in sets.items():
                r = s.result()
                r["kind"] = self.kinds[set_name].value if set_name in self.kinds else None
                r["ev_drop"] = _drop(ref_ev, r["explained_variance"])
                if set_name in masked:
                    m = masked[set_name].result()
                    r["massive_masked"] = {
                        "explained_variance": m["explained_variance"],
                        "cosine": m["cosine"],
                        "relative_mse": m["relative_mse"],
                        "ev_drop": _drop(ref_masked_ev, m["explained_variance"]),
                    }
                rows[set_name] = r
            out[hook] = {"reference_ev": ref_ev, "massive_dims": self.massive_dims.get(hook, []), "sets": rows}
        return {"hooks": out}

    def _reference_ev(self, sets: dict[str, _Stats]) -> float | None:
        """EV over the pooled in-distribution sets."""
        ref = _Stats()
        for set_name, s in sets.items():
            if self.kinds.get(set_name) is SetKind.IN_DISTRIBUTION:
                ref.merge(s)
        return ref.result()["explained_variance"] if ref.tokens else None


def _drop(reference: float | None, value: float | None) -> float | None:
    return None if reference is None or value is None else reference - value
