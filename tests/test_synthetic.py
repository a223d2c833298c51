"""The planted-structure generator, and the FER scores against its known answers (issue 10).

Sweeps: fracture f = 1…5 at entanglement 0, entanglement e = 0…1 at fracture 2
(f = 2 so that the shares of shared latent slots are fine-grained: 36 slots per
concept). Which components cannot separate the two factors, and why:
* split count rises with entanglement too: a latent that also carries another
  concept's class fires on negatives, and the k-sparse probe gains F1 by adding
  latents that tell the two apart — so it is asserted on the fracture sweep only;
* absorption barely moves in the sweeps (the split count finds the rare
  contexts' latents, so few examples are absorbed); it is asserted to stay small
  there, and checked against its known answer with the main latents given.
Every other component is asserted to move with its own factor (Spearman ≥ 0.9)
and to stay within 0.05 when only the other factor changes.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from fer_diag.fer import ConceptActivations, FERConfig, absorption, fer_scores
from fer_diag.synthetic import SyntheticConfig, make_world

FRACTURES = (1, 2, 3, 4, 5)
ENTANGLEMENTS = (0.0, 0.25, 0.5, 0.75, 1.0)
BASE_FRACTURE = 2


def activations(world) -> list[ConceptActivations]:
    return [
        ConceptActivations(c.name, c.level, c.classes, c.latents, c.labels, c.latents_twin, c.labels_twin, c.raw)
        for c in world.concepts
    ]


def mean_component(scores, name: str) -> float:
    values = [getattr(s, name).value for s in scores]
    return float(np.mean([v for v in values if v is not None])) if any(v is not None for v in values) else np.nan


@pytest.fixture(scope="module")
def sweeps() -> dict[tuple[int, float], list]:
    out = {}
    for f, e in {(f, 0.0) for f in FRACTURES} | {(BASE_FRACTURE, e) for e in ENTANGLEMENTS}:
        world = make_world(SyntheticConfig(fracture=f, entanglement=e))
        out[f, e] = fer_scores(activations(world), world.encoder.W_dec, FERConfig(n_boot=0))
    return out


def curve(sweeps, name: str, axis: str) -> list[float]:
    keys = [(f, 0.0) for f in FRACTURES] if axis == "fracture" else [(BASE_FRACTURE, e) for e in ENTANGLEMENTS]
    if name == "index":
        return [float(np.mean([s.index for s in sweeps[k]])) for k in keys]
    return [mean_component(sweeps[k], name) for k in keys]


# --- the generator ---------------------------------------------------------------------------------------------------


def test_world_is_seeded_and_its_encoder_recovers_the_codes():
    cfg = SyntheticConfig(fracture=3, entanglement=0.5, n_per_class=40)
    a, b = make_world(cfg), make_world(cfg)
    np.testing.assert_array_equal(a.concepts[0].raw, b.concepts[0].raw)
    assert not np.array_equal(a.concepts[0].raw, make_world(cfg.model_copy(update={"seed": 1})).concepts[0].raw)
    np.testing.assert_allclose(np.linalg.norm(a.encoder.W_dec, axis=1), 1.0)
    concept = a.concepts[0]
    codes = np.linalg.lstsq(a.encoder.W_dec.T, (concept.raw).T, rcond=None)[0].T  # noiseless decode of the raw
    assert ((codes > a.encoder.threshold) == (concept.latents > 0)).mean() > 0.999
    assert np.bincount(concept.labels).tolist() == [40, 40, 40]
    assert concept.latents.min() >= 0


@pytest.mark.parametrize("f", [1, 2, 4])
def test_planted_groups_and_twin_overlap(f):
    world = make_world(SyntheticConfig(fracture=f, n_per_class=20))
    for concept in world.concepts:
        for groups in concept.latent_groups:
            assert len(groups) == 2 * f - 1  # f in distribution, f − 1 twin-only
            id_latents, twin_latents = set(sum(groups[:f], ())), set(groups[0]) | set(sum(groups[f:], ()))
            assert len(id_latents & twin_latents) / len(id_latents | twin_latents) == pytest.approx(1 / (2 * f - 1))
        fired = {j for g in concept.latent_groups for j in g[0]}  # every class's group 0 fires in both sets
        assert (concept.latents[:, sorted(fired)] > 0).any(0).all()
        assert (concept.latents_twin[:, sorted(fired)] > 0).any(0).all()


def test_entanglement_shares_latents_across_concepts():
    def shared(e: float) -> float:
        world = make_world(SyntheticConfig(fracture=2, entanglement=e, n_per_class=10))
        sets = [{j for cls in c.latent_groups for g in cls for j in g} for c in world.concepts]
        return len(sets[0] & sets[1]) / len(sets[0])

    assert shared(0.0) == 0.0
    assert shared(1.0) == 1.0
    assert 0.0 < shared(0.5) < 1.0


# --- FER against the planted answers ---------------------------------------------------------------------------------


def test_index_rises_with_each_planted_factor(sweeps):
    for axis, levels in (("fracture", FRACTURES), ("entanglement", ENTANGLEMENTS)):
        index = curve(sweeps, "index", axis)
        assert spearmanr(levels, index).statistic >= 0.9, (axis, index)
    assert curve(sweeps, "index", "fracture")[0] < 0.02  # one latent group per class, nothing shared: clean


@pytest.mark.parametrize(
    ("name", "own", "other"),
    [
        ("context_fracture", "fracture", "entanglement"),
        ("graph_fragmentation", "fracture", "entanglement"),
        ("split_count", "fracture", None),
        ("mixed_selectivity", "entanglement", "fracture"),
        ("cross_talk", "entanglement", "fracture"),
        ("modularity_deficit", "entanglement", "fracture"),
    ],
)
def test_each_component_moves_with_its_own_factor_only(sweeps, name, own, other):
    levels = FRACTURES if own == "fracture" else ENTANGLEMENTS
    values = curve(sweeps, name, own)
    assert spearmanr(levels, values).statistic >= 0.9, values
    assert values[-1] - values[0] > 0.2, values
    if other is not None:
        flat = curve(sweeps, name, other)
        assert max(flat) - min(flat) <= 0.05, flat


def test_planted_values_are_recovered(sweeps):
    for f in FRACTURES:  # every latent found: Jaccard 1/(2f − 1); f groups of 2 co-firing latents per class
        assert mean_component(sweeps[f, 0.0], "context_fracture") == pytest.approx((2 * f - 2) / (2 * f - 1), abs=0.03)
        assert mean_component(sweeps[f, 0.0], "graph_fragmentation") == pytest.approx((f - 1) / (2 * f - 1), abs=0.03)
    # e = 1: every latent carries one class of each of the 3 concepts, ln 3 / ln 9 = 0.5
    assert mean_component(sweeps[BASE_FRACTURE, 1.0], "mixed_selectivity") == pytest.approx(0.5, abs=0.03)
    assert mean_component(sweeps[BASE_FRACTURE, 0.0], "mixed_selectivity") < 0.02


def test_absorption_stays_small_without_planted_absorption(sweeps):
    for key, scores in sweeps.items():
        assert mean_component(scores, "absorption") <= 0.1, key


@pytest.mark.parametrize("f", [1, 2, 3, 5])
def test_absorption_is_the_share_of_examples_carried_by_other_groups(f):
    """Main latents = each class's planted group 0: every example in another context is fully absorbed."""
    world = make_world(SyntheticConfig(fracture=f, n_per_class=100))
    concept = world.concepts[0]
    mains = [np.array(groups[0]) for groups in concept.latent_groups]
    planted = np.mean([(concept.latents[concept.labels == c][:, m] == 0).all(1).mean() for c, m in enumerate(mains)])
    value = absorption(activations(world)[0], world.encoder.W_dec, mains, FERConfig()).value
    assert value == pytest.approx(planted, abs=0.03)
    assert (value > 0.2) == (f > 1)
