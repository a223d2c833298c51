"""The report: one versioned JSON document (pydantic). Markdown, HTML and the
terminal summary are renderings of it and never compute anything themselves.

Bump :data:`SCHEMA_VERSION` on any change that removes or renames a field. The
analyzer sections are typed (:mod:`fer_diag.report.sections`); 2.0 introduced
that typing — the JSON shape inside the sections is the one 1.x wrote, but an
absent section is now ``null`` rather than ``{}``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fer_diag import __version__
from fer_diag.errors import FerDiagError
from fer_diag.report.sections import (
    SECTIONS,
    ControlSection,
    FamiliaritySection,
    FERSection,
    MassiveSection,
    ProbeSection,
    SAEFidelitySection,
    ShiftedLatentsSection,
    SparsitySection,
    VerdictSection,
)

if TYPE_CHECKING:
    import pandas as pd

SCHEMA_VERSION = "2.1"  # 2.1: probes and fer sections


class ReportVersionError(FerDiagError, ValueError):
    """A report.json written under another major schema version than this fer-diag reads."""


class ReportFileError(FerDiagError, ValueError):
    """A report.json that is not a valid report of this schema version (damaged or edited by hand)."""


class ModelInfo(BaseModel):
    name: str
    hf_class: str = Field(description="TransformerLens class: HookedTransformer or TransformerBridge")
    n_layers: int
    d_model: int
    random_init: bool = False


class TextSetInfo(BaseModel):
    name: str
    kind: str
    n_windows: int
    n_tokens: int = Field(description="counted tokens (BOS and padding excluded)")
    level: float | None = None
    axis: str | None = None
    source: str = ""


class RunInfo(BaseModel):
    seq_len: int
    batch_size: int
    max_seqs: int | None
    device: str
    seconds: dict[str, float] = Field(default_factory=dict, description="wall time per stage")
    resumed_sets: list[str] = Field(default_factory=list, description="text sets taken from a partial earlier run")


class Report(BaseModel):
    """Everything an audit found. Every number in it was computed by an analyzer.

    The analyzer sections (``sparsity`` … ``control``) are typed
    (:mod:`fer_diag.report.sections`); pass them as the analyzers' JSON-ready dicts
    or as models — construction and assignment (``report.massive = {...}``) both
    validate. :meth:`frame` returns the row-like sections as DataFrames.
    """

    model_config = ConfigDict(validate_assignment=True)

    schema_version: str = SCHEMA_VERSION
    fer_diag_version: str = __version__
    created: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    model: ModelInfo
    hooks: list[str]
    saes: dict[str, dict[str, Any]] = Field(default_factory=dict, description="hook → SAE description")
    text_sets: list[TextSetInfo]
    skipped_sets: list[str] = Field(default_factory=list, description="sets not run, each with the reason / fix")
    run: RunInfo
    config: dict[str, Any] = Field(default_factory=dict)
    sparsity: SparsitySection | None = None
    massive: MassiveSection | None = None
    familiarity: FamiliaritySection | None = None
    sae_fidelity: SAEFidelitySection | None = Field(None, description="present when SAEs were audited")
    shifted_latents: ShiftedLatentsSection | None = Field(None, description="present when SAEs were audited")
    control: ControlSection | None = Field(None, description="trained vs random-init comparison")
    verdict: VerdictSection | None = Field(None, description="can each sparsity signal be trusted here, and why")
    probes: ProbeSection | None = Field(None, description="linear decodability of concepts per hook and basis")
    fer: FERSection | None = Field(None, description="fractured-entanglement scores per hook, basis and concept")
    plots: dict[str, str] = Field(default_factory=dict, description="plot name → file (relative to report)")

    @field_validator(*SECTIONS, mode="before")
    @classmethod
    def _empty_is_absent(cls, value: Any) -> Any:
        return None if isinstance(value, dict) and not value else value  # {} was 1.x's "absent"

    def frame(self, name: str) -> pd.DataFrame:
        """A row-like section as a pandas DataFrame, e.g. ``frame("familiarity.detection")`` (:meth:`frames`).

        Nesting keys become columns (basis, hook, set, metric, variant, …); CIs
        become ``<name>_low`` / ``<name>_high``. An absent section gives an empty
        frame with the same columns. Unknown name → KeyError listing the valid ones.
        """
        from fer_diag.report.frames import frame

        return frame(self, name)

    @staticmethod
    def frames() -> list[str]:
        """The names :meth:`frame` accepts."""
        from fer_diag.report.frames import names

        return names()

    def to_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.model_dump_json())  # compact: the tables run to many thousands of rows
        return path

    @classmethod
    def from_json(cls, path: str | Path) -> Report:
        """Read and validate a report.json written under this major schema version.

        Raises :class:`ReportVersionError` for another major version (naming both
        versions) and :class:`ReportFileError` for a file that is not a valid report.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ReportFileError(f"cannot read {path} as a report: {exc}") from exc
        if not isinstance(data, dict):
            raise ReportFileError(f"{path} is not a report (a JSON object with schema_version)")
        version = str(data.get("schema_version", "?"))
        if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
            raise ReportVersionError(
                f"{path} has report schema {version}; this fer-diag ({__version__}) reads schema {SCHEMA_VERSION}. "
                f"Re-run the audit, or install the fer-diag version that wrote it ({data.get('fer_diag_version')})."
            )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ReportFileError(
                f"{path} is not a valid schema {SCHEMA_VERSION} report ({exc.error_count()} problems): {_first(exc)}. "
                "Re-run the audit to write it again."
            ) from exc


def _first(exc: ValidationError, n: int = 3) -> str:
    """The first ``n`` validation problems, each as ``location: message``."""
    return "; ".join(".".join(map(str, e["loc"])) + f": {e['msg']}" for e in exc.errors()[:n])
