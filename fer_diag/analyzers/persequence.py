"""Per-sequence bookkeeping shared by the analyzers: a bounded, mergeable sample of
per-window rows, and what each text set is (kind, level, axis).

A :class:`SequenceSample` keeps the rows of the ``cap`` windows with the *smallest*
``seq_index`` of a text set. That rule does not depend on the order batches or
shards arrive in, so merging shards (concatenate, drop repeated ``seq_index``,
re-sort, truncate) gives exactly the one-pass sample. Memory is bounded by
``2 × cap`` rows (the sample is compacted lazily when it doubles).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Self

import numpy as np

from fer_diag.capture import ActivationBatch


@dataclass(frozen=True)
class SetInfo:
    """What a text set is: its kind (``SetKind`` value), shift level and graded axis."""

    kind: str
    level: float | None
    axis: str | None

    @classmethod
    def of(cls, batch: ActivationBatch) -> SetInfo:
        axis = batch.meta.get("axis") if batch.meta else None
        level = None if batch.level is None else float(batch.level)
        return cls(kind=getattr(batch.kind, "value", str(batch.kind)), level=level, axis=axis)

    def to_dict(self) -> dict:
        return asdict(self)


def record_set(sets: dict[str, SetInfo], batch: ActivationBatch) -> SetInfo:
    """Note ``batch``'s text set in ``sets`` and return it; a set seen with another kind/level/axis is an error."""
    merge_sets(sets, {batch.set_name: SetInfo.of(batch)})
    return sets[batch.set_name]


def merge_sets(into: dict[str, SetInfo], other: dict[str, SetInfo]) -> dict[str, SetInfo]:
    """Union of two ``set name → SetInfo`` maps (in place on ``into``)."""
    for name, info in other.items():
        seen = into.setdefault(name, info)
        if seen != info:
            raise ValueError(f"text set {name!r} was seen as {seen} and as {info}; set names must be unique")
    return into


class SequenceSample:
    """Rows ``(seq_index, level, n_tokens, values[n_cols])`` of at most ``cap`` windows of one text set.

    Keeps the ``cap`` smallest ``seq_index`` values; a ``seq_index`` seen twice keeps
    its first row (so feeding the same windows in two bases does not duplicate them).
    """

    def __init__(self, n_cols: int, cap: int) -> None:
        if cap < 1:
            raise ValueError(f"cap must be ≥ 1, got {cap}")
        self.n_cols = n_cols
        self.cap = cap
        self._chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._n = 0
        self._clean = True  # one sorted, de-duplicated, capped chunk (or none)

    def add(self, seq_index: np.ndarray, level: float | None, n_tokens: np.ndarray, values: np.ndarray) -> None:
        """Append rows; ``values`` is ``[n, n_cols]``."""
        if values.shape != (len(seq_index), self.n_cols):
            raise ValueError(f"values must be [{len(seq_index)}, {self.n_cols}], got {list(values.shape)}")
        lv = np.full(len(seq_index), np.nan if level is None else level)
        self._chunks.append((np.asarray(seq_index, np.int64), lv, np.asarray(n_tokens, np.int64), values))
        self._n += len(seq_index)
        self._clean = False
        if self._n > 2 * self.cap:
            self._compact()

    def merge(self, other: SequenceSample) -> Self:
        if (other.n_cols, other.cap) != (self.n_cols, self.cap):
            raise ValueError("cannot merge samples with different columns or caps")
        self._chunks.extend(other._chunks)
        self._n += other._n
        self._clean = False
        self._compact()
        return self

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``seq_index [n]``, ``level [n]`` (NaN if none), ``n_tokens [n]``, ``values [n, n_cols]``, by seq_index."""
        self._compact()
        if not self._chunks:
            return (np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64), np.zeros((0, self.n_cols), np.float32))
        return self._chunks[0]

    def __len__(self) -> int:
        return len(self.arrays()[0])

    def _compact(self) -> None:
        if self._clean:
            return
        idx, lv, nt, vals = (np.concatenate(parts) for parts in zip(*self._chunks, strict=True))
        _, first = np.unique(idx, return_index=True)  # sorted unique seq_index, first occurrence of each
        keep = first[: self.cap]
        self._chunks = [(idx[keep], lv[keep], nt[keep], vals[keep])]
        self._n = len(keep)
        self._clean = True
