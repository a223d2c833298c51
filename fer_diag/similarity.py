"""Representational similarity of two sets of vectors of the same inputs (DESIGN §5 "Model comparison").

Pure functions on ``[n, d]`` arrays (numpy or torch; computed in float64): row ``i``
of ``x`` and of ``y`` describe the same input (a window, or a token) read in two
models or two layers, whose widths may differ.

* Linear CKA (Kornblith et al. 2019, "Similarity of Neural Network Representations
  Revisited"): CKA(K, L) = HSIC(K, L) / √(HSIC(K, K) · HSIC(L, L)) with the linear
  Grams K = X Xᵀ, L = Y Yᵀ. Invariant to orthogonal transforms and isotropic scaling
  of either side, not to arbitrary invertible maps.

  - biased: HSIC₀(K, L) = tr(K H L H) / (n − 1)², H = I − 11ᵀ/n (Gretton et al. 2005);
    it overestimates similarity when n is small against d (two random matrices give
    CKA ≫ 0);
  - debiased (the default here): the unbiased estimator of Song et al. 2012 ("Feature
    Selection via Dependence Maximization", their eq. 5), with K̃ = K with zero diagonal,
    HSIC₁(K, L) = [tr(K̃ L̃) + 1ᵀK̃1 · 1ᵀL̃1 / ((n − 1)(n − 2)) − 2/(n − 2) · 1ᵀK̃L̃1] / (n(n − 3)),
    computed as ⟨U(K), U(L)⟩ / (n(n − 3)) with the U-centred Gram (Székely & Rizzo 2014)
    U(K)ᵢⱼ = K̃ᵢⱼ − rᵢ/(n − 2) − rⱼ/(n − 2) + s/((n − 1)(n − 2)) off the diagonal, 0 on it
    (r the row sums of K̃, s their total); needs n ≥ 4. HSIC₁(K, K) can come out ≤ 0
    for nearly constant features: CKA is then NaN.

* Mutual k-nearest-neighbour alignment (Huh et al. 2024, "The Platonic Representation
  Hypothesis"): the mean over samples of |N_k^X(i) ∩ N_k^Y(i)| / k, where N_k(i) are the
  k nearest other samples by cosine similarity (rows L2-normalised, as in their code).
  1 = the same neighbourhoods; chance ≈ k / (n − 1). Invariant to orthogonal transforms
  and to any rescaling of a row.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["centred_gram", "cka_matrix", "linear_cka", "mutual_knn"]

ArrayLike = np.ndarray | torch.Tensor


def _as64(x: ArrayLike) -> torch.Tensor:
    t = torch.as_tensor(x).detach().to("cpu", torch.float64)
    if t.ndim != 2:
        raise ValueError(f"expected an [n, d] matrix, got shape {list(t.shape)}")
    return t


def centred_gram(x: ArrayLike, *, debiased: bool = True) -> torch.Tensor:
    """The centred linear Gram of ``x`` ``[n, d]``: H X Xᵀ H (biased) or U(X Xᵀ) (debiased; module docstring)."""
    x = _as64(x)
    n = x.shape[0]
    if not debiased:
        x = x - x.mean(0, keepdim=True)  # H X Xᵀ H = (HX)(HX)ᵀ
        return x @ x.T
    if n < 4:
        raise ValueError(f"the debiased CKA needs at least 4 samples, got {n}")
    k = x @ x.T
    k.fill_diagonal_(0.0)
    rows = k.sum(1)
    u = k - rows[:, None] / (n - 2) - rows[None, :] / (n - 2) + rows.sum() / ((n - 1) * (n - 2))
    return u.fill_diagonal_(0.0)


def _stacked(xs: Sequence[ArrayLike], debiased: bool) -> torch.Tensor:
    """``[len(xs), n²]``: each centred Gram flattened into a preallocated row (one Gram in flight at a time)."""
    n = len(xs[0])
    out = torch.empty(len(xs), n * n, dtype=torch.float64)
    for i, x in enumerate(xs):
        out[i] = centred_gram(x, debiased=debiased).flatten()
    return out


def _cka_from(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """CKA of every row pair of two stacks of flattened centred Grams."""
    hsic = a @ b.T  # the 1/(n−1)² or 1/(n(n−3)) factors cancel in the ratio
    norm_a, norm_b = (a * a).sum(1), (b * b).sum(1)
    denom = torch.sqrt(norm_a[:, None] * norm_b[None, :])
    valid = (norm_a[:, None] > 0) & (norm_b[None, :] > 0)
    return torch.where(valid, hsic / denom, torch.full_like(hsic, float("nan"))).numpy()


def linear_cka(x: ArrayLike, y: ArrayLike, *, debiased: bool = True) -> float:
    """Linear CKA of ``x`` ``[n, d₁]`` and ``y`` ``[n, d₂]`` (same n rows); module docstring for both estimators."""
    if len(x) != len(y):
        raise ValueError(f"x and y must describe the same samples: {len(x)} rows vs {len(y)}")
    return float(_cka_from(_stacked([x], debiased), _stacked([y], debiased))[0, 0])


def cka_matrix(xs: Sequence[ArrayLike], ys: Sequence[ArrayLike], *, debiased: bool = True) -> np.ndarray:
    """``[len(xs), len(ys)]`` linear CKA of every pair (each Gram centred once): the layer × layer map."""
    n = {len(v) for v in (*xs, *ys)}
    if len(n) != 1:
        raise ValueError(f"every matrix must describe the same samples; got row counts {sorted(n)}")
    return _cka_from(_stacked(xs, debiased), _stacked(ys, debiased))


def _knn(x: torch.Tensor, k: int) -> torch.Tensor:
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-300)
    sim = x @ x.T
    sim.fill_diagonal_(float("-inf"))  # a sample is not its own neighbour
    return sim.topk(k, dim=1).indices


def mutual_knn(x: ArrayLike, y: ArrayLike, k: int = 10) -> float:
    """Mutual k-NN alignment of ``x`` and ``y`` (Huh et al. 2024; module docstring): 1 = same neighbourhoods."""
    x, y = _as64(x), _as64(y)
    n = x.shape[0]
    if len(y) != n:
        raise ValueError(f"x and y must describe the same samples: {n} rows vs {len(y)}")
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, n − 1] = [1, {n - 1}], got {k}")
    nx, ny = _knn(x, k), _knn(y, k)
    hits = torch.zeros(n, n, dtype=torch.bool)
    hits.scatter_(1, nx, True)
    return float(hits.gather(1, ny).sum() / (n * k))
