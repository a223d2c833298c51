"""Analyzers: streaming accumulators over captured activations (see :mod:`.base`)."""

from fer_diag.analyzers.familiarity import FamiliarityAnalyzer, FamiliarityResult
from fer_diag.analyzers.massive import (
    MassiveAnalyzer,
    MassiveResult,
    detect_massive,
    massive_dims,
    scaffold_intervention,
)
from fer_diag.analyzers.sparsity import (
    METRIC_SENSE,
    SparsityAnalyzer,
    SparsityResult,
    participation_ratio,
    token_metrics,
)

__all__ = [
    "METRIC_SENSE",
    "FamiliarityAnalyzer",
    "FamiliarityResult",
    "MassiveAnalyzer",
    "MassiveResult",
    "SparsityAnalyzer",
    "SparsityResult",
    "detect_massive",
    "massive_dims",
    "participation_ratio",
    "scaffold_intervention",
    "token_metrics",
]
