"""Two models, one suite: behaviour, representational similarity and the diagnostics side by side (DESIGN §5).

``compare(model_a, model_b, suite=…, hooks=…, saes_a=…, saes_b=…)`` returns a
:class:`~fer_diag.report.comparison.Comparison`. Kumar et al.'s point (two networks
with identical outputs can be organised differently inside) needs both halves on
one page, each measured:

1. **Behaviour** per text set on the same windows: top-1 agreement of the next-token
   predictions, mean KL(A‖B) and KL(B‖A) per token, and the NLL difference B − A with
   a bootstrap CI over windows; "identically performing on this suite" is stated
   against :class:`IdenticalThresholds`.
2. **Similarity** per hook pair (:mod:`fer_diag.similarity`): debiased and biased
   linear CKA and mutual k-NN alignment on pooled vectors (one per window: the mean
   over its counted tokens) and on token vectors, the full hook × hook CKA map, and
   layers matched by relative depth and by best CKA (both shown; they agree for a
   model and its rotation, not for models of different depth).
3. **Diagnostics**: the :class:`~fer_diag.audit.Audit` of each model on the same suite
   (a reduced :class:`~fer_diag.audit.AuditConfig`), its sparsity profiles, familiarity
   AUROCs and verdicts side by side with their differences (and the ``probes`` /
   ``fer`` report frames when the audit has them).

Memory (bounded, stated): both models stream the same windows one batch at a time;
what is kept per hook is a bounded sample — the pooled vector of every window
(``max_seqs`` × sets rows) and a fixed, seeded sample of ``token_samples`` token
positions drawn from the windows' masks *before* streaming (the same positions in both
models) — so memory does not grow with window length, only with these two caps. The
similarity measures run on these samples after streaming (their Grams are
``n × n``). Behaviour keeps per-window sums only.

Built-in pairs (``model_b`` as a string, :func:`load_pair`): ``rotated:SEED``
(:func:`~fer_diag.transforms.rotate_residual` of A, its SAEs rotated to match with
:func:`~fer_diag.transforms.rotate_sae`, so SAE-basis numbers are the same),
``random-init[:SEED]`` (a randomly initialised copy, as the audit's control), or a
second zoo name. Models with different tokenizers are compared on text: windows of the
same texts, NLL per UTF-8 byte instead of per token, and no token-level measure (top-1
agreement, KL and token-level CKA need a shared vocabulary and token positions).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field

from fer_diag.audit import Audit, AuditConfig, suite_windows
from fer_diag.capture import ActivationBatch, Capture, HookNameError, hook_layer, resolve_hooks
from fer_diag.data.suite import Suite, Windows
from fer_diag.errors import BadInputError
from fer_diag.models import LoadedModel, check_seq_len, load_model
from fer_diag.pipeline import progress_bar
from fer_diag.report.schema import Report, TextSetInfo
from fer_diag.similarity import cka_matrix, linear_cka, mutual_knn
from fer_diag.stats import bootstrap_counts, pair_rng, percentile_ci

__all__ = [
    "CompareConfig",
    "HookMismatchError",
    "IdenticalThresholds",
    "SAEWidthError",
    "TokenizerMismatchError",
    "compare",
    "load_pair",
    "match_by_depth",
    "relative_depth",
]

#: similarity hooks when none are given: the residual stream after every block
DEFAULT_HOOKS = ("blocks.*.hook_resid_post",)
#: hooks whose vectors :func:`~fer_diag.transforms.rotate_residual` rotates (their SAEs are rotated to match)
_RESIDUAL_BASIS = (
    "hook_resid_pre",
    "hook_resid_mid",
    "hook_resid_post",
    "hook_embed",
    "hook_pos_embed",
    "hook_attn_out",
    "hook_mlp_out",
    "hook_normalized",
)


class TokenizerMismatchError(BadInputError):
    """Token-level measures asked for two models whose tokenizers differ."""


class HookMismatchError(BadInputError):
    """A hook that exists in one model of the pair only."""


class SAEWidthError(BadInputError):
    """The two models' SAEs at one hook have different widths (latent counts): SAE-basis numbers do not compare."""


class IdenticalThresholds(BaseModel):
    """When two models count as "identically performing on this suite": every text set must pass every test."""

    model_config = ConfigDict(extra="forbid")

    agreement_min: float = Field(0.99, ge=0, le=1, description="top-1 agreement of next-token predictions, at least")
    kl_max: float = Field(1e-3, ge=0, description="mean KL per token (nats), each direction, at most")
    nll_diff_max: float = Field(
        0.01, ge=0, description="|mean NLL difference| (nats per token or per byte) and both CI ends within ±this"
    )


def compare_audit_config() -> AuditConfig:
    """The audit of each model inside a comparison, sized so that ``fer-diag compare smollm2-135m rotated:0`` fits
    in 10 minutes on 2 CPU cores: 8 windows of 64 tokens per set, no random-init control, 2 CE-splice windows, a
    lighter bootstrap, probes on one concept (``source_kind``, 8 examples per class) at the SAE hooks only, FER
    indices without their bootstrap CI (each replicate is a whole FER pass)."""
    return AuditConfig(
        seq_len=64,
        max_seqs=8,
        random_init_control=False,
        n_boot=200,
        ce_windows=2,
        concepts=["source_kind"],
        concept_per_class=8,
        probe_neurons=False,
        fer_boot=0,
    )


class CompareConfig(BaseModel):
    """Settings of a comparison; printed in it."""

    model_config = ConfigDict(extra="forbid")

    hooks: list[str] | None = Field(None, description="similarity hooks of A (names / wildcards); default resid_post")
    hooks_b: list[str] | None = Field(None, description="similarity hooks of B; default: the same names as A's")
    seq_len: int = Field(64, ge=4, description="tokens per window, BOS included")
    max_seqs: int = Field(6, ge=2, description="windows per text set for behaviour and similarity")
    min_tokens: int = Field(8, ge=1, description="windows with fewer counted tokens are dropped")
    batch_size: int = Field(8, ge=1, description="windows per forward pass")
    token_samples: int = Field(1024, ge=8, description="token positions sampled (over all sets) for token-level CKA")
    token_level: bool | None = Field(
        None, description="token-level measures; None: on when the tokenizers are the same (refused otherwise)"
    )
    knn_k: int = Field(10, ge=1, description="neighbours of the mutual k-NN alignment")
    n_boot: int = Field(500, ge=0, description="bootstrap resamples of the NLL-difference CI")
    seed: int = 0
    device: str = "cpu"
    identical: IdenticalThresholds = Field(default_factory=IdenticalThresholds)
    audit: AuditConfig | None = Field(
        default_factory=compare_audit_config, description="each model's audit (None: no side-by-side diagnostics)"
    )


# --------------------------------------------------------------------------- the pair
def same_tokenizer(a, b) -> bool:
    """Whether two tokenizers are the same object or map the same strings to the same ids."""
    return a is b or (a.get_vocab() == b.get_vocab() and a.bos_token_id == b.bos_token_id)


def check_pair_spec(spec: str) -> tuple[str, int | None]:
    """``(kind, seed)`` of a built-in B (``rotated[:SEED]``, ``random-init[:SEED]``) or ``(zoo name, None)``.

    Cheap, before any model loads; an unknown or uninstalled zoo name raises (naming the install command).
    """
    kind, sep, arg = spec.partition(":")
    if kind in ("rotated", "random-init"):
        try:
            return kind, int(arg) if sep else 0
        except ValueError:
            raise BadInputError(f"{spec!r}: {kind}:SEED takes an integer seed, e.g. {kind}:0") from None
    from fer_diag.models import check_available

    check_available(spec)
    return spec, None


def load_pair(
    model_a: Any,
    model_b: Any,
    *,
    tokenizer: Any = None,
    tokenizer_b: Any = None,
    device: str = "cpu",
    progress: bool = True,
) -> tuple[LoadedModel, LoadedModel, str]:
    """Load A and B; returns ``(a, b, kind)`` with kind ``"rotated"``, ``"random-init"`` or ``"model"``.

    ``model_b`` is any :func:`~fer_diag.models.load_model` argument, or a built-in spec
    (:func:`check_pair_spec`). ``rotated:SEED`` needs A as a ``HookedTransformer``
    (:class:`~fer_diag.transforms.UnsupportedRotationError` says why otherwise).
    """
    from fer_diag.transforms import rotate_residual

    a = load_model(model_a, tokenizer=tokenizer, device=device, progress=progress)
    if not isinstance(model_b, str):
        return a, load_model(model_b, tokenizer=tokenizer_b, device=device, progress=progress), "model"
    kind, seed = check_pair_spec(model_b)
    if kind == "rotated":
        rotated = rotate_residual(a.model, seed)  # checks the logits itself
        b = LoadedModel(f"{a.name} rotated:{seed}", rotated, a.tokenizer, a.bos_token_id, a.pad_token_id)
        return a, b, kind
    if kind == "random-init":
        source = a.name if a.spec is not None else a.model
        return a, load_model(source, tokenizer=a.tokenizer, random_init=True, seed=seed, device=device), kind
    return a, load_model(model_b, tokenizer=tokenizer_b, device=device, progress=progress), "model"


def _saes(loaded: LoadedModel, spec: Any, use_default: bool) -> dict:
    """SAEs of one model keyed by hook: ``spec`` (any ``match_saes`` input), else the shipped ones of a zoo model."""
    from fer_diag.sae.loading import default_saes, match_saes

    if spec is None:
        found = default_saes(loaded.name) if use_default and loaded.spec is not None else {}
        return match_saes(found, loaded.model, list(found)) if found else {}
    return match_saes(spec, loaded.model, [], extend=True)


def pair_saes(a: LoadedModel, b: LoadedModel, kind: str, saes_a: Any, saes_b: Any, use_default: bool):
    """``(saes of A, saes of B)``; B's default: A's rotated to match (``rotated``), none (``random-init``), its own.

    Raises :class:`SAEWidthError` when both models have an SAE at one hook and their ``d_sae`` differ.
    """
    from fer_diag.transforms import residual_rotation, rotate_sae

    sa = _saes(a, saes_a, use_default)
    if saes_b is not None:
        sb = _saes(b, saes_b, False)
    elif kind == "rotated":
        q = residual_rotation(b.model)
        sb = {h: rotate_sae(s, q) if h.endswith(_RESIDUAL_BASIS) else s for h, s in sa.items()}
    elif kind == "random-init":
        sb = {}
    else:
        sb = _saes(b, None, use_default)
    for hook in sorted(set(sa) & set(sb)):
        wa, wb = int(sa[hook].cfg.d_sae), int(sb[hook].cfg.d_sae)
        if wa != wb:
            raise SAEWidthError(
                f"the SAEs at {hook} have {wa} latents in A and {wb} in B: SAE-basis sparsity (L0, densities) "
                "only compares at equal widths. Pass SAEs of the same d_sae (saes_a= / saes_b=, --sae / --sae-b), "
                "or leave B's out (saes_b={}, --no-default-saes) to compare the raw bases only."
            )
    return sa, sb


# --------------------------------------------------------------------------- hooks and depth
def relative_depth(hook: str, n_layers: int) -> float:
    """Where a hook sits in its model, in [0, 1]: (layer + 1) / n_layers after block ``layer`` (``resid_pre``:
    layer / n_layers); 0 before the blocks (embeddings), 1 after them (``ln_final``)."""
    layer = hook_layer(hook)
    if layer is None:
        return 1.0 if hook.startswith(("ln_final", "unembed")) else 0.0
    return (layer + (0 if hook.endswith("hook_resid_pre") else 1)) / n_layers


def match_by_depth(depth_a: Sequence[float], depth_b: Sequence[float]) -> list[int]:
    """For each A depth, the index of the nearest B depth (the first on a tie)."""
    db = np.asarray(depth_b, dtype=float)
    return [int(np.argmin(np.abs(db - d))) for d in depth_a]


def _pair_hooks(a: LoadedModel, b: LoadedModel, cfg: CompareConfig) -> tuple[list[str], list[str]]:
    hooks_a = resolve_hooks(a.model, cfg.hooks or list(DEFAULT_HOOKS))
    patterns_b = cfg.hooks_b or cfg.hooks or list(DEFAULT_HOOKS)
    try:
        hooks_b = resolve_hooks(b.model, patterns_b)
    except HookNameError as exc:
        raise HookMismatchError(
            f"{exc} It exists in A ({a.name}) but not in B ({b.name}). Give B its own hooks (hooks_b=[...], "
            "--hooks-b); hooks are matched across the two models by relative depth."
        ) from None
    return sorted(hooks_a, key=lambda h: relative_depth(h, a.n_layers)), sorted(
        hooks_b, key=lambda h: relative_depth(h, b.n_layers)
    )


# --------------------------------------------------------------------------- streaming state
def token_sample(windows: Windows, n: int, seed: int) -> torch.Tensor:
    """``[n_windows, seq_len]`` bool: ``n`` counted positions drawn without replacement (seeded by set name)."""
    counted = windows.mask.nonzero()
    gen = torch.Generator().manual_seed(seed + zlib.crc32(windows.set_name.encode()))
    pick = counted[torch.randperm(len(counted), generator=gen)[:n]]
    sel = torch.zeros_like(windows.mask)
    sel[pick[:, 0], pick[:, 1]] = True
    return sel


@dataclass
class _Vectors:
    """Bounded samples per hook: pooled window vectors and the pre-drawn token positions (module docstring)."""

    pooled: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    token: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    def update(self, batch: ActivationBatch, sel: torch.Tensor | None) -> None:
        m = batch.mask.unsqueeze(-1).float()
        for hook, act in batch.acts.items():
            pooled = (act * m).sum(1) / m.sum(1).clamp_min(1.0)
            self.pooled.setdefault(hook, []).append(pooled)
            if sel is not None:
                self.token.setdefault(hook, []).append(act[sel])

    def matrices(self, level: str) -> dict[str, torch.Tensor]:
        """``hook → [n, d]`` of one level (``"pooled"`` or ``"token"``)."""
        return {h: torch.cat(v) for h, v in getattr(self, level).items()}


@torch.inference_mode()
def window_behaviour(logits_a: torch.Tensor, logits_b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[3, batch]`` per-window sums over counted tokens t of: top-1 agreement of the predictions of t,
    KL(A‖B) and KL(B‖A) of the two next-token distributions (nats; float64, one window at a time)."""
    target = mask[:, 1:].to(logits_a.device)
    out = torch.zeros(3, len(mask), dtype=torch.float64)
    for i in range(len(mask)):
        la, lb = logits_a[i, :-1][target[i]].double(), logits_b[i, :-1][target[i]].double()
        lpa, lpb = la.log_softmax(-1), lb.log_softmax(-1)
        out[0, i] = float((la.argmax(-1) == lb.argmax(-1)).sum())
        out[1, i] = float((lpa.exp() * (lpa - lpb)).sum())
        out[2, i] = float((lpb.exp() * (lpb - lpa)).sum())
    return out


def _window_nll(batch: ActivationBatch, tokenizer, per_byte: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(summed NLL, units)`` per window: units are counted tokens, or UTF-8 bytes of their text."""
    nll = torch.where(batch.mask, batch.token_nll, 0.0).double().sum(1)
    if not per_byte:
        return nll, batch.mask.sum(1).double()
    units = [len(tokenizer.decode(t[m]).encode()) for t, m in zip(batch.tokens, batch.mask, strict=True)]
    return nll, torch.tensor(units, dtype=torch.float64).clamp_min(1.0)


@dataclass
class _Behaviour:
    """Per-window sums of one text set (bounded by its windows)."""

    agree: list[torch.Tensor] = field(default_factory=list)
    n: list[torch.Tensor] = field(default_factory=list)
    nll_a: list[torch.Tensor] = field(default_factory=list)
    nll_b: list[torch.Tensor] = field(default_factory=list)

    def result(self, name: str, n_boot: int, seed: int, per_byte: bool) -> dict[str, Any]:
        n = torch.cat(self.n)
        sums = torch.cat(self.agree, dim=1) if self.agree else None
        a = torch.cat([s / u for s, u in self.nll_a]).numpy()
        b = torch.cat([s / u for s, u in self.nll_b]).numpy()
        diff = b - a
        ci = None
        if n_boot and len(diff) > 1:
            counts = bootstrap_counts(len(diff), n_boot, pair_rng(seed, name, "nll_diff"))
            ci = percentile_ci(counts @ diff / len(diff))
        total = float(n.sum())
        return {
            "n_windows": len(diff),
            "n_tokens": int(total),
            "top1_agreement": None if sums is None else float(sums[0].sum()) / total,
            "kl_ab": None if sums is None else float(sums[1].sum()) / total,
            "kl_ba": None if sums is None else float(sums[2].sum()) / total,
            "nll_a": float(a.mean()),
            "nll_b": float(b.mean()),
            "nll_diff": float(diff.mean()),
            "nll_diff_ci": ci,
            "nll_unit": "nats/byte" if per_byte else "nats/token",
        }


def identical_verdict(rows: list[dict[str, Any]], t: IdenticalThresholds) -> tuple[bool, list[str]]:
    """``(identical, reasons)``: every set within every threshold; each failed test named with its numbers."""
    reasons = []
    for r in rows:
        s = r["set"]
        if r["top1_agreement"] is not None and r["top1_agreement"] < t.agreement_min:
            reasons.append(f"{s}: top-1 agreement {r['top1_agreement']:.4f} < {t.agreement_min}")
        for key, label in (("kl_ab", "KL(A‖B)"), ("kl_ba", "KL(B‖A)")):
            if r[key] is not None and r[key] > t.kl_max:
                reasons.append(f"{s}: {label} {r[key]:.2e} > {t.kl_max:g}")
        ends = [r["nll_diff"], *(r["nll_diff_ci"] or ())]
        if max(abs(x) for x in ends) > t.nll_diff_max:
            reasons.append(f"{s}: NLL difference {r['nll_diff']:+.4f} (CI {r['nll_diff_ci']}) beyond ±{t.nll_diff_max}")
    return not reasons, reasons


# --------------------------------------------------------------------------- similarity
def similarity(
    vec_a: _Vectors,
    vec_b: _Vectors,
    hooks_a: list[str],
    hooks_b: list[str],
    depth_a: list[float],
    depth_b: list[float],
    k: int,
) -> dict[str, Any]:
    """The similarity section: hook × hook debiased CKA maps, and pairs matched by depth and by best CKA."""
    levels = ["pooled", *(["token"] if vec_a.token else [])]
    mats = {lv: (vec_a.matrices(lv), vec_b.matrices(lv)) for lv in levels}
    heat = {lv: cka_matrix([a[h] for h in hooks_a], [b[h] for h in hooks_b]) for lv, (a, b) in mats.items()}
    main = heat[levels[-1]]  # token level when there is one: many more samples

    def pair(i: int, j: int, matched_by: str) -> dict[str, Any]:
        ha, hb = hooks_a[i], hooks_b[j]
        row: dict[str, Any] = {"hook_a": ha, "hook_b": hb, "depth_a": depth_a[i], "depth_b": depth_b[j]}
        row["matched_by"] = matched_by
        for level, (a, b) in mats.items():
            x, y = a[ha], b[hb]
            row[f"cka_{level}"] = float(heat[level][i, j])
            row[f"cka_{level}_biased"] = linear_cka(x, y, debiased=False)
            row[f"knn_{level}"] = mutual_knn(x, y, min(k, len(x) - 1))
        return row

    by_depth = match_by_depth(depth_a, depth_b)
    by_cka = [int(np.nanargmax(r)) if np.isfinite(r).any() else by_depth[i] for i, r in enumerate(main)]
    return {
        "n_pooled": len(next(iter(mats["pooled"][0].values()))),
        "n_tokens": len(next(iter(mats["token"][0].values()))) if "token" in mats else 0,
        "knn_k": k,
        "by_depth": [pair(i, j, "depth") for i, j in enumerate(by_depth)],
        "by_cka": [pair(i, j, "cka") for i, j in enumerate(by_cka)],
        "heatmaps": [
            {"level": lv, "hooks_a": hooks_a, "hooks_b": hooks_b, "values": m.tolist()} for lv, m in heat.items()
        ],
    }


# --------------------------------------------------------------------------- diagnostics side by side
_Z95 = 1.959963984540054


def _hook_pairs(ra: Report, rb: Report) -> list[tuple[str, str]]:
    """Each audited hook of A with the audited hook of B at the nearest relative depth."""
    da = [relative_depth(h, ra.model.n_layers) for h in ra.hooks]
    db = [relative_depth(h, rb.model.n_layers) for h in rb.hooks]
    return [(ra.hooks[i], rb.hooks[j]) for i, j in enumerate(match_by_depth(da, db))]


def side_by_side(
    fa: pd.DataFrame, fb: pd.DataFrame, pairs: list[tuple[str, str]], keys: list[str], values: list[str]
) -> pd.DataFrame:
    """Rows of one report frame of A and of B next to each other: B's ``hook`` renamed to its matched A hook.

    Columns: ``hook_a``, ``hook_b``, the other ``keys``, then ``<value>_a`` / ``<value>_b``. Rows without a
    hook (baselines) pair with each other; rows only one side has are dropped.
    """
    hook_map = pd.DataFrame([*pairs, (None, None)], columns=["hook", "hook_b"])
    a = fa[[*keys, *values]].rename(columns={"hook": "hook_a"})
    b = (
        fb[[*keys, *values]]
        .rename(columns={"hook": "hook_b"})
        .merge(hook_map, on="hook_b")
        .rename(columns={"hook": "hook_a"})
    )
    on = ["hook_a" if k == "hook" else k for k in keys]
    return a.merge(b, on=on, suffixes=("_a", "_b"))


def _ci(lo: Any, hi: Any) -> tuple[float, float] | None:
    return None if pd.isna(lo) or pd.isna(hi) else (float(lo), float(hi))


def _num(x: Any) -> float | None:
    return None if pd.isna(x) else float(x)


def _summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (basis, metric): how far B moved from A — mean and max |difference|, and how many CIs exclude 0."""
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if r["diff"] is not None:
            out.setdefault((r["basis"] or "baseline", r["metric"]), []).append(r)
    return [
        {
            "basis": basis,
            "metric": metric,
            "n": len(rs),
            "mean_abs_diff": float(np.mean([abs(r["diff"]) for r in rs])),
            "max_abs_diff": float(np.max([abs(r["diff"]) for r in rs])),
            "n_ci_excludes_0": sum(1 for r in rs if r["diff_ci"] and (r["diff_ci"][0] > 0 or r["diff_ci"][1] < 0)),
        }
        for (basis, metric), rs in sorted(out.items())
    ]


def _profiles(ra: Report, rb: Report, pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Sparsity profiles (unmasked; mean over windows) with B − A and a normal 95 % CI of the difference
    (unpaired, from each side's window std: conservative for the same windows)."""
    keys, values = ["basis", "hook", "set", "metric"], ["seq_mean", "seq_std", "n_seqs"]
    fa, fb = (r.frame("sparsity.profiles").query("variant == 'unmasked'") for r in (ra, rb))
    rows = []
    for x in side_by_side(fa, fb, pairs, keys, values).itertuples():
        diff = x.seq_mean_b - x.seq_mean_a
        half = _Z95 * np.sqrt(x.seq_std_a**2 / max(x.n_seqs_a, 1) + x.seq_std_b**2 / max(x.n_seqs_b, 1))
        rows.append(
            {
                "basis": x.basis,
                "hook_a": x.hook_a,
                "hook_b": x.hook_b,
                "set": x.set,
                "metric": x.metric,
                "a": _num(x.seq_mean_a),
                "b": _num(x.seq_mean_b),
                "diff": _num(diff),
                "diff_ci": _ci(diff - half, diff + half),
            }
        )
    return rows


def _aurocs(ra: Report, rb: Report, pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Familiarity AUROCs (direction-free, unmasked) with B − A; CI half-width = the two half-widths in quadrature."""
    keys = ["source", "basis", "hook", "set_name", "metric", "reduce"]
    values = ["auroc_oriented", "auroc_oriented_ci_low", "auroc_oriented_ci_high", "direction"]
    fa, fb = (r.frame("familiarity.detection").query("not masked") for r in (ra, rb))
    rows = []
    for x in side_by_side(fa, fb, pairs, keys, values).itertuples():
        a_ci = _ci(x.auroc_oriented_ci_low_a, x.auroc_oriented_ci_high_a)
        b_ci = _ci(x.auroc_oriented_ci_low_b, x.auroc_oriented_ci_high_b)
        diff = x.auroc_oriented_b - x.auroc_oriented_a
        diff_ci = None
        if a_ci and b_ci:
            half = np.hypot((a_ci[1] - a_ci[0]) / 2, (b_ci[1] - b_ci[0]) / 2)
            diff_ci = _ci(diff - half, diff + half)
        rows.append(
            {
                "source": x.source,
                "basis": None if pd.isna(x.basis) else x.basis,
                "hook_a": None if pd.isna(x.hook_a) else x.hook_a,
                "hook_b": None if pd.isna(x.hook_b) else x.hook_b,
                "set": x.set_name,
                "metric": x.metric,
                "reduce": x.reduce,
                "a": _num(x.auroc_oriented_a),
                "a_ci": a_ci,
                "b": _num(x.auroc_oriented_b),
                "b_ci": b_ci,
                "diff": _num(diff),
                "diff_ci": diff_ci,
                "direction_a": x.direction_a,
                "direction_b": x.direction_b,
            }
        )
    return rows


def _verdicts(ra: Report, rb: Report, pairs: list[tuple[str, str]]) -> tuple[list[dict], list[dict]]:
    """Verdict rows side by side (status, decisive flag, value) and per-hook status counts of A and B."""
    keys = ["hook", "basis", "metric", "reduce", "target"]
    merged = side_by_side(
        ra.frame("verdict.rows"), rb.frame("verdict.rows"), pairs, keys, ["status", "decisive", "value"]
    )
    rows = [
        {
            "hook_a": x.hook_a,
            "hook_b": x.hook_b,
            "basis": x.basis,
            "metric": x.metric,
            "reduce": x.reduce,
            "target": x.target,
            "status_a": x.status_a,
            "status_b": x.status_b,
            "decisive_a": None if pd.isna(x.decisive_a) else x.decisive_a,
            "decisive_b": None if pd.isna(x.decisive_b) else x.decisive_b,
            "value_a": _num(x.value_a),
            "value_b": _num(x.value_b),
        }
        for x in merged.itertuples()
    ]
    counts = side_by_side(
        ra.frame("verdict.hooks"), rb.frame("verdict.hooks"), pairs, ["hook"], ["TRUSTED", "CAUTION", "UNTRUSTED"]
    )
    hooks = [
        {"hook_a": x["hook_a"], "hook_b": x["hook_b"]}
        | {f"{s.lower()}_{side}": int(x[f"{s}_{side}"]) for s in ("TRUSTED", "CAUTION", "UNTRUSTED") for side in "ab"}
        for x in counts.to_dict("records")
    ]
    return rows, hooks


def _extras(ra: Report, rb: Report, pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """The audit's ``probes`` / ``fer`` frames, when this fer-diag's reports have them, side by side:
    text columns (and ``hook``) are keys, numeric columns get ``_a`` / ``_b`` / ``_diff``."""
    out = []
    for name in Report.frames():
        if name.split(".")[0] not in ("probes", "fer"):
            continue
        fa, fb = ra.frame(name), rb.frame(name)
        if fa.empty or fb.empty:
            continue
        numeric = [
            c for c in fa.columns if pd.api.types.is_numeric_dtype(fa[c]) and not pd.api.types.is_bool_dtype(fa[c])
        ]
        keys = [
            c for c in fa.columns if c not in numeric and fa[c].map(lambda v: isinstance(v, str | bool | None)).all()
        ]
        if "hook" not in keys:
            pairs_used: list[tuple[str, str]] = []
            fa, fb = fa.assign(hook=None), fb.assign(hook=None)
            keys = ["hook", *keys]
        else:
            pairs_used = pairs
        merged = side_by_side(fa, fb, pairs_used, keys, numeric)
        for c in numeric:
            merged[f"{c}_diff"] = merged[f"{c}_b"] - merged[f"{c}_a"]
        merged = merged.astype(object).where(merged.notna(), None)
        out.append({"name": name, "columns": list(merged.columns), "rows": merged.to_numpy().tolist()})
    return out


def diagnostics(ra: Report, rb: Report) -> dict[str, Any]:
    """The side-by-side section from two audit reports of the same suite (pure: reads the reports only)."""
    pairs = _hook_pairs(ra, rb)
    profiles, aurocs = _profiles(ra, rb, pairs), _aurocs(ra, rb, pairs)
    verdict_rows, verdict_hooks = _verdicts(ra, rb, pairs)
    return {
        "hook_pairs": pairs,
        "profiles": profiles,
        "profile_summary": _summary(profiles),
        "familiarity": aurocs,
        "auroc_summary": _summary(aurocs),
        "verdict_rows": verdict_rows,
        "verdict_hooks": verdict_hooks,
        "verdict_changed": sum(1 for r in verdict_rows if r["status_a"] != r["status_b"]),
        "extras": _extras(ra, rb, pairs),
    }


# --------------------------------------------------------------------------- entry point
def _windows(suite: Suite, loaded: LoadedModel, cfg: CompareConfig) -> dict[str, Windows]:
    return suite_windows(suite, loaded, seq_len=cfg.seq_len, max_windows=cfg.max_seqs, min_tokens=cfg.min_tokens)


def _aligned(wa: Windows, wb: Windows) -> tuple[Windows, Windows]:
    """The windows of the texts both tokenisations kept, in A's order (models with different tokenizers)."""
    pos_b = {int(s): i for i, s in enumerate(wb.source_index)}
    rows = [(i, pos_b[int(s)]) for i, s in enumerate(wa.source_index) if int(s) in pos_b]
    ia, ib = (torch.tensor([r[k] for r in rows], dtype=torch.long) for k in (0, 1))
    return wa.select(ia), wb.select(ib)


def _stream(a, b, hooks_a, hooks_b, suite, windows_a, windows_b, cfg, same, token_level, progress):
    """Both models over the same windows, one batch at a time: per-set behaviour sums and the bounded samples."""
    caps = [
        Capture(m.model, h, batch_size=cfg.batch_size, need_logits=True, keep_logits=same)
        for m, h in ((a, hooks_a), (b, hooks_b))
    ]
    vec_a, vec_b = _Vectors(), _Vectors()
    behaviour: dict[str, _Behaviour] = {}
    quota = max(1, cfg.token_samples // len(suite))
    with progress_bar(progress) as bar:
        task = bar.add_task("compare: A and B", total=sum(len(w) for w in windows_a.values())) if bar else None
        for s in suite:
            wa, wb = windows_a[s.name], windows_b[s.name]
            sel = token_sample(wa, quota, cfg.seed) if token_level else None
            acc = behaviour[s.name] = _Behaviour()
            lo = 0
            for ba, bb in zip(caps[0].batches(wa, s), caps[1].batches(wb, s), strict=True):
                rows = None if sel is None else sel[lo : lo + len(ba.tokens)]
                lo += len(ba.tokens)
                vec_a.update(ba, rows)
                vec_b.update(bb, rows)
                if same:
                    acc.agree.append(window_behaviour(ba.logits, bb.logits, ba.mask))
                acc.n.append(ba.mask.sum(1))
                acc.nll_a.append(_window_nll(ba, a.tokenizer, not same))
                acc.nll_b.append(_window_nll(bb, b.tokenizer, not same))
                if bar:
                    bar.advance(task, len(ba.tokens))
    return behaviour, vec_a, vec_b


def _model_side(loaded: LoadedModel) -> dict[str, Any]:
    tok = loaded.tokenizer
    return {
        "name": loaded.name,
        "hf_class": type(loaded.model).__name__,
        "n_layers": loaded.n_layers,
        "d_model": loaded.d_model,
        "random_init": loaded.random_init,
        "tokenizer": f"{type(tok).__name__} ({len(tok)} tokens)",
    }


def compare(
    model_a: Any = "smollm2-135m",
    model_b: Any = "rotated:0",
    *,
    suite: Suite | None = None,
    hooks: list[str] | None = None,
    hooks_b: list[str] | None = None,
    saes_a: Any = None,
    saes_b: Any = None,
    tokenizer: Any = None,
    tokenizer_b: Any = None,
    config: CompareConfig | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
):
    """Compare two models on one suite (module docstring) → :class:`~fer_diag.report.comparison.Comparison`.

    ``model_a`` / ``model_b``: zoo names, ``LoadedModel`` s, TransformerLens or Hugging Face models
    (with ``tokenizer`` / ``tokenizer_b``), or for B a built-in spec (``rotated:SEED``, ``random-init``).
    ``hooks`` / ``hooks_b``: similarity hooks (default every block's ``hook_resid_post``).
    ``saes_a`` / ``saes_b``: SAEs for the audits (default: shipped SAEs; for ``rotated`` A's rotated).
    ``suite``: default the embedded default suite (built with A's tokenizer). With ``out_dir`` the
    comparison is written there (JSON, Markdown, HTML, plots) and each audit under ``a/`` and ``b/``.
    """
    from fer_diag.data.suite import default_suite
    from fer_diag.report.comparison import Comparison
    from fer_diag.report.comparison_render import write_comparison

    cfg = config or CompareConfig()
    cfg = cfg.model_copy(update={k: v for k, v in (("hooks", hooks), ("hooks_b", hooks_b)) if v is not None})
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    a, b, kind = load_pair(
        model_a, model_b, tokenizer=tokenizer, tokenizer_b=tokenizer_b, device=cfg.device, progress=progress
    )
    for m in (a, b):
        check_seq_len(m, cfg.seq_len)
    same = same_tokenizer(a.tokenizer, b.tokenizer)
    if cfg.token_level and not same:
        raise TokenizerMismatchError(
            f"{a.name} and {b.name} have different tokenizers: their token positions do not correspond, so "
            "token-level CKA, top-1 agreement and KL are undefined. Pass token_level=None or False "
            "(--no-token-level): the models are then compared on text (pooled vectors of the same texts, NLL per byte)."
        )
    token_level = same and cfg.token_level is not False
    hooks_a, hooks_b_ = _pair_hooks(a, b, cfg)
    sa, sb = pair_saes(a, b, kind, saes_a, saes_b, cfg.audit.default_saes) if cfg.audit else ({}, {})
    n_texts = max(cfg.max_seqs, cfg.audit.max_seqs if cfg.audit else 0)
    suite = suite or default_suite(a.tokenizer, n_per_set=n_texts, seed=cfg.seed, seq_len=cfg.seq_len)
    skipped = list(getattr(suite, "skipped", []))
    if not same:
        ids = [s.name for s in suite if s.token_ids is not None]
        skipped += [f"{n}: token ids of A's tokenizer, not text (the tokenizers differ)" for n in ids]
        suite = Suite([s for s in suite if s.token_ids is None], skipped=skipped)
    windows_a = _windows(suite, a, cfg)
    windows_b = windows_a
    if not same:
        pairs = {
            n: _aligned(w, wb) for (n, w), wb in zip(windows_a.items(), _windows(suite, b, cfg).values(), strict=True)
        }
        windows_a, windows_b = ({n: p[i] for n, p in pairs.items()} for i in (0, 1))
    seconds["setup"] = time.perf_counter() - t0

    t = time.perf_counter()
    acc, vec_a, vec_b = _stream(a, b, hooks_a, hooks_b_, suite, windows_a, windows_b, cfg, same, token_level, progress)
    seconds["stream"] = time.perf_counter() - t
    rows = [
        {"set": n, "kind": suite[n].kind.value} | x.result(n, cfg.n_boot, cfg.seed, not same) for n, x in acc.items()
    ]
    identical, reasons = identical_verdict(rows, cfg.identical)
    t = time.perf_counter()
    depth_a = [relative_depth(h, a.n_layers) for h in hooks_a]
    depth_b = [relative_depth(h, b.n_layers) for h in hooks_b_]
    sim = similarity(vec_a, vec_b, hooks_a, hooks_b_, depth_a, depth_b, cfg.knn_k)
    seconds["similarity"] = time.perf_counter() - t

    diag = None
    if cfg.audit is not None:
        out = Path(out_dir) if out_dir is not None else None
        reports = []
        for side, loaded, saes in (("a", a, sa), ("b", b, sb)):
            t = time.perf_counter()
            runner = Audit(
                loaded, saes=saes, suite=suite, config=cfg.audit, out_dir=out / side if out else None, progress=progress
            )
            reports.append(runner.run())
            seconds[f"audit_{side}"] = time.perf_counter() - t
        diag = diagnostics(*reports) | {"reports": {"a": "a/report.json", "b": "b/report.json"} if out else {}}
    seconds["total"] = time.perf_counter() - t0
    token_note = None
    if not token_level:
        token_note = (
            "token-level measures are off: the tokenizers differ (models compared on text)"
            if not same
            else "token-level measures are off (token_level=False)"
        )
    result = Comparison(
        model_a=_model_side(a),
        model_b=_model_side(b),
        pair=kind,
        same_tokenizer=same,
        text_sets=[
            TextSetInfo(
                name=s.name,
                kind=s.kind.value,
                n_windows=len(windows_a[s.name]),
                n_tokens=int(windows_a[s.name].mask.sum()),
                level=s.level,
                axis=s.axis,
                source=s.source,
            )
            for s in suite
        ],
        skipped_sets=skipped,
        config=cfg.model_dump(mode="json"),
        seconds=seconds,
        behaviour={"thresholds": cfg.identical.model_dump(), "identical": identical, "reasons": reasons, "rows": rows},
        similarity=sim | {"token_level": token_level, "token_note": token_note},
        diagnostics=diag,
    )
    if out_dir is not None:
        write_comparison(result, out_dir)
    return result
