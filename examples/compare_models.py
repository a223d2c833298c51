"""Same behaviour, different inside: compare SmolLM2 with a rotation of itself and with a random-init copy.

``compare`` measures both halves on one page: behaviour (top-1 agreement, KL both
ways, NLL difference with CI: "identically performing on this suite") and the
inside (debiased CKA and mutual k-NN per matched layer). A function-preserving
rotation of the residual stream is identical on both counts — CKA is
rotation-invariant — yet moves every raw-basis sparsity number (the audits side by
side show it); a random-init copy differs on both.

Run: python examples/compare_models.py   (a few minutes on 2 CPU cores)
"""

from fer_diag import Suite
from fer_diag.compare import CompareConfig, compare
from fer_diag.data.suite import default_suite
from fer_diag.models import load_model

loaded = load_model("smollm2-135m")
full = default_suite(loaded.tokenizer, n_per_set=8)
suite = Suite([full["fortunes_en"], full["fortunes_de"], full["python_code"]])
hooks = [f"blocks.{layer}.hook_resid_post" for layer in (0, 7, 15, 22, 29)]
quick = CompareConfig(max_seqs=8, token_samples=512, audit=None)  # behaviour and similarity only

for other in ("rotated:0", "random-init"):
    c = compare(loaded, other, hooks=hooks, suite=suite, config=quick, progress=False)
    print(f"\n{c.model_a.name} vs {c.model_b.name}: identically performing on this suite: {c.behaviour.identical}")
    print(c.frame("behaviour")[["set", "top1_agreement", "kl_ab", "kl_ba", "nll_diff"]].to_string(index=False))
    print(c.frame("layers.by_depth")[["hook_a", "cka_token", "cka_pooled", "knn_token"]].to_string(index=False))

# the rotated pair with both audits side by side (raw-basis sparsity moves, SAE latents and participation ratio do not)
c = compare(loaded, "rotated:0", hooks=hooks, suite=suite, config=CompareConfig(max_seqs=8), out_dir="compare-report")
summary = c.frame("diagnostics.profile_summary")
print(summary.query("metric in ['hoyer', 'participation_ratio', 'l0']").to_string(index=False))
print("written to compare-report/comparison.md")
