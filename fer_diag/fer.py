"""Fractured-entanglement (FER) scores per concept at one hook in one basis (DESIGN §5, issue 10).

No published FER metric exists for language models (Kumar et al. 2025 show
fractured, entangled organisation qualitatively); these components are ours,
each in [0, 1] (0 = clean) and reported separately, on plain arrays: one
bounded vector per example (a pooled or marked token's SAE latents or privileged
neurons, as the probe analyzer stores them), never a model. Residual-stream
coordinates are not features (a function-preserving rotation changes them, see
:func:`fer_diag.basis.basis_privilege`): callers pass SAE latents or MLP neurons.

Selective latents. With D_{c,j} the signed standardised one-vs-rest mean
difference (:func:`fer_diag.probing.class_mean_differences`), latent j is
selective for class c when D_{c,j} ≥ τ, τ = max(``min_selectivity``, the largest
D any latent reaches on labels shuffled once — a control-task null, Hewitt &
Liang 2019). A concept's selective latents are the ``k_selective`` with the
largest max_c D_{c,j} ≥ τ.

Fracture
  * split count (SAEBench feature splitting, Karvonen et al. 2025): per class,
    one-vs-rest, the k-sparse probe (:func:`fer_diag.probing.cv_predict_sparse`)
    on the latents raised in the class (D_{c,j} > 0: SAEBench keeps only latents
    that predict the class directly) for k = 1 … ``k_max``; the split count s_c is
    the last k whose cross-validated F1 beats the best of the smaller k by >
    ``f1_jump``. SAEBench stops at the first k without such a rise; we go on to
    ``k_max``, because the mean-difference ranking (unlike SAEBench's L1 probe)
    can rank a redundant latent — one that fires with an already chosen one —
    before one that covers new examples. Value (mean_c s_c − 1)/(k_max − 1).
  * absorption fraction (Chanin et al. 2024; SAEBench absorption): token-level
    concepts only (None elsewhere, with the reason). Per class, on the examples
    of the class the raw probe (:func:`fer_diag.probing.fit_probe` on the raw
    vectors, unit direction p) calls positive: P = x·p, latent contributions
    a_j = f_j (W_dec,j · p) (= f_j cos_j for unit decoder rows, SAEBench's form),
    main latents = the class's split latents (the k-sparse probe's choice),
    absorbers = other latents with cos_j ≥ ``absorption_cos`` and a_j > 0, A =
    the sum of the top ``max_absorbers`` a_j, M = Σ_main a_j. Fraction 0 if M ≥ P
    or A/P < ``absorption_proportion``; 1 if M ≤ 0; else min(A, P − M)/(min(A,
    P − M) + M).
    Value: mean over those examples, then over classes.
  * context fracture: 1 − Jaccard(concept's selective latents in distribution,
    those found the same way on the shifted twin). None without a twin.
  * graph fragmentation: per class, the co-activation graph induced on the
    class's selective latents; (components − 1)/(latents − 1) (0 with one
    latent); mean over classes that have selective latents.

Entanglement
  * mixed selectivity: for each of the concept's selective latents, the
    profile v = (D_{K,c,j} for every class c of every concept K, kept where ≥ τ_K),
    p = v/Σv, normalised entropy H(p)/ln(number of classes of all concepts);
    mean over the latents. Thresholding keeps the noise of unrelated class
    means out (a clean latent has one entry: 0).
  * cross-talk (the SAEBench TPP idea): per concept K, a k-sparse probe
    (k = ``k_selective``) in stratified folds; the concept's selective latents
    are zeroed in each test fold's input. drop_K = accuracy − ablated accuracy;
    value clip(mean_{K≠A} drop_K / drop_A, 0, 1). None with one concept, or when
    the ablation costs A less than ``min_own_drop``.
  * modularity deficit: the co-activation graph of the selective latents of
    every concept read at the concept's level, a latent belonging to each of
    those concepts it is selective for with share
    α = 1/(number of those concepts) (overlapping communities, Nicosia et al.
    2009); the concept's modularity term Q_A = L_A/m − x², L_A = Σ_edges w α_u α_v,
    x = Σ_v α_v k_v / 2m (one-hot α: Newman's term, Σ_A Q_A =
    ``networkx.community.modularity``), normalised by its maximum at that degree
    share, q_A = Q_A/(x − x²) (1: all of A's edges inside A; 0: chance, e.g. every
    latent shared by all concepts). Value 1 − clip(q_A, 0, 1).

Co-activation graph (:func:`coactivation_graph`), one per level: nodes are the
selective latents of the concepts read at that level (token or sequence); an edge
joins two latents whose firing (value > 0) over those concepts' per-example
vectors (in-distribution examples, each distinct array once) has a phi
coefficient ≥ ``phi_threshold`` and at least ``min_coactivations`` examples where
both fire; weight = phi. The levels are kept apart because a sequence-level
example is a window mean, nonzero for every latent that fired anywhere in the
window: on SmolLM2's SAE at layer 15, 32–35 % of the latents are nonzero in a mean
over 31 tokens against 3–4 % at one token, and one graph over both kinds made
nearly every latent co-fire (modularity deficit 0.82–0.94 for all four built-in
concepts, against 0.37 for the token-level ones on their own). For a sequence
concept co-activation therefore means co-occurrence within a window. Memory is
bounded by the candidate latents (n × s booleans, s² counts), never d_sae² per token.

Composite FER index: the unweighted mean of the components that are not None,
with a bootstrap CI: examples resampled with replacement within each set and
everything recomputed (copies of one example stay in one CV fold, else the probes
would be scored on their training rows). Thresholded components gain chance
latents on resamples (duplicated rows add variance), so the replicates run
high: the interval is the percentile interval of the replicates shifted by the
bootstrap bias estimate mean(θ*) − θ̂ (Efron & Tibshirani 1993, §10), which is
reported as ``index_bias``. Which components cannot separate fracture from
entanglement: docs/metrics.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import networkx as nx
import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from threadpoolctl import threadpool_limits

from fer_diag.errors import BadInputError
from fer_diag.probing import (
    check_finite,
    check_labels,
    class_mean_differences,
    cv_predict_sparse,
    fit_probe,
    grouped_folds,
    macro_f1,
    make_probe,
    quiet,
    top_features,
)
from fer_diag.probing import shuffled as shuffled_labels
from fer_diag.stats import percentile_ci

__all__ = [
    "ENTANGLEMENT",
    "FRACTURE",
    "Component",
    "ConceptActivations",
    "FERConfig",
    "FERScores",
    "absorption",
    "coactivation_graph",
    "context_fracture",
    "cross_talk",
    "fer_scores",
    "fragmentation",
    "graph_fragmentation",
    "modularity_deficit",
    "split_count",
]

FRACTURE: tuple[str, ...] = ("split_count", "absorption", "context_fracture", "graph_fragmentation")
ENTANGLEMENT: tuple[str, ...] = ("mixed_selectivity", "cross_talk", "modularity_deficit")


class FERConfig(BaseModel):
    """Thresholds of the FER components (module docstring); defaults follow SAEBench where it has one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    k_max: int = Field(10, ge=2, description="largest k of the split count (SAEBench max_k_value)")
    f1_jump: float = Field(0.03, ge=0.0, description="F1 rise that counts as a split (SAEBench)")
    absorption_cos: float = Field(0.1, ge=0.0, le=1.0, description="min cos(probe, decoder row) of an absorber")
    absorption_proportion: float = Field(0.4, ge=0.0, le=1.0, description="min share of the probe projection")
    max_absorbers: int = Field(3, ge=1, description="absorbing latents summed (SAEBench)")
    min_selectivity: float = Field(0.3, ge=0.0, description="floor of τ, the standardised mean difference")
    k_selective: int = Field(50, ge=1, description="selective latents kept per concept")
    phi_threshold: float = Field(0.3, gt=0.0, le=1.0, description="phi coefficient of a co-activation edge")
    min_coactivations: int = Field(3, ge=1, description="examples where both latents of an edge fire")
    min_own_drop: float = Field(0.05, ge=0.0, description="accuracy the ablation must cost the concept itself")
    n_folds: int = Field(5, ge=2)
    n_boot: int = Field(50, ge=0, description="bootstrap replicates of the index (0: no CI)")
    ci_level: float = Field(0.95, gt=0.0, lt=1.0)
    seed: int = 0


@dataclass(frozen=True)
class ConceptActivations:
    """One concept at one hook in one basis: ``X [n, m]`` one vector per example, ``y [n]`` indices into ``classes``.

    ``X_twin`` / ``y_twin``: the shifted twin (context fracture); ``raw [n, d]``: the
    hook vectors of the same examples (absorption, with the decoder). ``level`` is
    "token" or "sequence"; ``classes`` names the labels. ``groups [n]``:
    example ids — rows sharing one are copies of one example (a bootstrap draw) and
    stay in one cross-validation fold; None: every row is its own example.
    """

    name: str
    level: str
    classes: tuple[str, ...]
    X: np.ndarray
    y: np.ndarray
    X_twin: np.ndarray | None = None
    y_twin: np.ndarray | None = None
    raw: np.ndarray | None = None
    groups: np.ndarray | None = None

    def example_ids(self) -> np.ndarray:
        return np.arange(len(self.y)) if self.groups is None else np.asarray(self.groups)


class Component(BaseModel):
    """One FER component: its value in [0, 1], or None and why; ``detail`` holds the numbers behind it."""

    model_config = ConfigDict(extra="forbid")

    value: float | None
    reason: str | None = None
    detail: dict[str, float] = Field(default_factory=dict)


class FERScores(BaseModel):
    """A concept's FER components, the composite index with its bootstrap CI, its selective latents and graph."""

    model_config = ConfigDict(extra="forbid")

    concept: str
    level: str
    split_count: Component
    absorption: Component
    context_fracture: Component
    graph_fragmentation: Component
    mixed_selectivity: Component
    cross_talk: Component
    modularity_deficit: Component
    index: float | None
    index_ci: tuple[float, float] | None
    index_bias: float | None = Field(description="mean bootstrap replicate − index, removed from the CI")
    components_used: list[str]
    selective_latents: list[int]
    graph: dict = Field(
        description="networkx.node_link_data of the co-activation graph of the concepts read at this one's level"
    )


@dataclass(frozen=True)
class _Selectivity:
    """D [C, m] (rows: ``labels``), the threshold τ, the concept's selective latents (best first) and each class's."""

    labels: np.ndarray
    D: np.ndarray
    tau: float
    latents: np.ndarray
    per_class: list[np.ndarray]


def _selectivity(X: np.ndarray, y: np.ndarray, cfg: FERConfig) -> _Selectivity:
    D, labels = class_mean_differences(X, y)
    null, _ = class_mean_differences(X, shuffled_labels(y, cfg.seed))
    tau = max(cfg.min_selectivity, float(null.max()))
    best = D.max(axis=0)
    order = np.argsort(-best, kind="stable")
    latents = order[best[order] >= tau][: cfg.k_selective]
    per_class = [latents[D[c, latents] >= tau] for c in range(len(D))]
    return _Selectivity(labels, D, tau, latents, per_class)


def _none(reason: str) -> Component:
    return Component(value=None, reason=reason)


def _split_latents(concept: ConceptActivations, cfg: FERConfig) -> list[np.ndarray]:
    """Per class (sorted labels), its split latents: the k-sparse probe's choice at the split count.

    SAEBench feature splitting (module docstring): the cross-validated F1 of
    k = 1 … ``k_max`` comes from one pass over the folds
    (:func:`fer_diag.probing.cv_predict_sparse`).
    """
    X, y, groups = concept.X, concept.y, concept.example_ids()
    D, labels = class_mean_differences(X, y)
    out = []
    for c in range(len(D)):
        raised = np.flatnonzero(D[c] > 0)
        X_raised, yb = X[:, raised], (y == labels[c]).astype(int)
        ks = list(range(1, min(cfg.k_max, len(raised)) + 1))
        best, split = -np.inf, 0
        if ks:
            pred = cv_predict_sparse(X_raised, yb, ks, groups=groups, n_folds=cfg.n_folds, seed=cfg.seed)
            for k, f1 in zip(ks, macro_f1(yb, pred, np.array([1])), strict=True):
                if f1 > best + cfg.f1_jump:
                    best, split = f1, k
        out.append(raised[top_features(X_raised, yb, split)])
    return out


def split_count(split: Sequence[np.ndarray], cfg: FERConfig) -> Component:
    """(mean split count − 1)/(k_max − 1)."""
    mean = float(np.mean([len(s) for s in split]))
    return Component(value=float(np.clip((mean - 1) / (cfg.k_max - 1), 0, 1)), detail={"mean_split": mean})


def absorption(
    concept: ConceptActivations, decoder: np.ndarray | None, split: Sequence[np.ndarray], cfg: FERConfig
) -> Component:
    """Mean absorption fraction of the class examples the raw probe finds (module docstring; SAEBench's formula)."""
    if concept.level != "token":
        return _none("absorption is defined at one token (Chanin et al. 2024); this concept is read per sequence")
    if concept.raw is None or decoder is None:
        return _none("absorption needs the raw hook vectors and the basis's decoder (an SAE basis)")
    X, y, raw = concept.X, concept.y, np.asarray(concept.raw, dtype=np.float64)
    dec = np.asarray(decoder, dtype=np.float64)
    norms = np.linalg.norm(dec, axis=1)
    per_class = []
    for c, main_latents in zip(np.unique(y), split, strict=True):
        yb = (y == c).astype(int)
        # unstandardised and converged: rotation-equivariant, as a change of basis must not move absorption
        fit = fit_probe(raw, yb, seed=cfg.seed, standardize=False, max_iter=2000, tol=1e-8)
        p = fit.direction[0] / np.linalg.norm(fit.direction[0])
        found = (yb == 1) & (raw @ fit.direction[0] + fit.intercept[0] > 0)
        if not found.any():
            continue
        along = dec @ p
        cos = along / np.where(norms > 0, norms, 1.0)
        contrib = X[found] * along  # a_j per example
        main = np.zeros(X.shape[1], dtype=bool)
        main[main_latents] = True
        P = raw[found] @ p
        M = contrib[:, main].sum(axis=1)
        candidates = np.where((~main & (cos >= cfg.absorption_cos))[None, :] & (contrib > 0), contrib, 0.0)
        r = min(cfg.max_absorbers, candidates.shape[1])
        A = -np.partition(-candidates, r - 1, axis=1)[:, :r].sum(axis=1)
        absorbed = np.minimum(A, P - M)
        frac = np.where(M <= 0, 1.0, absorbed / np.where(absorbed + M > 0, absorbed + M, 1.0))
        frac = np.where((M >= P) | (cfg.absorption_proportion * P > A) | (P <= 0), 0.0, frac)
        per_class.append(float(np.clip(frac, 0, 1).mean()))
    if not per_class:
        return _none("the raw probe finds no example of any class")
    return Component(value=float(np.mean(per_class)), detail={"classes": float(len(per_class))})


def context_fracture(selective_id: np.ndarray, selective_twin: np.ndarray) -> Component:
    """1 − |S_id ∩ S_twin| / |S_id ∪ S_twin| of the concept's selective latents."""
    a, b = set(selective_id.tolist()), set(selective_twin.tolist())
    if not a | b:
        return _none("no latent is selective for the concept, in distribution or on the twin")
    jaccard = len(a & b) / len(a | b)
    return Component(value=1.0 - jaccard, detail={"jaccard": jaccard, "n_id": len(a), "n_twin": len(b)})


def coactivation_graph(
    vectors: Sequence[np.ndarray],
    latents: Sequence[int],
    cfg: FERConfig | None = None,
    attributes: dict[int, dict] | None = None,
) -> nx.Graph:
    """Co-activation graph of ``latents`` over the rows of ``vectors`` (one bounded vector per example).

    Firing = value > 0. Edge (i, j) when phi_ij ≥ ``phi_threshold`` and n11 ≥
    ``min_coactivations``, phi = (n·n11 − n1i·n1j)/√(n1i n0i n1j n0j); attributes
    weight = phi and count = n11. Node attributes from ``attributes``. Export
    with ``networkx.write_graphml`` or ``networkx.node_link_data``.
    """
    cfg = cfg or FERConfig()
    latents = [int(j) for j in latents]
    graph = nx.Graph()
    for j in latents:
        graph.add_node(j, **(attributes or {}).get(j, {}))
    if not latents or not vectors:
        return graph
    fires = np.concatenate([np.asarray(v)[:, latents] > 0 for v in vectors]).astype(np.float64)
    n = len(fires)
    n1 = fires.sum(axis=0)
    n11 = fires.T @ fires
    denom = np.sqrt(np.outer(n1 * (n - n1), n1 * (n - n1)))
    phi = np.where(denom > 0, (n * n11 - np.outer(n1, n1)) / np.where(denom > 0, denom, 1.0), 0.0)
    ii, jj = np.nonzero(np.triu((phi >= cfg.phi_threshold) & (n11 >= cfg.min_coactivations), k=1))
    for i, j in zip(ii, jj, strict=True):
        graph.add_edge(latents[i], latents[j], weight=float(phi[i, j]), count=int(n11[i, j]))
    return graph


def fragmentation(graph: nx.Graph, nodes: Sequence[int]) -> float:
    """(components − 1)/(nodes − 1) of the subgraph induced on ``nodes``; 0 for a single node."""
    if len(nodes) <= 1:
        return 0.0
    return (nx.number_connected_components(graph.subgraph(nodes)) - 1) / (len(nodes) - 1)


def graph_fragmentation(graph: nx.Graph, per_class: Sequence[np.ndarray]) -> Component:
    """Mean over classes with selective latents of :func:`fragmentation` of the class's latents."""
    values = [fragmentation(graph, [int(j) for j in s]) for s in per_class if len(s)]
    if not values:
        return _none("no latent is selective for any class of the concept")
    return Component(value=float(np.mean(values)), detail={"classes": float(len(values))})


def modularity_deficit(graph: nx.Graph, membership: dict[int, float]) -> Component:
    """1 − clip(Q_A/(x − x²), 0, 1), Q_A the concept's (overlapping) modularity term (module docstring).

    ``membership[v]`` ∈ [0, 1] is α_v, node v's share in the concept (absent: 0).
    L_A = Σ_edges w_uv α_u α_v, d_A = Σ_v α_v k_v, x = d_A/2m, Q_A = L_A/m − x².
    """
    m = graph.size(weight="weight")
    if m <= 0:
        return _none("the co-activation graph has no edge")
    alpha = {v: membership.get(v, 0.0) for v in graph}
    d_a = sum(alpha[v] * k for v, k in graph.degree(weight="weight"))
    if d_a <= 0:
        return _none("the concept's latents have no co-activation edge")
    l_a = sum(w * alpha[u] * alpha[v] for u, v, w in graph.edges(data="weight"))
    x = d_a / (2 * m)
    q_a = l_a / m - x * x
    q_norm = 1.0 if x >= 1 else q_a / (x - x * x)
    return Component(value=1.0 - float(np.clip(q_norm, 0, 1)), detail={"q_term": q_a, "degree_share": x})


def mixed_selectivity(latents: np.ndarray, selectivities: Sequence[_Selectivity]) -> Component:
    """Mean over ``latents`` of the normalised entropy of their above-τ selectivity across all classes."""
    n_classes = sum(len(s.D) for s in selectivities)
    if not len(latents):
        return _none("no latent is selective for the concept")
    if n_classes < 2:
        return _none("one class in all: no mixing to measure")
    v = np.concatenate([np.where(s.D[:, latents] >= s.tau, s.D[:, latents], 0.0) for s in selectivities])
    p = v / v.sum(axis=0, keepdims=True)
    h = -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=0) / np.log(n_classes)
    return Component(value=float(h.mean()), detail={"latents": float(len(latents))})


def _ablation_drops(concepts: Sequence[ConceptActivations], ablate: Sequence[np.ndarray], cfg: FERConfig) -> np.ndarray:
    """drop[A, K]: concept K's k-sparse probe accuracy lost when concept A's ``ablate[A]`` latents are zeroed."""
    drops = np.zeros((len(ablate), len(concepts)))
    for K, c in enumerate(concepts):
        for train, test in grouped_folds(c.y, c.example_ids(), cfg.n_folds, cfg.seed):
            probe = make_probe(min(cfg.k_selective, c.X.shape[1]), seed=cfg.seed).fit(c.X[train], c.y[train])
            hits = probe.predict(c.X[test]) == c.y[test]
            for A, cols in enumerate(ablate):
                X_abl = c.X[test].copy()
                X_abl[:, cols] = 0.0
                drops[A, K] += (hits.sum() - (probe.predict(X_abl) == c.y[test]).sum()) / len(c.y)
    return drops


def cross_talk(drops: np.ndarray, a: int, cfg: FERConfig) -> Component:
    """clip(mean_{K≠A} drop[A, K] / drop[A, A], 0, 1) (the SAEBench TPP idea)."""
    if drops.shape[1] < 2:
        return _none("cross-talk needs other concepts at the same hook")
    own = float(drops[a, a])
    others = float(np.delete(drops[a], a).mean())
    detail = {"own_drop": own, "other_drop": others}
    if own < cfg.min_own_drop:
        reason = "zeroing the concept's selective latents does not hurt its probe"
        return Component(value=None, reason=reason, detail=detail)
    return Component(value=float(np.clip(others / own, 0, 1)), detail=detail)


def _check(concepts: Sequence[ConceptActivations], decoder: np.ndarray | None, cfg: FERConfig) -> None:
    if not concepts:
        raise BadInputError("fer_scores needs at least one concept")
    width = {np.asarray(c.X).shape[1] for c in concepts}
    if len(width) != 1:
        raise BadInputError(f"all concepts must be in one basis (same number of latents), got widths {sorted(width)}")
    for c in concepts:
        if c.X.ndim != 2 or len(c.X) != len(c.y):
            raise BadInputError(f"{c.name}: X must be [n, m] with one label per row")
        check_finite(c.X, c.name)
        check_labels(c.y, cfg.n_folds, f"FER of {c.name}")
        if c.raw is not None and len(c.raw) != len(c.X):
            raise BadInputError(f"{c.name}: raw has {len(c.raw)} rows, X {len(c.X)}")
        if (c.X_twin is None) != (c.y_twin is None):
            raise BadInputError(f"{c.name}: give both X_twin and y_twin, or neither")
        if c.X_twin is not None and (c.X_twin.shape[1:] != c.X.shape[1:] or len(c.X_twin) != len(c.y_twin)):
            raise BadInputError(f"{c.name}: X_twin must be [n_twin, {c.X.shape[1]}] with one label per row")
        if c.level not in ("sequence", "token"):
            raise BadInputError(f"{c.name}: level must be 'sequence' or 'token', got {c.level!r}")
    if decoder is not None and np.asarray(decoder).shape[0] != width.pop():
        raise BadInputError("the decoder must have one row per latent of X")


def _distinct(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Each array once (concepts may share one example set)."""
    return list({id(a): a for a in arrays}.values())


def _analyse(
    concepts: Sequence[ConceptActivations], decoder: np.ndarray | None, cfg: FERConfig
) -> tuple[list[dict[str, Component]], list[_Selectivity], dict[str, nx.Graph]]:
    sel = [_selectivity(c.X, c.y, cfg) for c in concepts]
    levels = dict.fromkeys(c.level for c in concepts)
    owners = {level: _owners(sel, [a for a, c in enumerate(concepts) if c.level == level]) for level in levels}
    graphs = {level: _level_graph(concepts, sel, owners[level], level, cfg) for level in levels}
    drops = _ablation_drops(concepts, [s.latents for s in sel], cfg)
    results = []
    for a, (c, s) in enumerate(zip(concepts, sel, strict=True)):
        split = _split_latents(c, cfg)
        if c.X_twin is None:
            ctx = _none("no shifted twin")
        else:
            ctx = context_fracture(s.latents, _selectivity(c.X_twin, c.y_twin, cfg).latents)
        graph = graphs[c.level]
        peers = [b for b, other in enumerate(concepts) if other.level == c.level]
        results.append(
            {
                "split_count": split_count(split, cfg),
                "absorption": absorption(c, decoder, split, cfg),
                "context_fracture": ctx,
                "graph_fragmentation": graph_fragmentation(graph, s.per_class),
                "mixed_selectivity": mixed_selectivity(s.latents, sel),
                "cross_talk": cross_talk(drops, a, cfg),
                "modularity_deficit": modularity_deficit(
                    graph, {int(j): 1 / len(owners[c.level][int(j)]) for j in s.latents}
                )
                if len(peers) > 1
                else _none(
                    "modularity by concept needs other concepts read at the same level (token or sequence) at this hook"
                ),
            }
        )
    return results, sel, graphs


def _owners(sel: Sequence[_Selectivity], members: Sequence[int]) -> dict[int, list[int]]:
    """Latent → the concepts among ``members`` it is selective for (a latent's share α is 1/len of that)."""
    owners: dict[int, list[int]] = {}
    for a in members:
        for j in sel[a].latents:
            owners.setdefault(int(j), []).append(a)
    return owners


def _level_graph(
    concepts: Sequence[ConceptActivations],
    sel: Sequence[_Selectivity],
    owners: dict[int, list[int]],
    level: str,
    cfg: FERConfig,
) -> nx.Graph:
    """The co-activation graph of the selective latents of the concepts read at ``level``, over their examples.

    One graph per level: a sequence-level example is a window mean, nonzero for every
    latent that fired anywhere in the window, so counting it beside single tokens
    would take co-occurrence in a window for co-activation (module docstring).
    """
    members = [a for a, c in enumerate(concepts) if c.level == level]
    attributes = {}
    for j, mine in owners.items():
        best = max(mine, key=lambda a: sel[a].D[:, j].max())
        cls = int(np.argmax(sel[best].D[:, j]))
        attributes[j] = {
            "concept": concepts[best].name,
            "class": concepts[best].classes[int(sel[best].labels[cls])],
            "concepts": ",".join(concepts[a].name for a in mine),
            "selectivity": float(sel[best].D[cls, j]),
            "level": level,
        }
    return coactivation_graph(_distinct([concepts[a].X for a in members]), sorted(owners), cfg, attributes)


def _index(components: dict[str, Component]) -> tuple[float | None, list[str]]:
    used = [k for k in (*FRACTURE, *ENTANGLEMENT) if components[k].value is not None]
    return (float(np.mean([components[k].value for k in used])) if used else None), used


def _resampled(concepts: Sequence[ConceptActivations], rng: np.random.Generator) -> list[ConceptActivations]:
    """The concepts with rows drawn with replacement; arrays shared between concepts get the same draw."""
    draws: dict[int, np.ndarray] = {}

    def rows(a: np.ndarray | None) -> np.ndarray | None:
        if a is None:
            return None
        if id(a) not in draws:
            draws[id(a)] = rng.integers(0, len(a), len(a))
        return draws[id(a)]

    out = []
    for c in concepts:
        i, t = rows(c.X), rows(c.X_twin)
        out.append(
            replace(
                c,
                X=c.X[i],
                y=c.y[i],
                raw=None if c.raw is None else c.raw[i],
                groups=c.example_ids()[i],
                X_twin=None if t is None else c.X_twin[t],
                y_twin=None if t is None else c.y_twin[t],
            )
        )
    return out


@quiet
def fer_scores(
    concepts: Sequence[ConceptActivations], decoder: np.ndarray | None = None, config: FERConfig | None = None
) -> list[FERScores]:
    """FER components, index and bootstrap CI of every concept (same hook, same basis; module docstring).

    ``decoder [m, d]``: the SAE's decoder rows (absorption); None for a neuron basis.
    BLAS runs single-threaded meanwhile: the probes are small, and threads only
    contend (five times slower on two busy cores).
    """
    cfg = config or FERConfig()
    _check(concepts, decoder, cfg)
    rng = np.random.default_rng(cfg.seed)
    with threadpool_limits(1):
        results, sel, graphs = _analyse(concepts, decoder, cfg)
        replicates = [_analyse(_resampled(concepts, rng), decoder, cfg)[0] for _ in range(cfg.n_boot)]
    links = {level: nx.node_link_data(graph, edges="edges") for level, graph in graphs.items()}
    out = []
    for a, (c, comps, s) in enumerate(zip(concepts, results, sel, strict=True)):
        index, used = _index(comps)
        # a replicate counts when every component of the estimate is defined in it
        b = [np.mean([r[a][k].value for k in used]) for r in replicates if all(r[a][k].value is not None for k in used)]
        ci, bias = None, None
        if used and len(b) >= 2:
            bias = float(np.mean(b)) - index
            lo, hi = percentile_ci(np.asarray(b) - bias, cfg.ci_level)
            ci = (float(np.clip(lo, 0, 1)), float(np.clip(hi, 0, 1)))
        out.append(
            FERScores(
                concept=c.name,
                level=c.level,
                **comps,
                index=index,
                index_ci=ci,
                index_bias=bias,
                components_used=used,
                selective_latents=[int(j) for j in s.latents],
                graph=links[c.level],
            )
        )
    return out
