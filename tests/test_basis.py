"""Raw and SAE bases: reading, decoding, and the spliced CE-loss sums."""

from __future__ import annotations

import pytest
import torch
from sae_factory import make_sae
from sae_lens import SAE, GatedSAEConfig, JumpReLUSAEConfig, StandardSAEConfig, TopKSAEConfig

from fer_diag.basis import CESums, RawBasis, SAEBasis, decode
from fer_diag.capture import Capture, token_readouts
from fer_diag.data.suite import SetKind, TextSet, Windows

HOOK0 = "blocks.0.hook_resid_post"
HOOK1 = "blocks.1.hook_resid_post"


def exact_sae(d_in: int, hook: str) -> SAE:
    """x̂ = relu(x) − relu(−x) = x: a perfect reconstruction."""
    sae = make_sae(d_in, hook, d_sae=2 * d_in)
    eye = torch.eye(d_in)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def zero_sae(d_in: int, hook: str) -> SAE:
    """x̂ = 0: as bad as zero-ablation."""
    sae = make_sae(d_in, hook)
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.b_dec.zero_()
    return sae


def windows(n: int, seq: int, vocab: int, seed: int = 0) -> Windows:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(4, vocab, (n, seq), generator=g)
    mask = torch.ones(n, seq, dtype=torch.bool)
    mask[:, 0] = False
    return Windows("w", tokens, mask, torch.arange(n))


@pytest.fixture
def model(tiny_hooked):
    return tiny_hooked.model


@pytest.fixture
def batch(model):
    w = windows(3, 12, model.cfg.d_vocab)
    return next(Capture(model, [HOOK0, HOOK1], batch_size=3).batches(w, TextSet("w", SetKind.IN_DISTRIBUTION)))


def test_raw_basis_is_identity(batch):
    assert RawBasis().read(batch) is batch
    assert RawBasis.name == "raw"


@pytest.mark.parametrize("cfg_cls, kw", [(StandardSAEConfig, {}), (TopKSAEConfig, {"k": 5})])
def test_sae_basis_reads_latents_like_sae_lens(batch, model, cfg_cls, kw):
    d = model.cfg.d_model
    sae = make_sae(d, HOOK1, cfg_cls=cfg_cls, **kw)
    basis = SAEBasis({HOOK1: sae})
    latents = basis.read(batch)
    assert latents.basis == "sae" and latents.hooks == [HOOK1]  # the hook without an SAE is left out
    assert latents.acts[HOOK1].shape == (*batch.acts[HOOK1].shape[:2], 48)
    with torch.no_grad():
        expected = sae.encode(batch.acts[HOOK1])
        torch.testing.assert_close(latents.acts[HOOK1], expected)
        torch.testing.assert_close(basis.decode(HOOK1, latents.acts[HOOK1]), sae.decode(expected))
    assert latents.mask is batch.mask and latents.set_name == batch.set_name


@pytest.mark.parametrize("cfg_cls", [StandardSAEConfig, JumpReLUSAEConfig, GatedSAEConfig, TopKSAEConfig])
@pytest.mark.parametrize("density", [0.02, 0.5])
def test_decode_of_sparse_latents_equals_the_dense_decode(cfg_cls, density, monkeypatch):
    kw = {"k": 5} if cfg_cls is TopKSAEConfig else {}
    sae = make_sae(16, HOOK0, d_sae=200, cfg_cls=cfg_cls, **kw)
    g = torch.Generator().manual_seed(1)
    f = torch.where(torch.rand(40, 200, generator=g) < density, torch.rand(40, 200, generator=g) * 3, 0.0)
    to_csr = torch.Tensor.to_sparse_csr
    made = []
    monkeypatch.setattr(torch.Tensor, "to_sparse_csr", lambda self, *a: made.append(self.shape) or to_csr(self, *a))
    with torch.no_grad():
        got, expected = decode(sae, f), sae.decode(f)
    assert got.layout == torch.strided and got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # sparse only when sparse enough, and never into a decoder that is not a plain product (TopK's)
    assert made == ([f.shape] if density < 0.05 and cfg_cls is not TopKSAEConfig else [])


def test_ce_sums_known_answers(model):
    d = model.cfg.d_model
    w = windows(5, 10, model.cfg.d_vocab, seed=1)
    basis = SAEBasis({HOOK0: exact_sae(d, HOOK0), HOOK1: zero_sae(d, HOOK1)})
    per_window = basis.ce_sums(model, w.tokens[:4], w.mask[:4])
    assert [len(v) for v in per_window.values()] == [4, 4]
    sums = {h: sum(v, CESums()) for h, v in per_window.items()}
    exact, zero = sums[HOOK0], sums[HOOK1]
    assert exact.tokens == zero.tokens == 4 * 9
    with torch.no_grad():
        loss = model(w.tokens[:4], return_type="loss")  # mean NLL of every prediction = the counted ones here
    assert exact.clean / exact.tokens == pytest.approx(float(loss), rel=1e-5)
    assert exact.score() == pytest.approx(1.0, abs=1e-4)  # perfect reconstruction
    assert zero.sae == pytest.approx(zero.ablated, rel=1e-6)  # reconstruction 0 == zero-ablation
    assert zero.score() == pytest.approx(0.0, abs=1e-6)
    assert zero.ablated != pytest.approx(zero.clean)  # the splice changed the forward pass
    with torch.no_grad():
        clean_nll, _, _ = token_readouts(model(w.tokens[:4]), w.tokens[:4])
    _, cache = model.run_with_cache(w.tokens[:4], names_filter=[HOOK0, HOOK1])
    acts = {h: cache[h] for h in (HOOK0, HOOK1)}
    # the capture's clean NLL and activations: no clean pass, and the blocks before the hook are not run again
    reused = {h: sum(v, CESums()) for h, v in basis.ce_sums(model, w.tokens[:4], w.mask[:4], clean_nll, acts).items()}
    for hook in sums:
        assert reused[hook].clean == pytest.approx(sums[hook].clean, rel=1e-6)
        assert reused[hook].sae == pytest.approx(sums[hook].sae, rel=1e-5)
        assert reused[hook].ablated == pytest.approx(sums[hook].ablated, rel=1e-5)


def test_ce_splice_leaves_position_zero_alone(model):
    d = model.cfg.d_model
    w = windows(3, 2, model.cfg.d_vocab, seed=2)  # BOS-like position 0 + one counted token
    sums = sum(SAEBasis({HOOK0: zero_sae(d, HOOK0)}).ce_sums(model, w.tokens, w.mask)[HOOK0], CESums())
    # token 1 is predicted from position 0 alone, which is never replaced: all three CEs agree
    assert sums.tokens == 3
    assert sums.sae == pytest.approx(sums.clean, rel=1e-6)
    assert sums.ablated == pytest.approx(sums.clean, rel=1e-6)
    assert sums.score() is None


def test_cesums_add_and_undefined_score():
    s = CESums(1.0, 2.0, 3.0, 4)
    s += CESums(1.0, 1.0, 1.0, 1)
    assert (s.clean, s.sae, s.ablated, s.tokens) == (2.0, 3.0, 4.0, 5)
    assert s.score() == pytest.approx((4 - 3) / (4 - 2))
    assert CESums(1.0, 1.0, 1.0, 3).score() is None


def test_ce_sums_on_a_bridge_through_an_alias(tiny_bridge):
    model = tiny_bridge.model
    d = model.cfg.d_model
    w = windows(3, 8, model.cfg.d_vocab, seed=3)
    per_window = SAEBasis({HOOK0: exact_sae(d, HOOK0), HOOK1: zero_sae(d, HOOK1)}).ce_sums(model, w.tokens, w.mask)
    sums = {h: sum(v, CESums()) for h, v in per_window.items()}
    assert sums[HOOK0].score() == pytest.approx(1.0, abs=1e-4)
    assert sums[HOOK1].score() == pytest.approx(0.0, abs=1e-6)


def _ablated_reference(model, tokens: torch.Tensor, mask: torch.Tensor, hook: str) -> torch.Tensor:
    """Summed NLL per window with ``hook`` zeroed at the counted positions: one full forward pass per batch."""

    def zero(acts, hook=None):
        return torch.where(mask[..., None], 0.0, acts)

    with torch.no_grad():
        logp = torch.log_softmax(model.run_with_hooks(tokens, fwd_hooks=[(hook, zero)])[:, :-1].float(), -1)
    nll = -logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)
    return torch.where(mask[:, 1:], nll.double(), 0.0).sum(1)


@pytest.mark.parametrize("point", ["hook_resid_pre", "hook_resid_mid", "hook_resid_post"])
@pytest.mark.parametrize("with_acts", [False, True])
def test_ce_ablation_is_shared_across_windows_with_the_same_first_token(tiny_hooked, point, with_acts):
    model = tiny_hooked.model
    hook = f"blocks.1.{point}"
    basis = SAEBasis({hook: zero_sae(model.cfg.d_model, hook)})
    for seed in (4, 5):  # the second batch reuses the first one's ablated pass
        w = windows(4, 9, model.cfg.d_vocab, seed=seed)
        w.tokens[:, 0] = 3  # one BOS-like first token
        acts = None
        if with_acts:  # the captured activations: resid_post resumes after the hook instead of re-running
            _, cache = model.run_with_cache(w.tokens, names_filter=[hook])
            acts = {hook: cache[hook]}
        per_window = basis.ce_sums(model, w.tokens, w.mask, acts=acts)
        got = torch.tensor([s.ablated for s in per_window[hook]], dtype=torch.float64)
        torch.testing.assert_close(got, _ablated_reference(model, w.tokens, w.mask, hook), rtol=1e-5, atol=1e-6)
        assert len(basis._ablated_logp[model]) == 1  # shared by both batches
    # differing first tokens, or position 0 ablated too: each batch runs the ablated pass itself, same answer
    for first, zero_first in (([3, 4, 5], False), ([3, 3, 3], True)):
        w = windows(3, 9, model.cfg.d_vocab, seed=6)
        w.tokens[:, 0] = torch.tensor(first)
        w.mask[:, 0] = zero_first
        got = torch.tensor([s.ablated for s in basis.ce_sums(model, w.tokens, w.mask)[hook]], dtype=torch.float64)
        torch.testing.assert_close(got, _ablated_reference(model, w.tokens, w.mask, hook), rtol=1e-5, atol=1e-6)
    assert len(basis._ablated_logp[model]) == 1


@pytest.mark.parametrize("point", ["hook_resid_mid", "hook_resid_post"])
def test_ce_ablation_on_a_bridge_runs_every_pass(tiny_bridge, point):
    """A bridge's resid_mid alias is the MLP's input, not the stream: nothing is shared there, every answer full."""
    model = tiny_bridge.model
    hook = f"blocks.1.{point}"
    basis = SAEBasis({hook: zero_sae(model.cfg.d_model, hook)})
    w = windows(4, 9, model.cfg.d_vocab, seed=4)
    w.tokens[:, 0] = 3
    got = torch.tensor([s.ablated for s in basis.ce_sums(model, w.tokens, w.mask)[hook]], dtype=torch.float64)
    torch.testing.assert_close(got, _ablated_reference(model, w.tokens, w.mask, hook), rtol=1e-5, atol=1e-6)
    assert model not in basis._ablated_logp


def test_ce_splice_on_a_shortformer_model_resumes_like_a_full_pass():
    """Shortformer models add the positional embedding inside each block: resuming after a hook must keep it."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=2, d_model=16, d_head=8, n_heads=2, d_mlp=32, n_ctx=16, d_vocab=40, act_fn="gelu",
        positional_embedding_type="shortformer", seed=0,
    )  # fmt: skip
    model = HookedTransformer(cfg)
    basis = SAEBasis({HOOK0: exact_sae(16, HOOK0), HOOK1: zero_sae(16, HOOK1)})
    w = windows(3, 10, cfg.d_vocab, seed=7)
    _, cache = model.run_with_cache(w.tokens, names_filter=[HOOK0, HOOK1])
    resumed = basis.ce_sums(model, w.tokens, w.mask, acts={h: cache[h] for h in (HOOK0, HOOK1)})
    full = basis.ce_sums(model, w.tokens, w.mask)
    for hook in (HOOK0, HOOK1):
        for a, b in zip(resumed[hook], full[hook], strict=True):
            assert (a.clean, a.tokens) == (b.clean, b.tokens)
            assert a.sae == pytest.approx(b.sae, rel=1e-5) and a.ablated == pytest.approx(b.ablated, rel=1e-5)
    assert sum(full[HOOK0], CESums()).score() == pytest.approx(1.0, abs=1e-4)  # exact SAE: nothing lost
