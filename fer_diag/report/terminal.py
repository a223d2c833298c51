"""Terminal summary of a report (rich): one row per hook, the numbers a reader checks first."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from fer_diag.report import views
from fer_diag.report.schema import Report
from fer_diag.report.views import fmt


def _best_shift(r: Report, basis: str, hook: str, metric: str) -> str:
    rows = [
        x
        for x in views.detection_rows(r, source="sparsity", basis=basis, hook=hook, metric=metric, masked=False)
        if x.kind == "shifted" and x.reduce in ("mean", "window")
    ]
    if not rows:
        return "–"
    lo = min(x.auroc_oriented for x in rows)
    hi = max(x.auroc_oriented for x in rows)
    return f"{fmt(lo, 2)}–{fmt(hi, 2)}"


def _rho(r: Report, basis: str, hook: str, metric: str, axis: str = "shift") -> str:
    rows = views.graded_rows(r, source="sparsity", basis=basis, hook=hook, metric=metric, masked=False, axis=axis)
    rows = [g for g in rows if g.reduce in ("mean", "window")]
    return fmt(rows[0].spearman_rho, 2) if rows else "–"


def print_summary(r: Report, console: Console | None = None) -> None:
    console = console or Console()
    ref = views.reference_set(r) or "?"
    shifted = views.set_names(r, ["shifted"])
    far = next((s for s in reversed(views.detection_sets(r)) if s not in shifted), None)
    for basis in views.bases(r):
        metric = views.headline_metrics(basis)[0]
        caption = f"ID = {ref}" + (f", far = {far}" if far else "") + "; AUROC direction-free, range over shifted sets"
        t = Table(title=f"{r.model.name} — {metric} ({basis} basis)", caption=caption)
        t.add_column("hook", no_wrap=True)
        t.add_column(f"{metric} ID", justify="right")
        if far:
            t.add_column(f"{metric} far", justify="right")
        t.add_column("AUROC", justify="right")
        t.add_column("ρ shift", justify="right")
        for hook in r.hooks:
            if hook not in views.profiles(r, basis):
                continue
            row = [hook, fmt(views.profile_value(r, basis, hook, ref, metric))]
            if far:
                row.append(fmt(views.profile_value(r, basis, hook, far, metric)))
            row += [_best_shift(r, basis, hook, metric), _rho(r, basis, hook, metric)]
            t.add_row(*row)
        console.print(t)
    base = [views.baseline_auroc(r, s, "nll") for s in shifted]
    base = [b.auroc_oriented for b in base if b]
    if base:
        console.print(f"perplexity baseline AUROC over shifted sets: {fmt(min(base), 2)}–{fmt(max(base), 2)}")
    first = r.massive.first_layer if r.massive else None
    if first is not None:
        console.print(f"massive activations from layer {first} (see report.md)")
    if r.skipped_sets:
        console.print("[yellow]skipped:[/] " + "; ".join(r.skipped_sets))
