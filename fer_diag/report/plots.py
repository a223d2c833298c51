"""PNG plots of a report (matplotlib, Agg backend): drawn from report numbers only."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from fer_diag.report import views
from fer_diag.report.schema import Report


def _graded_axes(report: Report) -> dict[str, list[tuple[float, str]]]:
    axes: dict[str, list[tuple[float, str]]] = {}
    for s in report.text_sets:
        if s.kind == "graded" and s.level is not None:
            axes.setdefault(s.axis or s.name, []).append((s.level, s.name))
    return {a: sorted(v) for a, v in axes.items()}


def _short(set_name: str, axis: str) -> str:
    """Tick label of a graded set: its name without axis prefix and level (`shift_5_word_shuffle` → `word shuffle`)."""
    rest = set_name.removeprefix(f"{axis}_").split("_", 1)
    return (rest[1] if len(rest) == 2 and rest[0].isdigit() else set_name).replace("_", " ")


def sparsity_vs_shift(report: Report, out: Path, basis: str = "raw", metric: str = "hoyer") -> list[Path]:
    """One figure per graded axis: the metric (mean over windows) against shift level, a line per hooked layer."""
    paths = []
    for axis, levels in _graded_axes(report).items():
        fig, ax = plt.subplots(figsize=(7, 4.2))
        cmap = plt.get_cmap("viridis")
        hooks = report.hooks
        for i, hook in enumerate(hooks):
            ys = [views.profile_value(report, basis, hook, name, metric) for _, name in levels]
            if all(y is None for y in ys):
                continue
            ax.plot([lv for lv, _ in levels], ys, marker="o", ms=3, color=cmap(i / max(len(hooks) - 1, 1)), label=hook)
        ax.set_xticks([lv for lv, _ in levels], [_short(name, axis) for _, name in levels], rotation=30, ha="right")
        ax.set_xlabel(f"shift level ({axis})")
        ax.set_ylabel(f"{metric} ({basis}, mean over windows)")
        ax.set_title(f"{metric} along the {axis} axis — {report.model.name}")
        if len(hooks) <= 12:
            ax.legend(fontsize=6, ncol=2)
        else:
            sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, len(hooks) - 1))
            fig.colorbar(sm, ax=ax, label="hook index (shallow → deep)")
        paths.append(_save(fig, out / f"sparsity_vs_{axis}_{basis}_{metric}.png"))
    return paths


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def auroc_per_layer(report: Report, out: Path, basis: str = "raw") -> list[Path]:
    """Per shifted set and graded far end: direction-free AUROC of each headline metric per layer vs baselines."""
    paths = []
    for set_name in views.detection_sets(report):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for metric in views.headline_metrics(basis):
            rows = views.detection_rows(
                report, source="sparsity", basis=basis, metric=metric, set_name=set_name, masked=False
            )
            rows = [r for r in rows if r.reduce in ("mean", "window")]
            rows.sort(key=lambda r: views.layer_of(r.hook))
            if rows:
                ax.plot(
                    [views.layer_of(r.hook) for r in rows],
                    [r.auroc_oriented for r in rows],
                    marker="o",
                    ms=3,
                    label=metric,
                )
        for style, base in zip(("--", ":", "-."), views.BASELINES, strict=True):
            row = views.baseline_auroc(report, set_name, base)
            if row is not None:
                ax.axhline(row.auroc_oriented, ls=style, color="grey", label=f"baseline: {base}")
        ax.axhline(0.5, color="black", lw=0.5)
        ax.set_ylim(0.4, 1.01)
        ax.set_xlabel("layer")
        ax.set_ylabel("AUROC (direction-free)")
        ax.set_title(f"{set_name} vs in-distribution ({basis})")
        ax.legend(fontsize=7)
        paths.append(_save(fig, out / f"auroc_{basis}_{set_name}.png"))
    return paths


def massive_per_layer(report: Report, out: Path) -> list[Path]:
    hooks = report.massive.hooks if report.massive else {}
    if not hooks:
        return []
    items = sorted(hooks.items(), key=lambda kv: views.layer_of(kv[0]))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(
        [views.layer_of(h) for h, _ in items],
        [max((d.max_abs for d in v.dims), default=0.0) for _, v in items],
    )
    ax.set_yscale("symlog")
    ax.set_xlabel("layer")
    ax.set_ylabel("max |h| of massive dims")
    ax.set_title("massive activations (Sun et al. 2024 criterion)")
    return [_save(fig, out / "massive_per_layer.png")]


def verdict_grid(report: Report, out: Path) -> list[Path]:
    """The verdict as hook × score heatmaps, one per basis (``verdict_grid_<basis>.png``): each cell coloured by
    what it holds at best (a trusted signal, one with caution, a signal untrusted for its most frequent decisive
    flag, no signal) and labelled with the count or the flag.

    Columns are the scores with a signal at some hook (all of the basis's scores when none has one), as in the
    report's grid.
    """
    view = views.verdict_view(report)
    if view is None or not view.rows:
        return []
    paths = []
    for basis in view.bases:
        hooks, scores, quiet = view.grid(basis)
        safe = re.sub(r"[^A-Za-z0-9_.@-]", "_", basis)
        paths.append(_verdict_heatmap(report, view, basis, hooks, scores or quiet, out / f"verdict_grid_{safe}.png"))
    return paths


def _verdict_heatmap(report: Report, view, basis: str, hooks: list[str], scores: list, path: Path) -> Path:
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    cell = {(h, s): views.cell_category(view.cells[(h, s)]) for h in hooks for s in scores if (h, s) in view.cells}
    found = set(cell.values())
    order = [c for c in ("TRUSTED", "CAUTION") if c in found]
    order += views.flag_order(found - {"TRUSTED", "CAUTION"})
    data = np.full((len(hooks), len(scores)), np.nan)
    labels: list[tuple[int, int, str]] = []
    for i, hook in enumerate(hooks):
        for j, score in enumerate(scores):
            cat = cell.get((hook, score))
            if cat is None:
                continue
            data[i, j] = order.index(cat)
            counts = view.status_counts(view.cells[(hook, score)])
            if cat in ("TRUSTED", "CAUTION"):
                labels.append((i, j, f"{views.STATUS_ABBR[cat]}{counts[cat]}"))
            elif cat != "no_signal":
                labels.append((i, j, views.flag_abbr(cat)))
    cmap = ListedColormap([views.category_color(c) for c in order] or ["#ffffff"]).with_extremes(bad="white")
    n_rows, n_cols = len(hooks), len(scores)
    fig, ax = plt.subplots(figsize=(min(3.5 + 0.34 * n_cols, 30), min(1.2 + 0.26 * n_rows + 1.6, 40)))
    ax.imshow(
        np.ma.masked_invalid(data),
        cmap=cmap,
        vmin=-0.5,
        vmax=max(len(order), 1) - 0.5,
        aspect="auto",
        interpolation="none",
    )
    ax.set_xticks(range(n_cols), [f"{m}/{r}" for _, m, r in scores], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n_rows), hooks, fontsize=7)
    ax.set_xticks(np.arange(-0.5, n_cols), minor=True)
    ax.set_yticks(np.arange(-0.5, n_rows), minor=True)
    ax.grid(which="minor", color="white", linewidth=0.8)
    ax.tick_params(which="minor", length=0)
    if n_rows * n_cols <= 2500:
        for i, j, text in labels:
            ax.text(j, i, text, ha="center", va="center", fontsize=6)
    handles = [Patch(color=views.category_color(c), label=views.category_label(c)) for c in order]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    counts = view.status_counts(r for r in view.rows if r.basis == basis)
    ax.set_title(
        f"verdict, {basis} basis — {report.model.name}: T {counts.get('TRUSTED', 0)} · "
        f"C {counts.get('CAUTION', 0)} · U {counts.get('UNTRUSTED', 0)} (hook × score × target)",
        fontsize=9,
    )
    return _save(fig, path)


def probe_curves(report: Report, out: Path) -> list[Path]:
    """Per concept: CV accuracy per layer (raw, each SAE, k-sparse on SAE latents) beside chance and the control."""
    pr = report.probes
    paths: list[Path] = []
    for c in pr.concepts if pr else []:
        rows = sorted((x for x in pr.rows if x.concept == c.name), key=lambda x: views.layer_of(x.hook))
        if not rows:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.2))
        # one series per basis and kind of hook (resid stream, MLP neurons, …): never one line across kinds
        kinds = dict.fromkeys((x.basis, x.hook.split(".", 2)[-1]) for x in rows)
        for basis, kind in kinds:
            these = [x for x in rows if x.basis == basis and x.hook.split(".", 2)[-1] == kind]
            layers = [views.layer_of(x.hook) for x in these]
            dense = basis == "raw" and kind == "hook_resid_post"
            style = {"marker": "o", "ms": 4} if dense else {"marker": "s", "ms": 6, "ls": "none"}
            ax.plot(layers, [x.accuracy for x in these], label=f"{basis} {kind}: all features", **style)
            if dense:
                ax.plot(layers, [x.control_accuracy for x in these], ls=":", color="grey", label="control (shuffled)")
            if basis == "raw":
                continue
            for k in (1, 5, 20):
                pts = [(views.layer_of(x.hook), x.sparse_accuracy[k]) for x in these if k in x.sparse_accuracy]
                if pts:
                    ax.plot(*zip(*pts, strict=True), marker="v", ms=4, ls="none", label=f"{basis}: {k}-sparse")
        ax.axhline(rows[0].chance, color="black", lw=0.6, label="chance")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("layer")
        ax.set_ylabel("CV accuracy")
        ax.set_title(f"probe: {c.name} ({len(c.classes)} classes, {c.level} level)")
        ax.legend(fontsize=7)
        paths.append(_save(fig, out / f"probe_{c.name}.png"))
    return paths


def fer_graph(report: Report, out: Path, out_dir: Path) -> list[Path]:
    """The co-activation graph (read back from its GraphML) of the highest FER index: its hook, basis and level."""
    import networkx as nx

    fer = report.fer
    rows = [x for x in fer.rows if x.index is not None] if fer else []
    if not rows:
        return []
    worst = max(rows, key=lambda x: x.index)
    path = out_dir / fer.graphs.get(f"{worst.hook}/{worst.basis}/{worst.level}", "")
    if not path.is_file():
        return []
    graph = nx.read_graphml(path)
    concepts = sorted({d.get("concept", "?") for _, d in graph.nodes(data=True)})
    colour = {c: plt.cm.tab10(i % 10) for i, c in enumerate(concepts)}
    fig, ax = plt.subplots(figsize=(7, 6))
    pos = nx.spring_layout(graph, seed=0)
    mine = [n for n, d in graph.nodes(data=True) if d.get("concept") == worst.concept]
    nx.draw_networkx_edges(graph, pos, ax=ax, alpha=0.3)
    for c in concepts:
        nodes = [n for n, d in graph.nodes(data=True) if d.get("concept") == c]
        size = 80 if c == worst.concept else 25
        nx.draw_networkx_nodes(graph, pos, nodelist=nodes, node_size=size, node_color=[colour[c]], ax=ax, label=c)
    if len(mine) <= 40:
        nx.draw_networkx_labels(graph, pos, labels={n: graph.nodes[n].get("class", "") for n in mine}, font_size=6)
    ax.set_title(
        f"co-activation graph of the {worst.level}-level concepts at {worst.hook} ({worst.basis}); "
        f"{worst.concept}: FER index {worst.index:.2f}",
        fontsize=9,
    )
    ax.legend(fontsize=7, markerscale=0.7)
    ax.axis("off")
    return [_save(fig, out / "fer_graph.png")]


def draw_all(report: Report, out_dir: Path) -> dict[str, str]:
    """Draw every plot into ``out_dir/plots``; return name → path relative to ``out_dir``."""
    plot_dir = out_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = verdict_grid(report, plot_dir)
    for basis in views.bases(report):
        metric = views.headline_metrics(basis)[0]
        paths += sparsity_vs_shift(report, plot_dir, basis, metric)
        paths += auroc_per_layer(report, plot_dir, basis)
    paths += massive_per_layer(report, plot_dir)
    paths += probe_curves(report, plot_dir)
    paths += fer_graph(report, plot_dir, out_dir)
    return {p.stem: str(p.relative_to(out_dir)) for p in paths}
