"""SAE loading and hook matching, fidelity, shifted latents, offline training, shipped default SAEs."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from sae_factory import make_sae
from sae_lens import (
    GatedSAEConfig,
    JumpReLUSAEConfig,
    StandardSAEConfig,
    TopKSAEConfig,
)

from fer_diag.analyzers.sae_fidelity import SAEFidelityAnalyzer
from fer_diag.analyzers.shifted_latents import ShiftedLatentsAnalyzer
from fer_diag.basis import CESums, SAEBasis
from fer_diag.capture import ActivationBatch, Capture
from fer_diag.data.suite import SetKind, TextSet, Windows
from fer_diag.sae import loading
from fer_diag.sae.loading import SAELoadError, SAEMatchError, default_saes, load_sae, match_saes, shipped_sae_dir
from fer_diag.sae.training import CARD_FILENAME, train_sae, train_saes

HOOK0 = "blocks.0.hook_resid_post"
HOOK1 = "blocks.1.hook_resid_post"


def windows(n: int, seq: int, vocab: int, seed: int = 0, name: str = "w") -> Windows:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(4, vocab, (n, seq), generator=g)
    mask = torch.ones(n, seq, dtype=torch.bool)
    mask[:, 0] = False
    mask[-1, seq // 2 :] = False  # some padding
    return Windows(name, tokens, mask, torch.arange(n))


def capture_batches(model, text_set: TextSet, n: int = 6, batch_size: int = 3, seed: int = 0) -> list[ActivationBatch]:
    w = windows(n, 10, model.cfg.d_vocab, seed=seed, name=text_set.name)
    return list(Capture(model, [HOOK0, HOOK1], batch_size=batch_size).batches(w, text_set))


@pytest.fixture
def model(tiny_hooked):
    return tiny_hooked.model


@pytest.fixture
def bridge(tiny_bridge):
    return tiny_bridge.model


ID = TextSet("id", SetKind.IN_DISTRIBUTION)
OOD = TextSet("ood", SetKind.SHIFTED)


# ------------------------------------------------------------------ loading
ARCHITECTURES = [
    (StandardSAEConfig, {}),
    (TopKSAEConfig, {"k": 4}),
    (JumpReLUSAEConfig, {}),
    (GatedSAEConfig, {}),
]


@pytest.mark.parametrize("cfg_cls, kw", ARCHITECTURES)
def test_disk_round_trip_any_architecture(tmp_path, model, cfg_cls, kw):
    d = model.cfg.d_model
    sae = make_sae(d, HOOK1, cfg_cls=cfg_cls, **kw)
    sae.save_model(tmp_path / "sae")
    matched = match_saes(str(tmp_path / "sae"), model, [HOOK0, HOOK1])
    assert list(matched) == [HOOK1]
    loaded = matched[HOOK1]
    assert type(loaded) is type(sae)
    x = torch.randn(5, d)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(x), sae.encode(x))


def test_objects_lists_and_dicts(model):
    d = model.cfg.d_model
    a, b = make_sae(d, HOOK0), make_sae(d, HOOK1, seed=1)
    assert match_saes([a, b], model, [HOOK0, HOOK1]) == {HOOK0: a, HOOK1: b}
    unnamed = make_sae(d, None)
    assert match_saes({HOOK1: unnamed}, model, [HOOK1]) == {HOOK1: unnamed}  # the key names the hook
    assert match_saes(a, model, [HOOK0]) == {HOOK0: a}


def test_bridge_alias_matches_same_hook_point(bridge):
    d = bridge.cfg.d_model
    sae = make_sae(d, HOOK1)  # TransformerLens name; the bridge's own name for that point is blocks.1.hook_out
    assert match_saes(sae, bridge, ["blocks.1.hook_out"]) == {"blocks.1.hook_out": sae}
    other = make_sae(d, "blocks.0.hook_out")
    assert match_saes(other, bridge, [HOOK0]) == {HOOK0: other}


def test_width_mismatch_names_both_numbers(model):
    d = model.cfg.d_model
    with pytest.raises(SAEMatchError, match=rf"d_in={d + 3}.*width is {d}"):
        match_saes(make_sae(d + 3, HOOK0), model, [HOOK0])


def test_sae_for_hook_not_captured(model):
    with pytest.raises(SAEMatchError, match=r"not captured.*--hooks blocks\.1\.hook_resid_post"):
        match_saes(make_sae(model.cfg.d_model, HOOK1), model, [HOOK0])


def test_sae_spec_is_checked_without_loading(tmp_path):
    from fer_diag.errors import FerDiagError
    from fer_diag.sae.loading import check_sae_spec

    with pytest.raises(SAELoadError, match="neither an existing folder") as err:
        check_sae_spec(tmp_path / "no-such-sae")
    assert isinstance(err.value, FerDiagError) and issubclass(SAEMatchError, FerDiagError)
    with pytest.raises(SAELoadError, match=r"missing cfg\.json"):
        check_sae_spec(tmp_path)
    assert check_sae_spec(shipped_sae_dir("smollm2-135m") / "blocks.3.hook_resid_post") == "folder"


def test_sae_for_hook_the_model_lacks(model):
    with pytest.raises(SAEMatchError, match=r"does not have.*Close matches: blocks\.1\.hook_resid_post"):
        match_saes(make_sae(model.cfg.d_model, "blocks.1.hook_resid_pots"), model, [HOOK1])


def test_sae_without_hook_name_names_a_fix_for_the_cli_too(model, tmp_path):
    sae = make_sae(model.cfg.d_model, None)
    sae.save_model(tmp_path / "sae")
    with pytest.raises(SAEMatchError, match=r"Set metadata\.hook_name in its cfg\.json, or from Python pass"):
        match_saes(str(tmp_path / "sae"), model, [HOOK0])


def test_sae_without_hook_name_and_duplicates(model):
    d = model.cfg.d_model
    with pytest.raises(SAEMatchError, match=r"no cfg\.metadata\.hook_name.*\{hook_name: sae\}"):
        match_saes(make_sae(d, None), model, [HOOK0])
    with pytest.raises(SAEMatchError, match="two SAEs"):
        match_saes([make_sae(d, HOOK0), make_sae(d, HOOK0, seed=1)], model, [HOOK0])


def test_sae_in_other_dtype_is_moved_and_said(model):
    sae = make_sae(model.cfg.d_model, HOOK0).to(dtype=torch.float16)
    with pytest.warns(UserWarning, match=r"moved to the model's device cpu in float32"):
        out = match_saes(sae, model, [HOOK0])
    assert out[HOOK0].dtype == torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        match_saes(out[HOOK0], model, [HOOK0])  # already in place: no warning


def test_folder_not_in_sae_lens_format(tmp_path):
    (tmp_path / "cfg.json").write_text("{}")
    with pytest.raises(SAELoadError, match=r"not in sae-lens format: missing sae_weights\.safetensors.*save_model"):
        load_sae(tmp_path)
    (tmp_path / "sae_weights.safetensors").write_bytes(b"")
    with pytest.raises(SAELoadError, match="cannot read them"):
        load_sae(tmp_path)  # empty weights
    make_sae(8, HOOK0).save_model(tmp_path)
    (tmp_path / "cfg.json").write_text('{"d_in": 8}')
    with pytest.raises(SAELoadError, match="cannot read them"):
        load_sae(tmp_path)  # config without an architecture


def test_unknown_string(tmp_path):
    with pytest.raises(SAELoadError, match="neither an existing folder nor a sae-lens registry"):
        load_sae(str(tmp_path / "nope"))


def test_registry_release_offline(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(loading, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(SAELoadError, match=r"hub is unreachable.*save_model\(folder\).*pass that folder"):
        load_sae("gpt2-small-res-jb/blocks.8.hook_resid_pre")
    with pytest.raises(SAELoadError, match="unreachable"):
        load_sae(("gpt2-small-res-jb", "blocks.8.hook_resid_pre"))


def test_registry_release_not_cached_with_hub_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # conftest's default: huggingface_hub answers from its cache only
    with pytest.raises(SAELoadError, match=r"cannot load SAE gpt2-small-res-jb/blocks\.8\.hook_resid_pre from the hub"):
        load_sae("gpt2-small-res-jb/blocks.8.hook_resid_pre")


def test_default_saes_unknown_model_is_empty():
    assert default_saes("no-such-model") == {}


# ----------------------------------------------------------------- fidelity
@pytest.mark.parametrize("cfg_cls, kw", [(StandardSAEConfig, {}), (TopKSAEConfig, {"k": 6})])
def test_fidelity_equals_direct_sae_lens_computation(model, cfg_cls, kw):
    sae = make_sae(model.cfg.d_model, HOOK1, cfg_cls=cfg_cls, **kw)
    (batch,) = capture_batches(model, ID, n=4, batch_size=4)
    fid = SAEFidelityAnalyzer({HOOK1: sae}, massive_dims={HOOK1: [3, 0], HOOK0: [1]})
    fid.update(SAEBasis({HOOK1: sae}).read(batch))
    result = fid.compute()["hooks"]
    assert list(result) == [HOOK1] and result[HOOK1]["massive_dims"] == [0, 3]
    got = result[HOOK1]["sets"]["id"]
    x = batch.acts[HOOK1][batch.mask]
    with torch.no_grad():
        f = sae.encode(x)
        x_hat = sae.decode(f)
    ev = 1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert got["tokens"] == len(x)
    assert got["l0"] == pytest.approx(float((f > 0).float().sum(-1).mean()))
    assert got["explained_variance"] == pytest.approx(float(ev), abs=1e-5)
    assert got["cosine"] == pytest.approx(float(torch.cosine_similarity(x, x_hat, dim=-1).mean()), abs=1e-5)
    assert got["relative_mse"] == pytest.approx(float((x - x_hat).pow(2).sum() / x.pow(2).sum()), abs=1e-5)
    assert got["kind"] == "in_distribution" and got["ev_drop"] == pytest.approx(0.0)
    if cfg_cls is TopKSAEConfig:
        assert got["l0"] == pytest.approx(6.0)
    keep = [j for j in range(x.shape[1]) if j not in (0, 3)]
    xm, ym = x[:, keep], x_hat[:, keep]
    ev_masked = 1 - (xm - ym).pow(2).sum() / (xm - xm.mean(0)).pow(2).sum()
    assert got["massive_masked"]["explained_variance"] == pytest.approx(float(ev_masked), abs=1e-5)
    assert got["massive_masked"]["ev_drop"] == pytest.approx(0.0)


def test_fidelity_merge_of_shards_equals_one_pass(model):
    saes = {HOOK0: make_sae(model.cfg.d_model, HOOK0), HOOK1: make_sae(model.cfg.d_model, HOOK1, seed=1)}
    batches = capture_batches(model, ID) + capture_batches(model, OOD, seed=5)
    one, a, b = (SAEFidelityAnalyzer(saes, massive_dims={HOOK0: [2]}, n_boot=50) for _ in range(3))
    basis = SAEBasis(saes)
    ce = [CESums(10.0, 12.0, 20.0, 5), CESums(10.0, 11.0, 30.0, 5)]
    for i, batch in enumerate(batches):
        latents = basis.read(batch)
        if batch.set_name == "ood":  # CE sums of each window, as the pipeline attaches them
            latents.ce = {hook: {int(s): ce[int(s) % 2] for s in batch.seq_index} for hook in saes}
        one.update(latents)
        (a if i % 2 else b).update(latents)
    merged = a.merge(b).compute()
    want = one.compute()
    for hook in saes:
        for s in ("id", "ood"):
            for key, value in want["hooks"][hook]["sets"][s].items():
                got = merged["hooks"][hook]["sets"][s][key]
                want_value = pytest.approx(value, rel=1e-9) if isinstance(value, float | dict) else value
                assert got == want_value, (hook, s, key)
    ood = want["hooks"][HOOK1]["sets"]["ood"]
    n_ood = sum(len(bt.seq_index) for bt in batches if bt.set_name == "ood")
    half = n_ood // 2  # even windows carry ce[0], odd ones ce[1]
    clean, sae_, abl = 10.0 * n_ood, 12.0 * (n_ood - half) + 11.0 * half, 20.0 * (n_ood - half) + 30.0 * half
    assert ood["ce_score"] == pytest.approx((abl - sae_) / (abl - clean))
    assert ood["ce_windows"] == n_ood and ood["ce_score_ci"][0] <= ood["ce_score"] <= ood["ce_score_ci"][1]
    assert ood["ev_drop"] == pytest.approx(want["hooks"][HOOK1]["reference_ev"] - ood["explained_variance"])
    assert "massive_masked" in want["hooks"][HOOK0]["sets"]["ood"]
    assert "massive_masked" not in ood
    with pytest.raises(TypeError):
        one.merge(ShiftedLatentsAnalyzer())
    with pytest.raises(ValueError, match="parameters"):
        one.merge(SAEFidelityAnalyzer(saes))


def test_fidelity_rejects_raw_batches(model):
    sae = make_sae(model.cfg.d_model, HOOK1)
    (batch,) = capture_batches(model, ID, n=3, batch_size=3)
    with pytest.raises(ValueError, match="raw vectors"):
        SAEFidelityAnalyzer({HOOK1: sae}).update(batch)


# ------------------------------------------------------------ shifted latents
def latent_batch(set_: TextSet, fires: dict[int, float], n: int = 4, seq: int = 10, d_sae: int = 12, seed: int = 0):
    """An SAE-basis batch where latent j fires (value 1 + noise) on a ``fires[j]`` share of the counted tokens."""
    g = torch.Generator().manual_seed(seed)
    acts = torch.zeros(n, seq, d_sae)
    for j, share in fires.items():
        on = torch.rand(n, seq, generator=g) < share
        acts[..., j] = torch.where(on, 1 + torch.rand(n, seq, generator=g), 0.0)
    w = windows(n, seq, 60, seed=seed, name=set_.name)
    return ActivationBatch(
        set_name=set_.name,
        kind=set_.kind,
        level=None,
        tokens=w.tokens,
        mask=w.mask,
        seq_index=torch.arange(seed * n, seed * n + n),
        acts={HOOK1: acts},
        basis="sae",
    )


PLANT = {0: 0.5, 3: 0.05, 5: 0.9, 7: 0.3}
SHIFT = {0: 0.5, 3: 0.95, 5: 0.1, 7: 0.3}


def test_shifted_latents_finds_planted_latents(tiny_tokenizer):
    an = ShiftedLatentsAnalyzer(n_contexts=3, context=2, top_latents=2, tokenizer=tiny_tokenizer)
    for seed in range(3):
        an.update(latent_batch(ID, PLANT, seed=seed))
        an.update(latent_batch(OOD, SHIFT, seed=10 + seed))
    out = an.compute()
    assert out["reference_sets"] == ["id"]
    ood = out["hooks"][HOOK1]["ood"]
    assert ood["gained"][0]["latent"] == 3 and ood["gained"][0]["change"] > 0.7
    assert ood["lost"][0]["latent"] == 5 and ood["lost"][0]["change"] < -0.6
    assert all(e["latent"] not in (1, 2) for e in ood["gained"] + ood["lost"])  # never-firing latents are not listed
    ctx = ood["lost"][0]["contexts"]
    assert len(ctx) == 3 and all(c["set"] == "id" for c in ctx)
    assert [c["activation"] for c in ctx] == sorted((c["activation"] for c in ctx), reverse=True)
    top = ctx[0]
    assert top["token_ids"][2] != -1 and "⟦" in top["text"]
    # the stored context is the real one: the token at (window, position) of the batch it came from
    src = latent_batch(ID, PLANT, seed=top["seq_index"] // 4)
    assert top["token_ids"][2] == int(src.tokens[top["seq_index"] % 4, top["position"]])
    assert float(src.acts[HOOK1][top["seq_index"] % 4, top["position"], 5]) == pytest.approx(top["activation"])
    json.dumps(out)


def test_shifted_latents_merge_equals_one_pass():
    one = ShiftedLatentsAnalyzer(n_contexts=3, context=2)
    a, b = ShiftedLatentsAnalyzer(n_contexts=3, context=2), ShiftedLatentsAnalyzer(n_contexts=3, context=2)
    b.update(latent_batch(OOD, SHIFT, seed=9))  # b sees the sets in another order: set ids must be remapped
    one.update(latent_batch(OOD, SHIFT, seed=9))
    for seed in range(4):
        batch = latent_batch(TextSet(f"id{seed % 2}", SetKind.IN_DISTRIBUTION), PLANT, seed=seed)
        one.update(batch)
        (a if seed < 2 else b).update(batch)
    assert a.merge(b).compute() == one.compute()


def test_shifted_latents_rejects_raw_batches(model):
    (batch,) = capture_batches(model, ID, n=3, batch_size=3)
    with pytest.raises(ValueError, match="SAE latents"):
        ShiftedLatentsAnalyzer().update(batch)


# ------------------------------------------------------------------ training
def test_tiny_train_sae_gives_loadable_folder_with_card(tmp_path, tiny_hooked, tiny_tokenizer):
    words = ["The", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "and", "reads", "familiar", "text"]
    g = torch.Generator().manual_seed(0)
    texts = [" ".join(words[i] for i in torch.randint(len(words), (30,), generator=g)) for _ in range(40)]
    sae, card = train_sae(
        tiny_hooked, HOOK1, texts, d_sae=16, k=4, cache_tokens=600, seq_len=16, batch_size=64, training_tokens=640,
        lr_warm_up_steps=1, dead_feature_window=5, seed=0, out_dir=tmp_path / "sae", progress=False,
    )  # fmt: skip
    assert (tmp_path / "sae" / CARD_FILENAME).is_file()
    saved = json.loads((tmp_path / "sae" / CARD_FILENAME).read_text())
    assert saved["hook"] == HOOK1 and saved["tokens_seen"] == 640 and saved["config"]["seed"] == 0
    assert set(saved["heldout"]) == {
        "explained_variance", "explained_variance_massive_masked", "massive_dims", "l0", "dead_fraction", "tokens"
    }  # fmt: skip
    assert 0 < saved["heldout"]["l0"] < 16
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # saved in float16, loaded in float32: nothing to warn about
        loaded = match_saes(tmp_path / "sae", tiny_hooked.model, [HOOK1])[HOOK1]
    assert loaded.dtype == torch.float32
    assert loaded.cfg.architecture() == "jumprelu" and loaded.cfg.d_sae == 16  # BatchTopK is saved as JumpReLU
    x = torch.randn(3, tiny_hooked.d_model)
    with torch.no_grad():  # the SAE returned is already rounded to the saved float16: it is the one on disk
        torch.testing.assert_close(loaded.decode(loaded.encode(x)), sae.decode(sae.encode(x)), atol=0, rtol=0)
    assert card == saved


@pytest.mark.parametrize("architecture", ["topk", "standard"])
def test_training_other_architectures(tiny_hooked, architecture):
    texts = ["The quick brown fox jumps over the lazy dog."] * 30
    sae, card = train_sae(
        tiny_hooked, HOOK0, texts, architecture=architecture, d_sae=16, k=3, cache_tokens=300, seq_len=16,
        batch_size=32, training_tokens=64, progress=False,
    )  # fmt: skip
    assert sae.cfg.architecture() == architecture and card["tokens_seen"] == 64
    if architecture == "topk":
        assert card["heldout"]["l0"] == 3


def test_one_cache_feeds_several_hooks(tmp_path, tiny_hooked):
    texts = ["The quick brown fox jumps over the lazy dog."] * 30
    out = train_saes(
        tiny_hooked, ["blocks.*.hook_resid_post"], texts, d_sae=16, k=3, cache_tokens=300, seq_len=16,
        batch_size=32, training_tokens=64, out_dir=tmp_path, progress=False,
    )  # fmt: skip
    assert list(out) == [HOOK0, HOOK1]
    for hook, (_, card) in out.items():
        assert (tmp_path / hook / "cfg.json").is_file() and card["hook"] == hook
        assert card["cache_tokens"] == out[HOOK0][1]["cache_tokens"]  # the same windows for every hook
    assert match_saes(tmp_path / HOOK0, tiny_hooked.model, [HOOK0, HOOK1]).keys() == {HOOK0}


def test_training_needs_enough_text(tiny_hooked):
    from fer_diag.errors import TextSetError  # a user error: the CLI exits 2 with the message

    with pytest.raises(TextSetError, match="too little to train"):
        train_sae(tiny_hooked, HOOK0, ["the cat"], progress=False)
    with pytest.raises(TextSetError, match="fewer than one batch"):
        train_sae(tiny_hooked, HOOK0, ["The quick brown fox."] * 20, cache_tokens=40, seq_len=16, progress=False)


# --------------------------------------------------------------- shipped SAEs
def _assert_shipped_saes_present() -> None:
    from fer_diag.sae.recipe import DEFAULT_SAE_HOOKS

    root = shipped_sae_dir("smollm2-135m")
    for hook in DEFAULT_SAE_HOOKS["smollm2-135m"]:
        for name in ("cfg.json", "sae_weights.safetensors", "card.json"):
            assert (root / hook / name).is_file(), f"shipped SAE file missing: {root / hook / name}"


def test_shipped_default_saes_are_packaged_and_load():
    """Runs without the model: missing or unreadable shipped SAEs fail, they are not skipped."""
    from fer_diag.sae.recipe import DEFAULT_SAE_HOOKS

    _assert_shipped_saes_present()
    saes = default_saes("smollm2-135m")
    assert list(saes) == list(DEFAULT_SAE_HOOKS["smollm2-135m"])
    assert all(sae.cfg.d_in == 576 for sae in saes.values())


def test_shipped_sae_check_fails_when_a_folder_is_missing(monkeypatch, tmp_path):
    monkeypatch.setitem(globals(), "shipped_sae_dir", lambda name: tmp_path)  # an install without the assets
    with pytest.raises(AssertionError, match="shipped SAE file missing"):
        _assert_shipped_saes_present()


# --------------------------------------------------------------- integration
@pytest.mark.integration
def test_shipped_default_saes_on_smollm2(smollm2):
    from fer_diag.analyzers.massive import detect_massive
    from fer_diag.data.sources import english_fortunes
    from fer_diag.data.suite import tokenize_windows

    _assert_shipped_saes_present()  # a packaging regression fails here; it is never a skip
    saes = default_saes("smollm2-135m")
    assert list(saes) == ["blocks.3.hook_resid_post", "blocks.15.hook_resid_post", "blocks.26.hook_resid_post"]
    hooks = list(saes)
    assert match_saes(list(saes.values()), smollm2.model, hooks) == saes
    texts = TextSet("id", SetKind.IN_DISTRIBUTION, english_fortunes(max_texts=12, split="heldout"))
    w = tokenize_windows(texts, smollm2.tokenizer, seq_len=128, bos_token_id=smollm2.bos_token_id)
    batches = list(Capture(smollm2.model, hooks, batch_size=4).batches(w, texts))
    dims = {h: detect_massive(batches[0].acts[h], batches[0].mask).dims.unique().tolist() for h in hooks}
    fid = SAEFidelityAnalyzer(saes, massive_dims=dims)
    basis = SAEBasis(saes)
    for batch in batches:
        fid.update(basis.read(batch))
    for hook, row in fid.compute()["hooks"].items():
        got = row["sets"]["id"]
        assert got["explained_variance"] >= 0.8, (hook, got)
        assert got.get("massive_masked", got)["explained_variance"] >= 0.8, (hook, got)
        assert got["l0"] <= 64, (hook, got)


def test_attention_sae_on_flattened_hook_z(model):
    """sae-lens SAEs trained on hook_z reshape [.., heads, d_head] themselves; capture already flattened it."""
    hook = "blocks.0.attn.hook_z"
    width = model.cfg.n_heads * model.cfg.d_head
    sae = make_sae(width, hook, reshape_activations="hook_z")
    saes = match_saes({hook: sae}, model, [hook])
    w = windows(4, 10, model.cfg.d_vocab, seed=4)
    (batch,) = Capture(model, [hook], batch_size=4).batches(w, ID)
    latents = SAEBasis(saes).read(batch)
    assert latents.acts[hook].shape == (4, 10, sae.cfg.d_sae)
    with torch.no_grad():
        torch.testing.assert_close(latents.acts[hook], sae.encode(batch.acts[hook]))
    sums = sum(SAEBasis(saes).ce_sums(model, w.tokens, w.mask)[hook], CESums())
    assert sums.tokens == int(w.mask[:, 1:].sum()) and sums.score() is not None
