"""The analyzer protocol: streaming, mergeable accumulators (torchmetrics style).

An analyzer sees one :class:`~fer_diag.capture.ActivationBatch` at a time in
``update``; ``merge`` folds in another analyzer of the same type that saw a
different shard of the corpus; ``compute`` returns a plain, JSON-ready result.
Processing two shards apart and merging must equal one pass over both (counts
exactly, floats to rounding). Memory must not grow with the number of tokens,
except for bounded samples that the analyzer documents.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Self

from fer_diag.capture import ActivationBatch


class Analyzer(ABC):
    """Base class of every analyzer; subclasses hold their parameters from ``__init__``."""

    #: key of this analyzer's section in the report
    name: str = ""
    #: attributes that are handles to live objects (SAEs, models), rebuilt by ``__init__``, never checkpointed
    handles: tuple[str, ...] = ()

    @abstractmethod
    def update(self, batch: ActivationBatch) -> None:
        """Accumulate statistics of one batch."""

    @abstractmethod
    def merge(self, other: Self) -> Self:
        """Fold ``other`` (same type and parameters, different shard) into ``self``; return ``self``."""

    @abstractmethod
    def compute(self) -> Any:
        """Return the result (pydantic model or JSON-ready dict)."""

    def state_dict(self) -> dict[str, Any]:
        """Parameters and accumulated statistics, picklable (for the audit's checkpoints)."""
        return {k: v for k, v in vars(self).items() if k not in self.handles}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned onto an analyzer built with the same parameters."""
        vars(self).update(state)

    def _check_mergeable(self, other: Analyzer) -> None:
        if type(other) is not type(self):
            raise TypeError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
