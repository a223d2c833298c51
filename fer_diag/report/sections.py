"""Typed sections of a :class:`~fer_diag.report.schema.Report`: one pydantic model per section and row.

Each model mirrors, key for key, the JSON-ready dict its analyzer produces (the
``to_dict()`` / ``compute()`` output), so ``report.json`` keeps the same shape.
The audit passes those dicts to ``Report(...)`` and pydantic validates them into
these models; ``extra="forbid"`` everywhere, so a key an analyzer adds, drops or
renames fails validation instead of drifting silently.

Conventions:

* :data:`Real` is a measured float. NaN is written as JSON ``null`` (pydantic's
  default) and ``null`` reads back as NaN, so a NaN never breaks a round trip.
* ``X | None`` fields are ``None`` when the analyzer says "not defined" (e.g. no
  token was counted, no bootstrap was run).
* Keys the producer only writes sometimes (``massive_masked`` of a fidelity row,
  ``text`` of a context) are left out of the JSON when ``None``, as before.
* Dict-style access (``section["key"]``, ``section.get("key")``) still works on
  every model, for scripts written against the untyped 1.x schema; new code reads
  attributes (``report.familiarity.detection[0].auroc``) or tables
  (:meth:`~fer_diag.report.schema.Report.frame`).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_serializer


def _null_is_nan(value: Any) -> Any:
    return float("nan") if value is None else value


#: A measured float; JSON ``null`` ↔ NaN.
Real = Annotated[
    float,
    BeforeValidator(_null_is_nan),
    WithJsonSchema({"anyOf": [{"type": "number"}, {"type": "null"}], "description": "null = NaN"}),
]


class Section(BaseModel):
    """Base of every section model: no extra keys; dict-style reads for 1.x-era scripts."""

    model_config = ConfigDict(extra="forbid")

    def __getitem__(self, key: str) -> Any:
        if key in type(self).model_fields:
            return getattr(self, key)
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in type(self).model_fields else default


class _OmitNone(Section):
    """A model whose :attr:`_omit_if_none` keys are left out of the dump when ``None`` (as the producer does)."""

    _omit_if_none: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _drop_absent(self, handler):
        data = handler(self)
        for key in self._omit_if_none:
            if data.get(key) is None:
                data.pop(key, None)
        return data


# --------------------------------------------------------------------------- sparsity
class SetInfo(Section):
    """What a text set is (``analyzers.persequence.SetInfo``)."""

    kind: str
    level: float | None
    axis: str | None


class WindowMetricStats(Section):
    """Per-window statistics of a window metric (participation ratio): over the set's windows."""

    seq_mean: Real
    seq_std: Real
    n_seqs: int


class TokenMetricStats(Section):
    """Statistics of a per-token metric: over tokens (mean, std), over window means (seq_*) and last tokens."""

    mean: Real
    std: Real
    n_tokens: int
    seq_mean: Real
    seq_std: Real
    last_mean: Real
    last_std: Real
    n_seqs: int


MetricStats = TokenMetricStats | WindowMetricStats


class Profile(Section):
    """Aggregates of one (basis, hook, set) (``analyzers.sparsity.Profile``).

    ``metrics[metric]["unmasked" | "masked"]``; where nothing was masked the two are
    the same (``masked_same_as_unmasked``).
    """

    n_tokens: int
    n_seqs: int
    masked_dims: list[int]
    masked_same_as_unmasked: bool
    metrics: dict[str, dict[str, MetricStats]]


class FeatureDensity(Section):
    """SAE latent firing over one text set (``analyzers.sparsity.FeatureDensity``)."""

    n_latents: int
    n_tokens: int
    dead_frac: Real
    dense_frac: Real
    dense_threshold: float
    log10_density_q10_q50_q90: list[float | None] = Field(min_length=3, max_length=3)
    mean_l0: Real


class SparsitySection(Section):
    """``SparsityResult.to_dict()``: ``profiles[basis][hook][set]``, ``feature_density[basis][hook][set]``."""

    max_seqs_per_set: int
    massive_dims: dict[str, list[int]] = Field(description="hook → dims masked in the 'masked' variant")
    metric_sense: dict[str, int] = Field(description="+1 higher = sparser, −1 higher = denser, 0 neither")
    sets: dict[str, SetInfo]
    profiles: dict[str, dict[str, dict[str, Profile]]]
    feature_density: dict[str, dict[str, dict[str, FeatureDensity]]]


# --------------------------------------------------------------------------- massive
class MassiveDim(Section):
    """One massive dim of a hook (``analyzers.massive.MassiveDim``)."""

    dim: int
    n_hits: int
    n_seqs: int
    seq_frac: Real
    hits_first_position: int
    hits_later_positions: int
    max_abs: Real
    value_mean: Real
    value_cv: float | None
    top_tokens: list[tuple[int, int]] = Field(description="(token id, hits), most frequent first")


class MassiveHook(Section):
    """Massive activations of one hook (``analyzers.massive.MassiveHook``)."""

    hook: str
    layer: int | None
    n_seqs: int
    n_positions: int
    median_abs: float | None = Field(description="median |h| over every non-padding position (histogram estimate)")
    threshold: float | None = Field(description="max(abs_threshold, ratio × median_abs): the |h| a hit must reach")
    n_hits: int
    n_hit_tokens: int
    energy_share_mean: float | None
    energy_share_max: float | None
    dims: list[MassiveDim]


class Scaffold(Section):
    """Sun et al.'s scaffold test (``fer_diag.scaffold.scaffold_report``): mean NLL clean / mean-set / zeroed."""

    hook: str
    dims: list[int]
    positions: list[int]
    windows: int
    n_positions: int
    nll_clean: Real
    nll_mean: Real
    nll_zero: Real
    delta_mean: Real
    delta_zero: Real


class MassiveSection(Section):
    """``MassiveResult`` as a dict, plus the audit's ``scaffold`` intervention (None when not run)."""

    abs_threshold: float
    ratio: float
    bin_ratio: float = Field(description="resolution of the |h| histogram the median is read from")
    hooks: dict[str, MassiveHook]
    first_layer: int | None
    first_hook: str | None
    scaffold: Scaffold | None = None


# --------------------------------------------------------------------------- familiarity
class ScoreKey(Section):
    """Which score a row is about: ``metric`` of ``hook`` in ``basis`` (``source="sparsity"``) or a baseline."""

    source: str
    basis: str | None
    hook: str | None
    metric: str
    masked: bool
    reduce: str


Interval = tuple[float, float]


class DetectionRow(ScoreKey):
    """One score × one shifted set against the reference set (the familiarity ``DetectionRow``)."""

    set_name: str
    kind: str
    level: float | None
    n_id: int
    n_ood: int
    auroc: Real
    auroc_ci: Interval | None
    direction: str
    auroc_oriented: Real
    auroc_oriented_ci: Interval | None
    sparsity_direction: str | None
    fpr_at_95tpr: Real
    auroc_length_matched: float | None
    length_matched_pair_frac: Real
    masked_same_as_unmasked: bool


class GradedRow(ScoreKey):
    """One score along one graded shift axis (the familiarity ``GradedRow``)."""

    axis: str
    levels: list[float]
    level_means: list[Real]
    n_seqs: int
    n_clusters: int
    spearman_rho: float | None
    spearman_ci: Interval | None
    spearman_length_controlled: float | None
    spearman_length_controlled_ci: Interval | None
    pearson_r_means: float | None
    pearson_ci: Interval | None
    sparsity_direction: str | None
    reference_as_level0: bool
    masked_same_as_unmasked: bool


class FamiliaritySettings(Section):
    reference_set: str
    n_boot: int
    ci: float
    seed: int
    length_bins: int
    tpr: float
    ci_methods: dict[str, str]


class FamiliaritySection(Section):
    """``FamiliarityResult.to_dict()``."""

    reference_set: str
    settings: FamiliaritySettings
    detection: list[DetectionRow]
    graded: list[GradedRow]


# --------------------------------------------------------------------------- SAE fidelity
class MaskedFidelity(Section):
    """Fidelity over the coordinates that are not massive dims."""

    explained_variance: float | None
    cosine: float | None
    relative_mse: float | None
    ev_drop: float | None


class FidelitySet(_OmitNone):
    """One SAE × one text set (``SAEFidelityAnalyzer.compute``); ``massive_masked`` only with massive dims."""

    _omit_if_none: ClassVar[tuple[str, ...]] = ("massive_masked",)

    tokens: int
    explained_variance: float | None
    cosine: float | None
    relative_mse: float | None
    l0: float | None
    ce_score: float | None
    ce_score_ci: Interval | None = Field(description="bootstrap CI over the CE windows")
    ce_clean: float | None
    ce_sae: float | None
    ce_ablated: float | None
    ce_tokens: int
    ce_windows: int
    kind: str | None
    ev_drop: float | None
    massive_masked: MaskedFidelity | None = None


class FidelityHook(Section):
    reference_ev: float | None = Field(description="EV over the pooled in-distribution sets")
    massive_dims: list[int]
    sets: dict[str, FidelitySet]


class SAEFidelitySection(Section):
    """``SAEFidelityAnalyzer.compute()``: ``hooks[hook].sets[set]``."""

    hooks: dict[str, FidelityHook]


# --------------------------------------------------------------------------- shifted latents
class LatentContext(_OmitNone):
    """A top in-distribution context of a latent; ``token_ids`` span ±context (−1 outside the window)."""

    _omit_if_none: ClassVar[tuple[str, ...]] = ("text",)

    activation: Real
    set: str
    seq_index: int
    position: int
    token_ids: list[int]
    text: str | None = Field(None, description="decoded, the token in ⟦ ⟧ (only when a tokenizer was given)")


class ShiftedLatent(Section):
    latent: int
    rate_reference: Real
    rate: Real
    change: Real
    contexts: list[LatentContext]


class ShiftedSet(Section):
    gained: list[ShiftedLatent]
    lost: list[ShiftedLatent]


class ShiftedLatentsSection(Section):
    """``ShiftedLatentsAnalyzer.compute()``: ``hooks[hook][set].gained / .lost``."""

    reference_sets: list[str]
    hooks: dict[str, dict[str, ShiftedSet]]


# --------------------------------------------------------------------------- control
class ControlSection(Section):
    """The random-init control: the sparsity analysis of a randomly initialised copy on ``sets``."""

    sets: list[str]
    sparsity: SparsitySection


# --------------------------------------------------------------------------- verdict
Status = Literal["TRUSTED", "CAUTION", "UNTRUSTED"]


class ConceptInfo(Section):
    """A concept set the probes were trained on (``fer_diag.data.concepts``)."""

    name: str
    level: Literal["sequence", "token"]
    classes: list[str]
    n_per_class: dict[str, int] = Field(description="examples per class in-distribution (after the reservoir cap)")
    n_twin: int = Field(description="examples of the shifted twin")
    source: str
    twin_shift: str
    dropped: list[str] = Field(description="classes left out, each with its reason")
    notes: list[str]


class ProbeRow(Section):
    """A linear probe for one concept at one hook in one basis (:mod:`fer_diag.probing`)."""

    concept: str
    hook: str
    basis: str
    n: int
    n_classes: int
    chance: Real = Field(description="accuracy of always answering the most frequent class")
    accuracy: Real = Field(description="stratified k-fold cross-validated accuracy")
    accuracy_ci: tuple[Real, Real] = Field(description="Wilson 95 % interval over examples")
    macro_f1: Real
    macro_f1_ci: tuple[Real, Real] = Field(description="bootstrap over examples")
    control_accuracy: Real = Field(description="the same probe on shuffled labels (Hewitt & Liang's control task)")
    selectivity: Real = Field(description="accuracy − control_accuracy")
    sparse_accuracy: dict[int, Real] = Field(
        description="k → CV accuracy of the k-sparse probe (features by class-mean difference on the training fold)"
    )
    transfer_accuracy: Real | None = Field(description="trained on all in-distribution examples, scored on the twin")
    transfer_drop: Real | None = Field(description="accuracy − transfer_accuracy")
    n_twin: int
    top_features: dict[str, list[int]] = Field(
        description="class → features (SAE latents / coordinates) most raised in it, best first"
    )


class ProbeSection(Section):
    """Linear decodability of concepts per hook and basis (DESIGN §5 "Probes")."""

    n_folds: int
    ks: list[int]
    max_per_class: int
    C: float = Field(description="inverse L2 strength of the logistic regression")
    concepts: list[ConceptInfo]
    skipped: list[str] = Field(description="concepts not run, each with the reason / fix")
    rows: list[ProbeRow]


class FERRow(Section):
    """Fractured-entanglement components and index of one concept at one hook in one basis (:mod:`fer_diag.fer`)."""

    hook: str
    basis: str
    concept: str
    level: str
    split_count: Real | None
    absorption: Real | None
    context_fracture: Real | None
    graph_fragmentation: Real | None
    mixed_selectivity: Real | None
    cross_talk: Real | None
    modularity_deficit: Real | None
    reasons: dict[str, str] = Field(description="component → why it is not defined here")
    index: Real | None = Field(description="mean of the defined components")
    index_ci: tuple[Real, Real] | None = Field(description="bias-shifted bootstrap percentile interval")
    index_bias: Real | None
    components_used: list[str]
    n_selective: int = Field(description="latents selective for the concept")
    decodable: bool | None = Field(description="the concept's probe at this hook and basis is decodable (verdict rule)")


class FERSection(Section):
    """FER scores per hook × basis × concept, on SAE latents and privileged neurons only (DESIGN §5)."""

    config: dict[str, Any] = Field(description="fer_diag.fer.FERConfig")
    rows: list[FERRow]
    not_scored: list[str] = Field(description="hook/basis pairs left out, each with why")
    graphs: dict[str, str] = Field(
        default_factory=dict,
        description="hook/basis/level → co-activation graph file (GraphML) of the concepts read at that level "
        "(token or sequence), next to report.json",
    )


#: blocking flags of the verdict, most decisive first (:mod:`fer_diag.verdict`)
BLOCKING = ("no_signal", "sae_unfaithful", "basis_dependent", "structure_broken", "massive", "length_confounded")


class VerdictConfig(BaseModel):
    """Thresholds of the verdict (DESIGN §6 defaults); printed in the report."""

    model_config = ConfigDict(extra="forbid")

    auroc_min: float = Field(0.7, description="signal: oriented AUROC at least this")
    auroc_ci_low_min: float = Field(0.5, description="… and the CI's low end above this")
    rho_min: float = Field(0.3, description="graded signal: |Spearman ρ| at least this, CI excluding 0")
    basis_auroc_delta: float = Field(0.15, description="basis-dependent: AUROC moves by more under a rotation")
    basis_rho_delta: float = Field(0.3, description="basis-dependent (graded): ρ moves by more under a rotation")
    sae_ev_drop: float = Field(0.1, description="SAE unfaithful: explained variance drops by more than this")
    sae_ce_drop: float = Field(0.05, description="SAE unfaithful: CE-loss score drops by more than this")
    control_gap_ratio: float = Field(0.5, description="not learned: random-init gap ≥ this × the trained gap")
    length_min_pair_frac: float = Field(0.25, description="length-matched AUROC used when it keeps this share of pairs")
    fer_index_max: float = Field(
        0.5, description="structure broken: a concept's FER index above this at the hook and basis of the signal"
    )
    decodable_min: float = Field(
        0.5, description="a concept is decodable: (accuracy − chance)/(1 − chance) ≥ this, CI low end > control"
    )
    cv_splits: int = Field(5, ge=2, description="folds of the NLL + score logistic regression")
    n_boot: int = Field(500, ge=0, description="bootstrap resamples of the CV gain CI")
    seed: int = 0


class Flag(BaseModel):
    """One reason a signal cannot be (fully) trusted, with the numbers it used and the thresholds it compared."""

    model_config = ConfigDict(extra="forbid")

    name: str
    blocking: bool
    evidence: dict[str, Any]
    threshold: dict[str, float]
    message: str


class VerdictRow(BaseModel):
    """The verdict on one sparsity score at one hook for one shifted set (``target_kind="set"``) or graded axis."""

    model_config = ConfigDict(extra="forbid")

    hook: str
    basis: str
    metric: str
    reduce: str
    target: str
    target_kind: Literal["set", "axis"]
    status: Status
    decisive: str | None = Field(description="the flag that decides an UNTRUSTED verdict")
    signal: bool
    value: float | None = Field(description="oriented AUROC (set) or Spearman ρ (axis)")
    ci: tuple[float, float] | None
    direction: str | None = Field(description="sparser_is_ood / denser_is_ood (sets), …_with_shift (axes)")
    nll_value: float | None = Field(description="the NLL baseline's oriented AUROC or ρ on the same target")
    basis_note: str | None = Field(description="why the basis-dependence test does not apply here")
    flags: list[Flag]


class HookSummary(BaseModel):
    """The answer for one hook: trusted signals with their numbers, and why the others are not trusted."""

    model_config = ConfigDict(extra="forbid")

    hook: str
    n_rows: int
    n_signal: int
    status_counts: dict[str, int]
    decisive_counts: dict[str, int] = Field(description="untrusted rows by decisive flag")
    trusted: list[str] = Field(description="'basis metric/reduce on target: value (direction)', best first")
    caution: list[str]
    direction_counts: dict[str, int] = Field(description="signals by direction (never mixed into one range)")
    value_range_by_direction: dict[str, tuple[float, float]]


class VerdictSection(BaseModel):
    """The verdict section of a report."""

    model_config = ConfigDict(extra="forbid")

    config: VerdictConfig
    ci_methods: dict[str, str]
    hooks: list[HookSummary]
    rows: list[VerdictRow]


#: Report field → section model (the analyzer sections).
SECTIONS: dict[str, type[Section]] = {
    "sparsity": SparsitySection,
    "massive": MassiveSection,
    "familiarity": FamiliaritySection,
    "sae_fidelity": SAEFidelitySection,
    "shifted_latents": ShiftedLatentsSection,
    "control": ControlSection,
    "verdict": VerdictSection,
    "probes": ProbeSection,
    "fer": FERSection,
}
