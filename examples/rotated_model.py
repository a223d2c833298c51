"""Same behaviour, different basis: audit SmolLM2 and a function-preserving rotation of its residual stream.

``rotate_residual`` rotates the residual stream by a random orthogonal Q and folds
Q into the weights: the logits are the same, the neuron basis is not. The shipped
SAEs are rotated to match (``rotate_sae``), so their latents are the same too. A
sparsity signal measured in the raw residual basis can change; the verdict's
basis-dependence flag is what says so. Rotation-invariant evidence (participation
ratio, NLL, SAE latents) must not move.

Run: python examples/rotated_model.py   (a few minutes on 2 CPU cores)
"""

from fer_diag import Audit, AuditConfig, Suite, load_model
from fer_diag.data.suite import default_suite
from fer_diag.models import LoadedModel
from fer_diag.sae.loading import default_saes
from fer_diag.transforms import residual_rotation, rotate_residual, rotate_sae

loaded = load_model("smollm2-135m")
rotated = rotate_residual(loaded.model, seed=0)  # checks the logits itself (raises if they differ)
q = residual_rotation(rotated)
rot_loaded = LoadedModel(
    name="smollm2-135m (rotated residual, seed 0)",
    model=rotated,
    tokenizer=loaded.tokenizer,
    bos_token_id=loaded.bos_token_id,
    pad_token_id=loaded.pad_token_id,
)

full = default_suite(loaded.tokenizer, n_per_set=16)
suite = Suite([full["fortunes_en"], full["fortunes_de"], full["python_code"]])
hooks = ["blocks.3.hook_resid_post", "blocks.15.hook_resid_post"]
config = AuditConfig(max_seqs=16, random_init_control=False, n_boot=200, concepts=[])  # sparsity only
saes = {h: s for h, s in default_saes("smollm2-135m").items() if h in hooks}

reports = {}
for name, model, model_saes in (
    ("original", loaded, saes),
    ("rotated", rot_loaded, {h: rotate_sae(s, q) for h, s in saes.items()}),
):
    reports[name] = Audit(model, hooks=hooks, saes=model_saes, suite=suite, config=config, progress=False).run()

a, b = (reports[k].frame("verdict.rows").set_index(["hook", "basis", "metric", "reduce", "target"]) for k in reports)
both = a[["value", "status"]].join(b[["value", "status"]], lsuffix="_original", rsuffix="_rotated")
both["moved"] = (both["value_original"] - both["value_rotated"]).abs()
print("largest moves of a score's AUROC / ρ between the model and its rotated copy (same logits):")
print(both.sort_values("moved", ascending=False).head(10).to_string())
# the participation ratio is rotation-invariant, and the rotated SAEs fire the same latents (L0). Other SAE metrics
# follow too, except where they are degenerate: top-p energy is ≈ 1 whenever fewer than p·d latents fire, and then
# its AUROC only ranks rounding noise.
invariant = both.reset_index().query("metric == 'participation_ratio' or (basis != 'raw' and metric == 'l0')")
print(f"rotation-invariant scores (participation ratio, SAE L0): largest move {invariant['moved'].max():.4f}")
