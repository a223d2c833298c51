"""Capture: hook resolution, early stop, per-token readouts, NaN guard, HookedTransformer == TransformerBridge."""

import copy
import math

import pytest
import torch

from fer_diag import capture
from fer_diag.capture import (
    ActivationValueError,
    Capture,
    HookNameError,
    per_position,
    resolve_hooks,
    stop_layer,
    token_readouts,
    unembed_readouts,
)
from fer_diag.data.suite import SetKind, TextSet, tokenize_windows
from fer_diag.errors import FerDiagError, HookKindError

TEXTS = [
    "The cat sat on the mat and looked at the door for a long while.",
    "A quiet river runs past the old mill where the children play.",
    "Every morning the baker opens the shop before the sun comes up.",
]


@pytest.fixture(scope="module")
def windows(tiny_tokenizer):
    ts = TextSet("id", SetKind.IN_DISTRIBUTION, texts=TEXTS)
    return ts, tokenize_windows(ts, tiny_tokenizer, seq_len=24, bos_token_id=1, pad_token_id=2, min_tokens=4)


def test_wildcard_expands_to_every_layer(tiny_hooked):
    hooks = resolve_hooks(tiny_hooked.model, ["blocks.*.hook_resid_post"])
    assert hooks == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


def test_unknown_hook_lists_close_matches(tiny_hooked):
    with pytest.raises(HookNameError) as err:
        resolve_hooks(tiny_hooked.model, ["blocks.0.hook_resid_pst"])
    assert "blocks.0.hook_resid_post" in str(err.value)


def test_bridge_alias_resolves(tiny_bridge):
    assert resolve_hooks(tiny_bridge.model, ["blocks.1.hook_resid_post"]) == ["blocks.1.hook_resid_post"]


def test_stop_layer_is_after_deepest_hook(tiny_hooked):
    assert stop_layer(tiny_hooked.model, ["blocks.0.hook_resid_post"]) == 1
    assert stop_layer(tiny_hooked.model, ["blocks.1.hook_resid_post"]) == 2  # every block, no unembedding
    assert stop_layer(tiny_hooked.model, ["ln_final.hook_normalized"]) is None


@pytest.mark.parametrize("which", ["tiny_hooked", "tiny_bridge"])
def test_stopping_after_the_last_block_captures_what_the_full_model_does(which, request, windows):
    loaded = request.getfixturevalue(which)
    ts, w = windows
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    full = next(Capture(loaded.model, hooks, batch_size=4, need_logits=True).batches(w, ts))
    stopped = next(Capture(loaded.model, hooks, batch_size=4, need_logits=False).batches(w, ts))
    assert stopped.token_nll is None  # no logits asked for: no readouts
    for h in hooks:
        torch.testing.assert_close(stopped.acts[h], full.acts[h])


def test_hooked_and_bridge_capture_the_same_activations(tiny_hooked, tiny_bridge, windows):
    ts, w = windows
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    a = list(Capture(tiny_hooked.model, hooks, batch_size=2, need_logits=True).batches(w, ts))
    b = list(Capture(tiny_bridge.model, hooks, batch_size=2, need_logits=True).batches(w, ts))
    assert len(a) == len(b) == 2
    for x, y in zip(a, b, strict=True):
        for h in hooks:
            torch.testing.assert_close(x.acts[h][x.mask], y.acts[h][y.mask], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(x.token_nll[:, 1:], y.token_nll[:, 1:], atol=1e-4, rtol=1e-4)


def test_batches_carry_set_identity_and_resume_start(tiny_hooked, windows):
    ts, w = windows
    cap = Capture(tiny_hooked.model, ["blocks.0.hook_resid_post"], batch_size=2)
    batches = list(cap.batches(w, ts, start=1))
    assert [b.seq_index.tolist() for b in batches] == [[1, 2]]
    assert batches[0].set_name == "id" and batches[0].kind is SetKind.IN_DISTRIBUTION
    assert batches[0].token_nll is None  # no logits asked for


def test_token_readouts_match_hand_computation():
    logits = torch.tensor([[[0.0, math.log(3.0)], [math.log(3.0), 0.0], [0.0, 0.0]]])
    tokens = torch.tensor([[0, 1, 0]])
    nll, ent, maxp = token_readouts(logits, tokens)
    assert math.isnan(nll[0, 0])
    # position 1 is predicted from position 0: p = (1/4, 3/4), token 1 → −ln(3/4)
    assert nll[0, 1].item() == pytest.approx(-math.log(0.75), abs=1e-6)
    assert nll[0, 2].item() == pytest.approx(-math.log(0.75), abs=1e-6)
    assert maxp[0, 1].item() == pytest.approx(0.75, abs=1e-6)
    assert ent[0, 1].item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), abs=1e-6)


def test_token_readouts_do_not_depend_on_the_chunk_size():
    g = torch.Generator().manual_seed(0)
    logits, tokens = torch.randn(3, 9, 50, generator=g) * 4, torch.randint(0, 50, (3, 9), generator=g)
    whole = token_readouts(logits, tokens, rows=10_000)
    for rows in (1, 5, 7):  # row blocks inside and across sequences
        for chunk in (1, 7, 13, None):  # vocabulary chunks: the running maximum moves, a short last chunk
            for a, b in zip(token_readouts(logits, tokens, rows=rows, chunk=chunk), whole, strict=True):
                torch.testing.assert_close(a, b, equal_nan=True)
    logp = torch.log_softmax(logits[:, :-1], -1)
    torch.testing.assert_close(whole[0][:, 1:], -logp.gather(-1, tokens[:, 1:, None]).squeeze(-1))
    torch.testing.assert_close(whole[1][:, 1:], -(logp.exp() * logp).sum(-1))
    torch.testing.assert_close(whole[2][:, 1:], logp.exp().amax(-1))


def test_token_readouts_with_minus_infinity_logits_and_no_tokens():
    logits = torch.tensor([[[-math.inf, -math.inf, 0.0, math.log(3.0)], [0.0] * 4]])
    tokens = torch.tensor([[0, 3]])
    for chunk in (1, 2, 4):  # the −inf logits alone in a chunk, or next to finite ones
        nll, ent, maxp = token_readouts(logits, tokens, chunk=chunk)
        assert nll[0, 1].item() == pytest.approx(-math.log(0.75), abs=1e-6)
        assert maxp[0, 1].item() == pytest.approx(0.75, abs=1e-6)
        assert ent[0, 1].item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), abs=1e-6)
    empty = token_readouts(torch.zeros(0, 5, 4), torch.zeros(0, 5, dtype=torch.long))
    assert [tuple(x.shape) for x in empty] == [(0, 5)] * 3


@pytest.mark.parametrize("soft_cap", [0.0, 3.0])
def test_unembed_readouts_equal_the_readouts_of_the_logits(tiny_hooked, monkeypatch, soft_cap):
    model = copy.deepcopy(tiny_hooked.model)
    model.cfg.output_logits_soft_cap = soft_cap
    tokens = torch.randint(0, model.cfg.d_vocab, (3, 11), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        want = token_readouts(model(tokens), tokens)
        resid = model(tokens, stop_at_layer=model.cfg.n_layers)
    monkeypatch.setattr(capture, "READOUT_ROWS", 7)
    for chunk in (7, model.cfg.d_vocab):  # a short last chunk, and one chunk
        for a, b in zip(unembed_readouts(model, resid, tokens, chunk=chunk), want, strict=True):
            torch.testing.assert_close(a, b, equal_nan=True)


def test_capture_readouts_do_not_depend_on_keeping_the_logits(tiny_hooked, windows):
    ts, w = windows
    hooks = ["blocks.0.hook_resid_post"]
    chunked = Capture(tiny_hooked.model, hooks, batch_size=2, need_logits=True)
    kept = Capture(tiny_hooked.model, hooks, batch_size=2, keep_logits=True)
    assert chunked._chunked_unembed and not kept._chunked_unembed
    assert not Capture(tiny_hooked.model, ["ln_final.hook_normalized"], need_logits=True)._chunked_unembed
    for a, b in zip(chunked.batches(w, ts), kept.batches(w, ts), strict=True):
        torch.testing.assert_close(a.acts, b.acts)
        for name in ("token_nll", "token_entropy", "token_maxprob"):
            torch.testing.assert_close(getattr(a, name), getattr(b, name), equal_nan=True)


def test_nan_activations_raise_with_fix(tiny_hooked, windows):
    ts, w = windows
    model = copy.deepcopy(tiny_hooked.model)
    with torch.no_grad():
        model.embed.W_E[:] = float("nan")
    cap = Capture(model, ["blocks.0.hook_resid_post"], batch_size=4)
    with pytest.raises(ActivationValueError, match="NaN/Inf"):
        next(cap.batches(w, ts))


@pytest.mark.parametrize("fixture", ["tiny_hooked", "tiny_bridge"])
def test_per_head_hooks_are_flattened_to_one_vector_per_position(fixture, windows, request):
    ts, w = windows
    model = request.getfixturevalue(fixture).model
    n_heads, n_kv, d_head = model.cfg.n_heads, model.cfg.n_key_value_heads, model.cfg.d_head
    hooks = ["blocks.0.attn.hook_z", "blocks.0.attn.hook_q", "blocks.0.attn.hook_k"]
    batch = next(Capture(model, hooks, batch_size=2).batches(w, ts))
    assert list(batch.acts["blocks.0.attn.hook_z"].shape) == [2, w.tokens.shape[1], n_heads * d_head]
    assert batch.acts["blocks.0.attn.hook_k"].shape[-1] == n_kv * d_head
    _, cache = model.run_with_cache(w.tokens[:2], names_filter=["blocks.0.attn.hook_z"])
    z = cache["blocks.0.attn.hook_z"]  # [batch, pos, head, d_head]: head h is columns h·d_head … (h+1)·d_head
    torch.testing.assert_close(batch.acts["blocks.0.attn.hook_z"][..., d_head : 2 * d_head], z[:, :, 1])


@pytest.mark.parametrize("hook", ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_attn_scores"])
def test_hooks_without_one_vector_per_position_are_refused_up_front(tiny_hooked, hook):
    with pytest.raises(HookKindError, match="Supported: per-position vectors") as err:
        Capture(tiny_hooked.model, [hook])
    assert hook in str(err.value) and "hook_z" in str(err.value)
    assert isinstance(err.value, FerDiagError)
    with pytest.raises(HookKindError):
        resolve_hooks(tiny_hooked.model, ["blocks.*.attn.hook_pattern"])  # a pattern matching only those


def test_wildcards_leave_unsupported_hooks_out(tiny_hooked):
    hooks = resolve_hooks(tiny_hooked.model, ["blocks.0.attn.hook_*"])
    assert "blocks.0.attn.hook_z" in hooks
    assert not any(h.endswith(("hook_pattern", "hook_attn_scores")) for h in hooks)


def test_other_shapes_fail_with_the_supported_kinds():
    with pytest.raises(HookKindError, match=r"shape \[2, 4, 5, 5\] for \[2, 6\] tokens.*Supported"):
        per_position("blocks.0.attn.hook_other", torch.zeros(2, 4, 5, 5), torch.Size([2, 6]))
    assert per_position("x", torch.zeros(2, 6, 3, 4, dtype=torch.float64), torch.Size([2, 6])).dtype == torch.float32


def test_hook_errors_are_user_errors():
    assert issubclass(HookNameError, FerDiagError) and issubclass(HookNameError, KeyError)
    assert issubclass(ActivationValueError, FerDiagError) and issubclass(ActivationValueError, ValueError)


@pytest.mark.parametrize("which", ["tiny_hooked", "tiny_bridge"])
def test_token_budget_packs_short_windows_and_reads_what_full_batches_do(which, request, tiny_tokenizer):
    """token_budget: batches hold rows × width ≤ budget, cut after their last counted token; same activations."""
    loaded = request.getfixturevalue(which)
    ts = TextSet("id", SetKind.IN_DISTRIBUTION, texts=["a b c d e f", "the cat", "a dog", *TEXTS])
    w = tokenize_windows(ts, tiny_tokenizer, seq_len=32, bos_token_id=1, pad_token_id=2, min_tokens=1)
    w = w.select(torch.argsort(w.mask.sum(1), stable=True))  # shortest first, as concept windows come
    hooks = ["blocks.1.hook_resid_post"]
    full = {
        int(i): a
        for b in Capture(loaded.model, hooks, batch_size=2).batches(w, ts)
        for i, a in zip(b.seq_index, b.acts[hooks[0]], strict=True)
    }
    budget = 40
    packed = list(Capture(loaded.model, hooks, token_budget=budget).batches(w, ts))
    assert sum(len(b.seq_index) for b in packed) == len(w) and len(packed) < len(w)
    assert max(len(b.seq_index) for b in packed) > 2  # short windows go many to a pass
    for b in packed:
        assert b.tokens.numel() <= budget or len(b.seq_index) == 1
        assert b.mask[:, -1].any()  # cut after the batch's last counted position
        for i, row, m in zip(b.seq_index.tolist(), b.acts[hooks[0]], b.mask, strict=True):
            n = len(m)
            torch.testing.assert_close(row[m], full[i][:n][m])
    resumed = list(Capture(loaded.model, hooks, token_budget=budget).batches(w, ts, start=3))
    assert resumed[0].seq_index[0] == w.index[3] and sum(len(b.seq_index) for b in resumed) == len(w) - 3
