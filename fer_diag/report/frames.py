"""The row-like report sections as pandas DataFrames: ``report.frame("familiarity.detection")``.

One row per entry of a section, its nesting keys (basis, hook, set, metric, …)
flattened into columns, so results are filtered with pandas instead of walking
nested dicts. Confidence intervals ``[low, high]`` become two columns
``<name>_low`` / ``<name>_high``. An absent section gives an empty frame with the
same columns. Frames only rearrange the report's numbers; they compute nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from fer_diag.report.sections import (
    DetectionRow,
    FeatureDensity,
    FERRow,
    FidelitySet,
    GradedRow,
    LatentContext,
    MaskedFidelity,
    MassiveDim,
    MassiveHook,
    ProbeRow,
    ShiftedLatent,
    SparsitySection,
    TokenMetricStats,
    VerdictRow,
)

if TYPE_CHECKING:
    import pandas as pd

    from fer_diag.report.schema import Report

Rows = Iterator[dict[str, Any]]


def _fields(model: type, drop: tuple[str, ...] = ()) -> list[str]:
    return [f for f in model.model_fields if f not in drop]


def _split_ci(fields: list[str]) -> list[str]:
    out = []
    for f in fields:
        out += [f"{f}_low", f"{f}_high"] if f.endswith("_ci") else [f]
    return out


def _row(obj: Any, fields: list[str]) -> dict[str, Any]:
    """The ``fields`` of a model as a flat dict; ``*_ci`` intervals split into ``_low`` / ``_high``."""
    out: dict[str, Any] = {}
    for f in fields:
        v = getattr(obj, f)
        if f.endswith("_ci"):
            out[f"{f}_low"], out[f"{f}_high"] = v if v is not None else (None, None)
        else:
            out[f] = v
    return out


# --------------------------------------------------------------------------- sparsity
PROFILE_COLUMNS = ["basis", "hook", "set", "metric", "variant", "masked_same_as_unmasked", *_fields(TokenMetricStats)]


def _profiles(sp: SparsitySection | None) -> Rows:
    if sp is None:
        return
    stat_names = _fields(TokenMetricStats)
    for basis, hooks in sp.profiles.items():
        for hook, sets in hooks.items():
            for set_name, prof in sets.items():
                for metric, variants in prof.metrics.items():
                    for variant, st in variants.items():
                        row = {
                            "basis": basis,
                            "hook": hook,
                            "set": set_name,
                            "metric": metric,
                            "variant": variant,
                            "masked_same_as_unmasked": prof.masked_same_as_unmasked,
                        }
                        row.update({s: getattr(st, s, None) for s in stat_names})  # window metrics: no token stats
                        yield row


_DENSITY_FIELDS = _fields(FeatureDensity, drop=("log10_density_q10_q50_q90",))
_QUANTILES = ("log10_density_q10", "log10_density_q50", "log10_density_q90")
DENSITY_COLUMNS = ["basis", "hook", "set", *_DENSITY_FIELDS, *_QUANTILES]


def _density(r: Report) -> Rows:
    if r.sparsity is None:
        return
    for basis, hooks in r.sparsity.feature_density.items():
        for hook, sets in hooks.items():
            for set_name, d in sets.items():
                quantiles = dict(zip(_QUANTILES, d.log10_density_q10_q50_q90, strict=True))
                yield {"basis": basis, "hook": hook, "set": set_name, **_row(d, _DENSITY_FIELDS), **quantiles}


SETS_COLUMNS = ["set", "kind", "level", "axis"]


def _sets(r: Report) -> Rows:
    if r.sparsity is None:
        return
    for name, info in r.sparsity.sets.items():
        yield {"set": name, "kind": info.kind, "level": info.level, "axis": info.axis}


# --------------------------------------------------------------------------- massive
_HOOK_FIELDS = _fields(MassiveHook, drop=("dims",))
MASSIVE_HOOK_COLUMNS = [*_HOOK_FIELDS, "n_dims"]
MASSIVE_DIM_COLUMNS = ["hook", "layer", *_fields(MassiveDim)]


def _massive_hooks(r: Report) -> Rows:
    if r.massive is None:
        return
    for h in r.massive.hooks.values():
        yield {**_row(h, _HOOK_FIELDS), "n_dims": len(h.dims)}


def _massive_dims(r: Report) -> Rows:
    if r.massive is None:
        return
    fields = _fields(MassiveDim)
    for hook, h in r.massive.hooks.items():
        for d in h.dims:
            yield {"hook": hook, "layer": h.layer, **_row(d, fields)}


# --------------------------------------------------------------------------- familiarity
DETECTION_COLUMNS = _split_ci(_fields(DetectionRow))
GRADED_COLUMNS = _split_ci(_fields(GradedRow))


def _detection(r: Report) -> Rows:
    fields = _fields(DetectionRow)
    return (_row(x, fields) for x in (r.familiarity.detection if r.familiarity else []))


def _graded(r: Report) -> Rows:
    fields = _fields(GradedRow)
    return (_row(x, fields) for x in (r.familiarity.graded if r.familiarity else []))


# --------------------------------------------------------------------------- SAE fidelity
_FID_FIELDS = _fields(FidelitySet, drop=("massive_masked",))
_MASKED_FIELDS = _fields(MaskedFidelity)
FIDELITY_COLUMNS = ["hook", "set", "reference_ev", *_split_ci(_FID_FIELDS), *(f"masked_{f}" for f in _MASKED_FIELDS)]


def _fidelity(r: Report) -> Rows:
    if r.sae_fidelity is None:
        return
    for hook, h in r.sae_fidelity.hooks.items():
        for set_name, s in h.sets.items():
            m = s.massive_masked
            masked = {f"masked_{f}": None if m is None else getattr(m, f) for f in _MASKED_FIELDS}
            yield {"hook": hook, "set": set_name, "reference_ev": h.reference_ev, **_row(s, _FID_FIELDS), **masked}


# --------------------------------------------------------------------------- shifted latents
_LATENT_FIELDS = _fields(ShiftedLatent, drop=("contexts",))
SHIFTED_COLUMNS = ["hook", "set", "side", "rank", *_LATENT_FIELDS, "n_contexts", "top_context"]
CONTEXT_COLUMNS = ["hook", "latent", "rank", *_fields(LatentContext)]


def _shifted(r: Report) -> Rows:
    if r.shifted_latents is None:
        return
    for hook, sets in r.shifted_latents.hooks.items():
        for set_name, entry in sets.items():
            for side in ("gained", "lost"):
                for rank, lat in enumerate(getattr(entry, side)):
                    top = lat.contexts[0].text if lat.contexts else None
                    yield {
                        "hook": hook,
                        "set": set_name,
                        "side": side,
                        "rank": rank,
                        **_row(lat, _LATENT_FIELDS),
                        "n_contexts": len(lat.contexts),
                        "top_context": top,
                    }


def _contexts(r: Report) -> Rows:
    """Each listed latent's top in-distribution contexts, once per (hook, latent)."""
    if r.shifted_latents is None:
        return
    fields = _fields(LatentContext)
    for hook, sets in r.shifted_latents.hooks.items():
        seen: set[int] = set()
        for entry in sets.values():
            for lat in (*entry.gained, *entry.lost):
                if lat.latent in seen:
                    continue
                seen.add(lat.latent)
                for rank, ctx in enumerate(lat.contexts):
                    yield {"hook": hook, "latent": lat.latent, "rank": rank, **_row(ctx, fields)}


# --------------------------------------------------------------------------- verdict
VERDICT_COLUMNS = [
    *(c for f in _fields(VerdictRow) if f != "flags" for c in ((f"{f}_low", f"{f}_high") if f == "ci" else (f,))),
    "flags",
    "blocking_flags",
]
VERDICT_HOOK_COLUMNS = ["hook", "n_rows", "n_signal", "TRUSTED", "CAUTION", "UNTRUSTED", "decisive_counts"]


def _verdict_rows(r: Report) -> Rows:
    """One row per verdict row; ``flags`` / ``blocking_flags`` are the flag names joined by commas."""
    fields = [f for f in _fields(VerdictRow) if f not in ("flags", "ci")]
    for x in r.verdict.rows if r.verdict else []:
        lo, hi = x.ci if x.ci is not None else (None, None)
        yield {
            **_row(x, fields),
            "ci_low": lo,
            "ci_high": hi,
            "flags": ",".join(f.name for f in x.flags),
            "blocking_flags": ",".join(f.name for f in x.flags if f.blocking),
        }


def _verdict_hooks(r: Report) -> Rows:
    for h in r.verdict.hooks if r.verdict else []:
        counts = {s: h.status_counts.get(s, 0) for s in ("TRUSTED", "CAUTION", "UNTRUSTED")}
        yield {
            "hook": h.hook,
            "n_rows": h.n_rows,
            "n_signal": h.n_signal,
            **counts,
            "decisive_counts": h.decisive_counts,
        }


# --------------------------------------------------------------------------- probes
PROBE_COLUMNS = _split_ci(_fields(ProbeRow, drop=("sparse_accuracy", "top_features")))
SPARSE_COLUMNS = ["concept", "hook", "basis", "k", "accuracy"]


def _probe_rows(r: Report) -> Rows:
    fields = _fields(ProbeRow, drop=("sparse_accuracy", "top_features"))
    for x in r.probes.rows if r.probes else []:
        yield _row(x, fields)


def _probe_sparse(r: Report) -> Rows:
    for x in r.probes.rows if r.probes else []:
        for k, acc in x.sparse_accuracy.items():
            yield {"concept": x.concept, "hook": x.hook, "basis": x.basis, "k": k, "accuracy": acc}


# --------------------------------------------------------------------------- FER
FER_COLUMNS = _split_ci(_fields(FERRow, drop=("reasons", "components_used")))


def _fer_rows(r: Report) -> Rows:
    fields = _fields(FERRow, drop=("reasons", "components_used"))
    for x in r.fer.rows if r.fer else []:
        yield _row(x, fields)


# --------------------------------------------------------------------------- registry
#: frame name → (columns, rows of a report), in the order :func:`names` lists them
FRAMES: dict[str, tuple[list[str], Callable[[Report], Rows]]] = {
    "sparsity.profiles": (PROFILE_COLUMNS, lambda r: _profiles(r.sparsity)),
    "sparsity.feature_density": (DENSITY_COLUMNS, _density),
    "sparsity.sets": (SETS_COLUMNS, _sets),
    "massive.hooks": (MASSIVE_HOOK_COLUMNS, _massive_hooks),
    "massive.dims": (MASSIVE_DIM_COLUMNS, _massive_dims),
    "familiarity.detection": (DETECTION_COLUMNS, _detection),
    "familiarity.graded": (GRADED_COLUMNS, _graded),
    "sae_fidelity": (FIDELITY_COLUMNS, _fidelity),
    "shifted_latents": (SHIFTED_COLUMNS, _shifted),
    "shifted_latents.contexts": (CONTEXT_COLUMNS, _contexts),
    "control": (PROFILE_COLUMNS, lambda r: _profiles(r.control.sparsity if r.control else None)),
    "verdict.rows": (VERDICT_COLUMNS, _verdict_rows),
    "verdict.hooks": (VERDICT_HOOK_COLUMNS, _verdict_hooks),
    "probes": (PROBE_COLUMNS, _probe_rows),
    "probes.sparse": (SPARSE_COLUMNS, _probe_sparse),
    "fer": (FER_COLUMNS, _fer_rows),
}


def names() -> list[str]:
    return list(FRAMES)


def frame(report: Report, name: str) -> pd.DataFrame:
    """The section ``name`` (one of :func:`names`) as a DataFrame; a KeyError lists the valid names."""
    import pandas as pd

    if name not in FRAMES:
        raise KeyError(f"no report frame {name!r}; valid: {', '.join(FRAMES)}")
    columns, rows = FRAMES[name]
    return pd.DataFrame(list(rows(report)), columns=columns)
