"""Linear CKA (biased, debiased) against hand computations; invariances; mutual k-NN alignment."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fer_diag.similarity import centred_gram, cka_matrix, linear_cka, mutual_knn
from fer_diag.transforms import haar_orthogonal


def _hsic_biased(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741 - L is the paper's name
    n = len(k)
    h = np.eye(n) - np.ones((n, n)) / n
    return np.trace(k @ h @ l @ h) / (n - 1) ** 2


def _hsic_song(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    """Song et al. 2012, eq. 5, written out term by term."""
    n = len(k)
    kt, lt = k - np.diag(np.diag(k)), l - np.diag(np.diag(l))
    one = np.ones(n)
    total = np.trace(kt @ lt) + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
    return (total - 2 / (n - 2) * one @ kt @ lt @ one) / (n * (n - 3))


def _cka_by_hand(x: np.ndarray, y: np.ndarray, hsic) -> float:
    k, l = x @ x.T, y @ y.T  # noqa: E741
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def test_cka_on_a_3x2_matrix_by_hand():
    # centred columns of x: (-1, 0, 1) and (-1, 0, 1)·2; y = first column of x → HKH ∝ HLH → CKA = 1
    x = np.array([[0.0, 1.0], [1.0, 3.0], [2.0, 5.0]])
    assert linear_cka(x, x[:, :1], debiased=False) == pytest.approx(1.0)
    # x = e₁, e₂, e₃ rows (identity), y = (1, 0, 0): HKH = H, HLH = c cᵀ with c = (2/3, −1/3, −1/3)
    # ⟨H, ccᵀ⟩ = cᵀc = 2/3, ‖H‖ = √2, ‖ccᵀ‖ = cᵀc = 2/3 → CKA = (2/3)/(√2 · 2/3) = 1/√2
    assert linear_cka(np.eye(3), np.array([[1.0], [0.0], [0.0]]), debiased=False) == pytest.approx(2**-0.5)


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_matches_the_hsic_formulas(debiased):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(9, 4)), rng.normal(size=(9, 3))
    y[:, 0] += x[:, 0]
    expected = _cka_by_hand(x, y, _hsic_song if debiased else _hsic_biased)
    assert linear_cka(x, y, debiased=debiased) == pytest.approx(expected, rel=1e-10)
    # the U-centred Gram's inner product is the Song et al. estimator itself, not just proportional to it
    n = len(x)
    u_k, u_l = centred_gram(x), centred_gram(y)
    assert float((u_k * u_l).sum()) / (n * (n - 3)) == pytest.approx(_hsic_song(x @ x.T, y @ y.T), rel=1e-10)


def test_debiased_cka_is_near_zero_for_independent_features_where_the_biased_one_inflates():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(20, 200)), rng.normal(size=(20, 200))
    assert linear_cka(x, y, debiased=False) > 0.5
    assert abs(linear_cka(x, y, debiased=True)) < 0.1


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_invariant_to_orthogonal_maps_and_isotropic_scaling_not_to_anisotropic(debiased):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(30, 8)) @ rng.normal(size=(8, 8))
    y = np.tanh(x @ rng.normal(size=(8, 6)))
    q = haar_orthogonal(8, seed=3).numpy()
    base = linear_cka(x, y, debiased=debiased)
    assert linear_cka(x @ q * 7.5, y, debiased=debiased) == pytest.approx(base, abs=1e-12)
    assert linear_cka(x @ q, x, debiased=debiased) == pytest.approx(1.0, abs=1e-12)
    stretched = x * np.array([10.0, 1, 1, 1, 1, 1, 1, 0.1])
    assert abs(linear_cka(stretched, y, debiased=debiased) - base) > 1e-3


def test_cka_matrix_equals_pairwise_cka_and_takes_torch():
    rng = np.random.default_rng(4)
    xs = [rng.normal(size=(12, d)) for d in (3, 5)]
    ys = [torch.from_numpy(rng.normal(size=(12, d))).float() for d in (4, 2, 6)]
    m = cka_matrix(xs, ys)
    assert m.shape == (2, 3)
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            assert m[i, j] == pytest.approx(linear_cka(x, y), rel=1e-6)
    with pytest.raises(ValueError, match="same samples"):
        cka_matrix(xs, [rng.normal(size=(11, 2))])
    with pytest.raises(ValueError, match="at least 4"):
        linear_cka(np.eye(3), np.eye(3))


def test_mutual_knn():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(50, 6))
    q = haar_orthogonal(6, seed=1).numpy()
    assert mutual_knn(x, 3.0 * x @ q, k=5) == 1.0
    chance = mutual_knn(x, rng.normal(size=(50, 6)), k=5)
    assert chance < 0.4  # chance level is k / (n − 1) ≈ 0.1

    # by hand, k = 1: unit vectors at these angles (degrees) pair up as nearest neighbours
    def at(degrees):
        r = np.radians(degrees)
        return np.stack([np.cos(r), np.sin(r)], 1)

    a = at([0, 2, 40, 42, 80, 82])  # pairs (0, 1), (2, 3), (4, 5)
    b = at([0, 2, 40, 80, 42, 82])  # pairs (0, 1), (2, 4), (3, 5): rows 0 and 1 keep their neighbour
    assert mutual_knn(a, b, k=1) == pytest.approx(2 / 6)
    with pytest.raises(ValueError, match="k must be"):
        mutual_knn(x, x, k=50)
