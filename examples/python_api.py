"""Audit the embedded default model from Python on a small suite, and read the answer back.

Run: python examples/python_api.py   (about two minutes on 2 CPU cores)
"""

from fer_diag import Audit, AuditConfig, Suite, load_model
from fer_diag.data.suite import default_suite

loaded = load_model("smollm2-135m")
full = default_suite(loaded.tokenizer, n_per_set=16)
suite = Suite([full["fortunes_en"], full["fortunes_de"], full["python_code"]])

report = Audit(
    loaded,
    hooks=["blocks.3.hook_resid_post", "blocks.15.hook_resid_post"],
    suite=suite,
    # two built-in concept sets for the probes and the FER scores, 8 examples per class
    config=AuditConfig(
        max_seqs=16,
        random_init_control=False,
        n_boot=200,
        concepts=["language", "first_letter"],
        concept_per_class=8,
        fer_boot=0,
    ),
    out_dir="example-report",
).run()

# the answer: one line per hook
for hook in report.verdict.hooks:
    print(f"{hook.hook:28s} {hook.status_counts} untrusted because: {hook.decisive_counts}")

# the evidence as a table: raw-basis Hoyer (token mean) on each shifted set
rows = report.frame("verdict.rows")
hoyer = rows.query("metric == 'hoyer' and reduce == 'mean' and basis == 'raw' and target_kind == 'set'")
print(hoyer[["hook", "target", "value", "direction", "status", "decisive", "flags"]].to_string(index=False))
# what the hooks carry: probe accuracy (raw vs SAE latents vs 5 latents) and FER index per concept
probes = report.frame("probes")
print(probes[["concept", "hook", "basis", "accuracy", "chance", "selectivity", "transfer_drop"]].to_string(index=False))
fer = report.frame("fer")
print(fer[["concept", "hook", "basis", "index", "split_count", "mixed_selectivity"]].to_string(index=False))
print("report written to example-report/report.md")
