"""Audit the embedded default model from Python on a small suite, and read the answer back.

Run: python examples/python_api.py   (about a minute on 2 CPU cores)
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
    config=AuditConfig(max_seqs=16, random_init_control=False, n_boot=200),
    out_dir="example-report",
).run()

# the answer: one line per hook
for hook in report.verdict.hooks:
    print(f"{hook.hook:28s} {hook.status_counts} untrusted because: {hook.decisive_counts}")

# the evidence as a table: raw-basis Hoyer (token mean) on each shifted set
rows = report.frame("verdict.rows")
hoyer = rows.query("metric == 'hoyer' and reduce == 'mean' and basis == 'raw' and target_kind == 'set'")
print(hoyer[["hook", "target", "value", "direction", "status", "decisive", "flags"]].to_string(index=False))
print("report written to example-report/report.md")
