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
  NLL with the hook left alone, replaced by x̂, or zero-ablated — summed from
  the ``batch.ce`` that the pipeline attaches to the windows numbered below its
  ``ce_windows`` (:meth:`fer_diag.basis.SAEBasis.ce_sums`; the analyzer never
  runs the model). ``ce_score_ci``: a percentile bootstrap over those windows.

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

from typing import Any

import numpy as np
import torch
from sae_lens import SAE

from fer_diag.analyzers.base import Analyzer, Reading, accumulate
from fer_diag.analyzers.persequence import record_set
from fer_diag.basis import CESums, SAEBasis
from fer_diag.capture import ActivationBatch

Key = tuple[str, str]  # (hook, set)


def _result(n: int, sum_x: torch.Tensor | None, sum_sq: float, sum_err: float, sum_cos: float) -> dict[str, Any]:
    """EV, cosine and relative MSE from the sufficient statistics (Σ‖x − x̄‖² = Σ‖x‖² − ‖Σx‖²/n)."""
    var = sum_sq - float(sum_x.pow(2).sum()) / n if n else 0.0
    return {
        "explained_variance": 1.0 - sum_err / var if var > 0 else None,
        "cosine": sum_cos / n if n else None,
        "relative_mse": sum_err / sum_sq if sum_sq > 0 else None,
    }


def _ce_ci(per_window: np.ndarray, n_boot: int, seed: int, ci: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap CI of the CE-loss score over windows: rows (clean, sae, ablated, tokens) summed."""
    if len(per_window) < 2 or n_boot == 0:
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(per_window), (n_boot, len(per_window)))
    sums = per_window[idx].sum(1)  # [n_boot, 4]
    denom = sums[:, 2] - sums[:, 0]
    ok = denom != 0
    if not ok.any():
        return None
    scores = (sums[ok, 2] - sums[ok, 1]) / denom[ok]
    lo, hi = np.quantile(scores, [(1 - ci) / 2, (1 + ci) / 2])
    return float(lo), float(hi)


class SAEFidelityAnalyzer(Analyzer):
    """Reconstruction fidelity of each hook's SAE on each text set (see module docstring).

    Reads batches in the SAE basis (``SAEBasis.read``): ``batch.acts`` are the
    latents, ``batch.raw`` the hook vectors they encode, ``batch.ce`` the CE-loss
    sums of the batch's first windows. The SAEs are a handle (used to decode).
    Per-window CE sums are kept for the CI (at most ``ce_windows`` per set).
    """

    name = "sae_fidelity"
    reads = frozenset({Reading.SAE})
    handles = ("saes",)

    def __init__(
        self, saes: dict[str, SAE], massive_dims: dict[str, list[int]] | None = None, n_boot: int = 500, seed: int = 0
    ) -> None:
        self.saes = saes
        self.massive_dims = {h: sorted(d) for h, d in (massive_dims or {}).items() if h in saes and d}
        self.n_boot = n_boot
        self.seed = seed
        self._basis = SAEBasis(saes)
        self.add_state("sets", {}, "union")
        # per (hook, set), and per (hook, set) over the coordinates left after masking massive dims
        for prefix in ("", "masked_"):
            self.add_state(f"{prefix}tokens", {}, "sum")
            self.add_state(f"{prefix}sum_x", {}, "sum")
            self.add_state(f"{prefix}sum_sq", {}, "sum")
            self.add_state(f"{prefix}sum_err", {}, "sum")
            self.add_state(f"{prefix}sum_cos", {}, "sum")
        self.add_state("sum_l0", {}, "sum")
        self.add_state("ce", {}, "sum")  # (hook, set) → CESums
        self.add_state("ce_windows", {}, "union")  # (hook, set, seq_index) → (clean, sae, ablated, tokens)

    def update(self, batch: ActivationBatch) -> None:
        if batch.basis == "raw" or batch.raw is None:
            raise ValueError(
                "SAEFidelityAnalyzer reads SAE latents with their raw vectors: pass SAEBasis(saes).read(batch)"
            )
        record_set(self.sets, batch)
        for hook in self.saes:
            if hook not in batch.acts:
                continue
            f = batch.acts[hook][batch.mask]
            x = batch.raw[hook][batch.mask].flatten(1).double()
            x_hat = self._basis.decode(hook, f).flatten(1).double()
            key = (hook, batch.set_name)
            self._add("", key, x, x_hat)
            accumulate(self.sum_l0, key, int((f != 0).sum()))
            if hook in self.massive_dims:
                keep = torch.ones(x.shape[1], dtype=torch.bool)
                keep[self.massive_dims[hook]] = False
                self._add("masked_", key, x[:, keep], x_hat[:, keep])
            for seq, sums in (batch.ce or {}).get(hook, {}).items():
                accumulate(self.ce, key, sums)
                self.ce_windows[(hook, batch.set_name, seq)] = (sums.clean, sums.sae, sums.ablated, sums.tokens)

    def _add(self, prefix: str, key: Key, x: torch.Tensor, x_hat: torch.Tensor) -> None:
        accumulate(getattr(self, f"{prefix}tokens"), key, len(x))
        accumulate(getattr(self, f"{prefix}sum_x"), key, x.sum(0))
        accumulate(getattr(self, f"{prefix}sum_sq"), key, float(x.pow(2).sum()))
        accumulate(getattr(self, f"{prefix}sum_err"), key, float((x - x_hat).pow(2).sum()))
        cos = torch.nn.functional.cosine_similarity(x, x_hat, dim=-1)
        accumulate(getattr(self, f"{prefix}sum_cos"), key, float(cos.sum()))

    def _metrics(self, prefix: str, key: Key) -> dict[str, Any]:
        parts = ("tokens", "sum_x", "sum_sq", "sum_err", "sum_cos")
        return _result(*(getattr(self, f"{prefix}{p}")[key] for p in parts))

    def _reference_ev(self, prefix: str, hook: str) -> float | None:
        """EV over the pooled in-distribution sets."""
        tokens = getattr(self, f"{prefix}tokens")
        keys = [k for k in tokens if k[0] == hook and self.sets[k[1]].kind == "in_distribution"]
        if not keys:
            return None
        parts = ("tokens", "sum_x", "sum_sq", "sum_err", "sum_cos")
        pooled = [sum(getattr(self, f"{prefix}{p}")[k] for k in keys) for p in parts]
        return _result(*pooled)["explained_variance"]

    def compute(self) -> dict[str, Any]:
        """``{"hooks": {hook: {"reference_ev", "massive_dims", "sets": {set: metrics}}}}``.

        Per set: the metrics of the module docstring, ``kind``, ``ev_drop`` and,
        for hooks with massive dims, ``massive_masked`` (EV, cosine, relative MSE
        and EV drop over the other coordinates).
        """
        out: dict[str, Any] = {}
        for hook in self.saes:
            ref_ev, ref_masked_ev = self._reference_ev("", hook), self._reference_ev("masked_", hook)
            rows = {}
            for key in (k for k in self.tokens if k[0] == hook):
                n = self.tokens[key]
                r = {"tokens": n, **self._metrics("", key), "l0": self.sum_l0[key] / n if n else None}
                ce = self.ce.get(key, CESums())
                windows = np.array([v for k, v in sorted(self.ce_windows.items()) if k[:2] == key], dtype=np.float64)
                r |= {
                    "ce_score": ce.score(),
                    "ce_score_ci": _ce_ci(windows.reshape(-1, 4), self.n_boot, self.seed),
                    "ce_clean": ce.clean / ce.tokens if ce.tokens else None,
                    "ce_sae": ce.sae / ce.tokens if ce.tokens else None,
                    "ce_ablated": ce.ablated / ce.tokens if ce.tokens else None,
                    "ce_tokens": ce.tokens,
                    "ce_windows": len(windows),
                    "kind": self.sets[key[1]].kind,
                    "ev_drop": _drop(ref_ev, r["explained_variance"]),
                }
                if key in self.masked_tokens:
                    m = self._metrics("masked_", key)
                    r["massive_masked"] = {**m, "ev_drop": _drop(ref_masked_ev, m["explained_variance"])}
                rows[key[1]] = r
            out[hook] = {"reference_ev": ref_ev, "massive_dims": self.massive_dims.get(hook, []), "sets": rows}
        return {"hooks": out}


def _drop(reference: float | None, value: float | None) -> float | None:
    return None if reference is None or value is None else reference - value
