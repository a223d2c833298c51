"""The verdict on data where the right answer is known, and on a model vs its function-preserving rotation."""

from __future__ import annotations

import pytest
import torch

from fer_diag.analyzers.baselines import BaselineAnalyzer
from fer_diag.analyzers.sparsity import SparsityAnalyzer
from fer_diag.basis import RotatedBasis
from fer_diag.capture import ActivationBatch
from fer_diag.data.suite import SetKind
from fer_diag.familiarity import familiarity
from fer_diag.verdict import BLOCKING, VerdictConfig, verdict

RESID = "blocks.0.hook_resid_post"
NEURONS = "blocks.0.mlp.hook_post"
D, T, N = 32, 24, 48


def _batch(
    name: str, kind: SetKind, acts: torch.Tensor, mask: torch.Tensor, hook: str, seed: int, nll_shift: float = 0.0
) -> ActivationBatch:
    g = torch.Generator().manual_seed(seed)
    readout = torch.rand(acts.shape[:2], generator=g) + 2.0 + nll_shift  # NLL-like readouts (uninformative at 0)
    return ActivationBatch(
        set_name=name,
        kind=kind,
        level=None,
        tokens=torch.zeros(acts.shape[:2], dtype=torch.long),
        mask=mask,
        seq_index=torch.arange(len(acts)),
        acts={hook: acts},
        token_nll=readout,
        token_entropy=readout.clone(),
        token_maxprob=1 / readout,
    )


def _full_mask(n: int = N, t: int = T) -> torch.Tensor:
    mask = torch.ones(n, t, dtype=torch.bool)
    mask[:, 0] = False
    return mask


def _verdict(
    id_acts, ood_acts, hook=RESID, id_mask=None, ood_mask=None, massive=None, fidelity=None, basis="raw", **kw
):
    sp = SparsityAnalyzer(massive_dims=massive)
    base = BaselineAnalyzer()
    rotations = [RotatedBasis(s) for s in range(2)]
    for name, kind, acts, mask, seed in (
        ("id", SetKind.IN_DISTRIBUTION, id_acts, id_mask if id_mask is not None else _full_mask(len(id_acts)), 1),
        ("ood", SetKind.SHIFTED, ood_acts, ood_mask if ood_mask is not None else _full_mask(len(ood_acts)), 2),
    ):
        b = _batch(name, kind, acts, mask, hook, seed, kw.get("ood_nll_shift", 0.0) if name == "ood" else 0.0)
        if basis != "raw":
            b = b.with_acts(b.acts, basis)
        sp.update(b)
        base.update(b)
        if basis == "raw":
            for rot in rotations:
                sp.update(rot.read(b))
    s, bl = sp.compute(), base.compute()
    fam = familiarity(s, bl, n_boot=200)
    return verdict(fam, s, bl, fidelity, None, VerdictConfig(n_boot=200), n_jobs=kw.get("n_jobs"))


def _row(v, metric, reduce="mean", target="ood", basis="raw"):
    (row,) = [r for r in v.rows if (r.metric, r.reduce, r.target, r.basis) == (metric, reduce, target, basis)]
    return row


def _gauss(n: int, seed: int, t: int = T, d: int = D) -> torch.Tensor:
    return torch.randn(n, t, d, generator=torch.Generator().manual_seed(seed))


def test_clean_planted_signal_is_trusted():
    # OOD windows live in a random 3-dim subspace: a lower covariance participation ratio in any basis
    basis = torch.linalg.qr(torch.randn(D, 3, generator=torch.Generator().manual_seed(9)))[0]
    ood = (_gauss(N, 2, d=3) @ basis.T) * 3 + 0.05 * _gauss(N, 3)
    v = _verdict(_gauss(N, 1), ood)
    row = _row(v, "participation_ratio", "window")
    assert row.signal and row.direction == "sparser_is_ood"
    assert row.status == "TRUSTED", [f.message for f in row.flags]
    assert row.basis_note is None  # the residual stream: the basis test applied, and passed


def test_signal_the_nll_already_has_is_no_better_than_perplexity_in_parallel_too():
    basis = torch.linalg.qr(torch.randn(D, 3, generator=torch.Generator().manual_seed(9)))[0]
    ood = (_gauss(N, 2, d=3) @ basis.T) * 3 + 0.05 * _gauss(N, 3)
    serial = _verdict(_gauss(N, 1), ood, ood_nll_shift=1.0)  # the NLL separates the sets perfectly
    row = _row(serial, "participation_ratio", "window")
    assert row.status == "CAUTION" and [f.name for f in row.flags] == ["no_better_than_perplexity"]
    assert row.flags[0].evidence["gain_ci_low"] <= 0 < row.value
    parallel = _verdict(_gauss(N, 1), ood, ood_nll_shift=1.0, n_jobs=2)
    assert [r.model_dump() for r in parallel.rows] == [r.model_dump() for r in serial.rows]


def test_signal_in_one_coordinate_is_basis_dependent():
    ood = _gauss(N, 2)
    ood[..., 0] += 6.0 * torch.sign(ood[..., 0])  # one axis-aligned coordinate is large: sparser, in this basis only
    v = _verdict(_gauss(N, 1), ood)
    row = _row(v, "hoyer")
    assert row.signal and row.status == "UNTRUSTED" and row.decisive == "basis_dependent"
    (flag,) = [f for f in row.flags if f.name == "basis_dependent"]
    assert flag.evidence["max_delta"] > 0.15 and flag.threshold == {"max_auroc_delta": 0.15}
    assert min(flag.evidence["auroc_rotated"].values()) < flag.evidence["auroc"] - 0.15
    assert set(flag.evidence["rotation_invariant"]) == {"participation_ratio/window", "l2_norm/mean"}
    # the same data at an MLP-neuron hook: a privileged basis, the flag does not apply and the report says why
    v2 = _verdict(_gauss(N, 1), ood, hook=NEURONS)
    row2 = _row(v2, "hoyer")
    assert "nonlinearity" in row2.basis_note and not any(f.name == "basis_dependent" for f in row2.flags)


def test_signal_carried_by_a_huge_dimension_is_the_massive_flag():
    ident, ood = _gauss(N, 1), _gauss(N, 2)
    ident[..., 3], ood[..., 3] = 2e3, 2e4  # a massive dim, ten times larger on the shifted set
    v = _verdict(ident, ood, hook=NEURONS, massive={NEURONS: [3]})
    row = _row(v, "hoyer")
    assert row.signal and row.decisive == "massive"
    (flag,) = [f for f in row.flags if f.name == "massive"]
    assert abs(flag.evidence["value_massive_masked"]) < 0.7


def test_signal_that_is_only_length_is_the_length_flag():
    # the same vectors; the shifted windows are all short, two thirds of the reference ones long
    acts = _gauss(N, 1)
    id_mask, ood_mask = _full_mask(), _full_mask()
    id_mask[2 * N // 3 :, 8:] = False
    ood_mask[:, 8:] = False
    v = _verdict(acts, _gauss(N, 5), id_mask=id_mask, ood_mask=ood_mask)
    row = _row(v, "participation_ratio", "window")
    assert row.signal and row.decisive == "length_confounded"
    (flag,) = [f for f in row.flags if f.name == "length_confounded"]
    assert flag.evidence["auroc_length_matched"] < 0.7 and flag.evidence["pair_frac"] >= 0.25


def test_sae_that_reconstructs_the_shifted_set_badly_is_flagged():
    latents_id = torch.relu(_gauss(N, 1)) * (torch.rand(N, T, D, generator=torch.Generator().manual_seed(4)) < 0.2)
    latents_ood = torch.relu(_gauss(N, 2)) * (torch.rand(N, T, D, generator=torch.Generator().manual_seed(5)) < 0.6)
    sets = {
        "id": {"ev_drop": 0.0, "ce_score": 0.95},
        "ood": {"ev_drop": 0.32, "ce_score": 0.93},  # EV drop over the threshold, CE fine
    }
    fidelity = {"hooks": {RESID: {"sets": sets}}}
    v = _verdict(latents_id, latents_ood, fidelity=fidelity, basis="sae")
    row = _row(v, "l0", basis="sae")
    assert row.signal and row.direction == "denser_is_ood" and row.decisive == "sae_unfaithful"
    assert row.basis_note.startswith("SAE latents")
    (flag,) = [f for f in row.flags if f.name == "sae_unfaithful"]
    assert flag.evidence["sets"]["ood"]["ev_drop"] == pytest.approx(0.32) and flag.threshold["ev_drop"] == 0.1
    sets["ood"]["ev_drop"] = 0.05  # faithful: no flag
    assert _row(_verdict(latents_id, latents_ood, fidelity=fidelity, basis="sae"), "l0", basis="sae").decisive is None


def test_no_signal_is_untrusted_with_its_numbers():
    v = _verdict(_gauss(N, 1), _gauss(N, 2))
    row = _row(v, "hoyer")
    assert not row.signal and row.status == "UNTRUSTED" and row.decisive == "no_signal"
    assert row.flags[0].threshold == {"auroc_min": 0.7, "ci_low_min": 0.5}
    summary = v.hooks[0]
    assert summary.hook == RESID and summary.decisive_counts["no_signal"] >= 1


# --------------------------------------------------------------------- a model and its rotated copy
@pytest.fixture(scope="module")
def rotated_pair(tiny_hooked):
    from test_audit import CONFIG, _suite

    from fer_diag.audit import Audit
    from fer_diag.models import LoadedModel
    from fer_diag.transforms import rotate_residual

    rotated = rotate_residual(tiny_hooked.model, seed=7)
    cfg = CONFIG.model_copy(update={"random_init_control": False, "n_boot": 100})
    loaded_rot = LoadedModel(**{**vars(tiny_hooked), "model": rotated})
    reports = [
        Audit(m, hooks=["blocks.*.hook_resid_post"], suite=_suite(), config=cfg, progress=False).run()
        for m in (tiny_hooked, loaded_rot)
    ]
    return tiny_hooked.model, rotated, reports


def test_rotated_copy_has_identical_logits(rotated_pair):
    model, rotated, _ = rotated_pair
    tokens = torch.randint(0, model.cfg.d_vocab, (3, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(rotated(tokens), model(tokens), atol=1e-4, rtol=1e-4)


def test_rotation_invariant_evidence_is_identical(rotated_pair):
    *_, (a, b) = rotated_pair
    for ra, rb in zip(a.verdict.rows, b.verdict.rows, strict=True):
        assert (ra.hook, ra.metric, ra.reduce, ra.target) == (rb.hook, rb.metric, rb.reduce, rb.target)
        if ra.metric == "participation_ratio":
            assert ra.value == pytest.approx(rb.value, abs=1e-3) and ra.status == rb.status
        assert ra.nll_value == pytest.approx(rb.nll_value, abs=1e-3)


def test_verdicts_agree_where_the_basis_flag_is_not_raised(rotated_pair):
    *_, (a, b) = rotated_pair

    def basis_flagged(r):
        return any(f.name == "basis_dependent" for f in r.flags)

    compared = [
        (ra, rb)
        for ra, rb in zip(a.verdict.rows, b.verdict.rows, strict=True)
        if not (basis_flagged(ra) or basis_flagged(rb))
    ]
    assert compared
    disagree = [
        (ra.metric, ra.reduce, ra.target, ra.status, rb.status) for ra, rb in compared if ra.status != rb.status
    ]
    assert not disagree


def test_verdict_frames_match_the_section(rotated_pair):
    *_, (a, _) = rotated_pair
    rows = a.frame("verdict.rows")
    assert len(rows) == len(a.verdict.rows)
    first = a.verdict.rows[0]
    assert rows.iloc[0]["status"] == first.status and rows.iloc[0]["flags"] == ",".join(f.name for f in first.flags)
    hooks = a.frame("verdict.hooks")
    assert hooks["n_rows"].sum() == len(a.verdict.rows)
    assert (hooks[["TRUSTED", "CAUTION", "UNTRUSTED"]].sum(axis=1) == hooks["n_rows"]).all()


def test_sets_that_barely_share_a_length_are_flagged_as_untestable():
    # every reference window is long, every shifted one short: no length stratum holds both
    id_mask, ood_mask = _full_mask(), _full_mask()
    ood_mask[:, 6:] = False
    v = _verdict(_gauss(N, 1), _gauss(N, 2), id_mask=id_mask, ood_mask=ood_mask)
    row = _row(v, "participation_ratio", "window")
    assert row.signal and row.decisive == "length_confounded"
    (flag,) = [f for f in row.flags if f.name == "length_confounded"]
    assert flag.evidence["testable"] is False and flag.evidence["pair_frac"] < 0.25


# --------------------------------------------------------------------- probe and FER flags
def _probe_row(concept: str, accuracy: float, basis: str = "sae", hook: str = "blocks.1.hook_resid_post"):
    from fer_diag.report.sections import ProbeRow

    half = 0.05
    return ProbeRow(
        concept=concept, hook=hook, basis=basis, n=100, n_classes=4, chance=0.25, accuracy=accuracy,
        accuracy_ci=(accuracy - half, accuracy + half), macro_f1=accuracy, macro_f1_ci=(0, 1),
        control_accuracy=0.26, selectivity=accuracy - 0.26, sparse_accuracy={}, transfer_accuracy=None,
        transfer_drop=None, n_twin=0, top_features={},
    )  # fmt: skip


def _fer_row(concept: str, index: float | None, decodable: bool, basis: str = "sae"):
    from fer_diag.report.sections import FERRow

    comps = dict.fromkeys(
        ("split_count", "absorption", "context_fracture", "graph_fragmentation", "mixed_selectivity", "cross_talk",
         "modularity_deficit"), index)  # fmt: skip
    return FERRow(
        hook="blocks.1.hook_resid_post", basis=basis, concept=concept, level="token", **comps, reasons={},
        index=index, index_ci=None, index_bias=None, components_used=list(comps), n_selective=5, decodable=decodable,
    )  # fmt: skip


def test_probe_flag_fires_only_where_no_concept_is_decodable():
    from types import SimpleNamespace

    from fer_diag.report.sections import ProbeSection
    from fer_diag.verdict import _probe_flag

    def section(*rows):
        return ProbeSection(n_folds=5, ks=[], max_per_class=8, C=1.0, concepts=[], skipped=[], rows=list(rows))

    r = SimpleNamespace(hook="blocks.1.hook_resid_post", basis="sae")
    cfg = VerdictConfig()
    flag = _probe_flag(r, section(_probe_row("a", 0.3), _probe_row("b", 0.35)), cfg)
    assert flag is not None and not flag.blocking and flag.name == "concepts_not_decodable"
    assert flag.evidence["b"]["accuracy"] == 0.35 and flag.threshold == {"decodable_min": cfg.decodable_min}
    assert _probe_flag(r, section(_probe_row("a", 0.3), _probe_row("b", 0.95)), cfg) is None
    assert _probe_flag(r, section(_probe_row("a", 0.3, basis="raw")), cfg) is None  # no probe in this basis
    assert _probe_flag(r, None, cfg) is None


def test_fer_flag_blocks_above_the_threshold_and_names_decodable_but_fractured():
    from types import SimpleNamespace

    from fer_diag.report.sections import FERSection
    from fer_diag.verdict import _fer_flag

    def section(*rows):
        return FERSection(config={}, rows=list(rows), not_scored=[])

    r = SimpleNamespace(hook="blocks.1.hook_resid_post", basis="sae")
    cfg = VerdictConfig(fer_index_max=0.5)
    flag = _fer_flag(r, section(_fer_row("a", 0.7, True), _fer_row("b", 0.2, True)), cfg)
    assert flag is not None and flag.blocking and flag.name == "structure_broken"
    assert "decodable but fractured: a" in flag.message and flag.evidence["a"]["index"] == 0.7
    assert _fer_flag(r, section(_fer_row("a", 0.4, True)), cfg) is None
    assert _fer_flag(r, section(_fer_row("a", 0.9, True, basis="raw")), cfg) is None  # another basis
    assert _fer_flag(r, section(_fer_row("a", None, True)), cfg) is None
    assert "structure_broken" in BLOCKING
