"""Renderings of a :class:`~fer_diag.report.comparison.Comparison`: Markdown, HTML, terminal, CKA heatmaps.

They arrange the comparison's numbers and compute nothing new (beyond picking the
largest differences to show first). Every rendering opens with the two answers:
same behaviour (measured, with its thresholds) and different inside (CKA, and how
far the raw-basis diagnostics moved).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from rich.console import Console
from rich.table import Table

from fer_diag.report import views
from fer_diag.report.comparison import Comparison, DiffSummary, LayerPair
from fer_diag.report.html import render_html
from fer_diag.report.markdown import table
from fer_diag.report.views import fmt, fmt_ci

TOP_ROWS = 15


# --------------------------------------------------------------------------- answers
def behaviour_answer(c: Comparison) -> str:
    t = c.behaviour.thresholds
    rule = (
        f"top-1 agreement ≥ {t.agreement_min}, mean KL ≤ {t.kl_max:g} nats both ways, |ΔNLL| and its CI within "
        f"±{t.nll_diff_max}, on every text set"
    )
    if c.behaviour.identical:
        return f"Identically performing on this suite: **yes** ({rule})."
    shown = "; ".join(c.behaviour.reasons[:4]) + (" …" if len(c.behaviour.reasons) > 4 else "")
    return f"Identically performing on this suite: **no** ({rule}) — {shown}."


def _span(values: list[float | None]) -> str:
    vals = [v for v in values if v is not None and v == v]
    return f"{min(vals):.3f} … {max(vals):.3f} (mean {np.mean(vals):.3f})" if vals else "–"


def inside_answer(c: Comparison) -> str:
    pairs = c.similarity.by_depth
    level = "token" if c.similarity.token_level else "pooled"
    cka = [getattr(p, f"cka_{level}") for p in pairs]
    knn = [getattr(p, f"knn_{level}") for p in pairs]
    return (
        f"Matched layers (by depth, {level} vectors): debiased CKA {_span(cka)}, mutual {c.similarity.knn_k}-NN "
        f"{_span(knn)}."
    )


def _moved(s: DiffSummary) -> str:
    return f"{s.basis} {s.metric}: mean |Δ| {fmt(s.mean_abs_diff)}, max |Δ| {fmt(s.max_abs_diff)}"


def diagnostics_answer(c: Comparison) -> list[str]:
    d = c.diagnostics
    if d is None:
        return []
    lines = [
        "Sparsity profiles, B − A (mean over windows): " + "; ".join(_moved(s) for s in _headline(d.profile_summary)),
        "Familiarity AUROCs, B − A: " + "; ".join(_moved(s) for s in _headline(d.auroc_summary)),
        f"Verdict rows whose status differs: {d.verdict_changed} of {len(d.verdict_rows)}.",
    ]
    return lines


def _headline(summary: list[DiffSummary]) -> list[DiffSummary]:
    """The summaries of the headline metrics of each basis (and the NLL baseline)."""
    return [s for s in summary if s.metric in views.headline_metrics(s.basis) or s.basis == "baseline"]


# --------------------------------------------------------------------------- Markdown
def _title(c: Comparison) -> str:
    a, b = c.model_a, c.model_b
    return "\n".join(
        [
            f"# fer-diag compare — {a.name} vs {b.name}",
            "",
            f"A: {a.name} ({a.hf_class}, {a.n_layers} layers, d_model {a.d_model}, {a.tokenizer}). "
            f"B: {b.name} ({b.hf_class}, {b.n_layers} layers, d_model {b.d_model}, {b.tokenizer}). "
            f"Pair: {c.pair}. fer-diag {c.fer_diag_version}, comparison schema {c.schema_version}, {c.created}.",
        ]
    )


def _answer(c: Comparison) -> str:
    lines = [
        "## Answer",
        "",
        f"- **Same behaviour?** {behaviour_answer(c)}",
        f"- **Different inside?** {inside_answer(c)}",
    ]
    lines += [f"- {x}" for x in diagnostics_answer(c)]
    return "\n".join(lines)


def _behaviour(c: Comparison) -> str:
    rows = [
        [
            r.set,
            r.kind,
            str(r.n_windows),
            str(r.n_tokens),
            fmt(r.top1_agreement, 4),
            fmt(r.kl_ab),
            fmt(r.kl_ba),
            fmt(r.nll_a),
            fmt(r.nll_b),
            fmt_ci(r.nll_diff, r.nll_diff_ci, 4),
        ]
        for r in c.behaviour.rows
    ]
    unit = c.behaviour.rows[0].nll_unit if c.behaviour.rows else "nats/token"
    header = [
        "text set",
        "kind",
        "windows",
        "tokens",
        "top-1 agree",
        "KL(A‖B)",
        "KL(B‖A)",
        "NLL A",
        "NLL B",
        "ΔNLL B−A",
    ]
    note = f"NLL in {unit}; ΔNLL with a paired bootstrap 95 % CI over windows. KL in nats per token."
    return "\n".join(["## Behaviour", "", note, "", table(header, rows)])


def _pairs_table(pairs: list[LayerPair], token: bool) -> str:
    header = ["hook A", "hook B", "depth A", "depth B", "CKA pooled", "CKA pooled (biased)", "kNN pooled"]
    header += ["CKA token", "CKA token (biased)", "kNN token"] if token else []
    rows = []
    for p in pairs:
        row = [p.hook_a, p.hook_b, fmt(p.depth_a, 2), fmt(p.depth_b, 2)]
        row += [fmt(p.cka_pooled, 4), fmt(p.cka_pooled_biased, 4), fmt(p.knn_pooled)]
        row += [fmt(p.cka_token, 4), fmt(p.cka_token_biased, 4), fmt(p.knn_token)] if token else []
        rows.append(row)
    return table(header, rows)


def _similarity(c: Comparison) -> str:
    s = c.similarity
    parts = [
        "## Representational similarity",
        "",
        f"{s.estimator}. {s.n_pooled} pooled vectors (one per window), {s.n_tokens} sampled token positions, "
        f"k = {s.knn_k}." + (f" {s.token_note}." if s.token_note else ""),
        "",
        "### Layers matched by relative depth",
        "",
        _pairs_table(s.by_depth, s.token_level),
        "",
    ]
    same = [p.hook_b for p in s.by_depth] == [p.hook_b for p in s.by_cka]
    if same:
        parts += ["Matching each hook of A to its best-CKA hook of B gives the same pairs.", ""]
    else:
        parts += ["### Layers matched by best CKA", "", _pairs_table(s.by_cka, s.token_level), ""]
    parts += [f"![{name}]({path})" for name, path in c.plots.items() if name.startswith("cka_")]
    return "\n".join(parts)


def _top(rows: list, n: int = TOP_ROWS) -> list:
    return sorted((r for r in rows if r.diff is not None), key=lambda r: -abs(r.diff))[:n]


def _summary_table(summary: list[DiffSummary]) -> str:
    rows = [
        [s.basis, s.metric, str(s.n), fmt(s.mean_abs_diff), fmt(s.max_abs_diff), str(s.n_ci_excludes_0)]
        for s in summary
    ]
    return table(["basis", "metric", "rows", "mean abs(B − A)", "max abs(B − A)", "CIs excluding 0"], rows)


def _diagnostics(c: Comparison) -> str:
    d = c.diagnostics
    if d is None:
        return ""
    parts = ["## Diagnostics side by side", ""]
    if d.reports:
        parts += ["Full audits: " + ", ".join(f"[{k.upper()}]({v})" for k, v in d.reports.items()) + ".", ""]
    parts += [
        "Hooks paired by relative depth: " + ", ".join(f"{a} ↔ {b}" if a != b else a for a, b in d.hook_pairs) + ".",
        "",
        "### Sparsity profiles (B − A, over hooks × text sets)",
        "",
        "Raw-basis metrics move under a change of basis; the participation ratio (covariance, rotation-invariant) and "
        "SAE latents read by matched SAEs do not.",
        "",
        _summary_table(d.profile_summary),
        "",
        "Largest differences (mean over windows; normal 95 % CI of B − A):",
        "",
        table(
            ["basis", "hook A", "hook B", "set", "metric", "A", "B", "B − A"],
            [
                [r.basis, r.hook_a, r.hook_b, r.set, r.metric, fmt(r.a), fmt(r.b), fmt_ci(r.diff, r.diff_ci, 3)]
                for r in _top(d.profiles)
            ],
        ),
        "",
        "### Familiarity AUROCs (direction-free, B − A)",
        "",
        _summary_table(d.auroc_summary),
        "",
        table(
            ["source", "basis", "hook A", "set", "metric", "reduce", "A", "B", "B − A", "direction A / B"],
            [
                [
                    r.source,
                    r.basis or "–",
                    r.hook_a or "–",
                    r.set,
                    r.metric,
                    r.reduce,
                    fmt_ci(r.a, r.a_ci),
                    fmt_ci(r.b, r.b_ci),
                    fmt_ci(r.diff, r.diff_ci),
                    f"{r.direction_a} / {r.direction_b}",
                ]
                for r in _top(d.familiarity)
            ],
        ),
        "",
        "### Verdicts",
        "",
        f"{d.verdict_changed} of {len(d.verdict_rows)} verdict rows change status between A and B.",
        "",
        table(
            ["hook A", "hook B", "trusted A / B", "caution A / B", "untrusted A / B"],
            [
                [
                    h.hook_a,
                    h.hook_b,
                    f"{h.trusted_a} / {h.trusted_b}",
                    f"{h.caution_a} / {h.caution_b}",
                    f"{h.untrusted_a} / {h.untrusted_b}",
                ]
                for h in d.verdict_hooks
            ],
        ),
        "",
    ]
    changed = [r for r in d.verdict_rows if r.status_a != r.status_b][:TOP_ROWS]
    if changed:
        parts += [
            table(
                ["hook A", "basis", "metric", "reduce", "target", "A", "B", "value A / B"],
                [
                    [
                        r.hook_a,
                        r.basis,
                        r.metric,
                        r.reduce,
                        r.target,
                        f"{r.status_a} ({r.decisive_a or '–'})",
                        f"{r.status_b} ({r.decisive_b or '–'})",
                        f"{fmt(r.value_a)} / {fmt(r.value_b)}",
                    ]
                    for r in changed
                ],
            ),
            "",
        ]
    for extra in d.extras:
        parts += [
            f"### {extra.name} (A, B and B − A)",
            "",
            table(extra.columns, [[fmt(v) for v in row] for row in extra.rows[:TOP_ROWS]]),
            "",
        ]
    return "\n".join(parts)


def _run(c: Comparison) -> str:
    sets = table(
        ["text set", "kind", "level", "windows", "tokens", "source"],
        [[s.name, s.kind, fmt(s.level), str(s.n_windows), str(s.n_tokens), s.source] for s in c.text_sets],
    )
    out = [
        "## Text sets and run",
        "",
        sets,
        "",
        "Run time: " + ", ".join(f"{k} {v:.0f} s" for k, v in c.seconds.items()),
    ]
    if c.skipped_sets:
        out += ["", "Skipped: " + "; ".join(c.skipped_sets)]
    return "\n".join(out)


def render_comparison_markdown(c: Comparison) -> str:
    parts = [_title(c), _answer(c), _behaviour(c), _similarity(c), _diagnostics(c), _run(c)]
    return "\n\n".join(p for p in parts if p) + "\n"


# --------------------------------------------------------------------------- plots
def cka_heatmaps(c: Comparison, out_dir: Path) -> dict[str, str]:
    """One PNG per level: the hook × hook debiased CKA map, depth matches outlined."""
    plot_dir = out_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    matched = {(p.hook_a, p.hook_b) for p in c.similarity.by_depth}
    for h in c.similarity.heatmaps:
        values = np.array(h.values, dtype=float)
        fig, ax = plt.subplots(figsize=(1.6 + 0.22 * len(h.hooks_b), 1.2 + 0.2 * len(h.hooks_a)))
        im = ax.imshow(values, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        for i, ha in enumerate(h.hooks_a):
            for j, hb in enumerate(h.hooks_b):
                if (ha, hb) in matched:
                    ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=1))
        ax.set_yticks(range(len(h.hooks_a)), [str(views.layer_of(x)) for x in h.hooks_a], fontsize=6)
        ax.set_xticks(range(len(h.hooks_b)), [str(views.layer_of(x)) for x in h.hooks_b], fontsize=6)
        ax.set_ylabel(f"A: {c.model_a.name} (layer)")
        ax.set_xlabel(f"B: {c.model_b.name} (layer)")
        ax.set_title(f"debiased linear CKA, {h.level} vectors (red: matched by depth)", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.04)
        fig.tight_layout()
        path = plot_dir / f"cka_{h.level}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths[path.stem] = str(path.relative_to(out_dir))
    return paths


def write_comparison(c: Comparison, out_dir: str | Path) -> Path:
    """comparison.json, comparison.md, comparison.html and plots/ in ``out_dir``; returns the JSON path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    c.plots = cka_heatmaps(c, out)
    md = render_comparison_markdown(c)
    (out / "comparison.md").write_text(md)
    (out / "comparison.html").write_text(
        render_html(md, out).replace("<title>fer-diag report", "<title>fer-diag compare")
    )
    return c.to_json(out / "comparison.json")


# --------------------------------------------------------------------------- terminal
def print_comparison(c: Comparison, console: Console | None = None) -> None:
    console = console or Console()
    console.print(f"[bold]{c.model_a.name}[/] vs [bold]{c.model_b.name}[/] ({c.pair})")
    console.print("same behaviour? " + behaviour_answer(c).replace("**", ""))
    console.print("different inside? " + inside_answer(c))
    for line in diagnostics_answer(c):
        console.print("  " + line)
    t = Table(title="behaviour per text set")
    for col in ("text set", "top-1 agree", "KL(A‖B)", "KL(B‖A)", "ΔNLL B−A [CI]"):
        t.add_column(col, justify="left" if col == "text set" else "right")
    for r in c.behaviour.rows:
        t.add_row(r.set, fmt(r.top1_agreement, 4), fmt(r.kl_ab), fmt(r.kl_ba), fmt_ci(r.nll_diff, r.nll_diff_ci, 4))
    console.print(t)
    level = "token" if c.similarity.token_level else "pooled"
    t = Table(title=f"matched layers (by depth; best-CKA match of B in the last column), {level} vectors")
    for col in ("hook A", "hook B", "CKA", "CKA biased", "mutual kNN", "best-CKA hook B"):
        t.add_column(col, justify="left" if col.startswith("hook") or col.startswith("best") else "right")
    for p, q in zip(c.similarity.by_depth, c.similarity.by_cka, strict=True):
        t.add_row(
            p.hook_a,
            p.hook_b,
            fmt(getattr(p, f"cka_{level}"), 4),
            fmt(getattr(p, f"cka_{level}_biased"), 4),
            fmt(getattr(p, f"knn_{level}")),
            f"{q.hook_b} ({fmt(getattr(q, f'cka_{level}'), 3)})",
        )
    console.print(t)
