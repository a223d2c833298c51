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


def _overview(r: Report) -> str:
    sets = table(
        ["text set", "kind", "level", "windows", "tokens", "source"],
        [[s.name, s.kind, fmt(s.level), str(s.n_windows), str(s.n_tokens), s.source] for s in r.text_sets],
    )
    out = [
        f"# fer-diag audit — {r.model.name}",
        "",
        f"{r.model.hf_class}, {r.model.n_layers} layers, d_model {r.model.d_model}. "
        f"{len(r.hooks)} hooks, {len(r.text_sets)} text sets, {len(r.saes)} SAE(s). "
        f"fer-diag {r.fer_diag_version}, report schema {r.schema_version}, {r.created}.",
        "",
        "Run time: " + ", ".join(f"{k} {v:.0f} s" for k, v in r.run.seconds.items()) + ".",
        "",
        "## Text sets",
        "",
        sets,
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


def _seq_mean(prof: Profile | None, metric: str) -> float | None:
    """Unmasked mean over windows of ``metric`` in a profile (None when absent)."""
    side = None if prof is None else prof.metrics.get(metric, {}).get("unmasked")
    return None if side is None else side.seq_mean


def _plots(r: Report) -> str:
    if not r.plots:
        return ""
    return "\n".join(["## Plots", ""] + [f"![{name}]({path})" for name, path in r.plots.items()])


def render_markdown(r: Report) -> str:
    from fer_diag.report.sae_sections import render_sae

    parts = [_overview(r)]
    for basis in views.bases(r):
        parts += [_profiles(r, basis), _familiarity(r, basis), _graded(r, basis)]
    parts += [render_sae(r), _massive(r), _control(r), _plots(r)]
    return "\n\n".join(p for p in parts if p) + "\n"
