"""Familiarity: does a sparsity score tell shifted windows from in-distribution ones? (DESIGN §5)

A step over *results*, not batches: :func:`familiarity` reads the per-window
sparsity scores that :class:`~fer_diag.analyzers.sparsity.SparsityAnalyzer`
keeps and the perplexity baselines of
:class:`~fer_diag.analyzers.baselines.BaselineAnalyzer` (nothing is recomputed).

For every score (basis × hook × metric × masked × reduce, and each baseline) and
every text set other than the reference:

* ``auroc``: OOD (the shifted set) is positive and a *higher* score means OOD
  (:func:`fer_diag.stats.auroc`), with Newcombe's (2006) method-5 score interval
  (:func:`fer_diag.stats.auroc_score_ci`), which never collapses to a point at
  0 or 1;
* ``direction``: ``higher_is_ood`` if auroc > 0.5, ``lower_is_ood`` if < 0.5;
  ``auroc_oriented`` = max(A, 1 − A) with its CI, the direction-free value (biased
  up near 0.5, since the direction is chosen on the same data);
* ``sparsity_direction``: what the direction means for the metric —
  ``sparser_is_ood`` or ``denser_is_ood`` (hoyer, gini, top-p energy: higher =
  sparser; thresh_density, participation entropies, participation ratio, l0:
  higher = denser; norms and baselines: none). Max-probability is lower on
  unfamiliar text, so its AUROC is typically < 0.5: read ``auroc_oriented``;
* ``fpr_at_95tpr`` of the oriented score (higher = OOD after orientation);
* ``auroc_length_matched``: pairs compared only within length strata (quantile
  bins of the pooled counted-token counts, :func:`fer_diag.stats.length_strata`),
  so window length cannot drive it; ``length_matched_pair_frac`` says how many
  pairs that kept (all of them when every window has full length).

On graded sets (kind ``graded``, grouped by axis — the set's ``axis``, else
the set name without its trailing level number): Spearman ρ(level, score) over
windows, and the length-controlled partial Spearman ρ(level, score | counted
tokens), each with a *cluster* bootstrap CI — the levels perturb the same source
texts, so whole source texts are resampled (:func:`fer_diag.stats.spearman_cluster_ci`;
``clusters`` maps each set's windows to their source text, else the window
number stands in) — and Pearson r of level vs per-level mean score (Jin et al.
2026) with a stratified bootstrap CI. When an axis has no level-0 set, the
reference set stands in as level 0 (``reference_as_level0``).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from fer_diag import stats
from fer_diag.analyzers.baselines import BASELINES, BaselineResult
from fer_diag.analyzers.persequence import SetInfo, merge_sets
from fer_diag.analyzers.sparsity import METRIC_SENSE, SparsityResult
from fer_diag.errors import ConfigError

#: how each interval in the familiarity section is computed (printed in the report)
CI_METHODS = {
    "auroc": "Newcombe (2006) method-5 score interval (does not collapse at 0 or 1)",
    "spearman": "cluster bootstrap over source texts, percentile (Davison & Hinkley 1997 §3.8)",
    "spearman_length_controlled": "partial Spearman given counted tokens; cluster bootstrap over source texts",
    "pearson_means": "bootstrap of windows within each level, percentile",
}


@dataclass
class ScoreKey:
    """Which score a row is about: ``metric`` of ``hook`` read in ``basis`` (``source="sparsity"``) or a baseline."""

    source: str
    basis: str | None
    hook: str | None
    metric: str
    masked: bool
    reduce: str


@dataclass
class DetectionRow(ScoreKey):
    """One score × one shifted set against the reference set. ``source`` is ``sparsity`` or ``baseline``."""

    set_name: str
    kind: str
    level: float | None
    n_id: int
    n_ood: int
    auroc: float
    auroc_ci: tuple[float, float] | None
    direction: str
    auroc_oriented: float
    auroc_oriented_ci: tuple[float, float] | None
    sparsity_direction: str | None
    fpr_at_95tpr: float
    auroc_length_matched: float | None
    length_matched_pair_frac: float
    masked_same_as_unmasked: bool


@dataclass
class GradedRow(ScoreKey):
    """One score along one graded shift axis."""

    axis: str
    levels: list[float]
    level_means: list[float]
    n_seqs: int
    n_clusters: int
    spearman_rho: float | None
    spearman_ci: tuple[float, float] | None
    spearman_length_controlled: float | None
    spearman_length_controlled_ci: tuple[float, float] | None
    pearson_r_means: float | None
    pearson_ci: tuple[float, float] | None
    sparsity_direction: str | None  # sign of ρ read through the metric: sparser_/denser_with_shift
    reference_as_level0: bool
    masked_same_as_unmasked: bool


@dataclass
class FamiliarityResult:
    """What :func:`familiarity` returns."""

    reference_set: str
    settings: dict
    detection: list[DetectionRow]
    graded: list[GradedRow]

    def rows(self, which: str = "detection", **where) -> list:
        """Rows whose fields equal ``where`` (e.g. ``rows(hook=h, metric="hoyer", masked=False)``)."""
        return [r for r in getattr(self, which) if all(getattr(r, k) == v for k, v in where.items())]

    def to_frame(self, which: str = "detection"):
        """The rows as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame([asdict(r) for r in getattr(self, which)])

    def to_dict(self) -> dict:
        return {
            "reference_set": self.reference_set,
            "settings": self.settings,
            "detection": [_json(asdict(r)) for r in self.detection],
            "graded": [_json(asdict(r)) for r in self.graded],
        }


def _json(row: dict) -> dict:
    """NaN → None, numpy scalars → Python."""

    def clean(v):
        if isinstance(v, tuple | list):
            return [clean(x) for x in v]
        if isinstance(v, float | np.floating):
            return None if math.isnan(v) else float(v)
        return v

    return {k: clean(v) for k, v in row.items()}


@dataclass
class _Table:
    seq_index: np.ndarray
    n_tokens: np.ndarray
    values: np.ndarray  # [n, C]


@dataclass
class _Source:
    """Per-window scores of one kind (a (basis, hook) of the sparsity result, or the baselines), per set."""

    source: str
    basis: str | None
    hook: str | None
    columns: list[tuple[str, bool, str]]
    tables: dict[str, _Table]
    masked_same: bool

    def key(self, c: int) -> dict[str, Any]:
        """The :class:`ScoreKey` fields of column ``c``."""
        metric, masked, reduce = self.columns[c]
        return {
            "source": self.source,
            "basis": self.basis,
            "hook": self.hook,
            "metric": metric,
            "masked": masked,
            "reduce": reduce,
        }


def axis_of(name: str, info: SetInfo) -> str:
    """The graded axis of a set: its ``axis``, else its name without the trailing level number."""
    return info.axis or re.sub(r"[\s_\-:@=]*\d+(\.\d+)?%?$", "", name) or "graded"


def _sense(metric: str, positive: bool, words: tuple[str, str]) -> str | None:
    sense = METRIC_SENSE.get(metric, 0)
    if not sense:
        return None
    return words[0] if (sense > 0) == positive else words[1]


def _opt(x: float) -> float | None:
    return None if not np.isfinite(x) else float(x)


def familiarity(
    sparsity: SparsityResult | None,
    baselines: BaselineResult | None = None,
    *,
    reference_set: str | None = None,
    clusters: dict[str, np.ndarray] | None = None,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    length_bins: int = 5,
    tpr: float = 0.95,
) -> FamiliarityResult:
    """Familiarity statistics of every sparsity score in ``sparsity`` and of the ``baselines`` (module docstring).

    ``reference_set`` defaults to the one in-distribution set. ``clusters[set]``
    gives the source text of each window (indexed by window number) for the
    graded cluster bootstrap. ``n_boot = 0`` skips the bootstraps (graded CIs are None).
    """
    sets: dict[str, SetInfo] = {}
    for part in (sparsity, baselines):
        if part is not None:
            merge_sets(sets, part.sets)
    ref = reference_set or _reference(sets)
    if ref not in sets:
        raise KeyError(f"reference set {ref!r} was not seen; sets: {sorted(sets)}")
    cfg = _Settings(ref, n_boot, ci, seed, length_bins, tpr)
    sources = _sources(sparsity, baselines)
    others = sorted((n for n in sets if n != ref), key=lambda n: (sets[n].kind, sets[n].level or 0.0, n))
    detection = [row for src in sources for name in others for row in _detect(src, name, sets[name], cfg)]
    graded = [row for src in sources for row in _graded(src, sets, cfg, clusters or {})]
    return FamiliarityResult(ref, {**asdict(cfg), "ci_methods": CI_METHODS}, detection, graded)


def _reference(sets: dict[str, SetInfo]) -> str:
    ids = [n for n, info in sets.items() if info.kind == "in_distribution"]
    if len(ids) != 1:
        raise ConfigError(
            f"{len(ids)} in-distribution sets seen ({ids}): a suite needs exactly one, or pass reference_set=… (Python)"
        )
    return ids[0]


def _sources(sparsity: SparsityResult | None, baselines: BaselineResult | None) -> list[_Source]:
    out: dict[tuple[str, str], _Source] = {}
    for (basis, hook, set_name), table in (sparsity.tables if sparsity else {}).items():
        same = sparsity.profiles[(basis, hook, set_name)].masked_same_as_unmasked
        src = out.setdefault((basis, hook), _Source("sparsity", basis, hook, table.columns, {}, same))
        src.tables[set_name] = _Table(table.seq_index, table.n_tokens, table.values)
    sources = list(out.values())
    if baselines is not None and baselines.tables:
        baseline = _Source("baseline", None, None, [(m, False, "mean") for m in BASELINES], {}, False)
        for name, (seq_index, n_tokens, values) in baselines.tables.items():
            baseline.tables[name] = _Table(seq_index, n_tokens, values)
        sources.append(baseline)
    return sources


@dataclass(frozen=True)
class _Settings:
    reference_set: str
    n_boot: int
    ci: float
    seed: int
    length_bins: int
    tpr: float


def _ci(lo: float, hi: float) -> tuple[float, float] | None:
    return None if np.isnan(lo) else (float(lo), float(hi))


def _with_masked_copy(row, src: _Source) -> list:
    """The row, plus its ``masked=True`` twin where masking changed nothing (no massive dims)."""
    return [row, replace(row, masked=True)] if src.masked_same and src.source == "sparsity" else [row]


def _detect(src: _Source, name: str, info: SetInfo, cfg: _Settings) -> list[DetectionRow]:
    """Detection statistics of every column of ``src`` for the set ``name`` against the reference."""
    a, b = src.tables.get(cfg.reference_set), src.tables.get(name)
    if a is None or b is None or not len(a.seq_index) or not len(b.seq_index):
        return []
    x, y = a.values.T.astype(np.float64), b.values.T.astype(np.float64)  # [C, n]
    n0, n1 = x.shape[1], y.shape[1]
    auc, lo, hi = (np.atleast_1d(v) for v in stats.auroc_score_ci(x, y, cfg.ci))
    sign = np.where(auc >= 0.5, 1.0, -1.0)[:, None]
    fpr = np.atleast_1d(stats.fpr_at_tpr(sign * x, sign * y, cfg.tpr))
    matched, pair_frac = stats.stratified_auroc(x, y, *stats.length_strata(a.n_tokens, b.n_tokens, cfg.length_bins))
    matched = np.atleast_1d(matched)
    rows = []
    for c, (metric, *_) in enumerate(src.columns):
        up, flipped = auc[c] > 0.5, auc[c] < 0.5
        raw_ci = _ci(lo[c], hi[c])
        row = DetectionRow(
            **src.key(c),
            set_name=name,
            kind=info.kind,
            level=info.level,
            n_id=n0,
            n_ood=n1,
            auroc=float(auc[c]),
            auroc_ci=raw_ci,
            direction="higher_is_ood" if up else "lower_is_ood" if flipped else "none",
            auroc_oriented=float(max(auc[c], 1 - auc[c])),
            auroc_oriented_ci=(1 - raw_ci[1], 1 - raw_ci[0]) if raw_ci and flipped else raw_ci,
            sparsity_direction=_sense(metric, up, ("sparser_is_ood", "denser_is_ood")) if up or flipped else None,
            fpr_at_95tpr=float(fpr[c]),
            auroc_length_matched=_opt(matched[c]),
            length_matched_pair_frac=float(pair_frac),
            masked_same_as_unmasked=src.masked_same,
        )
        rows.extend(_with_masked_copy(row, src))
    return rows


def _graded(src: _Source, sets: dict[str, SetInfo], cfg: _Settings, clusters: dict[str, np.ndarray]) -> list[GradedRow]:
    """Correlation of every column of ``src`` with the shift level, per graded axis."""
    axes: dict[str, list[tuple[str, float]]] = {}
    for name, info in sets.items():
        if info.kind == "graded" and info.level is not None and name in src.tables:
            axes.setdefault(axis_of(name, info), []).append((name, info.level))
    rows = []
    for axis, members in sorted(axes.items()):
        with_ref = all(level != 0 for _, level in members) and cfg.reference_set in src.tables
        if with_ref:
            members = [(cfg.reference_set, 0.0), *members]
        tables = [src.tables[name] for name, _ in members]
        level = np.concatenate([np.full(len(t.seq_index), lv) for t, (_, lv) in zip(tables, members, strict=True)])
        if len(np.unique(level)) < 2:
            continue
        cluster = np.concatenate(
            [_source_of(t.seq_index, clusters.get(name)) for t, (name, _) in zip(tables, members, strict=True)]
        )
        length = np.concatenate([t.n_tokens for t in tables]).astype(np.float64)
        scores = np.concatenate([t.values for t in tables]).astype(np.float64)
        n_boot = cfg.n_boot if len(np.unique(cluster)) >= 3 else 0
        rng = stats.pair_rng(cfg.seed, "graded", axis)
        rho, rho_lo, rho_hi = stats.spearman_cluster_ci(level, scores, cluster, n_boot, rng, cfg.ci)
        if len(np.unique(length)) > 1:
            part, part_lo, part_hi = stats.partial_spearman_cluster_ci(
                level, scores, length, cluster, n_boot, rng, cfg.ci
            )
        else:  # every window has the same length: length cannot confound, the partial ρ is ρ
            part, part_lo, part_hi = rho, rho_lo, rho_hi
        means = stats.level_means_pearson(level, scores, cfg.n_boot, stats.pair_rng(cfg.seed, "graded", axis), cfg.ci)
        for c, (metric, *_) in enumerate(src.columns):
            trend = rho[c] != 0 and np.isfinite(rho[c])
            row = GradedRow(
                **src.key(c),
                axis=axis,
                levels=means["levels"].tolist(),
                level_means=means["means"][:, c].tolist(),
                n_seqs=len(level),
                n_clusters=len(np.unique(cluster)),
                spearman_rho=_opt(rho[c]),
                spearman_ci=_ci(rho_lo[c], rho_hi[c]),
                spearman_length_controlled=_opt(part[c]),
                spearman_length_controlled_ci=_ci(part_lo[c], part_hi[c]),
                pearson_r_means=_opt(means["r"][c]),
                pearson_ci=_ci(means["ci_low"][c], means["ci_high"][c]),
                sparsity_direction=_sense(metric, rho[c] > 0, ("sparser_with_shift", "denser_with_shift"))
                if trend
                else None,
                reference_as_level0=with_ref,
                masked_same_as_unmasked=src.masked_same,
            )
            rows.extend(_with_masked_copy(row, src))
    return rows


def _source_of(seq_index: np.ndarray, source_index: np.ndarray | None) -> np.ndarray:
    """Source text of each window: ``source_index[seq_index]``, else the window number itself."""
    if source_index is None:
        return np.asarray(seq_index, np.int64)
    return np.asarray(source_index, np.int64)[np.asarray(seq_index, np.int64)]
