"""The comparison report (:func:`fer_diag.compare.compare`): one versioned pydantic document.

Markdown, HTML, the terminal summary and the CKA heatmaps
(:mod:`fer_diag.report.comparison_render`) are renderings of it; :meth:`Comparison.frame`
gives its tables as DataFrames. Every model here is ``extra="forbid"``. Bump
:data:`COMPARISON_SCHEMA_VERSION` on any change that removes or renames a field.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fer_diag import __version__
from fer_diag.report.schema import ReportFileError, ReportVersionError, TextSetInfo
from fer_diag.report.sections import Interval, Real, Section

if TYPE_CHECKING:
    import pandas as pd

COMPARISON_SCHEMA_VERSION = "1.0"

CKA_ESTIMATOR = (
    "linear CKA; 'cka_*' debiased: unbiased HSIC of Song et al. 2012 (U-centred Grams), 'cka_*_biased': "
    "HSIC = tr(KHLH)/(n-1)^2 (Kornblith et al. 2019), which inflates when samples are few against widths; "
    "mutual k-NN: cosine neighbours, Huh et al. 2024"
)


class ModelSide(Section):
    name: str
    hf_class: str
    n_layers: int
    d_model: int
    random_init: bool = False
    tokenizer: str


class IdenticalThresholdsInfo(Section):
    agreement_min: float
    kl_max: float
    nll_diff_max: float


class BehaviourRow(Section):
    """One text set: the two models' next-token behaviour on the same windows."""

    set: str
    kind: str
    n_windows: int
    n_tokens: int = Field(description="A's counted tokens (predictions compared)")
    top1_agreement: float | None = Field(description="share of tokens where both predict the same next token")
    kl_ab: float | None = Field(description="mean KL(A‖B) per token, nats")
    kl_ba: float | None = Field(description="mean KL(B‖A) per token, nats")
    nll_a: Real
    nll_b: Real
    nll_diff: Real = Field(description="B − A, mean over windows of the per-window mean NLL")
    nll_diff_ci: Interval | None = Field(description="bootstrap 95 % CI over windows (paired)")
    nll_unit: Literal["nats/token", "nats/byte"]


class BehaviourSection(Section):
    thresholds: IdenticalThresholdsInfo
    identical: bool = Field(description="identically performing on this suite: every set within every threshold")
    reasons: list[str] = Field(description="each failed test with its numbers (empty when identical)")
    rows: list[BehaviourRow]


class LayerPair(Section):
    """One hook of A and its matched hook of B, with CKA and mutual k-NN on pooled and (when on) token vectors."""

    hook_a: str
    hook_b: str
    depth_a: float
    depth_b: float
    matched_by: Literal["depth", "cka"]
    cka_pooled: Real
    cka_pooled_biased: Real
    knn_pooled: Real
    cka_token: Real | None = None
    cka_token_biased: Real | None = None
    knn_token: Real | None = None


class Heatmap(Section):
    """Debiased linear CKA of every hook of A (rows) with every hook of B (columns)."""

    level: Literal["pooled", "token"]
    hooks_a: list[str]
    hooks_b: list[str]
    values: list[list[Real]]


class SimilaritySection(Section):
    estimator: str = CKA_ESTIMATOR
    token_level: bool
    token_note: str | None = Field(description="why token-level measures are off, when they are")
    n_pooled: int = Field(description="windows (pooled vectors: mean over counted tokens)")
    n_tokens: int = Field(description="token positions sampled (same positions in both models)")
    knn_k: int
    by_depth: list[LayerPair]
    by_cka: list[LayerPair]
    heatmaps: list[Heatmap]


class ProfileDiff(Section):
    basis: str
    hook_a: str
    hook_b: str
    set: str
    metric: str
    a: float | None
    b: float | None
    diff: float | None = Field(description="B − A of the mean over windows")
    diff_ci: Interval | None = Field(description="normal 95 % CI from each side's window std (unpaired)")


class AurocDiff(Section):
    source: str
    basis: str | None
    hook_a: str | None
    hook_b: str | None
    set: str
    metric: str
    reduce: str
    a: float | None
    a_ci: Interval | None
    b: float | None
    b_ci: Interval | None
    diff: float | None
    diff_ci: Interval | None = Field(description="half-widths of A's and B's CIs in quadrature")
    direction_a: str | None
    direction_b: str | None


class DiffSummary(Section):
    """How far B moved from A for one (basis, metric), over hooks × sets."""

    basis: str
    metric: str
    n: int
    mean_abs_diff: float
    max_abs_diff: float
    n_ci_excludes_0: int


class VerdictDiff(Section):
    hook_a: str
    hook_b: str
    basis: str
    metric: str
    reduce: str
    target: str
    status_a: str
    status_b: str
    decisive_a: str | None
    decisive_b: str | None
    value_a: float | None
    value_b: float | None


class VerdictHookDiff(Section):
    hook_a: str
    hook_b: str
    trusted_a: int
    trusted_b: int
    caution_a: int
    caution_b: int
    untrusted_a: int
    untrusted_b: int


class ExtraTable(Section):
    """A report frame the audit has beyond sparsity / familiarity / verdict (``probes``, ``fer``), side by side."""

    name: str
    columns: list[str]
    rows: list[list[Any]]


class DiagnosticsSection(Section):
    reports: dict[str, str] = Field(default_factory=dict, description="a / b → the full audit report (relative path)")
    hook_pairs: list[tuple[str, str]] = Field(description="audited hooks of A and B matched by relative depth")
    profiles: list[ProfileDiff]
    profile_summary: list[DiffSummary]
    familiarity: list[AurocDiff]
    auroc_summary: list[DiffSummary]
    verdict_rows: list[VerdictDiff]
    verdict_hooks: list[VerdictHookDiff]
    verdict_changed: int = Field(description="verdict rows whose status differs between A and B")
    extras: list[ExtraTable] = Field(default_factory=list)


class Comparison(BaseModel):
    """Two models on one suite: same behaviour? different inside? (:func:`fer_diag.compare.compare`)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    schema_version: str = COMPARISON_SCHEMA_VERSION
    fer_diag_version: str = __version__
    created: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    model_a: ModelSide
    model_b: ModelSide
    pair: Literal["rotated", "random-init", "model"]
    same_tokenizer: bool
    text_sets: list[TextSetInfo]
    skipped_sets: list[str] = Field(default_factory=list)
    config: dict[str, Any] = Field(default_factory=dict)
    seconds: dict[str, float] = Field(default_factory=dict)
    behaviour: BehaviourSection
    similarity: SimilaritySection
    diagnostics: DiagnosticsSection | None = Field(None, description="absent when the audits were not run")
    plots: dict[str, str] = Field(default_factory=dict)

    def frame(self, name: str) -> pd.DataFrame:
        """A table as a DataFrame (:meth:`frames` lists the names); CIs split into ``_low`` / ``_high``."""
        import pandas as pd

        if name not in _FRAMES:
            raise KeyError(f"no comparison frame {name!r}; valid: {', '.join(_FRAMES)}")
        rows = [_flat(r) for r in _FRAMES[name](self)]
        return pd.DataFrame(rows)

    @staticmethod
    def frames() -> list[str]:
        return list(_FRAMES)

    def to_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.model_dump_json())
        return path

    @classmethod
    def from_json(cls, path: str | Path) -> Comparison:
        """Read and validate a comparison.json of this major schema version (errors name the fix)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ReportFileError(f"cannot read {path} as a comparison: {exc}") from exc
        version = str(data.get("schema_version", "?")) if isinstance(data, dict) else "?"
        if version.split(".")[0] != COMPARISON_SCHEMA_VERSION.split(".")[0]:
            raise ReportVersionError(
                f"{path} has comparison schema {version}; this fer-diag ({__version__}) reads "
                f"{COMPARISON_SCHEMA_VERSION}. Re-run `fer-diag compare`."
            )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ReportFileError(
                f"{path} is not a valid comparison ({exc.error_count()} problems); re-run it"
            ) from exc


def _flat(row: BaseModel | dict[str, Any]) -> dict[str, Any]:
    data = row.model_dump() if isinstance(row, BaseModel) else row
    out: dict[str, Any] = {}
    for k, v in data.items():
        if k.endswith("_ci"):
            out[f"{k}_low"], out[f"{k}_high"] = v if v is not None else (None, None)
        else:
            out[k] = v
    return out


def _heatmap(c: Comparison, level: str) -> Iterator[dict[str, Any]]:
    for h in c.similarity.heatmaps:
        if h.level == level:
            for ha, values in zip(h.hooks_a, h.values, strict=True):
                yield from ({"hook_a": ha, "hook_b": hb, "cka": v} for hb, v in zip(h.hooks_b, values, strict=True))


def _diag(part: str) -> Callable[[Comparison], list]:
    return lambda c: getattr(c.diagnostics, part) if c.diagnostics else []


_FRAMES: dict[str, Callable[[Comparison], Any]] = {
    "behaviour": lambda c: c.behaviour.rows,
    "layers.by_depth": lambda c: c.similarity.by_depth,
    "layers.by_cka": lambda c: c.similarity.by_cka,
    "heatmap.pooled": lambda c: _heatmap(c, "pooled"),
    "heatmap.token": lambda c: _heatmap(c, "token"),
    "diagnostics.profiles": _diag("profiles"),
    "diagnostics.profile_summary": _diag("profile_summary"),
    "diagnostics.familiarity": _diag("familiarity"),
    "diagnostics.auroc_summary": _diag("auroc_summary"),
    "diagnostics.verdict_rows": _diag("verdict_rows"),
    "diagnostics.verdict_hooks": _diag("verdict_hooks"),
}
