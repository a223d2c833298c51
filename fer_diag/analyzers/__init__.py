"""Analyzers: streaming accumulators over captured activations (see :mod:`.base`)."""

from fer_diag.analyzers.base import Analyzer, Reading
from fer_diag.analyzers.baselines import BASELINES, BaselineAnalyzer, BaselineResult
from fer_diag.analyzers.massive import MassiveAnalyzer, MassiveResult, detect_massive, massive_dims
from fer_diag.analyzers.sparsity import (
    METRIC_SENSE,
    SparsityAnalyzer,
    SparsityResult,
    participation_ratio,
    token_metrics,
)

__all__ = [
    "BASELINES",
    "METRIC_SENSE",
    "Analyzer",
    "BaselineAnalyzer",
    "BaselineResult",
    "MassiveAnalyzer",
    "MassiveResult",
    "Reading",
    "SparsityAnalyzer",
    "SparsityResult",
    "detect_massive",
    "massive_dims",
    "participation_ratio",
    "token_metrics",
]
