"""Calibrate the FER scores on planted structure: how far does the index move per planted level?

fer_diag.synthetic builds a world with a known dictionary where each concept's
classes are carried by a chosen number of latent groups (planted fracture) and a
chosen share of latents is shared with other concepts (planted entanglement).
This script sweeps each factor with the other held fixed and prints the FER
index and its components, so you can read what an index of, say, 0.3 means
before you read one on your own model.

Run: python examples/fer_calibration.py   (about 10 s on 2 CPU cores)
"""

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from fer_diag.fer import ENTANGLEMENT, FRACTURE, ConceptActivations, FERConfig, fer_scores
from fer_diag.synthetic import SyntheticConfig, make_world


def scores(fracture: int, entanglement: float) -> dict[str, float]:
    """Mean over the world's concepts of the FER index and of each component (None components left out)."""
    world = make_world(SyntheticConfig(fracture=fracture, entanglement=entanglement, n_per_class=80))
    concepts = [
        ConceptActivations(c.name, c.level, c.classes, c.latents, c.labels, c.latents_twin, c.labels_twin, c.raw)
        for c in world.concepts
    ]
    result = fer_scores(concepts, world.encoder.W_dec, FERConfig(n_boot=0))
    row = {"index": float(np.mean([s.index for s in result]))}
    for name in (*FRACTURE, *ENTANGLEMENT):
        values = [getattr(s, name).value for s in result if getattr(s, name).value is not None]
        row[name] = float(np.mean(values)) if values else float("nan")
    return row


sweeps = {
    "fracture (entanglement 0)": [(f, 0.0) for f in (1, 2, 3, 4, 5)],
    "entanglement (fracture 2)": [(2, e) for e in (0.0, 0.25, 0.5, 0.75, 1.0)],
}
for title, levels in sweeps.items():
    table = pd.DataFrame([scores(f, e) for f, e in levels], index=[f"f={f}, e={e}" for f, e in levels])
    planted = [f for f, _ in levels] if title.startswith("fracture") else [e for _, e in levels]
    rho = spearmanr(planted, table["index"]).statistic
    print(f"\nplanted {title}: Spearman(planted level, FER index) = {rho:.2f}")
    print(table.round(3).to_string())
