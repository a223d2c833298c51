"""Small sae-lens SAEs with random weights, for tests."""

from __future__ import annotations

import torch
from sae_lens import SAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata


def make_sae(d_in: int, hook: str | None, d_sae: int = 48, cfg_cls=StandardSAEConfig, seed: int = 0, **kw) -> SAE:
    """A ``cfg_cls`` SAE on ``hook`` whose encoder bias is non-zero, so some latents fire."""
    torch.manual_seed(seed)
    cfg = cfg_cls(d_in=d_in, d_sae=d_sae, metadata=SAEMetadata(hook_name=hook), **kw)
    sae = SAE.from_dict(cfg.to_dict())
    with torch.no_grad():
        (sae.b_enc if sae.b_enc is not None else sae.b_gate).normal_(0, 0.1)
    return sae.eval()
