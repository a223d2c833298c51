"""Massive activations: detection by hand, analyzer statistics, merging, and the scaffold intervention."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from fer_diag.analyzers.massive import (
    BIN_RATIO,
    N_BINS,
    MassiveAnalyzer,
    abs_bins,
    detect_massive,
    histogram_median,
    massive_dims,
)
from fer_diag.capture import ActivationBatch, token_readouts
from fer_diag.data.suite import SetKind
from fer_diag.scaffold import scaffold_intervention

D = 16


def make_batch(acts: dict[str, torch.Tensor], tokens: torch.Tensor, mask: torch.Tensor, start: int = 0, basis="raw"):
    return ActivationBatch(
        set_name="id",
        kind=SetKind.IN_DISTRIBUTION,
        level=None,
        tokens=tokens,
        mask=mask,
        seq_index=torch.arange(start, start + tokens.shape[0]),
        acts=acts,
        basis=basis,
    )


def flat(b: int, t: int, value: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations with |h| = value everywhere (median = value), and a mask without position 0."""
    acts = torch.full((b, t, D), value)
    acts[..., ::2] *= -1
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[:, 0] = False
    return acts, mask


def test_detect_by_hand():
    acts, mask = flat(3, 8)  # median |h| = 0.5 → massive: |h| > 100 and ≥ 500
    acts[0, 0, 3] = -600.0  # position 0 (excluded by the mask, still checked): massive
    acts[1, 5, 4] = 400.0  # > 100 but < 1000 × median: not massive
    acts[1, 6, 6] = 501.0  # massive at a later position
    acts[2, 2, 7] = 90.0  # below the absolute threshold
    mask[2, 6:] = False
    acts[2, 7, 1] = 1e5  # padding: never counted
    hits = detect_massive(acts, mask)
    assert hits.median == 0.5
    assert sorted(hits) == [(0, 0, 3, -600.0), (1, 6, 6, 501.0)]
    assert [h.dim for h in hits] == hits.dims.tolist()
    none = detect_massive(*flat(2, 4))
    assert len(none) == 0 and math.isnan(none.median)
    # a looser ratio admits the 400
    assert (1, 5, 4, 400.0) in list(detect_massive(acts, mask, ratio=500.0))


def test_analyzer_statistics_by_hand():
    acts, mask = flat(3, 6)
    tokens = torch.arange(18).reshape(3, 6) % 5
    tokens[:, 0] = 1  # BOS id
    tokens[:, 4] = 2  # a delimiter
    acts[:, 0, 3] = torch.tensor([1000.0, 1200.0, 800.0])  # input-agnostic-ish at BOS
    acts[0, 4, 3] = 600.0  # also at a delimiter of window 0 (smaller than its BOS value)
    acts[2, 4, 9] = -700.0
    late = {"blocks.5.hook_resid_post": acts, "blocks.2.hook_resid_post": flat(3, 6)[0]}
    an = MassiveAnalyzer()
    an.update(make_batch(late, tokens, mask))
    res = an.compute()
    assert res.first_layer == 5 and res.first_hook == "blocks.5.hook_resid_post"
    assert res.hooks["blocks.2.hook_resid_post"].n_hits == 0
    hook = res.hooks["blocks.5.hook_resid_post"]
    assert (hook.layer, hook.n_seqs, hook.n_positions, hook.n_hits, hook.n_hit_tokens) == (5, 3, 18, 5, 5)
    assert hook.median_abs == pytest.approx(0.5, rel=BIN_RATIO - 1)
    d3, d9 = hook.dims
    assert (d3.dim, d3.n_hits, d3.n_seqs, d3.hits_first_position, d3.hits_later_positions) == (3, 4, 3, 3, 1)
    assert d3.seq_frac == 1.0 and d3.max_abs == 1200.0
    assert d3.top_tokens == [(1, 3), (2, 1)]
    # per window the largest hit: 1000, 1200, 800 → mean 1000, population std √(2·200²/3)
    assert d3.value_mean == pytest.approx(1000.0)
    assert d3.value_cv == pytest.approx(math.sqrt(2 * 200**2 / 3) / 1000)
    assert (d9.dim, d9.n_hits, d9.value_mean, d9.value_cv, d9.seq_frac) == (9, 1, -700.0, 0.0, pytest.approx(1 / 3))
    rest = (D - 1) * 0.25  # the other coordinates: 15 × 0.5²
    shares = [v**2 / (v**2 + rest) for v in (1000.0, 1200.0, 800.0, 600.0, 700.0)]
    assert hook.energy_share_mean == pytest.approx(sum(shares) / 5)
    assert hook.energy_share_max == pytest.approx(max(shares))
    assert massive_dims(res) == {"blocks.5.hook_resid_post": [3, 9], "blocks.2.hook_resid_post": []}
    assert massive_dims(res, min_seq_frac=0.5) == {"blocks.5.hook_resid_post": [3], "blocks.2.hook_resid_post": []}
    json.dumps(res.to_dict())


def test_other_bases_are_ignored():
    acts, mask = flat(2, 4)
    acts[:, 0, 1] = 1e4
    an = MassiveAnalyzer()
    an.update(make_batch({"blocks.0.hook_resid_post": acts}, torch.zeros(2, 4, dtype=torch.long), mask, basis="sae"))
    assert an.compute().hooks == {}


def test_merge_equals_one_pass():
    torch.manual_seed(0)
    batches = []
    for start in (0, 4, 8):
        acts = torch.randn(4, 7, D)
        acts[:, 0, 2] = 2e4 + 100 * torch.randn(4)
        acts[1, 3, 5] = -3e3
        mask = torch.ones(4, 7, dtype=torch.bool)
        mask[:, 0] = False
        tokens = torch.randint(0, 9, (4, 7))
        batches.append(make_batch({"blocks.1.hook_mlp_out": acts}, tokens, mask, start))
    one, left, right = MassiveAnalyzer(), MassiveAnalyzer(), MassiveAnalyzer()
    for b in batches:
        one.update(b)
    left.update(batches[0])
    right.update(batches[2])
    right.update(batches[1])
    merged = left.merge(right).compute().to_dict()
    single = one.compute().to_dict()
    assert merged["hooks"].keys() == single["hooks"].keys()
    got, want = merged["hooks"]["blocks.1.hook_mlp_out"], single["hooks"]["blocks.1.hook_mlp_out"]
    for key in ("n_seqs", "n_positions", "n_hits", "n_hit_tokens"):
        assert got[key] == want[key]
    for key in ("median_abs", "threshold", "energy_share_mean", "energy_share_max"):
        assert got[key] == pytest.approx(want[key], rel=1e-9)
    for a, b in zip(got["dims"], want["dims"], strict=True):
        assert {k: v for k, v in a.items() if k not in ("value_mean", "value_cv")} == {
            k: v for k, v in b.items() if k not in ("value_mean", "value_cv")
        }
        assert a["value_mean"] == pytest.approx(b["value_mean"], rel=1e-9)
        assert a["value_cv"] == pytest.approx(b["value_cv"], rel=1e-6)
    with pytest.raises(ValueError, match="parameters"):
        MassiveAnalyzer().merge(MassiveAnalyzer(ratio=10.0))


# --------------------------------------------------------------------------- intervention on a tiny model
@pytest.fixture(scope="module")
def planted_model():
    """A tiny random model whose block-0 residual carries a planted massive dim at the first token."""
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, d_vocab=50, n_ctx=32, act_fn="gelu",
        normalization_type="LN", seed=0,
    )  # fmt: skip
    model = HookedTransformer(cfg).eval()
    with torch.no_grad():
        model.W_U.mul_(5.0)  # sharpen the output distribution so that the loss reacts to the first token

    def plant(act, hook):
        first = act[:, 0, 0].sign()  # depends on the input: ±1 around 5000
        act[:, 0, 3] = 5000.0 + first
        return act

    model.blocks[0].hook_resid_post.add_hook(plant, is_permanent=True)
    return model


def test_scaffold_intervention_on_a_planted_dim(planted_model):
    torch.manual_seed(1)
    tokens = torch.randint(0, 50, (6, 16))
    hook = "blocks.0.hook_resid_post"
    _, cache = planted_model.run_with_cache(tokens, names_filter=[hook])
    mask = torch.ones(tokens.shape, dtype=torch.bool)
    mask[:, 0] = False
    an = MassiveAnalyzer()
    an.update(make_batch({hook: cache[hook]}, tokens, mask))
    res = an.compute()
    assert massive_dims(res)[hook] == [3]
    dim = res.hooks[hook].dims[0]
    assert dim.hits_first_position == 6 and dim.hits_later_positions == 0
    assert dim.value_cv < 1e-3  # input-agnostic

    out = scaffold_intervention(planted_model, tokens, hook, [3], [0], [dim.value_mean])
    assert out["n_positions"] == 6
    assert abs(out["delta_mean"]) < 1e-3 < abs(out["delta_zero"])
    assert abs(out["delta_zero"]) > 100 * abs(out["delta_mean"])
    # the same through a [B, T] mask of positions
    where = torch.zeros(tokens.shape, dtype=torch.bool)
    where[:, 0] = True
    again = scaffold_intervention(planted_model, tokens, hook, [3], where, torch.tensor([dim.value_mean]))
    assert again["nll_zero"] == pytest.approx(out["nll_zero"])
    with torch.no_grad():  # the capture's clean per-token NLL stands in for the clean pass
        clean_nll = token_readouts(planted_model(tokens), tokens)[0]
    reused = scaffold_intervention(planted_model, tokens, hook, [3], [0], [dim.value_mean], clean_nll=clean_nll)
    assert reused["nll_clean"] == pytest.approx(out["nll_clean"], rel=1e-6)
    assert reused["nll_zero"] == out["nll_zero"]
    assert planted_model.blocks[0].hook_resid_post.fwd_hooks  # the permanent hook survived the runs
    with pytest.raises(ValueError, match="one mean value per dim"):
        scaffold_intervention(planted_model, tokens, hook, [3, 4], [0], [1.0])


def test_histogram_median_matches_numpy_within_a_bin():
    rng = np.random.default_rng(0)
    for values in (rng.lognormal(0, 2, 10_001), rng.uniform(0, 3, 999), np.r_[np.zeros(10), rng.exponential(1, 11)]):
        hist = np.bincount(abs_bins(values), minlength=N_BINS)
        want = np.sort(values)[(len(values) - 1) // 2]
        assert histogram_median(hist) == pytest.approx(want, rel=BIN_RATIO - 1, abs=1e-12)


def test_result_does_not_depend_on_how_windows_are_batched():
    """Regression: the median was taken per batch, so a value could be massive in one batching and not another."""
    g = torch.Generator().manual_seed(3)
    acts = torch.randn(8, 6, D, generator=g).abs() * 0.1
    acts[4:] *= 100.0  # windows 4..7 have a 100× larger typical |h|
    acts[5, 0, 2] = 5000.0  # ≥ 1000 × the global median, < 1000 × the median of windows 4..7 alone
    mask = torch.ones(8, 6, dtype=torch.bool)
    mask[:, 0] = False
    tokens = torch.zeros(8, 6, dtype=torch.long)
    hook = "blocks.0.hook_resid_post"
    results = []
    for size in (8, 4, 3):
        an = MassiveAnalyzer()
        for lo in range(0, 8, size):
            an.update(make_batch({hook: acts[lo : lo + size]}, tokens[lo : lo + size], mask[lo : lo + size], lo))
        results.append(an.compute().to_dict())
    assert results[0] == results[1] == results[2]
    assert massive_dims(MassiveAnalyzer().compute()) == {}
    assert [d["dim"] for d in results[0]["hooks"][hook]["dims"]] == [2]


def test_tally_adds_and_ranks_like_a_counter():
    from collections import Counter

    from fer_diag.analyzers.massive import Tally

    rng = np.random.default_rng(0)
    empty = Tally.of(np.array([], dtype=np.int64))
    for n_a, n_b in ((0, 0), (0, 5), (7, 0), (50, 30), (200, 200)):
        a, b = rng.integers(0, 40, n_a), rng.integers(20, 60, n_b)  # overlapping and disjoint ids
        got = Tally.of(a) + Tally.of(b)
        want = Counter(a.tolist()) + Counter(b.tolist())
        assert dict(zip(got.ids.tolist(), got.sums[:, 0].tolist(), strict=True)) == dict(want)
        assert list(got.ids) == sorted(want)  # kept sorted and unique
        ranked = sorted(want.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
        assert got.top(5) == ranked  # most frequent first, ties by id
        assert (got + empty).top(100) == got.top(100)
    ids = np.array([5, 1, 5, 3, 1, 5])
    summed = Tally.of(ids, np.array([1, 2, 3, 4, 5, 6]), np.array([1.0, 2, 3, 4, 5, 6]))
    assert summed.ids.tolist() == [1, 3, 5] and summed.sums[:, 0].tolist() == [7, 4, 10]
    assert summed.maxes[:, 0].tolist() == [5, 4, 6]
    x = Tally.of(np.array([1, 2]), maxes=np.array([3.0, 1.0]))
    both = x + Tally.of(np.array([4, 2]), maxes=np.array([2.0, 5.0]))
    assert both.ids.tolist() == [1, 2, 4] and both.sums[:, 0].tolist() == [1, 2, 1]
    assert both.maxes[:, 0].tolist() == [3, 5, 2]  # the larger maximum where both have an id
    none = Tally.of(np.zeros(0, dtype=np.int64), np.zeros((0, 1)), np.zeros(0))  # float sums: added to int ones
    assert none.sums.shape == (0, 1) and (none + both).ids.tolist() == [1, 2, 4]
