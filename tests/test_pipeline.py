"""The pipeline feeds each analyzer the readings it declares, once per batch."""

from __future__ import annotations

from test_sae import ID, windows

from fer_diag.analyzers.base import Analyzer, Reading
from fer_diag.capture import Capture
from fer_diag.pipeline import Pipeline


class _Counter(Analyzer):
    name = "counter"
    reads = frozenset({Reading.RAW, Reading.READOUTS})

    def __init__(self) -> None:
        self.add_state("batches", 0, "sum")
        self.add_state("windows", 0, "sum")

    def update(self, batch) -> None:
        self.batches += 1
        self.windows += len(batch.seq_index)

    def compute(self) -> dict:
        return {"batches": self.batches, "windows": self.windows}


def test_an_analyzer_reading_raw_and_readouts_sees_each_batch_once(tiny_hooked):
    w = windows(5, 8, tiny_hooked.model.cfg.d_vocab, seed=2, name=ID.name)
    counter = _Counter()
    pipe = Pipeline(
        Capture(tiny_hooked.model, ["blocks.0.hook_resid_post"], batch_size=2, need_logits=True),
        {"c": counter},
        progress=False,
    )
    pipe.run([ID], {ID.name: w})
    assert counter.compute() == {"batches": 3, "windows": 5}
