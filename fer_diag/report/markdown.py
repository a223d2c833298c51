"""Markdown rendering of a report (every number comes from the report)."""

from __future__ import annotations

from fer_diag.report import views
from fer_diag.report.schema import Report
from fer_diag.report.sections import Profile
from fer_diag.report.views import fmt, fmt_ci


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _title(r: Report) -> str:
    return "\n".join(
        [
            f"# fer-diag audit — {r.model.name}",
            "",
            f"{r.model.hf_class}, {r.model.n_layers} layers, d_model {r.model.d_model}. "
            f"{len(r.hooks)} hooks, {len(r.text_sets)} text sets, {len(r.saes)} SAE(s). "
            f"fer-diag {r.fer_diag_version}, report schema {r.schema_version}, {r.created}.",
        ]
    )


def _overview(r: Report) -> str:
    sets = table(
        ["text set", "kind", "level", "windows", "tokens", "source"],
        [[s.name, s.kind, fmt(s.level), str(s.n_windows), str(s.n_tokens), s.source] for s in r.text_sets],
    )
    out = [
        "## Text sets and run",
        "",
        sets,
        "",
        "Run time: " + ", ".join(f"{k} {v:.0f} s" for k, v in r.run.seconds.items()) + ".",
    ]
    if r.skipped_sets:
        out += ["", "Skipped: " + "; ".join(r.skipped_sets)]
    if r.run.resumed_sets:
        out += ["", "Taken from an interrupted earlier run: " + ", ".join(r.run.resumed_sets)]
    return "\n".join(out)


def _profiles(r: Report, basis: str) -> str:
    sets = views.set_names(r, kinds=["in_distribution", "shifted"])
    parts = [f"## Sparsity profiles ({basis} basis)", ""]
    for metric in views.headline_metrics(basis):
        parts.append(f"**{metric}** — mean over windows of the per-window token mean (BOS and padding excluded):")
        parts.append("")
        rows = [
            [h] + [fmt(views.profile_value(r, basis, h, s, metric)) for s in sets]
            for h in r.hooks
            if h in views.profiles(r, basis)
        ]
        parts += [table(["hook", *sets], rows), ""]
    return "\n".join(parts)


def _familiarity(r: Report, basis: str) -> str:
    shifted = views.detection_sets(r)
    parts = [
        f"## Familiarity signal ({basis} basis)",
        "",
        "AUROC with OOD = positive, direction-free (max(A, 1−A)) with bootstrap 95 % CI, and the direction "
        "(*sparser*: the shifted set is sparser). `masked`: massive-activation dims removed. "
        "Baselines on the same windows are the first rows. The last column is the far end of the graded shift.",
        "",
    ]
    header = ["score", *shifted]
    rows = []
    for base in views.BASELINES:
        cells = []
        for s in shifted:
            b = views.baseline_auroc(r, s, base)
            cells.append("–" if b is None else fmt_ci(b.auroc_oriented, b.auroc_oriented_ci))
        rows.append([f"baseline: {base}", *cells])
    for hook in r.hooks:
        for metric in views.headline_metrics(basis):
            for masked in (False, True):
                cells = []
                for s in shifted:
                    rs = views.detection_rows(
                        r, source="sparsity", basis=basis, hook=hook, metric=metric, set_name=s, masked=masked
                    )
                    rs = [x for x in rs if x.reduce in ("mean", "window")]
                    if not rs:
                        cells.append("–")
                        continue
                    x = rs[0]
                    word = {"sparser_is_ood": "sparser", "denser_is_ood": "denser"}.get(x.sparsity_direction, "")
                    cells.append(f"{fmt_ci(x.auroc_oriented, x.auroc_oriented_ci)} {word}")
                if all(c == "–" for c in cells):
                    continue
                if masked and all(
                    x.masked_same_as_unmasked
                    for x in views.detection_rows(r, source="sparsity", basis=basis, hook=hook, metric=metric)
                ):
                    continue
                rows.append([f"{hook} {metric}{' (masked)' if masked else ''}", *cells])
    parts.append(table(header, rows))
    return "\n".join(parts)


def _graded(r: Report, basis: str) -> str:
    rows = []
    for hook in r.hooks:
        for metric in views.headline_metrics(basis):
            for g in views.graded_rows(r, source="sparsity", basis=basis, hook=hook, metric=metric, masked=False):
                if g.reduce not in ("mean", "window"):
                    continue
                rows.append(
                    [
                        hook,
                        metric,
                        g.axis,
                        fmt_ci(g.spearman_rho, g.spearman_ci),
                        fmt_ci(g.pearson_r_means, g.pearson_ci),
                        str(g.sparsity_direction or "–"),
                    ]
                )
    for g in views.graded_rows(r, source="baseline"):
        rows.append(
            [
                "baseline",
                g.metric,
                g.axis,
                fmt_ci(g.spearman_rho, g.spearman_ci),
                fmt_ci(g.pearson_r_means, g.pearson_ci),
                "",
            ]
        )
    if not rows:
        return ""
    return "\n".join(
        [
            f"## Along the graded shift ({basis} basis)",
            "",
            "Spearman ρ(level, score) over windows (Fisher-z 95 % CI) and Pearson r of level vs per-level mean "
            "(Jin et al. 2026 convention, bootstrap CI).",
            "",
            table(["hook", "metric", "axis", "Spearman ρ", "Pearson r (level means)", "reading"], rows),
        ]
    )


def _massive(r: Report) -> str:
    m = r.massive
    if m is None:
        return ""
    rows = []
    for hook, h in sorted(m.hooks.items(), key=lambda kv: views.layer_of(kv[0])):
        for d in h.dims:
            rows.append(
                [
                    hook,
                    str(d.dim),
                    fmt(d.max_abs),
                    fmt(d.value_mean),
                    fmt(d.value_cv),
                    fmt(d.seq_frac),
                    f"{d.hits_first_position} / {d.hits_later_positions}",
                    fmt(h.energy_share_mean),
                    fmt(h.median_abs),
                ]
            )
    head = [
        "## Massive activations",
        "",
        f"Criterion (Sun et al. 2024): |h| > {fmt(m.abs_threshold)} and ≥ "
        f"{fmt(m.ratio)} × the layer's median |h|. First layer with any: "
        f"{fmt(m.first_layer)}.",
        "",
    ]
    if not rows:
        return "\n".join([*head, "None found on the hooked layers."])
    sc = m.scaffold
    if sc:
        head += [
            f"Scaffold test (Sun et al.) at `{sc.hook}`, dims {sc.dims} at position 0, "
            f"{sc.windows} in-distribution windows: mean NLL clean {fmt(sc.nll_clean)}, "
            f"set to their mean across inputs {fmt(sc.nll_mean)}, set to zero {fmt(sc.nll_zero)}.",
            "",
        ]
    header = [
        "hook",
        "dim",
        "max |h|",
        "mean value",
        "CV across inputs",
        "windows hit",
        "hits at pos 0 / later",
        "share of ‖h‖²",
        "median |h|",
    ]
    return "\n".join([*head, table(header, rows)])


def _control(r: Report) -> str:
    ctrl = r.control
    if not ctrl:
        return ""
    sets = ctrl.sets
    ref = sets[0]
    rows = []
    for hook in r.hooks:
        trained = [views.profile_value(r, "raw", hook, s, "hoyer") for s in sets]
        prof = ctrl.sparsity.profiles.get("raw", {}).get(hook, {})
        rand = [_seq_mean(prof.get(s), "hoyer") for s in sets]
        cells = []
        for t, q in zip(trained[1:], rand[1:], strict=True):
            gap_t = None if t is None or trained[0] is None else t - trained[0]
            gap_r = None if q is None or rand[0] is None else q - rand[0]
            cells.append(f"{fmt(gap_t)} / {fmt(gap_r)}")
        rows.append([hook, *cells])
    return "\n".join(
        [
            "## Learned or intrinsic? Trained vs random-init",
            "",
            f"Hoyer gap (shifted set − {ref}), trained model / randomly initialised copy with the same "
            "architecture and tokenizer. A gap present only in the trained model is learned.",
            "",
            table(["hook", *sets[1:]], rows),
        ]
    )


def _probes(r: Report) -> str:
    """Decodability per concept: accuracy per hook (raw, SAE), selectivity, k-sparse accuracy and transfer."""
    pr = r.probes
    if not pr or not pr.rows:
        return ""
    out = [
        "## Probes: which concepts can a linear probe read, and where?",
        "",
        f"Standardised logistic regression, stratified {pr.n_folds}-fold CV accuracy [Wilson 95 % CI]; control = "
        "the same probe on shuffled labels (selectivity = accuracy − control); k-sparse = the k features with the "
        "largest class-mean difference on the training fold; transfer = trained in-distribution, scored on the "
        "shifted twin (drop = accuracy − transfer).",
    ]
    ks = [k for k in (1, 5, 20) if k in pr.ks]
    for c in pr.concepts:
        rows = [x for x in pr.rows if x.concept == c.name]
        per_class = sorted(set(c.n_per_class.values()))
        out += [
            "",
            f"### {c.name} ({c.level} level, {len(c.classes)} classes, "
            f"{'/'.join(map(str, per_class))} examples per class, chance {fmt(rows[0].chance, 2) if rows else '–'})",
            "",
            f"Source: {c.source or '–'}. Twin: {c.twin_shift or 'none'} ({c.n_twin} examples).",
        ]
        out += [f"- {note}" for note in [*c.dropped, *c.notes]]
        header = ["hook", "basis", "accuracy", "control", "selectivity", *(f"{k}-sparse" for k in ks), "transfer drop"]
        body = [
            [
                x.hook,
                x.basis,
                fmt_ci(x.accuracy, x.accuracy_ci),
                fmt(x.control_accuracy, 2),
                fmt(x.selectivity, 2),
                *(fmt(x.sparse_accuracy.get(k), 2) for k in ks),
                fmt(x.transfer_drop, 2),
            ]
            for x in sorted(rows, key=lambda x: (views.layer_of(x.hook), x.basis))
        ]
        out += ["", table(header, body)]
    if pr.skipped:
        out += ["", "Concepts not run: " + "; ".join(pr.skipped)]
    return "\n".join(out)


FER_ABBR = {
    "split_count": "split",
    "absorption": "absorb",
    "context_fracture": "context",
    "graph_fragmentation": "fragm",
    "mixed_selectivity": "mixed",
    "cross_talk": "x-talk",
    "modularity_deficit": "modul",
}


def _fer(r: Report) -> str:
    """FER components and index per hook × basis × concept, with a plain line for each index above threshold."""
    fer = r.fer
    if not fer or not (fer.rows or fer.not_scored):
        return ""
    limit = r.verdict.config.fer_index_max if r.verdict else None
    out = [
        "## Fractured-entanglement (FER) scores",
        "",
        "Each component in [0, 1], 0 = clean (docs/metrics.md): fracture = split count, absorption, context "
        "fracture (in-distribution vs twin), co-activation graph fragmentation; entanglement = mixed selectivity, "
        "cross-talk, modularity deficit. Index = mean of the defined components [bias-shifted bootstrap CI]; "
        "– = not defined here. No published FER metric exists for language models: these are fer-diag's.",
    ]
    lines = []
    for hook, basis in dict.fromkeys((x.hook, x.basis) for x in fer.rows):
        rows = [x for x in fer.rows if (x.hook, x.basis) == (hook, basis)]
        header = ["concept", "index", *FER_ABBR.values(), "decodable"]
        body = [
            [
                x.concept,
                fmt_ci(x.index, x.index_ci),
                *(fmt(getattr(x, k), 2) for k in FER_ABBR),
                {True: "yes", False: "no", None: "–"}[x.decodable],
            ]
            for x in rows
        ]
        graphs = [f"`{path}`" for key, path in fer.graphs.items() if key.startswith(f"{hook}/{basis}/")]
        out += ["", f"### {hook} ({basis})" + (f" — co-activation graphs: {', '.join(graphs)}" if graphs else ""), ""]
        out += [table(header, body)]
        for x in rows:
            if limit is not None and x.index is not None and x.index > limit:
                worst = max(x.components_used, key=lambda k: getattr(x, k))
                state = "decodable but fractured" if x.decodable else "not decodable, and fractured"
                lines.append(
                    f"- {hook} ({basis}): **{x.concept}** is {state}: FER index {fmt(x.index, 2)} > {limit} "
                    f"(largest component: {worst.replace('_', ' ')} {fmt(getattr(x, worst), 2)})."
                )
    if lines:
        out += ["", f"Above the verdict's threshold (fer_index_max = {limit}):", "", *lines]
    if fer.not_scored:
        out += ["", "Not scored:", "", *(f"- {why}" for why in fer.not_scored)]
    return "\n".join(out)


def _seq_mean(prof: Profile | None, metric: str) -> float | None:
    """Unmasked mean over windows of ``metric`` in a profile (None when absent)."""
    side = None if prof is None else prof.metrics.get(metric, {}).get("unmasked")
    return None if side is None else side.seq_mean


def _plots(r: Report) -> str:
    shown = {name: path for name, path in r.plots.items() if not name.startswith(VERDICT_PLOT)}  # in the verdict
    if not shown:
        return ""
    return "\n".join(["## Plots", ""] + [f"![{name}]({path})" for name, path in shown.items()])


class Markdown(str):
    """The Markdown text of a report, carrying the report it renders (``.report``) so that
    :func:`fer_diag.report.html.render_html` can draw the verdict from the typed rows."""

    report: Report | None = None


def render_markdown(r: Report) -> Markdown:
    """The whole report as Markdown, opening with the verdict (title, then ``## Verdict``)."""
    from fer_diag.report.sae_sections import render_sae

    parts = [_title(r), render_verdict(r), _overview(r)]
    for basis in views.bases(r):
        parts += [_profiles(r, basis), _familiarity(r, basis), _graded(r, basis)]
    parts += [render_sae(r), _probes(r), _fer(r), _massive(r), _control(r), _plots(r)]
    out = Markdown("\n\n".join(p for p in parts if p) + "\n")
    out.report = r
    return out


# --------------------------------------------------------------------------- verdict
VERDICT_HEADING = "## Verdict"
#: name prefix of the hook × score heatmaps in ``report.plots``, one per basis: ``verdict_grid_raw``, …
#: (drawn by :func:`fer_diag.report.plots.verdict_grid`)
VERDICT_PLOT = "verdict_grid"
#: rows listed per flag in the "rows each flag decided" tables
FLAG_ROWS = 10


def _esc(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def verdict_answer(r: Report, view: views.VerdictView | None = None) -> str:
    """The answer: one sentence overall, then one line per hook (Markdown)."""
    view = view or views.verdict_view(r)
    if view is None:
        return (
            "No verdict in this report: it needs the familiarity analysis (reports written before the verdict "
            "existed have none). The tables below are measurements, not conclusions."
        )
    if not view.rows:
        return "No sparsity score was compared on a shifted set or graded axis: nothing to judge."
    lines = [
        f"**{views.overall_answer(view)}**",
        "",
        "Per hook — T trusted · C caution · U untrusted, counted over score × target (shifted set or graded axis); "
        f"trusted and caution signals best first (at most {views.BEST_FEW} named):",
        "",
    ]
    for hook in view.hooks:
        a = views.hook_answer(view, hook)
        lines.append(
            f"- **`{hook}`** ({a['counts']}) — **trusted:** {a['trusted']}. **Caution:** {a['caution']}. "
            f"**Untrusted:** {a['untrusted']}. **Signals by direction:** {a['directions']}."
        )
    return "\n".join(lines)


def verdict_legend(view: views.VerdictView) -> str:
    flags = views.flag_order(
        {f.name for r in view.rows for f in r.flags} | {r.decisive for r in view.rows if r.decisive}
    )
    return ", ".join(f"{views.flag_abbr(n)} = {views.flag_label(n)}" for n in flags)


def verdict_columns_note(quiet: list[views.Score]) -> str:
    if not quiet:
        return ""
    names = ", ".join(views.score_label(s) for s in quiet)
    return f"{len(quiet)} score(s) show no signal at any hook and are left out of the grid: {names}."


def verdict_plots(r: Report) -> dict[str, str]:
    """The verdict heatmaps among ``report.plots`` (one per basis), name → path."""
    return {name: path for name, path in r.plots.items() if name.startswith(VERDICT_PLOT)}


def _verdict_grid(r: Report, view: views.VerdictView) -> str:
    parts = [
        "### Hook × score",
        "",
        "One grid per basis. Each cell counts the targets (shifted sets and graded axes) of one score at one hook: "
        "T trusted, C caution, U untrusted, the untrusted ones by decisive flag (" + verdict_legend(view) + "). "
        "Every row with its evidence is in report.json (`verdict.rows`) and report.html.",
    ]
    for basis in view.bases:
        hooks, scores, quiet = view.grid(basis)
        parts += ["", f"**{basis} basis**", ""]
        if not scores:
            parts.append("No score shows a signal at any hook: every cell would read UNTRUSTED (no signal).")
            continue
        rows = [
            [f"`{hook}`"] + [_esc(views.cell_text(view.cells.get((hook, s), []))) or "·" for s in scores]
            for hook in hooks
        ]
        parts.append(table(["hook", *(_esc(views.score_label(s)) for s in scores)], rows))
        if quiet:
            parts += ["", verdict_columns_note(quiet)]
    for name, path in verdict_plots(r).items():
        parts += ["", f"![{name}]({path})"]
    return "\n".join(parts)


def verdict_thresholds(r: Report) -> str:
    """The thresholds (``verdict.config``) and the interval methods, as Markdown tables."""
    v = r.verdict
    if v is None:
        return ""
    fields = type(v.config).model_fields
    rows = [
        [f"`{k}`", views.fmt_setting(val), _esc(fields[k].description or "")]
        for k, val in v.config.model_dump().items()
    ]
    methods = dict(v.ci_methods)
    if r.familiarity is not None:
        for k, m in r.familiarity.settings.ci_methods.items():
            methods.setdefault(k, m)
    parts = ["### Thresholds", "", table(["setting", "value", "meaning"], rows)]
    if methods:
        parts += [
            "",
            "### Confidence intervals",
            "",
            table(["statistic", "interval"], [[k, _esc(m)] for k, m in methods.items()]),
        ]
    return "\n".join(parts)


def verdict_coverage(r: Report, view: views.VerdictView) -> str:
    """Flags that could not be raised here, and why (from the report's own sections)."""
    notes = []
    if not [b for b in views.bases(r, rotated=True) if b.startswith("raw@")]:
        notes.append("basis-dependent: not tested — the audit read no randomly rotated basis (`raw@rot*`).")
    by_note: dict[str, list[str]] = {}
    for row in view.rows:
        if row.basis_note:
            hooks = by_note.setdefault(row.basis_note, [])
            if row.hook not in hooks:
                hooks.append(row.hook)
    for note, hooks in by_note.items():
        notes.append(f"basis-dependent does not apply ({note}): " + ", ".join(f"`{h}`" for h in hooks) + ".")
    if r.sparsity is not None and not any(r.sparsity.massive_dims.values()):
        notes.append("carried by massive activations: cannot arise — no massive dims at the audited hooks.")
    if r.control is None:
        notes.append("not learned: not tested — the audit ran no random-init control.")
    no_nll = sum(1 for row in view.rows if row.signal and row.nll_value is None)
    if no_nll:
        notes.append(f"no better than perplexity: not tested on {no_nll} signal(s) without an NLL baseline.")
    if not notes:
        return ""
    return "\n".join(["### Not tested here", "", *(f"- {n}" for n in notes)])


def _flag_table(rows: list, n: int, name: str) -> tuple[list[str], list[list[str]], list]:
    """Header and cells of one flag's table: the ``n`` rows with the strongest signal, with the flag's evidence."""
    shown = sorted(rows, key=views.flag_sort_key)[:n]
    keys: list[str] = []
    for row in shown:
        for f in row.flags:
            if f.name == name:
                keys += [k for k in f.evidence if k not in keys and k not in ("value", "ci")]
    header = ["hook", "score", "target", "value [CI]", "direction", "NLL", *keys]
    cells = []
    for row in shown:
        flag = next((f for f in row.flags if f.name == name), None)
        ev = flag.evidence if flag is not None else {}
        cells.append(
            [
                f"`{row.hook}`",
                _esc(views.score_label(views.score_of(row))),
                _esc(row.target),
                f"{views.value_word(row)} {fmt_ci(row.value, row.ci)}",
                str(row.direction or "–"),
                fmt(row.nll_value, 2),
                *(_esc(views.fmt_evidence(ev.get(k))) if k in ev else "–" for k in keys),
            ]
        )
    return header, cells, shown


def verdict_flags(r: Report, view: views.VerdictView, n: int = FLAG_ROWS) -> str:
    """Per flag: the rows it decided (strongest signal first, at most ``n``) with its evidence and thresholds."""
    decided = view.decided()
    if not decided:
        return ""
    raised = view.raised()
    parts = [
        "### Flags and the rows they decided",
        "",
        "A blocking flag decides an UNTRUSTED row when it is the row's first blocking flag; every flag of a CAUTION "
        "row decides it. Rows with the strongest signal first; `value` is the oriented AUROC (sets) or Spearman ρ "
        "(axes), `NLL` the perplexity baseline's on the same target.",
    ]
    for name, rows in decided.items():
        header, cells, shown = _flag_table(rows, n, name)
        thresholds = list(
            dict.fromkeys(views.fmt_setting(f.threshold) for row in rows for f in row.flags if f.name == name)
        )
        blocking = next((f.blocking for f in rows[0].flags if f.name == name), True)
        head = f"#### {views.flag_label(name)} ({views.flag_abbr(name)}, {'blocking' if blocking else 'non-blocking'})"
        info = f"Decided {len(rows)} row(s)"
        if raised.get(name, 0) > len(rows):
            info += f"; raised on {raised[name]} in all (elsewhere another flag decides)"
        info += ". Threshold: " + (" | ".join(t for t in thresholds if t != "–") or "none") + "."
        if len(rows) > len(shown):
            info += f" Showing the {len(shown)} with the strongest signal of {len(rows)}; all are in report.json."
        parts += ["", head, "", info, "", table(header, cells)]
    return "\n".join(parts)


def render_verdict(r: Report) -> str:
    """The ``## Verdict`` section: the answer, the hook × score grid, thresholds, what was not tested, the flags."""
    view = views.verdict_view(r)
    parts = [VERDICT_HEADING, "", verdict_answer(r, view)]
    if view is not None and view.rows:
        for part in (_verdict_grid(r, view), verdict_thresholds(r), verdict_coverage(r, view), verdict_flags(r, view)):
            if part:
                parts += ["", part]
    return "\n".join(parts)
