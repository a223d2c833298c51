"""The SAE training recipe as a typed config, and the hooks of the shipped SAEs.

Kept free of torch and sae-lens imports so that ``fer-diag --help`` can show
the recipe's defaults without loading them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: hooks of the shipped SAEs per zoo model: early, middle and late residual stream
DEFAULT_SAE_HOOKS: dict[str, tuple[str, ...]] = {
    "smollm2-135m": ("blocks.3.hook_resid_post", "blocks.15.hook_resid_post", "blocks.26.hook_resid_post"),
}


@dataclass
class SAETrainingConfig:
    """Options of one SAE training run (sae-lens style: one typed config).

    ``training_tokens`` is the number of activation vectors the trainer sees
    (epochs over the cache of ``cache_tokens``). ``sae_kwargs`` go to the
    sae-lens training config of ``architecture`` (e.g. ``l1_coefficient`` for
    ``standard``). Every counted token is trained on, massive activations
    beyond position 0 included (SmolLM2 puts some on the token right after
    BOS): the audit reads those tokens too.

    The default is BatchTopK (saved as JumpReLU by sae-lens): k latents fire on
    average, but how many fire on a token varies with the token, so SAE L0 can
    carry a familiarity signal — with TopK it would be k everywhere.
    """

    architecture: str = "batchtopk"
    d_sae: int = 2304
    k: int = 56
    training_tokens: int = 2_457_600
    cache_tokens: int = 250_000
    seq_len: int = 128
    batch_size: int = 1024
    lr: float = 1e-3
    lr_warm_up_steps: int = 20
    dead_feature_window: int = 100
    heldout_fraction: float = 0.08
    seed: int = 0
    save_dtype: str = "float16"
    device: str = "cpu"
    model_batch_size: int = 16
    sae_kwargs: dict[str, Any] = field(default_factory=dict)
