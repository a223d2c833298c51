"""Probes and FER on the real default model (integration): the answers the issue expects, measured."""

from __future__ import annotations

import pytest

from fer_diag.audit import Audit, AuditConfig
from fer_diag.verdict import VerdictConfig, decodable

EARLY, MIDDLE = "blocks.3.hook_resid_post", "blocks.15.hook_resid_post"


@pytest.fixture(scope="module")
def probed():
    from fer_diag.models import load_model

    cfg = AuditConfig(concepts=["language", "first_letter"], concept_per_class=8, fer_boot=0)
    audit = Audit("smollm2-135m", config=cfg, progress=False)
    loaded = load_model("smollm2-135m")
    saes = audit._match_saes(loaded, [EARLY, MIDDLE])
    saes = {h: s for h, s in saes.items() if h in (EARLY, MIDDLE)}
    concepts = audit._concepts(loaded)
    if len(concepts) < 2:
        pytest.skip(f"concept corpora missing: {concepts.skipped}")
    result, analyzer = audit._probes(loaded, [EARLY, MIDDLE], saes, concepts)
    fer, _ = audit._fer(analyzer, saes, result.section)
    return result.section, fer


@pytest.mark.integration
def test_language_is_decodable_at_a_middle_layer(probed):
    probes, _ = probed
    row = next(x for x in probes.rows if (x.concept, x.hook, x.basis) == ("language", MIDDLE, "raw"))
    assert row.accuracy > 0.95 and decodable(row, VerdictConfig())


@pytest.mark.integration
def test_first_letter_is_above_chance_early(probed):
    probes, _ = probed
    row = next(x for x in probes.rows if (x.concept, x.hook, x.basis) == ("first_letter", EARLY, "raw"))
    assert row.accuracy_ci[0] > row.chance and row.accuracy > row.control_accuracy


@pytest.mark.integration
def test_fer_is_scored_on_latents_and_neurons_not_on_the_residual(probed):
    _, fer = probed
    places = {(x.hook, x.basis) for x in fer.rows}
    assert (MIDDLE, "sae") in places and ("blocks.15.mlp.hook_post", "raw") in places
    assert (MIDDLE, "raw") not in places and any(MIDDLE in why for why in fer.not_scored)
    assert all(x.index is None or 0 <= x.index <= 1 for x in fer.rows)
