"""Suites: the named text sets an audit runs, and their tokenisation into windows.

A :class:`TextSet` is a list of texts with a *kind* (in-distribution, shifted, or
one level of a graded shift) and optional per-text labels. A :class:`Suite` is an
ordered collection of text sets. :func:`tokenize_windows` turns a text set into
fixed-length token windows with a mask that excludes BOS and padding, which is
what :mod:`fer_diag.capture` consumes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import torch


class SetKind(str, Enum):
    """Role of a text set in an audit."""

    IN_DISTRIBUTION = "in_distribution"
    SHIFTED = "shifted"
    GRADED = "graded"  # one level of a graded shift; ``TextSet.level`` is set


@dataclass
class TextSet:
    """A named list of texts.

    ``level`` orders graded sets along the shift axis (0 = unperturbed).
    ``labels`` are optional per-text labels (concepts for probes).
    ``token_ids`` is an alternative to ``texts`` for sets that are token ids
    already (random tokens); exactly one of the two is non-empty.
    """

    name: str
    kind: SetKind
    texts: list[str] = field(default_factory=list)
    level: float | None = None
    axis: str | None = None  # graded-shift family, e.g. "char_noise"
    labels: list[int] | None = None
    token_ids: list[list[int]] | None = None
    source: str = ""  # human-readable provenance, e.g. "fortunes-de"

    def __len__(self) -> int:
        return len(self.token_ids) if self.token_ids is not None else len(self.texts)


@dataclass
class Suite:
    """Ordered text sets; exactly one in-distribution reference set by default."""

    sets: list[TextSet]

    def __iter__(self):
        return iter(self.sets)

    def __getitem__(self, name: str) -> TextSet:
        for s in self.sets:
            if s.name == name:
                return s
        raise KeyError(f"no text set named {name!r}; have {[s.name for s in self.sets]}")

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sets]

    @property
    def reference(self) -> TextSet:
        for s in self.sets:
            if s.kind is SetKind.IN_DISTRIBUTION:
                return s
        raise ValueError("suite has no in-distribution text set; add one with kind=SetKind.IN_DISTRIBUTION")


@dataclass
class Windows:
    """Token windows of one text set.

    tokens: [n, seq_len] int64, BOS first where the model uses one, right-padded.
    mask:   [n, seq_len] bool, True for positions that count in statistics
            (excludes position 0 / BOS and padding).
    source_index: [n] int64, index of the text each window came from.
    """

    set_name: str
    tokens: torch.Tensor
    mask: torch.Tensor
    source_index: torch.Tensor

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def tokenize_windows(
    text_set: TextSet,
    tokenizer,
    seq_len: int = 128,
    max_windows: int | None = None,
    min_tokens: int = 8,
    bos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> Windows:
    """Tokenise ``text_set`` into at most ``max_windows`` windows of ``seq_len`` tokens.

    Each text gives one window (truncated to ``seq_len``); texts with fewer than
    ``min_tokens`` counted tokens are dropped. Raises ``ValueError`` naming the
    set when nothing is left.
    """
    raise NotImplementedError  # implemented in the data module work

