"""Audit the embedded default model from Python on a small suite, and read the numbers back.

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

for row in report.familiarity["detection"]:
    if row["source"] == "sparsity" and row["metric"] == "hoyer" and row["reduce"] == "mean" and not row["masked"]:
        print(f"{row['hook']:28s} {row['set_name']:12s} AUROC {row['auroc_oriented']:.2f} {row['sparsity_direction']}")
print("report written to example-report/report.md")
