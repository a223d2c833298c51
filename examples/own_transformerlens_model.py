"""Bring your own TransformerLens model: any HookedTransformer or TransformerBridge with a tokenizer.

Here the "own model" is a randomly initialised 4-layer HookedTransformer using SmolLM2's
tokenizer, so the script runs offline in seconds; swap in `HookedTransformer.from_pretrained(...)`.

Run: python examples/own_transformerlens_model.py
"""

from transformer_lens import HookedTransformer, HookedTransformerConfig

from fer_diag import Audit, AuditConfig, load_model
from fer_diag.data.suite import default_suite

tokenizer = load_model("smollm2-135m").tokenizer
cfg = HookedTransformerConfig(
    n_layers=4,
    d_model=64,
    n_heads=4,
    d_head=16,
    d_mlp=256,
    n_ctx=256,
    d_vocab=len(tokenizer),
    act_fn="gelu",
    normalization_type="LN",
    seed=0,
)
model = HookedTransformer(cfg)

suite = default_suite(tokenizer, n_per_set=8)
report = Audit(
    model,
    tokenizer=tokenizer,
    hooks=["blocks.*.hook_resid_post"],
    suite=suite,
    config=AuditConfig(max_seqs=8, random_init_control=False, n_boot=100, concepts=["language"]),
    out_dir="own-model-report",
).run()
profiles = report.frame("sparsity.profiles")
print(profiles.query("basis == 'raw' and metric == 'hoyer' and variant == 'unmasked'").head())
print(report.frame("verdict.hooks"))
