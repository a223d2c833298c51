"""The runner: text sets → capture → bases → analyzers, checkpointed after each set (DESIGN §2).

:class:`Pipeline` streams each text set's windows through
:class:`~fer_diag.capture.Capture` one batch at a time, reads each batch in the
bases the analyzers ask for (:class:`~fer_diag.analyzers.base.Reading`: raw
activations, SAE latents via :class:`~fer_diag.basis.SAEBasis`, token
readouts) and calls ``update`` on every analyzer that reads it. It knows no
analyzer by name: a new analyzer only declares what it reads.

The SAE CE-loss score needs extra forward passes with the reconstruction
spliced in; the pipeline runs them on the windows numbered below
``ce_windows`` in each set (by window number, so a shard computes exactly the
windows it holds) and attaches the sums to the SAE-basis batch (``batch.ce``).

:class:`Checkpoint` saves every analyzer's declared state after each finished
set; a run started again with the same fingerprint resumes after the last one.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fer_diag.analyzers.base import Analyzer, Reading
from fer_diag.basis import RotatedBasis, SAEBasis
from fer_diag.capture import ActivationBatch, Capture
from fer_diag.data.suite import TextSet, Windows

#: the layout of the analyzers' saved states; bump it when one changes, so older checkpoints are not resumed
STATE_FORMAT = 3


def progress_bar(enabled: bool = True) -> Progress | nullcontext:
    """The rich progress bar used by every long step (a no-op context when disabled)."""
    if not enabled:
        return nullcontext()
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=False,
    )


@dataclass
class Checkpoint:
    """Analyzer states after each finished text set, in ``path``; valid only for the same ``fingerprint``.

    ``resume=False`` still saves, but never loads (a fresh run over an old checkpoint).
    """

    path: Path
    fingerprint: str
    resume: bool = True

    def load(self, analyzers: dict[str, Analyzer]) -> set[str]:
        """Restore the analyzers and return the finished sets (none when absent or from other settings)."""
        if not (self.resume and self.path.exists()):
            return set()
        state = torch.load(self.path, weights_only=False)
        if (
            state.get("format") != STATE_FORMAT
            or state.get("fingerprint") != self.fingerprint
            or set(state["analyzers"]) != set(analyzers)
        ):
            return set()  # different settings: start over (the old checkpoint is overwritten)
        for name, analyzer_state in state["analyzers"].items():
            analyzers[name].load_state_dict(analyzer_state)
        return set(state["done"])

    def save(self, analyzers: dict[str, Analyzer], done: Iterable[str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        states = {name: a.state_dict() for name, a in analyzers.items()}
        torch.save(
            {"format": STATE_FORMAT, "fingerprint": self.fingerprint, "done": sorted(done), "analyzers": states}, tmp
        )
        tmp.replace(self.path)  # atomic: a crash mid-write never leaves a broken checkpoint

    def clear(self) -> None:
        if self.path.exists():
            self.path.unlink()
        if self.path.parent.exists() and not any(self.path.parent.iterdir()):
            self.path.parent.rmdir()


@dataclass
class Pipeline:
    """Feed text sets through capture and bases into ``analyzers`` (module docstring).

    Parameters
    ----------
    capture: the model and hooks (one forward pass per batch).
    analyzers: ``name → analyzer``; each gets the readings it declares.
    sae_basis: SAE latents for the analyzers that read :attr:`Reading.SAE`.
    rotations: generic bases (:class:`~fer_diag.basis.RotatedBasis`) for the analyzers
        that read :attr:`Reading.ROTATED`.
    ce_windows: windows per set (the lowest-numbered) that get the SAE CE-loss splice.
    ce_sets: the sets that get it (default: every set).
    checkpoint: where finished sets are saved, and resumed from.
    progress: show progress bars.
    """

    capture: Capture
    analyzers: dict[str, Analyzer]
    sae_basis: SAEBasis | None = None
    rotations: Sequence[RotatedBasis] = ()
    ce_windows: int = 0
    ce_sets: Collection[str] | None = None
    checkpoint: Checkpoint | None = None
    progress: bool = True
    seconds: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        only_sae = [n for n, a in self.analyzers.items() if a.reads == {Reading.SAE}]
        if only_sae and self.sae_basis is None:
            raise ValueError(f"analyzers {only_sae} read only SAE latents: pass sae_basis=SAEBasis(saes)")

    def run(
        self, sets: Sequence[TextSet], windows: dict[str, Windows], first: ActivationBatch | None = None
    ) -> list[str]:
        """Stream every set not finished yet; return the sets taken from the checkpoint.

        ``first`` is an already captured first batch of one of the sets (the
        audit calibrates on it); it is analysed like the others, not captured again.
        """
        done = self.checkpoint.load(self.analyzers) if self.checkpoint else set()
        resumed = [s.name for s in sets if s.name in done]
        with progress_bar(self.progress) as bar:
            task = bar.add_task("text sets", total=len(sets), completed=len(resumed)) if bar else None
            for text_set in sets:
                if text_set.name in done:
                    continue
                w = windows[text_set.name]
                sub = bar.add_task(f"  {text_set.name}", total=len(w)) if bar else None
                for batch in self._batches(w, text_set, first):
                    self.feed(batch)
                    if bar:
                        bar.advance(sub, len(batch.seq_index))
                done.add(text_set.name)
                if self.checkpoint:
                    self.checkpoint.save(self.analyzers, done)
                if bar:
                    bar.remove_task(sub)
                    bar.advance(task)
        return resumed

    def _batches(self, w: Windows, text_set: TextSet, first: ActivationBatch | None) -> Iterator[ActivationBatch]:
        if first is not None and first.set_name == text_set.name:
            yield first
            yield from self.capture.batches(w, text_set, start=len(first.seq_index))
        else:
            yield from self.capture.batches(w, text_set)

    def feed(self, batch: ActivationBatch) -> None:
        """One raw batch through the bases into every analyzer that reads them."""
        wanted = set().union(*(a.reads for a in self.analyzers.values()))
        views: dict[Reading, list[ActivationBatch]] = {Reading.RAW: [batch], Reading.READOUTS: [batch]}
        if Reading.ROTATED in wanted:
            views[Reading.ROTATED] = [r.read(batch) for r in self.rotations]
        if self.sae_basis is not None and Reading.SAE in wanted:
            latents = self.sae_basis.read(batch)
            latents.ce = self._ce(batch)
            views[Reading.SAE] = [latents]
        for analyzer in self.analyzers.values():
            readings = [r for r in Reading if r in analyzer.reads]  # a fixed order: reports list keys in it
            seen = {id(v): v for reading in readings for v in views.get(reading, ())}  # RAW and READOUTS: once
            for view in seen.values():
                analyzer.update(view)

    def _ce(self, batch: ActivationBatch) -> dict | None:
        """CE-loss sums ``{hook: {seq_index: CESums}}`` of the batch's windows numbered below ``ce_windows``."""
        if self.ce_sets is not None and batch.set_name not in self.ce_sets:
            return None
        rows = (batch.seq_index < self.ce_windows).nonzero().flatten()
        if not len(rows):
            return None
        t = time.perf_counter()
        clean = None if batch.token_nll is None else batch.token_nll[rows]
        acts = {h: a[rows] for h, a in batch.acts.items()}
        sums = self.sae_basis.ce_sums(self.capture.model, batch.tokens[rows], batch.mask[rows], clean, acts)
        seqs = batch.seq_index[rows].tolist()
        self.seconds["sae_ce_splice"] = self.seconds.get("sae_ce_splice", 0.0) + time.perf_counter() - t
        return {hook: dict(zip(seqs, per_window, strict=True)) for hook, per_window in sums.items()}
