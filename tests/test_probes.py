"""Probes: planted answers for the functional core and the analyzer, and the errors a user can hit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fer_diag.analyzers.probes import ConceptSpec, ProbeAnalyzer, pooled
from fer_diag.capture import ActivationBatch
from fer_diag.data.suite import SetKind
from fer_diag.probing import (
    ProbeInputError,
    class_top_features,
    cv_predict,
    cv_predict_transfer,
    fit_probe,
    make_probe,
    score,
    shuffled,
    sparse_curve,
    top_features,
    wilson_ci,
)
from fer_diag.report.sections import ProbeRow, VerdictConfig
from fer_diag.verdict import decodable


def planted(n: int = 250, k: int = 5, d: int = 40, signal: float = 4.0, seed: int = 0):
    """``k`` classes, class ``c`` raises coordinate ``c`` only: the concept lives in a known k-dim subspace."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    X = rng.normal(size=(n, d))
    X[np.arange(n), y] += signal
    return X, y


def test_sparse_curve_saturates_at_the_planted_dimension():
    X, y = planted(k=5)
    curve = sparse_curve(X, y, (1, 2, 5, 10, 20))
    # below k, a probe sees at most k' + 1 of the 5 classes apart
    assert curve[1] < 0.5 and curve[2] < 0.7
    assert curve[5] > 0.9
    assert abs(curve[10] - curve[5]) < 0.05 and abs(curve[20] - curve[5]) < 0.06
    assert set(top_features(X, y, 5)) == set(range(5))


def test_selection_happens_inside_the_training_fold():
    """Pure noise: features chosen on all the data leak the labels into the CV score; chosen in the fold they do not."""
    inside, leaked = [], []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        X, y = rng.normal(size=(80, 2000)), np.arange(80) % 2
        inside.append((cv_predict(X, y, k=5) == y).mean())
        leaked.append((cv_predict(X[:, top_features(X, y, 5)], y) == y).mean())
    assert abs(np.mean(inside) - 0.5) < 0.1  # chance, on average over five noise draws
    assert np.mean(leaked) > 0.7  # what the test would see if selection used the held-out fold


def test_shuffled_labels_score_chance_within_the_ci():
    X, y = planted(n=400, k=4)
    yc = shuffled(y, seed=3)
    s = score(yc, cv_predict(X, yc), n_boot=50)
    assert s.accuracy_ci[0] <= 0.25 <= s.accuracy_ci[1]
    real = score(y, cv_predict(X, y), n_boot=50)
    assert real.accuracy > 0.9 and real.accuracy_ci[0] > s.accuracy_ci[1]


def test_fit_probe_directions_reproduce_sklearn_in_input_units():
    X, y = planted(k=3)
    X = X * np.linspace(0.1, 10, X.shape[1])  # unequal scales: the direction must undo the scaler
    for k in (None, 4):
        fit = fit_probe(X, y, k=k)
        want = make_probe(k).fit(X, y)
        np.testing.assert_allclose(X @ fit.direction.T + fit.intercept, want.decision_function(X), atol=1e-8)
        assert (fit.predict(X) == want.predict(X)).all()
    assert np.count_nonzero(fit_probe(X, y, k=4).direction.any(axis=0)) == 4


def test_class_top_features_names_each_class_own_coordinate():
    X, y = planted(k=4)
    assert {c: feats[0] for c, feats in class_top_features(X, y, 3).items()} == {0: 0, 1: 1, 2: 2, 3: 3}


def test_wilson_matches_a_hand_computation():
    lo, hi = wilson_ci(8, 10)  # p = .8, n = 10, z = 1.96: (0.4902, 0.9433)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)


# ------------------------------------------------------------------ analyzer
def batch(set_name: str, acts: np.ndarray, labels: np.ndarray, lengths: np.ndarray, start: int = 0) -> ActivationBatch:
    """A hand-made batch: ``acts [b, t, d]`` at one hook, window ``i`` counting positions ``1 .. lengths[i]-1``."""
    b, t, _ = acts.shape
    mask = torch.zeros(b, t, dtype=torch.bool)
    for i, n in enumerate(lengths):
        mask[i, 1:n] = True
    return ActivationBatch(
        set_name=set_name,
        kind=SetKind.IN_DISTRIBUTION,
        level=None,
        tokens=torch.zeros(b, t, dtype=torch.long),
        mask=mask,
        seq_index=torch.arange(start, start + b),
        acts={"blocks.0.hook_resid_post": torch.as_tensor(acts, dtype=torch.float32)},
        labels=torch.as_tensor(labels),
    )


def test_pooling_reads_the_mean_or_the_marked_token():
    acts = np.arange(2 * 4 * 2, dtype=float).reshape(2, 4, 2)
    b = batch("c", acts, np.array([0, 1]), np.array([3, 4]))
    seq = pooled(b, "sequence")["blocks.0.hook_resid_post"].numpy()
    tok = pooled(b, "token")["blocks.0.hook_resid_post"].numpy()
    np.testing.assert_allclose(seq[0], acts[0, 1:3].mean(0))
    np.testing.assert_allclose(tok, [acts[0, 2], acts[1, 3]])


def feed_planted(analyzer: ProbeAnalyzer, name: str, X: np.ndarray, y: np.ndarray, bs: int = 16) -> None:
    """Token-level windows of length 3 whose last counted token carries ``X``; position 1 is noise."""
    rng = np.random.default_rng(7)
    for lo in range(0, len(y), bs):
        x = X[lo : lo + bs]
        acts = rng.normal(size=(len(x), 4, X.shape[1]))
        acts[:, 2] = x
        analyzer.update(batch(name, acts, y[lo : lo + bs], np.full(len(x), 3), start=lo))


def test_transfer_drop_when_the_concept_is_absent_from_the_twin():
    X, y = planted(n=200, k=4, d=20)
    rng = np.random.default_rng(5)
    twin = rng.normal(size=X.shape)  # same labels, no concept in the vectors
    spec = ConceptSpec("c", "token", ("a", "b", "c", "d"), twin="c_twin")
    an = ProbeAnalyzer((spec,), ks=(1, 4), n_boot=20)
    feed_planted(an, "c", X, y)
    feed_planted(an, "c_twin", twin, y)
    an.update(batch("not_a_concept", np.ones((2, 4, 20)), np.array([0, 1]), np.array([3, 3])))  # ignored
    row = an.compute().section.rows[0]
    assert row.accuracy > 0.9 and row.n == 200 and row.n_twin == 200
    assert row.transfer_drop == pytest.approx(1 - 0.25, abs=0.12)
    assert row.sparse_accuracy[4] > 0.9 > 0.5 > row.sparse_accuracy[1]
    assert row.top_features["b"][0] == 1
    assert decodable(row, VerdictConfig())


def test_rows_fitted_in_parallel_equal_the_serial_ones():
    """n_jobs only spreads the rows over processes: every row and fitted direction is the same, in the same order."""
    X, y = planted(n=90, k=3, d=8)
    specs = (ConceptSpec("c", "token", ("x", "y", "z")), ConceptSpec("d", "sequence", ("x", "y", "z")))
    results = []
    for n_jobs in (None, 2):
        an = ProbeAnalyzer(specs, ks=(1, 2), n_boot=20, n_jobs=n_jobs)
        feed_planted(an, "c", X, y)
        feed_planted(an, "d", X[::-1].copy(), y[::-1].copy())
        results.append(an.compute())
    serial, parallel = results
    assert [r.model_dump() for r in serial.section.rows] == [r.model_dump() for r in parallel.section.rows]
    assert serial.fits.keys() == parallel.fits.keys()
    for key, fit in serial.fits.items():
        np.testing.assert_array_equal(fit.direction, parallel.fits[key].direction)


def test_reservoir_keeps_max_per_class_and_every_class():
    X, y = planted(n=120, k=3, d=6)
    an = ProbeAnalyzer((ConceptSpec("c", "token", ("x", "y", "z")),), max_per_class=10, ks=(), n_boot=0)
    feed_planted(an, "c", X, y, bs=7)
    section = an.compute().section
    assert section.concepts[0].n_per_class == {"x": 10, "y": 10, "z": 10}
    assert section.rows[0].n == 30 and section.rows[0].transfer_accuracy is None


@pytest.mark.parametrize(
    ("labels", "classes", "match"),
    [
        (np.zeros(20, int), ("a", "b"), "no example of classes \\['b'\\]"),
        (np.r_[np.zeros(17, int), np.ones(3, int)], ("a", "b"), "fewer examples than the 5 folds"),
    ],
)
@pytest.mark.parametrize("n_jobs", [None, 2])
def test_probe_errors_name_the_fix(labels, classes, match, n_jobs):
    """The same error, with its type and fix, whether the rows are fitted here or in worker processes."""
    an = ProbeAnalyzer((ConceptSpec("c", "token", classes),), ks=(), n_boot=0, n_jobs=n_jobs)
    feed_planted(an, "c", np.random.default_rng(0).normal(size=(len(labels), 3)), labels)
    with pytest.raises(ProbeInputError, match=match):
        an.compute()


def test_nan_activations_are_refused():
    X, y = planted(n=40, k=2, d=3)
    X[3, 1] = np.nan
    an = ProbeAnalyzer((ConceptSpec("c", "token", ("a", "b")),), ks=(), n_boot=0)
    feed_planted(an, "c", X, y)
    with pytest.raises(ProbeInputError, match="NaN"):
        an.compute()


def test_not_decodable_needs_both_gain_and_a_ci_above_control():
    base = {
        "concept": "c",
        "hook": "h",
        "basis": "raw",
        "n": 100,
        "n_classes": 4,
        "chance": 0.25,
        "macro_f1": 0.5,
        "macro_f1_ci": (0.4, 0.6),
        "sparse_accuracy": {},
        "transfer_accuracy": None,
        "transfer_drop": None,
        "n_twin": 0,
        "top_features": {},
    }
    good = ProbeRow(**base, accuracy=0.8, accuracy_ci=(0.71, 0.87), control_accuracy=0.27, selectivity=0.53)
    weak = ProbeRow(**base, accuracy=0.5, accuracy_ci=(0.4, 0.6), control_accuracy=0.27, selectivity=0.23)
    capacity = ProbeRow(**base, accuracy=0.7, accuracy_ci=(0.6, 0.78), control_accuracy=0.65, selectivity=0.05)
    cfg = VerdictConfig()
    assert decodable(good, cfg) and not decodable(weak, cfg) and not decodable(capacity, cfg)


def test_transfer_is_cross_fitted_on_a_paired_twin():
    """Noise vectors with random labels, twin = the same vectors: a probe fitted on every example memorises them
    (d > n) and would score the twin perfectly; the fold probe that held each example out scores chance."""
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(60, 200)), np.arange(60) % 3
    ids = np.arange(60)
    pred, pred_twin = cv_predict_transfer(X, y, ids, X.copy(), ids)
    np.testing.assert_array_equal(pred, cv_predict(X, y))
    np.testing.assert_array_equal(pred_twin, pred)  # the same fold probe reads the same vector
    assert (fit_probe(X, y).predict(X) == y).mean() == 1.0  # what an uncrossed transfer would report
    _, unpaired = cv_predict_transfer(X, y, ids, X.copy(), np.full(60, -1))
    assert (unpaired == y).mean() == 1.0  # another set's examples: the probe fitted on every example


def test_macro_f1_matches_sklearn_on_resamples():
    """The vectorised macro-F1 equals scikit-learn's, absent classes (F1 = 0) included."""
    from sklearn.metrics import f1_score

    from fer_diag.probing import macro_f1

    rng = np.random.default_rng(3)
    y = rng.integers(0, 5, 60)
    pred = np.where(rng.random(60) < 0.6, y, rng.integers(0, 5, 60))
    labels = np.unique(y)
    draws = rng.integers(0, 12, size=(40, 12))  # small resamples: some classes missing from a draw
    got = macro_f1(y[draws], pred[draws], labels)
    want = [f1_score(y[i], pred[i], average="macro", labels=labels, zero_division=0) for i in draws]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert float(macro_f1(y, pred, labels)) == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
