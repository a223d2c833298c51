"""Probe analyzer: can a linear probe read a concept from a hook, in raw coordinates and in SAE latents?

Streaming part: for every window of a concept set (or its shifted twin) the
analyzer keeps one vector per example and hook and basis — the mean over the
counted tokens for a sequence-level concept, the window's last counted token
(the marked one, :func:`~fer_diag.data.concepts.concept_windows`) for a
token-level one — in bounded per-class reservoirs (the ``max_per_class``
lowest-numbered windows of each class; exact to merge). Memory: at most
``max_per_class × classes × (d_model or d_sae)`` floats per concept, hook and basis.

``compute()`` runs the probes of :mod:`fer_diag.probing` (scikit-learn) on the
reservoirs: cross-validated accuracy and macro-F1 with CIs, the shuffled-label
control (selectivity), k-sparse probes at ``sparse_hooks``, transfer to the
twin, and per class the features most raised in it. The fitted probes (their
directions in the hook's own units) are kept in the result for the FER scores.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file

from fer_diag.analyzers.base import Analyzer, Reading
from fer_diag.analyzers.persequence import SequenceSample
from fer_diag.capture import ActivationBatch
from fer_diag.data.concepts import ConceptSet, Level
from fer_diag.fer import ConceptActivations
from fer_diag.probing import (
    K_SPARSE,
    ProbeFit,
    ProbeInputError,
    chance_accuracy,
    check_finite,
    check_labels,
    class_top_features,
    cv_predict,
    cv_predict_transfer,
    fit_probe,
    score,
    shuffled,
    sparse_curve,
)
from fer_diag.report.sections import ConceptInfo, ProbeRow, ProbeSection


@dataclass(frozen=True)
class ConceptSpec:
    """What the analyzer knows of a concept set: name, level, classes, twin set and provenance (plain data)."""

    name: str
    level: Level
    classes: tuple[str, ...]
    twin: str | None = None
    source: str = ""
    twin_shift: str = ""
    dropped: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    twin_paired: bool = True

    @classmethod
    def of(cls, cs: ConceptSet) -> ConceptSpec:
        return cls(
            cs.name,
            cs.level,
            tuple(cs.classes),
            cs.twin.name if cs.twin is not None else None,
            cs.source,
            cs.twin_shift,
            tuple(cs.dropped),
            tuple(cs.notes) + (tuple(cs.twin.notes) if cs.twin is not None else ()),
            cs.twin_paired,
        )


@dataclass
class ProbeResult:
    """The report section and, per ``(concept, hook, basis)``, the probe fitted on every in-distribution example."""

    section: ProbeSection
    fits: dict[tuple[str, str, str], ProbeFit] = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        """The probe directions as safetensors: ``{concept}/{hook}/{basis}/direction`` ``[classes, d]`` and
        ``…/intercept``; the metadata maps each ``{concept}/{hook}/{basis}`` to its classes (JSON)."""
        tensors: dict[str, np.ndarray] = {}
        meta: dict[str, str] = {}
        for (concept, hook, basis), fit in self.fits.items():
            key = f"{concept}/{hook}/{basis}"
            tensors[f"{key}/direction"] = np.ascontiguousarray(fit.direction, dtype=np.float32)
            tensors[f"{key}/intercept"] = np.ascontiguousarray(fit.intercept, dtype=np.float32)
            meta[key] = json.dumps([str(c) for c in fit.classes])
        save_file(tensors, str(path), metadata=meta)
        return Path(path)


def pooled(batch: ActivationBatch, level: Level) -> dict[str, torch.Tensor]:
    """One vector per window and hook: the mean over counted tokens (sequence) or the last counted token (token)."""
    if level == "token":
        rows = torch.arange(len(batch.mask))
        last = batch.last_index()
        return {h: a[rows, last] for h, a in batch.acts.items()}
    w = batch.mask.unsqueeze(-1).float()
    n = w.sum(1).clamp(min=1)
    return {h: (a * w).sum(1) / n for h, a in batch.acts.items()}


class ProbeAnalyzer(Analyzer):
    """Linear probes per concept × hook × basis (DESIGN §5 "Probes"; module docstring).

    Parameters
    ----------
    concepts: the concept sets' :class:`ConceptSpec` s; batches of other sets are ignored.
    max_per_class: reservoir size per class, hook and basis.
    n_folds: stratified folds of the cross-validation; every class needs at least this many examples.
    ks: sizes of the k-sparse probes.
    sparse_hooks: hooks that get the k-sparse probes (None: every hook).
    C: inverse L2 strength of the logistic regression.
    n_boot: bootstrap resamples of the macro-F1 CI.
    top_n: features listed per class.
    seed: folds, shuffled control labels and bootstraps.
    n_jobs: processes of ``compute()`` (joblib's convention: None one, -1 every core).
    """

    name = "probes"
    reads = frozenset({Reading.RAW, Reading.SAE})

    def __init__(
        self,
        concepts: tuple[ConceptSpec, ...],
        max_per_class: int = 256,
        n_folds: int = 5,
        ks: tuple[int, ...] = K_SPARSE,
        sparse_hooks: tuple[str, ...] | None = None,
        C: float = 1.0,
        n_boot: int = 200,
        top_n: int = 5,
        seed: int = 0,
        n_jobs: int | None = None,
    ) -> None:
        if n_folds < 2:
            raise ValueError(f"n_folds must be at least 2, got {n_folds}")
        self.concepts = tuple(concepts)
        self.max_per_class = max_per_class
        self.n_folds = n_folds
        self.ks = tuple(ks)
        self.sparse_hooks = None if sparse_hooks is None else tuple(sparse_hooks)
        self.C = C
        self.n_boot = n_boot
        self.top_n = top_n
        self.seed = seed
        self.n_jobs = n_jobs
        self._sets = {c.name: c for c in self.concepts} | {c.twin: c for c in self.concepts if c.twin}
        #: (set, hook, basis, label) → the reservoir of that class
        self.add_state("samples", {}, "merge")

    def update(self, batch: ActivationBatch) -> None:
        spec = self._sets.get(batch.set_name)
        if spec is None:
            return
        if batch.labels is None:
            raise ValueError(f"concept set {batch.set_name!r} reached the probe analyzer without labels")
        labels = batch.labels.numpy()
        seq = batch.seq_index.numpy()
        n_tokens = batch.mask.sum(1).numpy()
        for hook, vec in pooled(batch, spec.level).items():
            values = vec.float().numpy()
            for label in np.unique(labels):
                rows = labels == label
                key = (batch.set_name, hook, batch.basis, int(label))
                if key not in self.samples:
                    self.samples[key] = SequenceSample(values.shape[1], self.max_per_class)
                self.samples[key].add(seq[rows], None, n_tokens[rows], values[rows])

    def examples(self, set_name: str, hook: str, basis: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``X [n, d]``, labels ``y [n]`` and window numbers ``ids [n]`` of one set at one hook in one basis.

        Rows are ordered by class, then window. A built-in twin numbers its windows
        as its in-distribution set does, so equal ids pair an example with its shifted version.
        """
        keys = sorted(k for k in self.samples if k[:3] == (set_name, hook, basis))
        if not keys:
            return np.zeros((0, 0), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64)
        parts = [self.samples[k].arrays() for k in keys]
        y = np.concatenate([np.full(len(p[0]), k[3]) for k, p in zip(keys, parts, strict=True)])
        return np.concatenate([p[3] for p in parts]), y, np.concatenate([p[0] for p in parts])

    def activations(self, hook: str, basis: str) -> list[ConceptActivations]:
        """The FER scores' input at one hook in one basis: every concept's examples, its twin's and the raw vectors.

        Both bases hold the same windows (each reservoir keeps the lowest-numbered
        ones of a class), so row ``i`` of ``X`` and of ``raw`` is one example.
        """
        out = []
        for spec in self.concepts:
            X, y, ids = self.examples(spec.name, hook, basis)
            if not len(y):
                continue
            X_t, y_t, _ = self.examples(spec.twin, hook, basis) if spec.twin else (None, None, None)
            raw, _, ids_raw = self.examples(spec.name, hook, "raw")
            if not np.array_equal(ids_raw, ids):
                raise ValueError(f"the raw and {basis} reservoirs of {spec.name!r} at {hook} hold different examples")
            out.append(
                ConceptActivations(
                    name=spec.name,
                    level=spec.level,
                    classes=spec.classes,
                    X=X.astype(np.float64),
                    y=y,
                    X_twin=None if y_t is None or not len(y_t) else X_t.astype(np.float64),
                    y_twin=None if y_t is None or not len(y_t) else y_t,
                    raw=raw.astype(np.float64),
                )
            )
        return out

    def compute(self) -> ProbeResult:
        """Every probe row, fitted in parallel over ``n_jobs`` processes (joblib; the heaviest rows first)."""
        from joblib import Parallel, delayed

        tasks = [
            (spec, hook, basis)
            for spec in self.concepts
            for hook, basis in sorted({(k[1], k[2]) for k in self.samples if k[0] == spec.name})
        ]
        inputs = [self._inputs(*task) for task in tasks]
        order = sorted(range(len(tasks)), key=lambda i: -inputs[i][0].size * len(np.unique(inputs[i][1])))
        params = {"n_folds": self.n_folds, "C": self.C, "seed": self.seed, "n_boot": self.n_boot, "ks": self.ks}
        done = Parallel(n_jobs=self.n_jobs)(
            delayed(probe_row)(
                *tasks[i],
                *inputs[i],
                sparse=self.sparse_hooks is None or tasks[i][1] in self.sparse_hooks,
                top_n=self.top_n,
                **params,
            )
            for i in order
        )
        results = dict(zip(order, done, strict=True))
        rows = [results[i][0] for i in range(len(tasks))]
        fits = {(spec.name, hook, basis): results[i][1] for i, (spec, hook, basis) in enumerate(tasks)}
        infos: list[ConceptInfo] = []
        for spec in self.concepts:
            places = [(hook, basis) for s, hook, basis in tasks if s is spec]
            if places:
                _, y, _ = self.examples(spec.name, *places[0])
                n_twin = len(self.examples(spec.twin, *places[0])[1]) if spec.twin else 0
                infos.append(
                    ConceptInfo(
                        name=spec.name,
                        level=spec.level,
                        classes=list(spec.classes),
                        n_per_class={c: int((y == i).sum()) for i, c in enumerate(spec.classes)},
                        n_twin=n_twin,
                        source=spec.source,
                        twin_shift=spec.twin_shift,
                        dropped=list(spec.dropped),
                        notes=list(spec.notes),
                    )
                )
        section = ProbeSection(
            n_folds=self.n_folds,
            ks=list(self.ks),
            max_per_class=self.max_per_class,
            C=self.C,
            concepts=infos,
            skipped=[],
            rows=rows,
        )
        return ProbeResult(section, fits)

    def _inputs(self, spec: ConceptSpec, hook: str, basis: str) -> tuple[np.ndarray, ...]:
        """``X, y, ids`` of the concept and ``X_t, y_t, pairs`` of its twin (pair -1: no in-distribution pair)."""
        X, y, ids = self.examples(spec.name, hook, basis)
        X_t, y_t, ids_t = self.examples(spec.twin, hook, basis) if spec.twin else (X[:0], y[:0], ids[:0])
        pairs = ids_t if spec.twin_paired else np.full(len(ids_t), -1)
        return X, y, ids, X_t, y_t, pairs


def probe_row(
    spec: ConceptSpec,
    hook: str,
    basis: str,
    X: np.ndarray,
    y: np.ndarray,
    ids: np.ndarray,
    X_t: np.ndarray,
    y_t: np.ndarray,
    pairs: np.ndarray,
    *,
    sparse: bool,
    ks: tuple[int, ...],
    n_folds: int,
    C: float,
    seed: int,
    n_boot: int,
    top_n: int,
) -> tuple[ProbeRow, ProbeFit]:
    """One report row (accuracy, control, k-sparse curve when ``sparse``, transfer) and the probe fitted on all."""
    what = f"concept {spec.name!r} at {hook} ({basis})"
    missing = [c for i, c in enumerate(spec.classes) if not (y == i).any()]
    if missing:
        raise ProbeInputError(
            f"{what}: no example of classes {missing} reached the probe; give every class examples "
            "(the probe never drops a class)"
        )
    check_labels(y, n_folds, what)
    check_finite(X, what)
    if len(y_t):
        check_finite(X_t, f"the twin of {what}")
    kw = {"n_folds": n_folds, "C": C, "seed": seed}
    pred, pred_t = cv_predict_transfer(X, y, ids, X_t, pairs, **kw)
    s = score(y, pred, n_boot=n_boot, seed=seed)
    control = float((cv_predict(X, yc := shuffled(y, seed), **kw) == yc).mean())
    fit = fit_probe(X, y, C=C, seed=seed)
    transfer = float((pred_t == y_t).mean()) if len(y_t) else None
    row = ProbeRow(
        concept=spec.name,
        hook=hook,
        basis=basis,
        n=len(y),
        n_classes=len(np.unique(y)),
        chance=chance_accuracy(y),
        accuracy=s.accuracy,
        accuracy_ci=s.accuracy_ci,
        macro_f1=s.macro_f1,
        macro_f1_ci=s.macro_f1_ci,
        control_accuracy=control,
        selectivity=s.accuracy - control,
        sparse_accuracy=sparse_curve(X, y, ks, **kw) if sparse else {},
        transfer_accuracy=transfer,
        transfer_drop=None if transfer is None else s.accuracy - transfer,
        n_twin=len(y_t),
        top_features={spec.classes[c]: feats for c, feats in class_top_features(X, y, top_n).items()},
    )
    return row, fit
