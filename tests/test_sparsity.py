"""Sparsity metrics and SparsityAnalyzer: hand-computed answers, masking, rotation, merging, bounds."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from fer_diag.analyzers.sparsity import (
    METRIC_SENSE,
    TOKEN_METRICS,
    SparsityAnalyzer,
    participation_ratio,
    token_metrics,
)
from fer_diag.capture import ActivationBatch
from fer_diag.data.suite import SetKind

HOOK = "blocks.0.hook_resid_post"


def batch(
    acts: torch.Tensor,
    mask: torch.Tensor | None = None,
    set_name: str = "id",
    kind: SetKind = SetKind.IN_DISTRIBUTION,
    level: float | None = None,
    start: int = 0,
    basis: str = "raw",
    hook: str = HOOK,
) -> ActivationBatch:
    b, t, _ = acts.shape
    if mask is None:
        mask = torch.ones(b, t, dtype=torch.bool)
        mask[:, 0] = False
    return ActivationBatch(
        set_name=set_name,
        kind=kind,
        level=level,
        tokens=torch.zeros(b, t, dtype=torch.long),
        mask=mask,
        seq_index=torch.arange(start, start + b),
        acts={hook: acts},
        basis=basis,
    )


def approx(x, rel=1e-5, abs=1e-6):
    return pytest.approx(x, rel=rel, abs=abs)


# --------------------------------------------------------------------------- token metrics by hand
def test_one_hot_is_maximally_sparse():
    d = 200
    h = torch.zeros(2, d)
    h[0, 5], h[1, 17] = 3.0, -0.25
    m = token_metrics(h)
    for i, v in enumerate((3.0, 0.25)):
        assert m["hoyer"][i].item() == approx(1.0)
        assert m["gini"][i].item() == approx((d - 1) / d)  # 2·d·v/(d·v) − (d+1)/d
        for p in (1, 5, 10):
            assert m[f"top{p}_energy"][i].item() == approx(1.0)
            assert m[f"top{p}_energy_l1"][i].item() == approx(1.0)
        assert m["thresh_density"][i].item() == approx(1 / d)
        assert m["part_entropy_l1"][i].item() == approx(1 / d)
        assert m["part_entropy_l2"][i].item() == approx(1 / d)
        assert m["l1_norm"][i].item() == approx(v)
        assert m["l2_norm"][i].item() == approx(v)


def test_uniform_is_maximally_dense():
    d = 200
    h = torch.full((2, d), 0.3)
    h[1] = -1.7
    m = token_metrics(h)
    assert m["hoyer"].tolist() == approx([0.0, 0.0], abs=1e-5)  # float32 sums: l1/l2 to ~1e-6
    assert m["gini"].tolist() == approx([0.0, 0.0], abs=1e-5)
    for p in (1, 5, 10):
        k = d * p // 100  # ⌊p·d⌋ = 2, 10, 20
        assert m[f"top{p}_energy"].tolist() == approx([k / d] * 2)
        assert m[f"top{p}_energy_l1"].tolist() == approx([k / d] * 2)
    assert m["thresh_density"].tolist() == [0.0, 0.0]
    assert m["part_entropy_l1"].tolist() == approx([1.0, 1.0])
    assert m["part_entropy_l2"].tolist() == approx([1.0, 1.0])
    assert m["l1_norm"].tolist() == approx([0.3 * d, 1.7 * d])
    assert m["l2_norm"].tolist() == approx([0.3 * math.sqrt(d), 1.7 * math.sqrt(d)])


def test_known_mixture_by_hand():
    # d = 100: one 10, four ±5, ninety-five ±1
    h = torch.ones(1, 100)
    h[0, 0] = -10.0
    h[0, 1:5] = torch.tensor([5.0, -5.0, 5.0, 5.0])
    h[0, 50:60] *= -1
    m = {k: v.item() for k, v in token_metrics(h).items()}
    l1, sq = 10 + 4 * 5 + 95, 100 + 4 * 25 + 95  # 125, 295
    assert m["l1_norm"] == approx(l1)
    assert m["l2_norm"] == approx(math.sqrt(sq))
    assert m["hoyer"] == approx((10 - l1 / math.sqrt(sq)) / 9)
    ranked = sum(range(1, 96)) + 5 * (96 + 97 + 98 + 99) + 10 * 100  # ascending ranks: 7510
    assert m["gini"] == approx(2 * ranked / (100 * l1) - 101 / 100)  # 0.1916
    assert m["gini"] == approx(0.1916)
    assert m["top1_energy"] == approx(100 / sq)  # k = 1
    assert m["top5_energy"] == approx(200 / sq)  # k = 5
    assert m["top10_energy"] == approx(205 / sq)  # k = 10
    assert m["top1_energy_l1"] == approx(10 / l1)
    assert m["top5_energy_l1"] == approx(30 / l1)
    assert m["top10_energy_l1"] == approx(35 / l1)
    # mean 1.25, std √(2.95 − 1.5625) = 1.178 → threshold 2.428: the 10 and the four 5s exceed it
    assert m["thresh_density"] == approx(5 / 100)
    p = np.array([10] + [5] * 4 + [1] * 95) / l1
    q = np.array([100] + [25] * 4 + [1] * 95) / sq
    assert m["part_entropy_l1"] == approx(math.exp(-(p * np.log(p)).sum()) / 100)
    assert m["part_entropy_l2"] == approx(math.exp(-(q * np.log(q)).sum()) / 100)


def test_small_vector_by_hand():
    m = {k: v.item() for k, v in token_metrics(torch.tensor([[3.0, -4.0, 0.0, 0.0]])).items()}
    assert m["hoyer"] == approx(0.6)  # (2 − 7/5)/(2 − 1)
    assert m["gini"] == approx(15 / 28)  # 2·(3·3 + 4·4)/(4·7) − 5/4
    assert m["top1_energy"] == approx(16 / 25)  # k = max(1, ⌊0.01·4⌋) = 1
    assert m["top10_energy_l1"] == approx(4 / 7)
    # mean 1.75, std √(25/4 − 1.75²) = 1.785 → threshold 3.535: only the 4
    assert m["thresh_density"] == approx(0.25)
    h1 = -(3 / 7 * math.log(3 / 7) + 4 / 7 * math.log(4 / 7))
    h2 = -(9 / 25 * math.log(9 / 25) + 16 / 25 * math.log(16 / 25))
    assert m["part_entropy_l1"] == approx(math.exp(h1) / 4)
    assert m["part_entropy_l2"] == approx(math.exp(h2) / 4)


def test_zero_vector_convention():
    d = 50
    m = token_metrics(torch.zeros(1, d), latents=True)
    assert m["hoyer"].item() == 1.0
    assert m["gini"].item() == approx((d - 1) / d)
    assert m["top1_energy"].item() == 1.0 and m["top10_energy_l1"].item() == 1.0
    assert m["thresh_density"].item() == approx(1 / d)
    assert m["part_entropy_l1"].item() == approx(1 / d) and m["part_entropy_l2"].item() == approx(1 / d)
    assert m["l1_norm"].item() == 0.0 and m["l2_norm"].item() == 0.0
    assert m["l0"].item() == 0.0 and m["l0_frac"].item() == 0.0


def test_latent_l0():
    f = torch.zeros(3, 40)
    f[0, [1, 5, 9]] = torch.tensor([0.5, 2.0, 1.0])
    f[1] = 1.0
    m = token_metrics(f, latents=True)
    assert m["l0"].tolist() == [3.0, 40.0, 0.0]
    assert m["l0_frac"].tolist() == approx([3 / 40, 1.0, 0.0])
    assert "l0" not in token_metrics(f)
    with pytest.raises(ValueError, match="raw-basis"):
        token_metrics(f, exclude_dims=[1], latents=True)


def test_exclude_dims_drops_coordinates():
    torch.manual_seed(0)
    h = torch.randn(64, 30)
    h[:10, 4] = 3e4  # massive values, and ties with kept values elsewhere
    h[10, 4] = h[10, 7]
    keep = [j for j in range(30) if j not in (4, 11)]
    masked = token_metrics(h, exclude_dims=[11, 4])
    direct = token_metrics(h[:, keep])
    for name in TOKEN_METRICS:
        assert torch.allclose(masked[name], direct[name], rtol=1e-6, atol=1e-7), name
    with pytest.raises(ValueError, match="distinct"):
        token_metrics(h, exclude_dims=[4, 4])
    with pytest.raises(ValueError, match="distinct"):
        token_metrics(h, exclude_dims=[30])


def test_metric_sense_covers_every_metric():
    assert set(TOKEN_METRICS) | {"l0", "l0_frac", "participation_ratio"} == set(METRIC_SENSE)
    assert METRIC_SENSE["hoyer"] == 1 and METRIC_SENSE["part_entropy_l1"] == -1 and METRIC_SENSE["l2_norm"] == 0


# --------------------------------------------------------------------------- participation ratio
def test_participation_ratio_by_hand():
    e = torch.eye(6)
    # two orthogonal directions with equal variance: covariance spectrum (λ, λ, 0, …) → PR = 2
    two = torch.stack([e[0], -e[0], 2 * e[1], -2 * e[1]])[None] * torch.tensor([1.0, 1.0, 0.5, 0.5])[None, :, None]
    one = torch.stack([e[2], -e[2], 3 * e[2], -3 * e[2]])[None]  # one direction → PR = 1
    # eigenvalues (4, 1) up to a common factor → PR = 25/17
    skew = torch.stack([2 * e[0], -2 * e[0], e[1], -e[1]])[None]
    pr = participation_ratio(torch.cat([two, one, skew]))
    assert pr.tolist() == approx([2.0, 1.0, 25 / 17])
    assert participation_ratio(torch.ones(1, 4, 6)).item() == 0.0  # no variance


def test_participation_ratio_uses_only_counted_tokens():
    torch.manual_seed(1)
    x = torch.randn(2, 9, 8)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[:, 0] = False
    mask[1, 6:] = False
    garbage = x.clone()
    garbage[:, 0] = 1e3
    garbage[1, 6:] = -1e3
    pr = participation_ratio(garbage, mask)
    assert pr[0].item() == approx(participation_ratio(x[:1, 1:]).item())
    assert pr[1].item() == approx(participation_ratio(x[1:, 1:6]).item())
    assert pr.max().item() <= 7  # bounded by (counted tokens − 1)


def test_participation_ratio_is_rotation_invariant_hoyer_is_not():
    torch.manual_seed(2)
    x = torch.randn(3, 16, 12) * torch.linspace(0.1, 3, 12)  # anisotropic, axis-aligned
    q, _ = torch.linalg.qr(torch.randn(12, 12))
    rotated = x @ q
    assert torch.allclose(participation_ratio(rotated), participation_ratio(x), rtol=1e-4)
    hoyer = token_metrics(x.reshape(-1, 12))["hoyer"]
    hoyer_rot = token_metrics(rotated.reshape(-1, 12))["hoyer"]
    assert (hoyer - hoyer_rot).abs().max() > 0.01


# --------------------------------------------------------------------------- analyzer
def test_per_sequence_scores_exclude_bos_and_padding():
    torch.manual_seed(3)
    x = torch.randn(2, 6, 10)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[:, 0] = False
    mask[1, 4:] = False
    x[:, 0] = 0.0
    x[:, 0, 0] = 1e4  # BOS: one-hot and huge, must not count
    x[1, 4:] = 7.0  # padding
    an = SparsityAnalyzer()
    an.update(batch(x, mask))
    res = an.compute()
    table = res.table("raw", HOOK, "id")
    assert table.seq_index.tolist() == [0, 1]
    assert table.n_tokens.tolist() == [5, 3]
    for row, last in ((0, 5), (1, 3)):
        per_token = token_metrics(x[row, 1 : last + 1])
        for name in ("hoyer", "gini", "part_entropy_l2"):
            assert table.score(name)[row] == approx(per_token[name].mean().item())
            assert table.score(name, reduce="last")[row] == approx(per_token[name][-1].item())
        win = participation_ratio(x[row : row + 1, 1 : last + 1]).item()
        assert table.score("participation_ratio", reduce="window")[row] == approx(win)
    tokens = torch.cat([x[0, 1:6], x[1, 1:4]])
    hoyer = token_metrics(tokens)["hoyer"].double()
    prof = res.profiles[("raw", HOOK, "id")]
    assert prof.n_tokens == 8 and prof.n_seqs == 2
    stats = prof.metrics["hoyer"]["unmasked"]
    assert stats["mean"] == approx(hoyer.mean().item())
    assert stats["std"] == approx(hoyer.std(correction=0).item(), rel=1e-4)
    assert stats["seq_mean"] == approx(table.score("hoyer").mean())
    assert prof.masked_same_as_unmasked and prof.metrics["hoyer"]["masked"] == stats


def test_massive_dims_masked_in_raw_basis_only():
    torch.manual_seed(4)
    x = torch.randn(3, 7, 12)
    x[:, 0, 2] = 2e4  # BOS
    x[:, 3, 2] = -3e3  # a delimiter
    keep = [j for j in range(12) if j not in (2, 9)]
    with_mask = SparsityAnalyzer(massive_dims={HOOK: [9, 2]})
    with_mask.update(batch(x))
    plain, cut = SparsityAnalyzer(), SparsityAnalyzer()
    plain.update(batch(x))
    cut.update(batch(x[..., keep]))
    res = with_mask.compute()
    prof, ref, ref_cut = (r.compute().profiles[("raw", HOOK, "id")] for r in (with_mask, plain, cut))
    assert prof.masked_dims == [2, 9] and not prof.masked_same_as_unmasked
    for name in [*TOKEN_METRICS, "participation_ratio"]:
        scale = 1e-6 * max(1.0, abs(ref.metrics[name]["unmasked"]["seq_mean"]))  # float32 per-token values
        for key in ("seq_mean", "seq_std"):
            assert prof.metrics[name]["unmasked"][key] == approx(ref.metrics[name]["unmasked"][key], abs=scale)
            assert prof.metrics[name]["masked"][key] == approx(ref_cut.metrics[name]["unmasked"][key], abs=scale)
    table, table_cut = res.table("raw", HOOK, "id"), cut.compute().table("raw", HOOK, "id")
    assert np.allclose(table.score("hoyer", masked=True), table_cut.score("hoyer"), rtol=1e-6)
    # the same dims mean nothing in an SAE basis
    sae = SparsityAnalyzer(massive_dims={HOOK: [2]})
    sae.update(batch(x.abs(), basis="sae"))
    assert sae.compute().profiles[("sae", HOOK, "id")].masked_same_as_unmasked


def test_feature_density_for_latents():
    f = torch.zeros(2, 4, 6)  # positions 1..3 count: 6 tokens
    f[0, 1:, 0] = 1.0  # latent 0 fires on 3/6 tokens
    f[:, 1:, 1] = 0.5  # latent 1 on 6/6
    f[1, 2, 3] = 2.0  # latent 3 on 1/6
    f[:, 0, 5] = 9.0  # latent 5 only at the excluded position 0 → dead
    an = SparsityAnalyzer(dense_threshold=0.4)
    an.update(batch(f, basis="sae_16k"))
    res = an.compute()
    fd = res.feature_density[("sae_16k", HOOK, "id")]
    assert fd.counts.tolist() == [3, 6, 0, 1, 0, 0]
    assert fd.n_tokens == 6
    assert fd.dead_frac == approx(3 / 6)
    assert fd.dense_frac == approx(2 / 6)  # densities 0.5 and 1.0 exceed 0.4
    table = res.table("sae_16k", HOOK, "id")
    assert table.score("l0").tolist() == approx([2.0, (1 + 2 + 1) / 3])
    assert ("raw", HOOK, "id") not in res.feature_density
    json.dumps(res.to_dict())


def _shards(seed: int = 5):
    torch.manual_seed(seed)
    out = []
    for start, name, kind in (
        (0, "id", SetKind.IN_DISTRIBUTION),
        (4, "id", SetKind.IN_DISTRIBUTION),
        (0, "ood", SetKind.SHIFTED),
    ):
        x = torch.randn(4, 6, 10)
        x[:, 0, 3] = 5e3
        mask = torch.ones(4, 6, dtype=torch.bool)
        mask[:, 0] = False
        mask[2, 4:] = False
        out.append(batch(x, mask, set_name=name, kind=kind, start=start))
    return out


def _assert_results_equal(a, b):
    assert sorted(a.keys) == sorted(b.keys)
    for key, pa in a.profiles.items():
        pb = b.profiles[key]
        assert (pa.n_tokens, pa.n_seqs) == (pb.n_tokens, pb.n_seqs)
        for name, variants in pa.metrics.items():
            for variant, stats in variants.items():
                for stat, value in stats.items():
                    assert value == approx(pb.metrics[name][variant][stat], rel=1e-6), (key, name, variant, stat)
        ta, tb = a.tables[key], b.tables[key]
        assert ta.seq_index.tolist() == tb.seq_index.tolist()
        assert ta.n_tokens.tolist() == tb.n_tokens.tolist()
        assert np.allclose(ta.values, tb.values, rtol=1e-6)


def test_merge_equals_one_pass():
    b1, b2, b3 = _shards()
    one = SparsityAnalyzer(massive_dims={HOOK: [3]})
    for b in (b1, b2, b3):
        one.update(b)
    left, right = SparsityAnalyzer(massive_dims={HOOK: [3]}), SparsityAnalyzer(massive_dims={HOOK: [3]})
    right.update(b3)
    right.update(b2)  # shard order and batch order do not matter
    left.update(b1)
    _assert_results_equal(left.merge(right).compute(), one.compute())
    with pytest.raises(ValueError, match="parameters"):
        SparsityAnalyzer().merge(SparsityAnalyzer(massive_dims={HOOK: [3]}))


def test_per_sequence_store_is_bounded():
    torch.manual_seed(6)
    an = SparsityAnalyzer(max_seqs_per_set=5)
    for start in (16, 8, 0, 24):  # 32 windows, out of order
        an.update(batch(torch.randn(8, 5, 6), start=start))
        assert an.samples[("raw", HOOK, "id")]._n <= 2 * 5 + 8  # compacted once it passes 2 × cap
    res = an.compute()
    table = res.table("raw", HOOK, "id")
    assert table.seq_index.tolist() == [0, 1, 2, 3, 4]  # the smallest seq_index, whatever the order
    assert len(an.samples[("raw", HOOK, "id")]) == 5
    prof = res.profiles[("raw", HOOK, "id")]
    assert prof.n_seqs == 32 and prof.n_tokens == 32 * 4  # aggregates cover every window
    assert set(res.to_dict()["profiles"]["raw"][HOOK]["id"]["metrics"]) == {*TOKEN_METRICS, "participation_ratio"}


@pytest.mark.parametrize("density", [0.0, 0.02, 0.1, 0.5])
def test_sparse_latent_path_equals_the_dense_computation(density):
    """SAE latents are sorted through their K largest entries only; every metric must equal the full sort's."""
    g = torch.Generator().manual_seed(int(density * 100))
    h = torch.rand(64, 400, generator=g) * (torch.rand(64, 400, generator=g) < density)
    h[0] = 0.0  # a row with nothing active
    h[1, :3] = torch.tensor([5.0, 1.0, 1.0])  # few, unequal entries
    sparse, dense = token_metrics(h, latents=True), token_metrics(h)
    for name, values in dense.items():
        assert torch.allclose(sparse[name], values, rtol=1e-5, atol=1e-6), name
    assert torch.equal(sparse["l0"], (h != 0).sum(1).double())


def test_masking_almost_every_dim_still_gives_the_unmasked_metrics():
    """Regression: masking more than 90 % of the dims indexed past the kept top-k sums."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, 100, generator=g)
    mask = torch.ones(2, 6, dtype=torch.bool)
    masked, plain = SparsityAnalyzer(massive_dims={HOOK: list(range(95))}), SparsityAnalyzer()
    for an in (masked, plain):
        an.update(batch(x, mask))
    a, b = (an.compute().profiles[("raw", HOOK, "id")].metrics for an in (masked, plain))
    for name in ("hoyer", "top10_energy", "top10_energy_l1", "gini"):
        assert a[name]["unmasked"]["mean"] == approx(b[name]["unmasked"]["mean"], rel=1e-5), name
