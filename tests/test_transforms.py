"""rotate_residual / rotate_sae: same function, rotated residual basis; invariant metrics stay, raw-basis ones move."""

from __future__ import annotations

import warnings

import pytest
import torch
from sae_factory import make_sae
from sae_lens import GatedSAEConfig, JumpReLUSAEConfig, StandardSAEConfig, TopKSAEConfig
from transformer_lens import HookedTransformer, HookedTransformerConfig

from fer_diag.analyzers.sparsity import participation_ratio, token_metrics
from fer_diag.transforms import (
    UnsupportedRotationError,
    haar_orthogonal,
    residual_rotation,
    rotate_residual,
    rotate_sae,
)

HOOK = "blocks.1.hook_resid_post"


def tiny(**kw) -> HookedTransformer:
    """A 2-layer random HookedTransformer with non-trivial (unfolded) norm weights and biases."""
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=24, n_ctx=32, d_head=6, n_heads=4, d_mlp=48, d_vocab=60, seed=None, **kw
    )
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        model = HookedTransformer(cfg)
        for name, p in model.named_parameters():
            if name.endswith(".w"):
                p.data.uniform_(0.5, 1.5)
            elif name.endswith((".b", "b_O", "b_out", "b_in", "b_Q", "b_U")):
                p.data.normal_(0, 0.3)
    return model.eval().requires_grad_(False)


def tokens(d_vocab: int, shape=(3, 20), seed: int = 1) -> torch.Tensor:
    return torch.randint(0, d_vocab, shape, generator=torch.Generator().manual_seed(seed))


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


ARCHS = {
    "rms-rotary-gated-gqa": dict(
        normalization_type="RMS", act_fn="silu", positional_embedding_type="rotary", gated_mlp=True, n_key_value_heads=2
    ),
    "ln-standard-gelu": dict(normalization_type="LN", act_fn="gelu", positional_embedding_type="standard"),
    "ln-parallel-solu": dict(
        normalization_type="LN", act_fn="solu_ln", positional_embedding_type="standard", parallel_attn_mlp=True
    ),
    "no-norm": dict(normalization_type=None, act_fn="relu", positional_embedding_type="standard"),
}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_same_logits_rotated_residual(arch):
    model = tiny(**ARCHS[arch])
    before = state(model)
    norm = model.cfg.normalization_type
    rotated = rotate_residual(model, seed=3)
    q = residual_rotation(rotated).float()
    t = tokens(model.cfg.d_vocab)
    logits, cache = model.run_with_cache(t)
    logits_r, cache_r = rotated.run_with_cache(t)
    assert (logits - logits_r).abs().max() < 1e-4 * logits.abs().max()
    for hook in ("hook_embed", "blocks.0.hook_resid_mid", HOOK, "blocks.0.hook_attn_out", "blocks.1.hook_mlp_out"):
        if hook not in cache.cache_dict:  # no resid_mid with parallel attention + MLP
            continue
        torch.testing.assert_close(cache[hook] @ q, cache_r[hook], atol=1e-5, rtol=1e-4)
    # neurons, per-head outputs and patterns are unchanged (folding keeps them too): only the residual basis moved
    same = ["blocks.0.mlp.hook_pre", "blocks.1.attn.hook_z", "blocks.1.attn.hook_pattern"]
    if model.cfg.act_fn != "solu_ln":  # folding SoLU's own LayerNorm weights into W_out changes its hook_post
        same.append("blocks.0.mlp.hook_post")
    for hook in same:
        torch.testing.assert_close(cache[hook], cache_r[hook], atol=1e-5, rtol=1e-4)
    # input untouched: same config, same weights
    assert model.cfg.normalization_type == norm
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert residual_rotation(model) is None
    if norm == "LN":  # LNPre centres: Q must fix the all-ones direction
        torch.testing.assert_close(q.double().sum(1), torch.ones(q.shape[0], dtype=torch.float64), atol=1e-5, rtol=0)


def test_folded_tiny_llama(tiny_hooked):
    """The conftest's Llama (converted with folded RMSNorm, grouped-query attention), as the audit loads it."""
    model = tiny_hooked.model
    rotated = rotate_residual(model, seed=0)
    assert rotated.tokenizer is model.tokenizer and rotated is not model
    t = tokens(model.cfg.d_vocab, (4, 24))
    logits, cache = model.run_with_cache(t)
    logits_r, cache_r = rotated.run_with_cache(t)
    assert (logits - logits_r).abs().max() < 1e-4 * logits.abs().max()
    q = residual_rotation(rotated).float()
    torch.testing.assert_close(cache[HOOK] @ q, cache_r[HOOK], atol=1e-5, rtol=1e-4)

    # rotation-invariant participation ratio unchanged; raw-basis Hoyer moves
    x, x_r = cache[HOOK][:, 1:], cache_r[HOOK][:, 1:]
    torch.testing.assert_close(participation_ratio(x), participation_ratio(x_r), atol=1e-4, rtol=1e-4)
    h, h_r = x.reshape(-1, x.shape[-1]), x_r.reshape(-1, x.shape[-1])
    hoyer, hoyer_r = token_metrics(h)["hoyer"], token_metrics(h_r)["hoyer"]
    assert (hoyer - hoyer_r).abs().mean() > 0.02
    torch.testing.assert_close(token_metrics(h)["l2_norm"], token_metrics(h_r)["l2_norm"], atol=1e-4, rtol=1e-4)


def test_seeded_rotation():
    model = tiny(**ARCHS["rms-rotary-gated-gqa"])
    a, b, c = (residual_rotation(rotate_residual(model, seed=s, check=False)) for s in (7, 7, 8))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    torch.testing.assert_close(a @ a.T, torch.eye(a.shape[0], dtype=torch.float64))
    torch.testing.assert_close(a, haar_orthogonal(24, 7))
    # an explicit rotation is used as given
    q = haar_orthogonal(24, 11)
    torch.testing.assert_close(residual_rotation(rotate_residual(model, rotation=q)), q)


def test_haar_orthogonal():
    q = haar_orthogonal(16, 0)
    torch.testing.assert_close(q.T @ q, torch.eye(16, dtype=torch.float64))
    f = haar_orthogonal(16, 0, fix_ones=True)
    torch.testing.assert_close(f.T @ f, torch.eye(16, dtype=torch.float64))
    torch.testing.assert_close(f @ torch.ones(16, dtype=torch.float64), torch.ones(16, dtype=torch.float64))
    # Haar, not a near-identity: the mean diagonal entry of Haar O(d) is 0 ± O(1/√d)
    diag = torch.stack([haar_orthogonal(16, s).diagonal() for s in range(200)])
    assert abs(float(diag.mean())) < 0.03


@pytest.mark.parametrize(
    ("cfg_cls", "kw"),
    [(StandardSAEConfig, {}), (TopKSAEConfig, {"k": 6}), (JumpReLUSAEConfig, {}), (GatedSAEConfig, {})],
)
def test_rotate_sae_same_latents(cfg_cls, kw):
    d = 24
    sae = make_sae(d, HOOK, d_sae=64, cfg_cls=cfg_cls, **kw)
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.5)
        if hasattr(sae, "threshold"):
            sae.threshold.uniform_(0.0, 0.05)
    q = haar_orthogonal(d, 5)
    rotated = rotate_sae(sae, q)
    x = torch.randn(50, d, generator=torch.Generator().manual_seed(0))
    xr = x @ q.float()
    with torch.no_grad():
        f, fr = sae.encode(x), rotated.encode(xr)
        assert (f > 0).float().mean() > 0.02  # some latents fire
        torch.testing.assert_close(f, fr, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(sae.decode(f) @ q.float(), rotated.decode(fr), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(sae.W_dec, make_sae(d, HOOK, d_sae=64, cfg_cls=cfg_cls, **kw).W_dec)  # untouched


def test_rotated_model_and_sae_give_same_latents(tiny_hooked):
    model = tiny_hooked.model
    sae = make_sae(model.cfg.d_model, HOOK, d_sae=64)
    rotated = rotate_residual(model, seed=2)
    sae_r = rotate_sae(sae, residual_rotation(rotated))
    t = tokens(model.cfg.d_vocab, (2, 16))
    _, cache = model.run_with_cache(t, names_filter=HOOK)
    _, cache_r = rotated.run_with_cache(t, names_filter=HOOK)
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(cache[HOOK]), sae_r.encode(cache_r[HOOK]), atol=1e-4, rtol=1e-4)


def test_rotate_sae_errors():
    sae = make_sae(24, HOOK)
    with pytest.raises(ValueError, match="orthogonal"):
        rotate_sae(sae, 2 * torch.eye(24))
    with pytest.raises(ValueError, match=r"\[24, 24\]"):
        rotate_sae(sae, torch.eye(16))
    ln = make_sae(24, HOOK, normalize_activations="layer_norm")
    with pytest.raises(UnsupportedRotationError, match="all-ones"):
        rotate_sae(ln, haar_orthogonal(24, 0))
    rotate_sae(ln, haar_orthogonal(24, 0, fix_ones=True))  # fine


def test_errors_bridge_and_unsupported(tiny_bridge):
    with pytest.raises(UnsupportedRotationError, match="HookedTransformer"):
        rotate_residual(tiny_bridge.model)
    with pytest.raises(UnsupportedRotationError, match="HookedTransformer"):
        rotate_residual(torch.nn.Linear(3, 3))
    with pytest.raises(UnsupportedRotationError, match="all-ones"):
        rotate_residual(tiny(**ARCHS["ln-standard-gelu"]), rotation=haar_orthogonal(24, 0))
    post = tiny(**ARCHS["rms-rotary-gated-gqa"])
    post.cfg.use_normalization_before_and_after = True  # Gemma-2/3 style sublayer-output norms
    with pytest.raises(UnsupportedRotationError, match="use_normalization_before_and_after"):
        rotate_residual(post)
    assert issubclass(UnsupportedRotationError, ValueError)


def test_unknown_parameter_raises():
    model = tiny(**ARCHS["rms-rotary-gated-gqa"])
    model.blocks[0].mlp.register_buffer("mystery", torch.zeros(24))
    with pytest.raises(UnsupportedRotationError, match=r"blocks\.0\.mlp\.mystery"):
        rotate_residual(model)


def test_logit_check_catches_a_missed_feature(monkeypatch):
    from fer_diag import transforms

    model = tiny(**ARCHS["rms-rotary-gated-gqa"])
    monkeypatch.setattr(transforms, "_READERS", transforms.re.compile(r"^unembed\.W_U$"))
    monkeypatch.setattr(transforms, "_UNTOUCHED", transforms.re.compile(r".*"))
    with pytest.raises(UnsupportedRotationError, match="logits differ"):
        rotate_residual(model)


@pytest.mark.integration
def test_smollm2_rotation_preserves_logits(smollm2):
    model = smollm2.model
    rotated = rotate_residual(model, seed=0)
    t = torch.tensor([[1, *smollm2.tokenizer("The quick brown fox jumps over the lazy dog. 12 + 30 = 42").input_ids]])
    with torch.no_grad():
        logits, cache = model.run_with_cache(t, names_filter="blocks.15.hook_resid_post")
        logits_r, cache_r = rotated.run_with_cache(t, names_filter="blocks.15.hook_resid_post")
    diff = float((logits - logits_r).abs().max())
    print(f"SmolLM2 rotate_residual: max |Δ logit| = {diff:.2e} (max |logit| {float(logits.abs().max()):.1f})")
    assert diff < 1e-3 * float(logits.abs().max())
    assert diff < 1e-2
    q = residual_rotation(rotated).float()
    h, h_r = cache["blocks.15.hook_resid_post"], cache_r["blocks.15.hook_resid_post"]
    assert float((h @ q - h_r).abs().max()) < 1e-4 * float(h.abs().max())
