"""Linear probes on one vector per example: the functional core of the probe analyzer (DESIGN §5 "Probes").

Everything here works on plain arrays ``X [n, d]`` (pooled activations, SAE
latents or raw coordinates) and integer labels ``y [n]``; the streaming and the
bookkeeping live in :mod:`fer_diag.analyzers.probes`.

- A probe is scikit-learn's standardised logistic regression
  (``StandardScaler`` → ``LogisticRegression``, L2, multinomial), scored by
  stratified k-fold cross-validated predictions (:func:`cv_predict`).
- A *k-sparse* probe first keeps the ``k`` features with the largest class-mean
  difference on the training fold only (:class:`MeanDifferenceSelector`, inside
  the fold's pipeline), as SAEBench's sparse probing (Gao et al. 2024; Karvonen
  et al. 2025).
- The control task (Hewitt & Liang 2019) trains the same probe on labels
  shuffled once with a fixed seed; *selectivity* = accuracy − control accuracy,
  so decodability is not just what a linear probe can memorise.
- Transfer: fit on every in-distribution example, score the shifted twin.
"""

from __future__ import annotations

import functools
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn import config_context
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_selection import SelectorMixin
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

from fer_diag.errors import BadInputError
from fer_diag.stats import percentile_ci

#: Numbers of features of the k-sparse probes (SAEBench's sparse probing).
K_SPARSE: tuple[int, ...] = (1, 2, 5, 10, 20, 50)


class ProbeInputError(BadInputError):
    """Labels or examples a probe cannot be trained on (one class, too few examples, NaN)."""


def class_mean_differences(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""Standardised one-vs-rest class-mean differences ``D [K, m]`` and the classes ``[K]`` they belong to.

    D_{c,j} = (μ_{c,j} − μ_{¬c,j}) / (σ_j + ε), σ_j the feature's standard
    deviation over all examples and ε = 1e-6 · max σ (a constant feature gets 0).
    Standardising makes raw coordinates and SAE latents of different scales
    comparable; within one basis of equal-scale features the ranking is
    SAEBench's (unstandardised) mean difference.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    sd = X.std(axis=0)
    eps = 1e-6 * float(sd.max()) if sd.size and sd.max() > 0 else 1.0
    total = X.sum(axis=0)
    classes = np.unique(y)
    D = np.zeros((len(classes), X.shape[1]))
    for i, c in enumerate(classes):
        inside = y == c
        n_in = int(inside.sum())
        if n_in < len(y):
            mu_c = X[inside].mean(axis=0)
            D[i] = mu_c - (total - mu_c * n_in) / (len(y) - n_in)
    return D / (sd + eps), classes


def mean_difference_scores(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per feature, the largest absolute :func:`class_mean_differences` over classes."""
    return np.abs(class_mean_differences(X, y)[0]).max(axis=0)


def class_top_features(X: np.ndarray, y: np.ndarray, n: int) -> dict[int, list[int]]:
    """Per class, the ``n`` features most *raised* in it (largest positive mean difference), best first."""
    D, classes = class_mean_differences(X, y)
    return {int(c): np.argsort(-D[i], kind="stable")[:n].tolist() for i, c in enumerate(classes)}


def top_features(X: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` features with the largest :func:`mean_difference_scores`, best first (ties: lower index)."""
    return np.argsort(-mean_difference_scores(X, y), kind="stable")[:k]


class MeanDifferenceSelector(SelectorMixin, BaseEstimator):
    """Keep the ``k`` features with the largest class-mean difference on the data it is fitted on."""

    def __init__(self, k: int = 10) -> None:
        self.k = k

    def fit(self, X: np.ndarray, y: np.ndarray) -> MeanDifferenceSelector:
        self.selected_ = top_features(X, y, self.k)
        self.n_features_in_ = X.shape[1]
        return self

    def _get_support_mask(self) -> np.ndarray:
        check_is_fitted(self, "selected_")
        mask = np.zeros(self.n_features_in_, dtype=bool)
        mask[self.selected_] = True
        return mask


#: L-BFGS iterations and tolerance of every probe: on SmolLM2's 26-class first_letter at two layers, 100
#: iterations at tol 1e-3 give CV accuracies within 0.02 of 500 at 1e-4, four to six times faster
MAX_ITER, TOL = 100, 1e-3


def make_probe(
    k: int | None = None,
    C: float = 1.0,
    seed: int = 0,
    standardize: bool = True,
    max_iter: int = MAX_ITER,
    tol: float = TOL,
) -> Pipeline:
    """Standardised L2 logistic regression, on the top-``k`` mean-difference features when ``k`` is given.

    ``standardize=False`` drops the scaler: the probe is then equivariant under an
    orthogonal change of the input basis (the L2 penalty is rotation-invariant),
    which the FER absorption score needs.

    L-BFGS stops after ``max_iter`` iterations (default :data:`MAX_ITER`) without a
    convergence warning: the probe's accuracy, not its exact optimum, is the
    measurement; a direction that must be exact asks for more.
    """
    steps = [] if k is None else [MeanDifferenceSelector(k)]
    lr = logistic(C, seed, max_iter, tol)
    return make_pipeline(*steps, *([StandardScaler()] if standardize else []), lr)


def logistic(C: float = 1.0, seed: int = 0, max_iter: int = MAX_ITER, tol: float = TOL) -> LogisticRegression:
    """The logistic regression of every probe (the last step of :func:`make_probe`)."""
    return LogisticRegression(C=C, max_iter=max_iter, tol=tol, random_state=seed)


def quiet(fn):
    """Run ``fn`` with scikit-learn's ConvergenceWarning silenced (see :func:`make_probe`)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return fn(*args, **kwargs)

    return wrapper


def check_labels(y: np.ndarray, n_folds: int, what: str = "the probe") -> None:
    """Refuse labels a stratified ``n_folds``-fold probe cannot use, naming the fix."""
    counts = Counter(np.asarray(y).tolist())
    if len(counts) < 2:
        only = next(iter(counts), None)
        raise ProbeInputError(
            f"{what}: every example has the label {only!r}; a probe needs two classes at least: "
            "add examples of another class"
        )
    few = {c: n for c, n in sorted(counts.items()) if n < n_folds}
    if few:
        raise ProbeInputError(
            f"{what}: classes {few} have fewer examples than the {n_folds} folds; add examples to them "
            f"or lower n_folds (the probe never drops a class)"
        )


def check_finite(X: np.ndarray, what: str) -> None:
    if not np.isfinite(X).all():
        raise ProbeInputError(f"{what}: the pooled activations contain NaN or Inf; run the model in float32")


@quiet
def cv_predict(
    X: np.ndarray, y: np.ndarray, *, k: int | None = None, n_folds: int = 5, C: float = 1.0, seed: int = 0
) -> np.ndarray:
    """Stratified ``n_folds``-fold predictions of :func:`make_probe` (feature selection inside each fold)."""
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return cross_val_predict(make_probe(k, C, seed), X, y, cv=folds)


def grouped_folds(
    y: np.ndarray, groups: np.ndarray, n_folds: int = 5, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified ``(train, test)`` folds that keep the rows of one group together.

    Groups are copies of one example (a bootstrap draw), so each has one label:
    the groups are split by ``StratifiedKFold`` on their labels and their rows
    follow. With every row its own group this is ``StratifiedKFold`` on the rows.
    """
    y = np.asarray(y)
    ids, first, row_group = np.unique(groups, return_index=True, return_inverse=True)
    if (y != y[first][row_group]).any():
        raise ProbeInputError("rows of one group (copies of one example) must share their label")
    fold = np.empty(len(ids), dtype=int)
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # a bootstrap draw of a small class can hold fewer examples than folds
        warnings.filterwarnings("ignore", "The least populated class", UserWarning)
        splits = list(splitter.split(ids, y[first]))
    for f, (_, test) in enumerate(splits):
        fold[test] = f
    fold = fold[row_group]
    return [(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(n_folds)]


@quiet
def cv_predict_transfer(
    X: np.ndarray,
    y: np.ndarray,
    ids: np.ndarray,
    X_twin: np.ndarray,
    ids_twin: np.ndarray,
    *,
    n_folds: int = 5,
    C: float = 1.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Cross-validated predictions in distribution and, from the same fold probes, on the shifted twin.

    A twin example paired with an in-distribution one (the same id: the same text,
    shifted) is predicted by the probe of the fold that held its pair out, so a
    probe never scores the shifted version of an example it was trained on; twin
    examples without a pair are predicted by the probe fitted on every example.
    The in-distribution predictions equal :func:`cv_predict` (same folds).
    """
    pred = np.empty(len(y), dtype=np.asarray(y).dtype)
    pred_twin = np.empty(len(ids_twin), dtype=pred.dtype)
    paired = np.isin(ids_twin, ids)
    for train, test in StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(X, y):
        model = make_probe(None, C, seed).fit(X[train], y[train])
        pred[test] = model.predict(X[test])
        rows = np.isin(ids_twin, ids[test])
        if rows.any():
            pred_twin[rows] = model.predict(X_twin[rows])
    if (~paired).any():
        pred_twin[~paired] = make_probe(None, C, seed).fit(X, y).predict(X_twin[~paired])
    return pred, pred_twin


@quiet
def cv_predict_sparse(
    X: np.ndarray,
    y: np.ndarray,
    ks: Sequence[int],
    *,
    groups: np.ndarray | None = None,
    n_folds: int = 5,
    C: float = 1.0,
    seed: int = 0,
) -> np.ndarray:
    """Cross-validated predictions of the k-sparse probe for every ``k`` in ``ks`` in one pass: ``[len(ks), n]``.

    Row i equals ``cross_val_predict(make_probe(ks[i]), X, y, cv=folds)`` on
    :func:`grouped_folds` (no copy of an example, rows sharing a ``groups`` id, is
    scored by a probe trained on it; ``groups=None``: every row its own group,
    which is :func:`cv_predict`'s stratified folds). This is the sweep over k of
    SAEBench's sparse probing and feature splitting (Karvonen et al. 2025)
    without the per-k pipeline: each fold ranks its features once
    (:func:`top_features`, the ranking of :class:`MeanDifferenceSelector`, so
    ties and order are the same) and standardises its top ``max(ks)`` columns
    once; scaling is column by column, so the standardised prefix of k columns is
    the standardised top-k. Each k then fits :func:`logistic` on its k columns,
    in the input order the selector keeps. The inputs and parameters are checked
    once here, not in every fit, and the test rows are scored with the fitted
    ``coef_`` and ``intercept_`` as ``LogisticRegression.predict`` does.
    """
    X, y, ks = np.asarray(X), np.asarray(y), [int(k) for k in ks]
    groups = np.arange(len(y)) if groups is None else groups
    if min(ks, default=1) < 1 or not C > 0:
        raise ProbeInputError(f"k-sparse probes need every k >= 1 and C > 0, got ks={ks}, C={C}")
    check_finite(X, "the k-sparse probes")
    pred = np.empty((len(ks), len(y)), dtype=y.dtype)
    if not ks:
        return pred
    top = min(max(ks), X.shape[1])
    with config_context(assume_finite=True, skip_parameter_validation=True):
        for train, test in grouped_folds(y, groups, n_folds, seed):
            X_train, y_train = X[train], y[train]
            ranked = top_features(X_train, y_train, top)
            block = X_train[:, ranked]  # column-major as the selector's output: the scaler's column sums match
            scaler = StandardScaler().fit(block)
            Z_train, Z_test = scaler.transform(block), scaler.transform(X[test][:, ranked])
            for i, k in enumerate(ks):
                cols = np.argsort(ranked[:k])  # the selector passes its features in input order
                lr = logistic(C, seed).fit(Z_train[:, cols], y_train)
                scores = Z_test[:, cols] @ lr.coef_.T + lr.intercept_  # LogisticRegression.decision_function
                best = (scores[:, 0] > 0).astype(int) if scores.shape[1] == 1 else scores.argmax(axis=1)
                pred[i, test] = lr.classes_[best]
    return pred


def shuffled(y: np.ndarray, seed: int = 0) -> np.ndarray:
    """The control task's labels: ``y`` permuted once (same class sizes, no relation to the input)."""
    return np.random.default_rng(seed).permutation(np.asarray(y))


def wilson_ci(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion (95 % by default)."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(centre - half), float(centre + half)


@dataclass(frozen=True)
class Score:
    """Accuracy and macro-F1 of predictions, with 95 % CIs (Wilson; bootstrap over examples)."""

    accuracy: float
    accuracy_ci: tuple[float, float]
    macro_f1: float
    macro_f1_ci: tuple[float, float]
    n: int


def macro_f1(y: np.ndarray, pred: np.ndarray, labels: np.ndarray) -> np.ndarray:
    r"""Macro-F1 over ``labels`` of label arrays ``[..., n]``, batched over the leading axes.

    F1_c = 2·TP_c / (2·TP_c + FP_c + FN_c), 0 where a class is neither true nor
    predicted (scikit-learn's ``f1_score(average="macro", labels=labels,
    zero_division=0)``, one row at a time).
    """
    y = np.asarray(y)[..., None] == labels
    p = np.asarray(pred)[..., None] == labels
    tp = (y & p).sum(axis=-2)
    denom = y.sum(axis=-2) + p.sum(axis=-2)
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0).mean(axis=-1)


def score(y: np.ndarray, pred: np.ndarray, *, n_boot: int = 200, seed: int = 0) -> Score:
    """:class:`Score` of ``pred`` against ``y``; the macro-F1 CI resamples examples ``n_boot`` times."""
    y = np.asarray(y)
    pred = np.asarray(pred)
    hits = int((pred == y).sum())
    labels = np.unique(y)
    f1 = float(macro_f1(y, pred, labels))
    if n_boot > 0 and len(y) > 1:
        draws = np.random.default_rng(seed).integers(0, len(y), size=(n_boot, len(y)))
        lo, hi = percentile_ci(macro_f1(y[draws], pred[draws], labels))
        f1_ci = (float(lo), float(hi))
    else:
        f1_ci = (float("nan"), float("nan"))
    return Score(hits / len(y), wilson_ci(hits, len(y)), f1, f1_ci, len(y))


def chance_accuracy(y: np.ndarray) -> float:
    """Accuracy of always answering the most frequent class."""
    return max(Counter(np.asarray(y).tolist()).values()) / len(y)


@dataclass(frozen=True)
class ProbeFit:
    """A probe fitted on every example, as plain arrays in the input's own units.

    ``direction[c]`` is the weight vector of class ``classes[c]`` (``[1, d]`` for
    two classes: the second class's) divided by the scaler's standard deviations,
    so ``X @ direction.T + intercept`` is the decision function; ``features`` are
    the columns it uses (all but ``k`` of them are zero for a k-sparse probe).
    """

    direction: np.ndarray
    intercept: np.ndarray
    features: np.ndarray
    classes: np.ndarray

    def predict(self, X: np.ndarray) -> np.ndarray:
        z = np.asarray(X, dtype=np.float64) @ self.direction.T + self.intercept
        if z.shape[1] == 1:
            return self.classes[(z[:, 0] > 0).astype(int)]
        return self.classes[z.argmax(axis=1)]


@quiet
def fit_probe(
    X: np.ndarray,
    y: np.ndarray,
    *,
    k: int | None = None,
    C: float = 1.0,
    seed: int = 0,
    standardize: bool = True,
    max_iter: int = MAX_ITER,
    tol: float = TOL,
) -> ProbeFit:
    """:func:`make_probe` fitted on all of ``X``; directions mapped back to input units (dense over all features)."""
    model = make_probe(k, C, seed, standardize, max_iter, tol).fit(X, y)
    lr: LogisticRegression = model[-1]
    features = model[0].get_support(indices=True) if k is not None else np.arange(X.shape[1])
    if standardize:
        scaler: StandardScaler = model[-2]
        w = lr.coef_ / scaler.scale_
        intercept = lr.intercept_ - w @ scaler.mean_
    else:
        w, intercept = lr.coef_, lr.intercept_
    direction = np.zeros((w.shape[0], X.shape[1]))
    direction[:, features] = w
    return ProbeFit(direction, intercept, np.asarray(features), lr.classes_)


def sparse_curve(
    X: np.ndarray, y: np.ndarray, ks: Sequence[int] = K_SPARSE, *, n_folds: int = 5, C: float = 1.0, seed: int = 0
) -> dict[int, float]:
    """Cross-validated accuracy of the k-sparse probe for each ``k`` ≤ the number of features."""
    ks = [k for k in ks if k <= X.shape[1]]
    pred = cv_predict_sparse(X, y, ks, n_folds=n_folds, C=C, seed=seed)
    return {k: float((row == y).mean()) for k, row in zip(ks, pred, strict=True)}
