"""The report: one versioned JSON document (pydantic). Markdown, HTML and the
terminal summary are renderings of it and never compute anything themselves.

Bump :data:`SCHEMA_VERSION` on any change that removes or renames a field.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from fer_diag import __version__

SCHEMA_VERSION = "1.0"


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
    """Everything an audit found. Every number in it was computed by an analyzer."""

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
    sparsity: dict[str, Any] = Field(default_factory=dict)
    massive: dict[str, Any] = Field(default_factory=dict)
    familiarity: dict[str, Any] = Field(default_factory=dict)
    sae_fidelity: dict[str, Any] = Field(default_factory=dict)
    shifted_latents: dict[str, Any] = Field(default_factory=dict)
    control: dict[str, Any] = Field(default_factory=dict, description="trained vs random-init comparison")
    plots: dict[str, str] = Field(default_factory=dict, description="plot name → file (relative to report)")

    def to_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.model_dump_json())  # compact: the tables run to many thousands of rows
        return path

    @classmethod
    def from_json(cls, path: str | Path) -> Report:
        data = json.loads(Path(path).read_text())
        version = data.get("schema_version", "?")
        if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
            raise ValueError(
                f"{path} has report schema {version}; this fer-diag reads {SCHEMA_VERSION}. "
                f"Re-run the audit or install the fer-diag version that wrote it ({data.get('fer_diag_version')})."
            )
        return cls.model_validate(data)
