"""FER scores: invariances, hand-computed graph cases, the None reasons and the report-facing API (issue 10)."""

from __future__ import annotations

from dataclasses import replace

import networkx as nx
import numpy as np
import pytest
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from fer_diag.errors import BadInputError
from fer_diag.fer import (
    ENTANGLEMENT,
    FRACTURE,
    ConceptActivations,
    FERConfig,
    FERScores,
    _split_latents,
    coactivation_graph,
    context_fracture,
    cross_talk,
    fer_scores,
    fragmentation,
    modularity_deficit,
    split_count,
)
from fer_diag.probing import (
    ProbeInputError,
    class_mean_differences,
    cv_predict,
    cv_predict_sparse,
    grouped_folds,
    macro_f1,
    make_probe,
    quiet,
    top_features,
)
from fer_diag.synthetic import SyntheticConfig, make_world
from fer_diag.transforms import haar_orthogonal

COMPONENTS = (*FRACTURE, *ENTANGLEMENT)


def activations(world) -> list[ConceptActivations]:
    return [
        ConceptActivations(c.name, c.level, c.classes, c.latents, c.labels, c.latents_twin, c.labels_twin, c.raw)
        for c in world.concepts
    ]


def table(scores: list[FERScores]) -> np.ndarray:
    """[concept, component…, index], NaN where a component is None."""
    value = [[getattr(s, k).value for k in COMPONENTS] + [s.index] for s in scores]
    return np.array([[np.nan if v is None else v for v in row] for row in value])


@pytest.fixture(scope="module")
def world():
    return make_world(SyntheticConfig(fracture=2, entanglement=0.5, n_per_class=100))


@pytest.fixture(scope="module")
def base(world) -> np.ndarray:
    return table(fer_scores(activations(world), world.encoder.W_dec, FERConfig(n_boot=0)))


def relabelled(world, f):
    """The concepts with every latent vector (ID and twin) mapped by ``f``; one shared array per set, as generated."""
    concepts = activations(world)
    X, X_twin = f(concepts[0].X), f(concepts[0].X_twin)
    return [replace(c, X=X, X_twin=X_twin) for c in concepts]


def scored(concepts, decoder) -> np.ndarray:
    return table(fer_scores(concepts, decoder, FERConfig(n_boot=0)))


# --- invariances (measured: permutation and rescaling 0 exactly; rotation ≤ 0.003 on absorption, 3e-4 on the index)


def test_index_is_invariant_to_permuting_latents(world, base):
    perm = np.random.default_rng(1).permutation(world.encoder.W_dec.shape[0])
    moved = scored(relabelled(world, lambda X: X[:, perm]), world.encoder.W_dec[perm])
    np.testing.assert_allclose(moved, base, atol=1e-9)


def test_index_is_invariant_to_rescaling_latents(world, base):
    """f_j → s_j f_j with decoder rows W_j → W_j / s_j: the same reconstruction, the same scores."""
    s = np.random.default_rng(2).uniform(0.1, 10.0, world.encoder.W_dec.shape[0])
    moved = scored(relabelled(world, lambda X: X * s), world.encoder.W_dec / s[:, None])
    np.testing.assert_allclose(moved, base, atol=1e-9)


def test_index_is_invariant_to_a_function_preserving_rotation(world, base):
    """Raw vectors and decoder rotated by Q (the SAE rotated to match reads the same latents).

    Only absorption reads the raw basis, through an unstandardised L2 probe: rotation-equivariant, so
    it moves by rounding (and by L-BFGS stopping a little differently), the other components not at all.
    """
    q = haar_orthogonal(world.encoder.W_dec.shape[1], seed=3).numpy()
    moved = scored([replace(c, raw=c.raw @ q) for c in activations(world)], world.encoder.W_dec @ q)
    np.testing.assert_allclose(moved, base, atol=2e-3)
    others = [i for i, k in enumerate(COMPONENTS) if k != "absorption"]
    np.testing.assert_allclose(moved[:, others], base[:, others], atol=1e-9)


# --- hand-computed cases --------------------------------------------------------------------------------------------


def test_coactivation_graph_edges_are_phi_above_threshold():
    fires = np.zeros((6, 13))
    fires[:, 10:] = [[1, 1, 0], [1, 1, 0], [0, 0, 1], [0, 0, 1], [1, 0, 0], [0, 0, 0]]
    fires[:, 3] = 1.0  # not a candidate: ignored
    graph = coactivation_graph([fires[:3], fires[3:]], [10, 11, 12], FERConfig(phi_threshold=0.3, min_coactivations=2))
    # latents 10, 11: n = 6, n1 = 3 and 2, n11 = 2: phi = (6·2 − 3·2)/√(3·3·2·4) = 6/√72
    assert set(graph.edges) == {(10, 11)}
    assert graph.edges[10, 11]["weight"] == pytest.approx(6 / np.sqrt(72))
    assert graph.edges[10, 11]["count"] == 2
    assert coactivation_graph([fires], [10, 11], FERConfig(min_coactivations=3)).number_of_edges() == 0


def test_fragmentation_by_hand():
    graph = nx.Graph([(1, 2), (3, 4)])
    graph.add_node(5)
    assert fragmentation(graph, [1, 2, 3, 4, 5]) == pytest.approx((3 - 1) / (5 - 1))
    assert fragmentation(graph, [1, 2]) == 0.0
    assert fragmentation(graph, [1, 3, 5]) == 1.0
    assert fragmentation(graph, [5]) == 0.0


def test_modularity_deficit_by_hand():
    """Triangle A = {0, 1, 2}, edge B = {3, 4}, one bridge (2, 3): m = 5, d_A = 7, d_B = 3.

    Q_A = 3/5 − 0.7² = 0.11, q_A = 0.11/(0.7 − 0.49) = 11/21; Q_B = 1/5 − 0.3² = 0.11, q_B = 11/21.
    """
    graph = nx.Graph([(0, 1), (1, 2), (0, 2), (3, 4), (2, 3)], weight=1.0)
    nx.set_edge_attributes(graph, 1.0, "weight")
    a = modularity_deficit(graph, {0: 1.0, 1: 1.0, 2: 1.0})
    b = modularity_deficit(graph, {3: 1.0, 4: 1.0})
    assert a.value == pytest.approx(1 - 11 / 21)
    assert b.value == pytest.approx(1 - 11 / 21)
    assert a.detail["q_term"] + b.detail["q_term"] == pytest.approx(
        nx.community.modularity(graph, [{0, 1, 2}, {3, 4}], weight="weight")
    )
    # one edge between two latents each shared by two concepts (α = ½): Q_A = ¼ − ½² = 0 → deficit 1
    shared = nx.Graph()
    shared.add_edge(0, 1, weight=1.0)
    assert modularity_deficit(shared, {0: 0.5, 1: 0.5}).value == pytest.approx(1.0)
    assert modularity_deficit(nx.empty_graph(3), {0: 1.0}).value is None


def test_context_fracture_split_count_and_cross_talk_by_hand():
    assert context_fracture(np.array([1, 2, 3]), np.array([2, 3, 4])).value == pytest.approx(0.5)
    assert context_fracture(np.array([], int), np.array([], int)).value is None
    cfg = FERConfig(k_max=10)
    assert split_count([np.arange(1), np.arange(3)], cfg).value == pytest.approx((2 - 1) / 9)
    drops = np.array([[0.4, 0.1, 0.3], [0.0, 0.02, 0.0], [0.1, 0.6, 0.2]])
    assert cross_talk(drops, 0, cfg).value == pytest.approx(0.5)  # mean(0.1, 0.3)/0.4
    assert cross_talk(drops, 1, cfg).value is None  # its own ablation costs 0.02 < min_own_drop
    assert cross_talk(drops, 2, cfg).value == 1.0  # clipped
    assert cross_talk(drops[:1, :1], 0, cfg).reason.startswith("cross-talk needs other concepts")


# --- where a component does not apply, the API ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def small():
    return make_world(SyntheticConfig(fracture=2, entanglement=0.5, n_concepts=2, n_per_class=30))


def test_not_applicable_components_say_why(small):
    cfg = FERConfig(n_boot=0, k_max=3)
    concepts = [replace(c, level="sequence", X_twin=None, y_twin=None) for c in activations(small)]
    scores = fer_scores(concepts[:1], small.encoder.W_dec, cfg)[0]
    no_decoder = fer_scores(activations(small)[:1], None, cfg)[0]
    assert "one token" in scores.absorption.reason
    assert scores.context_fracture.reason == "no shifted twin"
    assert "other concepts" in scores.cross_talk.reason and "other concepts" in scores.modularity_deficit.reason
    assert set(scores.components_used) == {"split_count", "graph_fragmentation", "mixed_selectivity"}
    assert scores.index == pytest.approx(np.mean([getattr(scores, k).value for k in scores.components_used]))
    assert "decoder" in no_decoder.absorption.reason


def test_scores_serialise_with_graph_and_bootstrap_ci(small, tmp_path):
    scores = fer_scores(activations(small), small.encoder.W_dec, FERConfig(n_boot=4, k_max=3))
    for s in scores:
        lo, hi = s.index_ci
        assert 0.0 <= lo <= s.index <= hi <= 1.0
        assert abs(s.index_bias) < 0.2
        assert all(0.0 <= getattr(s, k).value <= 1.0 for k in s.components_used)
        assert FERScores.model_validate_json(s.model_dump_json()) == s
    graph = nx.node_link_graph(scores[0].graph, edges="edges")
    assert set(scores[0].selective_latents) <= set(graph.nodes)
    assert {d["concept"] for _, d in graph.nodes(data=True)} <= {"concept0", "concept1"}
    nx.write_graphml(graph, tmp_path / "coactivation.graphml")
    assert nx.read_graphml(tmp_path / "coactivation.graphml").number_of_nodes() == graph.number_of_nodes()


def test_bad_input_is_refused(small):
    concepts = activations(small)
    with pytest.raises(BadInputError, match="one basis"):
        fer_scores([concepts[0], replace(concepts[1], X=concepts[1].X[:, :5], X_twin=None, y_twin=None)])
    with pytest.raises(BadInputError, match="decoder"):
        fer_scores(concepts[:1], small.encoder.W_dec[:3])
    with pytest.raises(BadInputError, match="X_twin and y_twin"):
        fer_scores([replace(concepts[0], y_twin=None)])
    with pytest.raises(BadInputError, match="level"):
        fer_scores([replace(concepts[0], level="word")])
    with pytest.raises(BadInputError):
        fer_scores([replace(concepts[0], y=np.zeros_like(concepts[0].y))])


def test_grouped_folds_keep_copies_together():
    y = np.repeat([0, 1], 20)
    folds = grouped_folds(y, np.arange(40), n_folds=5, seed=0)
    expected = StratifiedKFold(5, shuffle=True, random_state=0).split(np.zeros((40, 1)), y)
    for (train, test), (train_e, test_e) in zip(folds, expected, strict=True):
        np.testing.assert_array_equal(test, test_e)
        np.testing.assert_array_equal(train, train_e)
    draw = np.random.default_rng(0).integers(0, 40, 40)  # a bootstrap draw: copies share an id
    for train, test in grouped_folds(y[draw], draw, n_folds=4):
        assert not set(draw[train]) & set(draw[test])
    with pytest.raises(ProbeInputError, match="share their label"):
        grouped_folds(np.array([0, 1, 0, 1]), np.array([0, 0, 1, 1]), n_folds=2)


# --- the split count's one-pass k sweep equals the per-k pipeline -------------------------------------------------


@quiet
def per_k(X, y, groups, k, seed):
    """The per-k pipeline the one-pass sweep replaces: make_probe(k) cross-validated on the grouped folds."""
    return cross_val_predict(make_probe(k, seed=seed), X, y, cv=grouped_folds(y, groups, 5, seed))


def test_sparse_sweep_predicts_as_the_per_k_pipeline():
    """Row i of cv_predict_sparse is the per-k pipeline's: copies grouped, tied columns, 2-3 classes."""
    rng = np.random.default_rng(7)
    ks = [1, 2, 3, 5, 8, 13]
    for n_classes in (2, 3):
        ids = rng.integers(0, 90, 110)  # copies of examples, as a bootstrap draw
        y = rng.integers(0, n_classes, 90)[ids]
        X = np.maximum(rng.normal(size=(110, 60)) + 0.6 * rng.normal(size=(n_classes, 60))[y] - 1.0, 0)
        X = X[:, np.flatnonzero(rng.random(60) < 0.8)]  # column-indexed as _split_latents passes it
        X[:, 7] = X[:, 2]  # a tie in the ranking: the lower index wins in both
        sweep = cv_predict_sparse(X, y, ks, groups=ids, seed=3)
        for k, row in zip(ks, sweep, strict=True):
            np.testing.assert_array_equal(row, per_k(X, y, ids, k, 3))
        assert len({row.tobytes() for row in sweep}) > 1  # k changes the predictions: the check has teeth
        ungrouped = cv_predict_sparse(X, y, ks, seed=3)  # every row its own group: cv_predict's folds
        for k, row in zip(ks, ungrouped, strict=True):
            np.testing.assert_array_equal(row, cv_predict(X, y, k=k, seed=3))
    with pytest.raises(ProbeInputError, match="k >= 1"):
        cv_predict_sparse(X, y, [0, 1], groups=ids)


def test_split_latents_match_the_per_k_loop(small):
    """The split latents equal those of k = 1 … k_max pipelines scored by scikit-learn's F1 (the former loop)."""
    cfg = FERConfig(n_boot=0, k_max=4)
    for concept in activations(small):
        X, y = concept.X, concept.y
        D, labels = class_mean_differences(X, y)
        for c, got in enumerate(_split_latents(concept, cfg)):
            raised = np.flatnonzero(D[c] > 0)
            yb = (y == labels[c]).astype(int)
            best, split = -np.inf, 0
            for k in range(1, min(cfg.k_max, len(raised)) + 1):
                pred = per_k(X[:, raised], yb, concept.example_ids(), k, cfg.seed)
                f1 = f1_score(yb, pred, zero_division=0)
                if f1 > best + cfg.f1_jump:
                    best, split = f1, k
            np.testing.assert_array_equal(got, raised[top_features(X[:, raised], yb, split)])


def test_f1_of_the_positive_class_is_sklearns_binary_f1_to_the_bit():
    """The split count scores each k with macro_f1 over the label 1 alone: sklearn's binary F1, bit for bit."""
    rng = np.random.default_rng(0)
    y = (rng.random(50) < 0.2).astype(int)
    pred = (rng.random((30, 50)) < rng.random((30, 1))).astype(int)
    pred[0] = 0  # nothing predicted
    got = macro_f1(y, pred, np.array([1]))
    assert got.tolist() == [f1_score(y, row, zero_division=0) for row in pred]
    assert macro_f1(np.zeros(5, int), np.zeros((1, 5), int), np.array([1])).tolist() == [0.0]  # zero_division=0


def test_a_concept_of_the_other_level_stays_out_of_the_graph(small):
    """One co-activation graph per level: a sequence concept (window means, which fire on nearly every latent)
    beside the token concepts leaves their graph components exactly as without it, and gets its own graph."""
    cfg = FERConfig(n_boot=0, k_max=3)
    token = activations(small)
    c0 = token[0]
    windows = np.random.default_rng(0).integers(0, len(c0.y), size=(60, 8))
    means = replace(
        c0,
        name="windows",
        level="sequence",
        X=c0.X[windows].mean(axis=1),
        y=c0.y[windows[:, 0]],
        X_twin=None,
        y_twin=None,
        raw=c0.raw[windows].mean(axis=1),
    )
    assert (means.X > 0).mean() > 2 * (c0.X > 0).mean()  # the means are dense, as SmolLM2's window means are
    alone = fer_scores(token, small.encoder.W_dec, cfg)
    beside = fer_scores([*token, means], small.encoder.W_dec, cfg)
    for a, b in zip(alone, beside, strict=False):
        for k in ("graph_fragmentation", "modularity_deficit"):
            assert getattr(a, k).value == getattr(b, k).value, (a.concept, k)
        assert a.graph == b.graph
    seq = beside[-1]
    assert {d["level"] for d in seq.graph["nodes"]} == {"sequence"} and seq.graph != beside[0].graph
    assert seq.modularity_deficit.value is None and "same level" in seq.modularity_deficit.reason
