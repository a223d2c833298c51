"""The verdict: can this sparsity signal be trusted here? (DESIGN §6)

A step over results. For every *sparsity score* — one metric, in one basis (raw
or an SAE), with one reduction (token mean, last token, or the window's
participation ratio) — at every hook, and every shifted set and graded axis:

* **signal**: AUROC (oriented) ≥ ``auroc_min`` with the CI's low end >
  ``auroc_ci_low_min``; on a graded axis |ρ| ≥ ``rho_min`` with a CI excluding 0.
  No signal → UNTRUSTED ("no_signal").
* **flags**, each with the numbers it used and its threshold (blocking unless marked):
  - ``basis_dependent``: the same metric in fixed random orthogonal bases
    (``raw@rot*``) moves the AUROC by > ``basis_auroc_delta`` (ρ by >
    ``basis_rho_delta``) or flips the direction. Only for the raw basis of hooks
    whose basis is not privileged (:func:`fer_diag.basis.basis_privilege`); the
    rotation-invariant participation ratio and norm are shown beside it.
  - ``massive``: with the massive-activation dims masked the signal disappears
    or flips.
  - ``length_confounded``: the length-matched AUROC (graded: the partial ρ given
    counted tokens) loses the signal.
  - ``sae_unfaithful`` (SAE bases): on that set the SAE's explained variance drops
    by > ``sae_ev_drop`` or its CE-loss score by > ``sae_ce_drop`` against
    in-distribution (graded: at any level of the axis).
  - ``not_learned`` (non-blocking): the random-init copy shows a gap of the same
    sign and ≥ ``control_gap_ratio`` × the trained gap.
  - ``inconsistent_direction`` (non-blocking): the score is sparser on some
    targets with a signal and denser on others.
  - ``no_better_than_perplexity`` (non-blocking): the NLL baseline is shown beside
    every signal; where the verdict would otherwise be TRUSTED, the
    cross-validated AUROC gain of NLL + score over NLL alone
    (:func:`fer_diag.stats.cv_auroc_gain`) has a CI that reaches 0 (graded:
    |ρ| of NLL ≥ |ρ| of the score).
  - ``concepts_not_decodable`` (non-blocking): the audit probed concepts at
    this hook and basis and none is decodable there — normalised accuracy
    (accuracy − chance)/(1 − chance) ≥ ``decodable_min`` with the accuracy CI's
    low end above the shuffled-label control (:func:`decodable`). The signal is
    then not about any probed concept.
  - ``structure_broken``: a concept's FER index (:mod:`fer_diag.fer`) at this
    hook and basis is above ``fer_index_max`` — the signal sits on fractured,
    entangled organisation; the evidence says which concepts are nonetheless
    decodable ("decodable but fractured"). FER is scored only on SAE latents and
    privileged neurons, so the raw residual stream never gets this flag.

TRUSTED = signal, no flag; CAUTION = signal, non-blocking flags only;
UNTRUSTED = no signal or any blocking flag. The *decisive* flag of an untrusted
row is its first blocking flag in :data:`BLOCKING` order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np
from joblib import Parallel, delayed

from fer_diag import stats
from fer_diag.analyzers.baselines import BaselineResult
from fer_diag.analyzers.sparsity import METRIC_SENSE, SparsityResult
from fer_diag.basis import basis_privilege
from fer_diag.familiarity import DetectionRow, FamiliarityResult, GradedRow, axis_of
from fer_diag.report.sections import (
    BLOCKING,
    FERSection,
    Flag,
    HookSummary,
    ProbeRow,
    ProbeSection,
    VerdictConfig,
    VerdictRow,
    VerdictSection,
)

__all__ = ["BLOCKING", "VerdictConfig", "VerdictSection", "verdict"]

_ROTATED = "raw@rot"
#: rotation-invariant references shown beside the basis flag
_INVARIANT = (("participation_ratio", "window"), ("l2_norm", "mean"))


# --------------------------------------------------------------------------- inputs
class _Index:
    """Familiarity rows by key, for the lookups the rules make."""

    def __init__(self, fam: FamiliarityResult) -> None:
        self.det = {(*_key(r), r.set_name): r for r in fam.detection}
        self.gra = {(*_key(r), r.axis): r for r in fam.graded}
        self.rotated: dict[tuple, list] = {}
        for kind, table in (("set", self.det), ("axis", self.gra)):
            for (_, basis, hook, metric, masked, reduce, target), row in table.items():
                if basis and basis.startswith(_ROTATED) and not masked:
                    self.rotated.setdefault((kind, hook, metric, reduce, target), []).append(row)

    def row(self, kind: str, basis, hook, metric, masked: bool, reduce: str, target: str, source="sparsity"):
        table = self.det if kind == "set" else self.gra
        return table.get((source, basis, hook, metric, masked, reduce, target))


def _key(r) -> tuple:
    return (r.source, r.basis, r.hook, r.metric, r.masked, r.reduce)


def _oriented(r: DetectionRow | GradedRow | None) -> float | None:
    if r is None:
        return None
    return r.auroc_oriented if isinstance(r, DetectionRow) else r.spearman_rho


def _signal(r: DetectionRow | GradedRow | None, cfg: VerdictConfig) -> bool:
    if r is None:
        return False
    if isinstance(r, DetectionRow):
        ci = r.auroc_oriented_ci
        return r.auroc_oriented >= cfg.auroc_min and ci is not None and ci[0] > cfg.auroc_ci_low_min
    rho, ci = r.spearman_rho, r.spearman_ci
    return rho is not None and abs(rho) >= cfg.rho_min and ci is not None and (ci[0] > 0 or ci[1] < 0)


def _up(r: DetectionRow | GradedRow) -> bool:
    """Higher score = more shifted."""
    return r.auroc > 0.5 if isinstance(r, DetectionRow) else (r.spearman_rho or 0.0) > 0


def _r(x: float | None) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 4)


# --------------------------------------------------------------------------- rules
def _basis_flag(ix: _Index, r, kind: str, target: str, cfg: VerdictConfig) -> Flag | None:
    rotated = ix.rotated.get((kind, r.hook, r.metric, r.reduce, target), [])
    if not rotated:
        return None
    if kind == "set":  # AUROCs oriented as the raw row (higher = its direction): below 0.5 is a flip
        orient = (lambda a: a) if _up(r) else (lambda a: 1.0 - a)
        deltas = [abs(x.auroc - r.auroc) for x in rotated]
        limit, label = cfg.basis_auroc_delta, "auroc"
        values = {x.basis: _r(orient(x.auroc)) for x in rotated}
        own = orient(r.auroc)
    else:
        deltas = [abs((x.spearman_rho or 0.0) - (r.spearman_rho or 0.0)) for x in rotated]
        limit, label = cfg.basis_rho_delta, "rho"
        values = {x.basis: _r(x.spearman_rho) for x in rotated}
        own = r.spearman_rho
    flips = [x.basis for x in rotated if _up(x) != _up(r)]
    if max(deltas) <= limit and not flips:
        return None
    invariant = {
        f"{m}/{red}": _r(_oriented(ix.row(kind, "raw", r.hook, m, False, red, target))) for m, red in _INVARIANT
    }
    return Flag(
        name="basis_dependent",
        blocking=True,
        evidence={label: _r(own), f"{label}_rotated": values, "max_delta": _r(max(deltas)), "direction_flips": flips}
        | {"rotation_invariant": invariant},
        threshold={f"max_{label}_delta": limit},
        message=f"{r.metric} moves by {max(deltas):.2f} {label.upper()} in a random basis"
        + (f" and flips direction in {len(flips)}" if flips else "")
        + ": the signal is a property of the coordinates, not of the model's function",
    )


def _massive_flag(ix: _Index, r, kind: str, target: str, cfg: VerdictConfig) -> Flag | None:
    if r.masked_same_as_unmasked:
        return None  # nothing was masked at this hook
    m = ix.row(kind, r.basis, r.hook, r.metric, True, r.reduce, target)
    if m is None:
        return None
    lost, flipped = not _signal(m, cfg), _up(m) != _up(r)
    if not (lost or flipped):
        return None
    return Flag(
        name="massive",
        blocking=True,
        evidence={"value": _r(_oriented(r)), "value_massive_masked": _r(_oriented(m)), "flipped": flipped},
        threshold={"auroc_min": cfg.auroc_min} if kind == "set" else {"rho_min": cfg.rho_min},
        message="with the massive-activation dims masked the signal " + ("flips" if flipped else "disappears"),
    )


def _length_flag(r, kind: str, cfg: VerdictConfig) -> Flag | None:
    if kind == "set":
        if r.auroc_length_matched is None or r.length_matched_pair_frac < cfg.length_min_pair_frac:
            return Flag(  # the two sets barely share window lengths: length cannot be ruled out
                name="length_confounded",
                blocking=True,
                evidence={
                    "auroc": _r(r.auroc_oriented),
                    "pair_frac": _r(r.length_matched_pair_frac),
                    "testable": False,
                },
                threshold={"length_min_pair_frac": cfg.length_min_pair_frac},
                message=f"only {r.length_matched_pair_frac:.0%} of window pairs share a length stratum: "
                "the sets differ in length too much to rule length out",
            )
        matched = r.auroc_length_matched if _up(r) else 1 - r.auroc_length_matched
        if matched >= cfg.auroc_min:
            return None
        return Flag(
            name="length_confounded",
            blocking=True,
            evidence={"auroc": _r(r.auroc_oriented), "auroc_length_matched": _r(matched)}
            | {"pair_frac": _r(r.length_matched_pair_frac)},
            threshold={"auroc_min": cfg.auroc_min, "length_min_pair_frac": cfg.length_min_pair_frac},
            message=f"compared only within length strata the AUROC falls to {matched:.2f}",
        )
    part, ci = r.spearman_length_controlled, r.spearman_length_controlled_ci
    if part is None:
        return None
    same_sign = np.sign(part) == np.sign(r.spearman_rho)
    if same_sign and abs(part) >= cfg.rho_min and ci is not None and (ci[0] > 0 or ci[1] < 0):
        return None
    return Flag(
        name="length_confounded",
        blocking=True,
        evidence={"rho": _r(r.spearman_rho), "rho_length_controlled": _r(part), "ci": ci},
        threshold={"rho_min": cfg.rho_min},
        message=f"controlling for counted tokens the correlation is {part:.2f}",
    )


def _sae_flag(r, targets: list[str], fidelity: dict | None, reference: str, cfg: VerdictConfig) -> Flag | None:
    hook = ((fidelity or {}).get("hooks") or {}).get(r.hook)
    if hook is None:
        return None
    sets = hook["sets"]
    ref_ce = (sets.get(reference) or {}).get("ce_score")
    worst: dict[str, Any] = {}
    for name in targets:
        row = sets.get(name)
        if row is None:
            continue
        masked = row.get("massive_masked")
        ev_drop = (masked or row)["ev_drop"]
        ce_drop = None if ref_ce is None or row.get("ce_score") is None else ref_ce - row["ce_score"]
        if (ev_drop is not None and ev_drop > cfg.sae_ev_drop) or (ce_drop is not None and ce_drop > cfg.sae_ce_drop):
            worst[name] = {"ev_drop": _r(ev_drop), "ce_drop": _r(ce_drop), "massive_masked_ev": masked is not None}
    if not worst:
        return None
    return Flag(
        name="sae_unfaithful",
        blocking=True,
        evidence={"sets": worst, "reference_ce_score": _r(ref_ce)},
        threshold={"ev_drop": cfg.sae_ev_drop, "ce_drop": cfg.sae_ce_drop},
        message="the SAE reconstructs " + ", ".join(worst) + " much worse than in-distribution text: "
        "its latents there read reconstruction error, not the model",
    )


def _gap(profiles: dict, basis: str, hook: str, target: str, reference: str, metric: str, reduce: str):
    stat = {"mean": "seq_mean", "last": "last_mean", "window": "seq_mean"}[reduce]
    try:
        a = profiles[(basis, hook, target)].metrics[metric]["unmasked"][stat]
        b = profiles[(basis, hook, reference)].metrics[metric]["unmasked"][stat]
    except KeyError:
        return None
    return a - b


def _control_flag(r, target: str, sparsity: SparsityResult, control: SparsityResult | None, ref: str, cfg):
    if control is None or r.basis != "raw":
        return None
    trained = _gap(sparsity.profiles, "raw", r.hook, target, ref, r.metric, r.reduce)
    rand = _gap(control.profiles, "raw", r.hook, target, ref, r.metric, r.reduce)
    if trained is None or rand is None or trained == 0:
        return None
    if np.sign(rand) != np.sign(trained) or abs(rand) < cfg.control_gap_ratio * abs(trained):
        return None
    return Flag(
        name="not_learned",
        blocking=False,
        evidence={"gap_trained": _r(trained), "gap_random_init": _r(rand), "ratio": _r(rand / trained)},
        threshold={"control_gap_ratio": cfg.control_gap_ratio},
        message=f"a randomly initialised copy shows {rand / trained:.0%} of the gap: "
        "the tokens and the architecture, not training, produce it",
    )


def decodable(row: ProbeRow, cfg: VerdictConfig) -> bool:
    """A probe reads the concept: normalised accuracy ≥ ``decodable_min`` and the CI's low end above the control."""
    gain = (row.accuracy - row.chance) / (1 - row.chance) if row.chance < 1 else 0.0
    return gain >= cfg.decodable_min and row.accuracy_ci[0] > row.control_accuracy


def _probe_flag(r, probes: ProbeSection | None, cfg: VerdictConfig) -> Flag | None:
    here = [p for p in probes.rows if (p.hook, p.basis) == (r.hook, r.basis)] if probes else []
    if not here or any(decodable(p, cfg) for p in here):
        return None
    best = max(here, key=lambda p: (p.accuracy - p.chance) / max(1e-9, 1 - p.chance))
    return Flag(
        name="concepts_not_decodable",
        blocking=False,
        evidence={
            p.concept: {"accuracy": _r(p.accuracy), "chance": _r(p.chance), "control": _r(p.control_accuracy)}
            for p in here
        },
        threshold={"decodable_min": cfg.decodable_min},
        message=f"no probed concept is linearly decodable here (best: {best.concept} {best.accuracy:.2f} "
        f"vs chance {best.chance:.2f}): the signal is not about any of them",
    )


def _fer_flag(r, fer: FERSection | None, cfg: VerdictConfig) -> Flag | None:
    here = [x for x in fer.rows if (x.hook, x.basis) == (r.hook, r.basis) and x.index is not None] if fer else []
    broken = [x for x in here if x.index > cfg.fer_index_max]
    if not broken:
        return None
    fractured = [x.concept for x in broken if x.decodable]
    worst = max(broken, key=lambda x: x.index)
    what = f"; decodable but fractured: {', '.join(fractured)}" if fractured else ""
    return Flag(
        name="structure_broken",
        blocking=True,
        evidence={
            x.concept: {"index": _r(x.index), "ci": x.index_ci, "decodable": x.decodable, "used": x.components_used}
            for x in here
        },
        threshold={"fer_index_max": cfg.fer_index_max},
        message=f"the signal sits on fractured, entangled organisation: FER index of {worst.concept} "
        f"{worst.index:.2f} > {cfg.fer_index_max}{what}",
    )


# --------------------------------------------------------------------------- the verdict
def verdict(
    familiarity: FamiliarityResult,
    sparsity: SparsityResult,
    baselines: BaselineResult | None = None,
    fidelity: dict | None = None,
    control: SparsityResult | None = None,
    config: VerdictConfig | None = None,
    probes: ProbeSection | None = None,
    fer: FERSection | None = None,
    n_jobs: int | None = None,
) -> VerdictSection:
    """The verdict on every sparsity score × hook × shifted set and graded axis (module docstring).

    ``fidelity`` is the SAE-fidelity result (``SAEFidelityAnalyzer.compute()``),
    ``control`` the random-init copy's sparsity result, ``probes`` the probe
    section, ``fer`` the FER section; any may be absent (the flags that need them
    are then not raised). ``n_jobs``: processes for the cross-validated
    perplexity gains (joblib's convention: None one, -1 every core).
    """
    cfg = config or VerdictConfig()
    ix = _Index(familiarity)
    ref = familiarity.reference_set
    graded_sets: dict[str, list[str]] = {}
    for name, info in sparsity.sets.items():
        if info.kind == "graded":
            graded_sets.setdefault(axis_of(name, info), []).append(name)
    scores = sorted(
        {
            (r.basis, r.hook, r.metric, r.reduce)
            for r in familiarity.detection + familiarity.graded
            if r.source == "sparsity"
            and not r.masked
            and not r.basis.startswith(_ROTATED)
            and METRIC_SENSE.get(r.metric)
        }
    )
    targets = [("set", s) for s in dict.fromkeys(r.set_name for r in familiarity.detection if r.kind == "shifted")]
    targets += [("axis", a) for a in dict.fromkeys(r.axis for r in familiarity.graded)]
    rows: list[VerdictRow] = []
    for basis, hook, metric, reduce in scores:
        for kind, target in targets:
            r = ix.row(kind, basis, hook, metric, False, reduce, target)
            if r is None:
                continue
            rows.append(
                _judge(
                    ix, r, kind, target, cfg, ref, sparsity, fidelity, control, graded_sets.get(target, []), probes, fer
                )
            )
    _direction_flags(rows)
    _perplexity_flags(rows, sparsity, baselines, ref, cfg, n_jobs)
    for row in rows:
        _settle(row)
    return VerdictSection(
        config=cfg,
        ci_methods=familiarity.settings.get("ci_methods", {}),
        hooks=[_summary(hook, [r for r in rows if r.hook == hook]) for hook in dict.fromkeys(r.hook for r in rows)],
        rows=rows,
    )


def _judge(ix, r, kind, target, cfg, ref, sparsity, fidelity, control, axis_sets, probes=None, fer=None) -> VerdictRow:
    nll = ix.row(kind, None, None, "nll", False, "mean", target, source="baseline")
    note = "SAE latents: a learned basis" if r.basis != "raw" else basis_privilege(r.hook)
    out = VerdictRow(
        hook=r.hook,
        basis=r.basis,
        metric=r.metric,
        reduce=r.reduce,
        target=target,
        target_kind=kind,
        status="UNTRUSTED",
        decisive=None,
        signal=_signal(r, cfg),
        value=_r(_oriented(r)),
        ci=r.auroc_oriented_ci if kind == "set" else r.spearman_ci,
        direction=r.sparsity_direction,
        nll_value=_r(_oriented(nll)),
        basis_note=note,
        flags=[],
    )
    if not out.signal:
        threshold = (
            {"auroc_min": cfg.auroc_min, "ci_low_min": cfg.auroc_ci_low_min}
            if kind == "set"
            else {"rho_min": cfg.rho_min}
        )
        out.flags.append(
            Flag(
                name="no_signal",
                blocking=True,
                evidence={"value": out.value, "ci": out.ci},
                threshold=threshold,
                message="no familiarity signal on this target",
            )
        )
        return out
    sets = [target] if kind == "set" else axis_sets
    farthest = target if kind == "set" else _farthest(axis_sets, sparsity)
    found = [
        _basis_flag(ix, r, kind, target, cfg) if note is None else None,
        _massive_flag(ix, r, kind, target, cfg),
        _length_flag(r, kind, cfg),
        _sae_flag(r, sets, fidelity, ref, cfg) if r.basis != "raw" else None,
        _control_flag(r, farthest, sparsity, control, ref, cfg) if farthest else None,
        _probe_flag(r, probes, cfg),
        _fer_flag(r, fer, cfg),
    ]
    out.flags.extend(f for f in found if f is not None)
    return out


def _farthest(axis_sets: list[str], sparsity: SparsityResult) -> str | None:
    """The highest level of a graded axis."""
    levels = [(sparsity.sets[s].level or 0.0, s) for s in axis_sets if s in sparsity.sets]
    return max(levels)[1] if levels else None


def _direction_flags(rows: list[VerdictRow]) -> None:
    """``inconsistent_direction`` on every signal row of a score that is sparser on some targets, denser on others."""
    by_score: dict[tuple, list[VerdictRow]] = {}
    for row in rows:
        if row.signal and row.direction:
            by_score.setdefault((row.hook, row.basis, row.metric, row.reduce), []).append(row)
    for group in by_score.values():
        sparser = [r.target for r in group if r.direction.startswith("sparser")]
        denser = [r.target for r in group if r.direction.startswith("denser")]
        if not (sparser and denser):
            continue
        flag = Flag(
            name="inconsistent_direction",
            blocking=False,
            evidence={"sparser_on": sparser, "denser_on": denser},
            threshold={},
            message=f"sparser on {len(sparser)} target(s), denser on {len(denser)}: no single familiarity direction",
        )
        for r in group:
            r.flags.append(flag)


def _perplexity_flags(rows, sparsity, baselines: BaselineResult | None, ref: str, cfg, n_jobs: int | None) -> None:
    """``no_better_than_perplexity`` where it decides between TRUSTED and CAUTION (module docstring)."""
    pending: dict[tuple[str, str], list[VerdictRow]] = {}
    for row in rows:
        if not row.signal or any(f.blocking for f in row.flags) or row.nll_value is None:
            continue
        if row.target_kind == "axis":
            if abs(row.nll_value) >= abs(row.value or 0.0):
                row.flags.append(
                    Flag(
                        name="no_better_than_perplexity",
                        blocking=False,
                        evidence={"rho": row.value, "rho_nll": row.nll_value},
                        threshold={},
                        message=f"the NLL baseline follows the shift at least as well (ρ {row.nll_value:.2f})",
                    )
                )
            continue
        pending.setdefault((row.basis, row.hook), []).append(row)
    if baselines is None or ref not in baselines.tables:
        return
    groups = [
        [r for r in group if r.target == target]
        for group in pending.values()
        for target in dict.fromkeys(r.target for r in group)
    ]
    inputs = ((members, _gain_inputs(sparsity, baselines, ref, members, cfg)) for members in groups)
    ready = [(members, x) for members, x in inputs if x is not None]  # windows that align, enough of them
    fitted = Parallel(n_jobs=n_jobs)(
        delayed(stats.cv_auroc_gain)(*x, cfg.cv_splits, cfg.seed, cfg.n_boot) for _, x in ready
    )
    for (members, _), out in zip(ready, fitted, strict=True):
        for i, r in enumerate(members):
            g = {k: float(np.atleast_1d(v)[i]) for k, v in out.items()}
            if g["gain_ci_low"] > 0:
                continue
            r.flags.append(
                Flag(
                    name="no_better_than_perplexity",
                    blocking=False,
                    evidence={"auroc": r.value, "auroc_nll": r.nll_value}
                    | {k: _r(v) for k, v in g.items() if k != "auroc_nll"},
                    threshold={"gain_ci_low": 0.0},
                    message=f"adding it to the NLL baseline gains {g['gain']:+.3f} AUROC "
                    f"(CI {g['gain_ci_low']:+.3f} … {g['gain_ci_high']:+.3f}): nothing beyond perplexity",
                )
            )


def _gain_inputs(sparsity, baselines, ref: str, members: list[VerdictRow], cfg) -> tuple | None:
    """``(nll_ref, nll_target, scores_ref, scores_target)`` of :func:`fer_diag.stats.cv_auroc_gain` for rows of one
    basis, hook and target (one score per row), or None where the windows do not align or are too few."""
    basis, hook, target = members[0].basis, members[0].hook, members[0].target
    try:
        tables = [sparsity.table(basis, hook, name) for name in (ref, target)]
        base = [baselines.tables[name] for name in (ref, target)]
    except KeyError:
        return None
    cols = []
    for ti, bi in zip(tables, base, strict=True):
        _common, ia, ib = np.intersect1d(ti.seq_index, bi[0], return_indices=True)
        cols.append((ia, ib))
    nll = [b[2][ib, 0] for b, (_, ib) in zip(base, cols, strict=True)]
    if min(len(x) for x in nll) < cfg.cv_splits:
        return None
    scores = [
        np.stack([t.score(r.metric, False, r.reduce)[ia] for r in members])
        for t, (ia, _) in zip(tables, cols, strict=True)
    ]
    return nll[0], nll[1], scores[0], scores[1]


def _settle(row: VerdictRow) -> None:
    blocking = [f.name for f in row.flags if f.blocking]
    if blocking:
        row.status = "UNTRUSTED"
        row.decisive = min(blocking, key=BLOCKING.index)
    elif row.flags:
        row.status = "CAUTION"
    else:
        row.status = "TRUSTED"


def _describe(r: VerdictRow) -> str:
    what = "AUROC" if r.target_kind == "set" else "ρ"
    return f"{r.basis} {r.metric}/{r.reduce} on {r.target}: {what} {r.value:.2f} ({r.direction})"


def _summary(hook: str, rows: Iterable[VerdictRow]) -> HookSummary:
    rows = list(rows)
    signal = [r for r in rows if r.signal]
    ranges: dict[str, tuple[float, float]] = {}
    for r in signal:
        if r.direction and r.target_kind == "set" and r.value is not None:
            lo, hi = ranges.get(r.direction, (r.value, r.value))
            ranges[r.direction] = (min(lo, r.value), max(hi, r.value))

    def best(status: str) -> list[str]:
        chosen = sorted((r for r in rows if r.status == status), key=lambda r: -abs(r.value or 0.0))
        return [_describe(r) for r in chosen]

    return HookSummary(
        hook=hook,
        n_rows=len(rows),
        n_signal=len(signal),
        status_counts=dict(Counter(r.status for r in rows)),
        decisive_counts=dict(Counter(r.decisive for r in rows if r.decisive)),
        trusted=best("TRUSTED"),
        caution=best("CAUTION"),
        direction_counts=dict(Counter(r.direction for r in signal if r.direction)),
        value_range_by_direction=ranges,
    )
