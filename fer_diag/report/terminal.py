"""Terminal summary of a report (rich): the verdict first, then one row per hook with the numbers a reader checks."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fer_diag.report import views
from fer_diag.report.schema import Report
from fer_diag.report.views import fmt

_STATUS_STYLE = {"TRUSTED": "green", "CAUTION": "yellow", "UNTRUSTED": "red"}
_DIRECTION_WORD = {
    "sparser_is_ood": "sparser",
    "denser_is_ood": "denser",
    "higher_is_ood": "higher",
    "lower_is_ood": "lower",
}


def _span(values: list[float]) -> str:
    lo, hi = fmt(min(values), 2), fmt(max(values), 2)
    return lo if lo == hi else f"{lo}–{hi}"


def _by_direction(rows, key) -> str:
    """AUROC spans per direction (``sparser 0.61–0.75 · denser 0.92``): never one range over both directions."""
    groups: dict[str, list[float]] = {}
    for x in rows:
        groups.setdefault(key(x) or "none", []).append(x.auroc_oriented)
    return " · ".join(f"{_DIRECTION_WORD.get(d, d)} {_span(v)}" for d, v in groups.items()) or "–"


def _best_shift(r: Report, basis: str, hook: str, metric: str) -> str:
    rows = [
        x
        for x in views.detection_rows(r, source="sparsity", basis=basis, hook=hook, metric=metric, masked=False)
        if x.kind == "shifted" and x.reduce in ("mean", "window")
    ]
    return _by_direction(rows, lambda x: x.sparsity_direction) if rows else "–"


def _rho(r: Report, basis: str, hook: str, metric: str, axis: str = "shift") -> str:
    rows = views.graded_rows(r, source="sparsity", basis=basis, hook=hook, metric=metric, masked=False, axis=axis)
    rows = [g for g in rows if g.reduce in ("mean", "window")]
    return fmt(rows[0].spearman_rho, 2) if rows else "–"


def print_verdict(r: Report, console: Console) -> None:
    """The answer: one sentence, then per hook the trusted signals, the cautions and why the rest is untrusted."""
    view = views.verdict_view(r)
    if view is None:
        console.print("[bold]Verdict:[/] none in this report (it needs the familiarity analysis).")
        return
    if not view.rows:
        console.print("[bold]Verdict:[/] no sparsity score was compared on a shifted set or graded axis.")
        return
    style = "green" if view.hooks_with("TRUSTED") else "yellow" if view.hooks_with("CAUTION") else "red"
    console.print(f"[bold]Verdict — {escape(r.model.name)}:[/] [{style}]{escape(views.overall_answer(view))}[/]")
    if console.width < 140:  # a narrow terminal: one block of lines per hook instead of a squeezed table
        _print_verdict_lines(view, console)
    else:
        _print_verdict_table(view, console)
    cfg = r.verdict.config
    console.print("thresholds: " + views.fmt_setting(cfg.model_dump()), style="dim")
    methods = dict(r.verdict.ci_methods)
    if methods:
        console.print("intervals: " + "; ".join(f"{k}: {m}" for k, m in methods.items()), style="dim")


def _counts_cell(view, hook: str) -> str:
    h = view.summaries.get(hook)
    counts = h.status_counts if h is not None else view.status_counts(view.hook_rows(hook))
    return " · ".join(
        f"[{_STATUS_STYLE[s]}]{views.STATUS_ABBR[s]} {counts.get(s, 0)}[/]"
        if counts.get(s)
        else f"{views.STATUS_ABBR[s]} 0"
        for s in views.STATUSES
    )


def _trusted(view, hook: str, sep: str) -> str:
    h = view.summaries.get(hook)
    out = sep.join(escape(x) for x in (h.trusted[: views.BEST_FEW] if h else []))
    if h and len(h.trusted) > views.BEST_FEW:
        out += f"{sep}(+{len(h.trusted) - views.BEST_FEW} more)"
    return out or "none"


def _print_verdict_lines(view, console: Console) -> None:
    for hook in view.hooks:
        a = views.hook_answer(view, hook)
        console.print(f"[bold]{escape(hook)}[/]  {_counts_cell(view, hook)}")
        console.print(f"  trusted: {_trusted(view, hook, '; ')}")
        for label, key in (("caution", "caution_flags"), ("untrusted", "untrusted"), ("signals", "directions")):
            if a[key]:
                console.print(f"  {label}: {escape(a[key])}")


def _print_verdict_table(view, console: Console) -> None:
    t = Table(
        caption=f"T/C/U: targets (shifted sets, graded axes) × scores trusted / caution / untrusted; "
        f"at most {views.BEST_FEW} signals named per hook, best first",
        show_lines=True,
        expand=True,
    )
    t.add_column("hook", no_wrap=True)
    t.add_column("T · C · U", no_wrap=True)
    t.add_column("trusted", ratio=3, overflow="fold")
    t.add_column("caution (flags)", ratio=2, overflow="fold")
    t.add_column("untrusted (decisive flag)", ratio=2, overflow="fold")
    t.add_column("signals by direction", ratio=2, overflow="fold")
    for hook in view.hooks:
        a = views.hook_answer(view, hook)
        t.add_row(
            escape(hook),
            _counts_cell(view, hook),
            _trusted(view, hook, "\n"),
            escape(a["caution_flags"]),
            escape(a["untrusted"]),
            escape(a["directions"]).replace("; ", "\n"),
        )
    console.print(t)


def _print_probes(r: Report, console: Console) -> None:
    """Per concept: the best raw-basis layer, accuracy at each SAE hook (raw / SAE / 5-sparse), FER index there."""
    if not r.probes or not r.probes.rows:
        return
    fer = {(x.concept, x.hook, x.basis): x.index for x in (r.fer.rows if r.fer else [])}
    t = Table(
        title="concepts: linear probe accuracy (5-fold CV) and FER index",
        caption="best raw layer; at each SAE hook raw / SAE / 5-sparse accuracy and the SAE basis's FER index",
    )
    for col in ("concept", "chance", "best raw layer", "at SAE hooks"):
        t.add_column(col, justify="left" if col == "concept" else "right")
    sae_hooks = list(r.saes)
    for c in r.probes.concepts:
        rows = [x for x in r.probes.rows if x.concept == c.name]
        raw = [x for x in rows if x.basis == "raw" and x.hook in r.hooks]
        best = max(raw, key=lambda x: x.accuracy) if raw else None
        at = []
        for hook in sae_hooks:
            get = {x.basis: x for x in rows if x.hook == hook}
            if "raw" in get and "sae" in get:
                index = fer.get((c.name, hook, "sae"))
                cell = f"L{views.layer_of(hook)} {fmt(get['raw'].accuracy, 2)}/{fmt(get['sae'].accuracy, 2)}/"
                cell += fmt(get["sae"].sparse_accuracy.get(5), 2)
                at.append(cell + (f" FER {fmt(index, 2)}" if index is not None else ""))
        t.add_row(
            c.name,
            fmt(rows[0].chance, 2) if rows else "–",
            f"L{views.layer_of(best.hook)} {fmt(best.accuracy, 2)}" if best else "–",
            " · ".join(at) or "–",
        )
    console.print(t)


def print_summary(r: Report, console: Console | None = None) -> None:
    console = console or Console()
    print_verdict(r, console)
    ref = views.reference_set(r) or "?"
    shifted = views.set_names(r, ["shifted"])
    far = next((s for s in reversed(views.detection_sets(r)) if s not in shifted), None)
    for basis in views.bases(r):
        metric = views.headline_metrics(basis)[0]
        caption = (
            f"ID = {ref}" + (f", far = {far}" if far else "") + "; AUROC direction-free, its range over shifted sets "
            "per direction (sparser / denser is OOD)"
        )
        t = Table(title=f"{r.model.name} — {metric} ({basis} basis)", caption=caption)
        t.add_column("hook", no_wrap=True)
        t.add_column(f"{metric} ID", justify="right")
        if far:
            t.add_column(f"{metric} far", justify="right")
        t.add_column("AUROC by direction", justify="right")
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
    base = [b for b in (views.baseline_auroc(r, s, "nll") for s in shifted) if b]
    if base:
        spans = _by_direction(base, lambda b: b.direction)
        console.print(f"perplexity baseline AUROC over shifted sets (by which NLL is OOD): {spans}")
    _print_probes(r, console)
    first = r.massive.first_layer if r.massive else None
    if first is not None:
        console.print(f"massive activations from layer {first} (see report.md)")
    if r.skipped_sets:
        console.print("[yellow]skipped:[/] " + "; ".join(r.skipped_sets))
