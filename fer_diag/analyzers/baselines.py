"""Perplexity baselines per window (DESIGN §5): the signals a sparsity score must beat.

Per window, the mean over counted positions of the model's next-token NLL,
predictive entropy and max-probability (position 0 has no prediction and is
skipped), from the token readouts that capture attaches when it runs the whole
model. At most ``max_seqs_per_set`` windows per set are kept — the smallest
``seq_index``, as the sparsity analyzer's sample, so the two align.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fer_diag.analyzers.base import Analyzer, Reading
from fer_diag.analyzers.persequence import SequenceSample, SetInfo, record_set
from fer_diag.capture import ActivationBatch

BASELINES = ("nll", "entropy", "maxprob")


@dataclass
class BaselineResult:
    """Per-window baselines per text set: ``tables[set] = (seq_index, n_tokens, values [n, 3])``."""

    sets: dict[str, SetInfo]
    tables: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]


class BaselineAnalyzer(Analyzer):
    """Per-window mean NLL, predictive entropy and max-probability (module docstring)."""

    name = "baselines"
    reads = frozenset({Reading.READOUTS})

    def __init__(self, max_seqs_per_set: int = 4096) -> None:
        self.max_seqs_per_set = max_seqs_per_set
        self.add_state("sets", {}, "union")
        self.add_state("samples", {}, "merge")  # set → SequenceSample [n, 3]

    def update(self, batch: ActivationBatch) -> None:
        record_set(self.sets, batch)
        if batch.token_nll is None:
            return
        readouts = torch.stack([batch.token_nll, batch.token_entropy, batch.token_maxprob], -1).double()
        valid = batch.mask.bool() & torch.isfinite(readouts).all(-1)
        n = valid.sum(1)
        has = n > 0
        means = torch.where(valid[..., None], readouts, 0.0).sum(1)[has] / n[has, None]
        sample = self.samples.setdefault(batch.set_name, SequenceSample(len(BASELINES), self.max_seqs_per_set))
        sample.add(batch.seq_index[has].numpy(), batch.level, n[has].numpy(), means.numpy())

    def compute(self) -> BaselineResult:
        tables = {}
        for name, sample in self.samples.items():
            seq_index, _, n_tokens, values = sample.arrays()
            tables[name] = (seq_index, n_tokens, values)
        return BaselineResult(dict(self.sets), tables)
