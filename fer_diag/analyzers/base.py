"""The analyzer protocol: streaming, mergeable accumulators with declared state (torchmetrics style).

An analyzer holds its parameters from ``__init__`` (scikit-learn style: one
attribute per parameter, same name) and declares its accumulated state with
:meth:`Analyzer.add_state` — a name, a default and a *reduction*:

* ``"sum"``   numbers, numpy arrays, tensors, other objects with ``+``
  (such as :class:`~fer_diag.analyzers.massive.Tally`): ``a + b``;
* ``"max"``   elementwise maximum;
* ``"union"`` values that must agree wherever both shards saw them (e.g. what a
  text set is); a disagreement is an error;
* ``"merge"`` objects with their own exact ``merge(other)`` (bounded samples such
  as :class:`~fer_diag.analyzers.persequence.SequenceSample`).

Dict states are reduced key by key (a key seen by one shard only is copied), so
a state such as ``{(hook, set): array}`` needs no code to merge. ``merge``,
``state_dict`` / ``load_state_dict`` (checkpoints) and a later distributed
reduce all come from the declarations; no analyzer writes its own merge loop.

``update(batch)`` sees one :class:`~fer_diag.capture.ActivationBatch` in one of
the readings the analyzer declares in :attr:`Analyzer.reads` (raw activations,
an SAE basis, token readouts); ``compute()`` takes no arguments and returns a
typed result. Processing two shards apart and merging equals one pass (counts
exactly, floats to rounding): ``tests/test_shard_merge.py`` checks that for
every analyzer. Memory must not grow with the number of tokens, except for
bounded samples that the analyzer documents.
"""

from __future__ import annotations

import copy
import inspect
from abc import ABC, abstractmethod
from enum import StrEnum
from typing import Any, ClassVar, Literal, Self

import numpy as np
import torch

from fer_diag.capture import ActivationBatch

Reduce = Literal["sum", "max", "union", "merge"]


class Reading(StrEnum):
    """What an analyzer reads from each batch (the pipeline feeds it exactly that)."""

    RAW = "raw"  # the hook's own coordinates
    ROTATED = "rotated"  # the same vectors in fixed random orthogonal bases (basis-dependence test)
    SAE = "sae"  # SAE latents (the batch also carries the raw vectors they encode: ``batch.raw``)
    READOUTS = "readouts"  # per-token NLL / entropy / max-probability of the model's own prediction


def reduce_states(a: Any, b: Any, how: Reduce) -> Any:
    """Combine two values of one declared state (module docstring); ``b`` is never aliased."""
    if a is None:
        return copy.deepcopy(b)
    if b is None:
        return a
    if isinstance(a, dict):
        out = dict(a)
        for key, value in b.items():
            out[key] = reduce_states(a[key], value, how) if key in a else copy.deepcopy(value)
        return out
    if how == "merge":
        return a.merge(copy.deepcopy(b))
    if how == "sum":
        return a + b
    if how == "max":
        if isinstance(a, torch.Tensor):
            return torch.maximum(a, b)
        if isinstance(a, np.ndarray):
            return np.maximum(a, b)
        return max(a, b)
    if how == "union":
        if a != b:
            raise ValueError(f"shards disagree: {a!r} vs {b!r}")
        return a
    raise ValueError(f"unknown reduction {how!r}")


def accumulate(state: dict, key: Any, value: Any) -> None:
    """``state[key] += value`` for a ``"sum"`` state, the first value inserted as it is (no copy, no zero)."""
    state[key] = value if key not in state else state[key] + value


class Analyzer(ABC):
    """Base class of every streaming analyzer (module docstring)."""

    #: key of this analyzer's section in the report
    name: ClassVar[str] = ""
    #: readings this analyzer's ``update`` takes
    reads: ClassVar[frozenset[Reading]] = frozenset({Reading.RAW})
    #: parameters that are handles to live objects (SAEs, tokenizers): not compared on merge, never checkpointed
    handles: ClassVar[tuple[str, ...]] = ()

    def add_state(self, name: str, default: Any, reduce: Reduce) -> None:
        """Declare a state attribute, set to a copy of ``default``."""
        states = self.__dict__.setdefault("_states", {})
        if name in states:
            raise ValueError(f"state {name!r} declared twice")
        states[name] = (copy.deepcopy(default), reduce)
        setattr(self, name, copy.deepcopy(default))

    @property
    def states(self) -> dict[str, Reduce]:
        """Declared state names and their reductions."""
        return {name: how for name, (_, how) in self.__dict__.get("_states", {}).items()}

    @abstractmethod
    def update(self, batch: ActivationBatch) -> None:
        """Accumulate statistics of one batch."""

    @abstractmethod
    def compute(self) -> Any:
        """The result of everything seen so far (no arguments; typed)."""

    def params(self) -> dict[str, Any]:
        """``__init__`` parameters (scikit-learn's ``get_params``), handles left out."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {p: getattr(self, p) for p in names if p not in self.handles}

    def merge(self, other: Self) -> Self:
        """Fold ``other`` (same type and parameters, another shard) into ``self``; return ``self``."""
        if type(other) is not type(self):
            raise TypeError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        if other.params() != self.params():
            raise ValueError(f"cannot merge {type(self).__name__}s with different parameters")
        for name, how in self.states.items():
            setattr(self, name, reduce_states(getattr(self, name), getattr(other, name), how))
        return self

    def reset(self) -> None:
        """Back to the declared defaults."""
        for name, (default, _) in self.__dict__.get("_states", {}).items():
            setattr(self, name, copy.deepcopy(default))

    def state_dict(self) -> dict[str, Any]:
        """The declared states (plain data: numbers, arrays, tensors, small dataclasses) for checkpoints."""
        return {name: getattr(self, name) for name in self.states}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` onto an analyzer built with the same parameters."""
        if set(state) != set(self.states):
            raise ValueError(f"checkpoint states {sorted(state)} do not match {type(self).__name__}'s {self.states}")
        for name, value in state.items():
            setattr(self, name, value)
