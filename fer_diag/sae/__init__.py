"""sae-lens SAEs for fer-diag: loading and hook matching (:mod:`.loading`), offline training (:mod:`.training`)."""

from fer_diag.sae.loading import SAELoadError, SAEMatchError, default_saes, load_sae, match_saes
from fer_diag.sae.training import SAETrainingConfig, train_sae, train_saes

__all__ = [
    "SAELoadError",
    "SAEMatchError",
    "SAETrainingConfig",
    "default_saes",
    "load_sae",
    "match_saes",
    "train_sae",
    "train_saes",
]
