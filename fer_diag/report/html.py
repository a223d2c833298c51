"""One self-contained offline HTML page (no CDN, no JavaScript): the verdict first, then the Markdown rendering.

With the report at hand (``render_html(md, out, report)``, or the :class:`~fer_diag.report.markdown.Markdown`
text that :func:`~fer_diag.report.markdown.render_markdown` returns, which carries it) the Markdown's
``## Verdict`` section is replaced by an HTML one: a banner with the overall answer, one line per hook, and
a coloured hook × score grid whose cells open (``<details>``) onto the rows behind them with every flag's
evidence and threshold. The thresholds, interval methods and per-flag tables follow, then the long tables.
Plots are embedded as data URIs.
"""

from __future__ import annotations

import base64
import re
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

import markdown

from fer_diag.report import views
from fer_diag.report.views import fmt, fmt_ci

if TYPE_CHECKING:
    from fer_diag.report.schema import Report

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:12px;margin:1em 0;display:block;overflow-x:auto}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}img{max-width:100%}code{background:#f6f6f6}
.banner{padding:.8em 1em;margin:1em 0;border-radius:4px;font-size:16px;border-left:8px solid}
.banner.ok{background:#e6f4e4;border-color:#2e7d32}.banner.warn{background:#fff5d6;border-color:#b7791f}
.banner.bad{background:#fde4e2;border-color:#c62828}
ul.hooks{font-size:13px;padding-left:1.2em}ul.hooks li{margin:.3em 0}
table.vgrid{display:table;overflow:visible;font-size:11px}
.vgrid th.v{writing-mode:vertical-rl;transform:rotate(180deg);white-space:nowrap;text-align:left;font-weight:normal}
.vgrid th.h{white-space:nowrap;font-weight:normal}
.vgrid td{position:relative;text-align:center;white-space:nowrap;padding:0}
.vgrid summary{cursor:pointer;padding:3px 5px;list-style:none}
.vgrid summary::-webkit-details-marker{display:none}
.vgrid details[open]>summary{outline:2px solid #333}
.vgrid .pop{position:absolute;z-index:10;left:0;top:100%;background:#fff;border:1px solid #777;padding:6px;
  box-shadow:0 2px 8px rgba(0,0,0,.3);min-width:44em;text-align:left;white-space:normal;font-size:12px}
.vgrid .pop.r{left:auto;right:0}
.vgrid .pop table{display:table;font-size:11px;margin:.4em 0}
.vgrid .pop td{text-align:left;white-space:normal;padding:2px 4px;position:static}
.legend span{display:inline-block;padding:1px 6px;margin:2px;border:1px solid #bbb;font-size:11px}
.flag{margin:.2em 0}.ev{color:#555;font-size:11px}
"""


def _inline_images(body: str, base_dir: Path) -> str:
    def inline(m: re.Match) -> str:
        path = base_dir / m.group(1)
        if not path.exists():
            return m.group(0)
        data = base64.b64encode(path.read_bytes()).decode()
        return f'src="data:image/png;base64,{data}"'

    return re.sub(r'src="([^"]+\.png)"', inline, body)


def _md(text: str) -> str:
    return markdown.markdown(text, extensions=["tables"]) if text.strip() else ""


def _split_verdict(text: str) -> tuple[str, str, str]:
    """``(before, verdict, after)``: the Markdown around its ``## Verdict`` section (``verdict`` empty if none)."""
    from fer_diag.report.markdown import VERDICT_HEADING

    start = text.find(f"\n{VERDICT_HEADING}\n")
    if start < 0:
        return text, "", ""
    end = text.find("\n## ", start + 1)
    end = len(text) if end < 0 else end
    return text[:start], text[start:end], text[end:]


def render_html(markdown_text: str, base_dir: Path, report: Report | None = None) -> str:
    """The page: ``markdown_text`` converted, its verdict section drawn from ``report`` when there is one."""
    report = report if report is not None else getattr(markdown_text, "report", None)
    before, verdict_md, after = _split_verdict(str(markdown_text))
    if report is not None and report.verdict is not None and verdict_md:
        body = _md(before) + verdict_html(report) + _md(after)
    else:
        body = _md(str(markdown_text))
    body = _inline_images(body, base_dir)
    head = f'<meta charset="utf-8"><title>fer-diag report</title><style>{_CSS}</style>'
    return f"<!doctype html><html><head>{head}</head><body>{body}</body></html>"


# --------------------------------------------------------------------------- verdict
def verdict_html(report: Report) -> str:
    """The verdict section as HTML: banner, per-hook answers, the hook × score grid, then the reference tables."""
    from fer_diag.report import markdown as md

    view = views.verdict_view(report)
    if view is None or not view.rows:
        return _md(md.render_verdict(report))
    level = "ok" if view.hooks_with("TRUSTED") else "warn" if view.hooks_with("CAUTION") else "bad"
    parts = [
        '<section id="verdict">',
        "<h2>Verdict</h2>",
        f'<div class="banner {level}"><strong>{escape(views.overall_answer(view))}</strong></div>',
        _hooks_list(view),
        _grid(report, view),
        _md("\n\n".join(p for p in (md.verdict_thresholds(report), md.verdict_coverage(report, view)) if p)),
        _md(md.verdict_flags(report, view)),
        "</section>",
    ]
    return "\n".join(p for p in parts if p)


def _hooks_list(view: views.VerdictView) -> str:
    items = []
    for hook in view.hooks:
        a = views.hook_answer(view, hook)
        items.append(
            f"<li><code>{escape(hook)}</code> ({escape(a['counts'])}) — <b>trusted:</b> {escape(a['trusted'])}. "
            f"<b>Caution:</b> {escape(a['caution'])}. <b>Untrusted:</b> {escape(a['untrusted'])}. "
            f"<b>Signals by direction:</b> {escape(a['directions'])}.</li>"
        )
    head = (
        "<p>Per hook — T trusted · C caution · U untrusted, counted over score × target (shifted set or graded "
        f"axis); trusted and caution signals best first (at most {views.BEST_FEW} named):</p>"
    )
    return head + '<ul class="hooks">' + "".join(items) + "</ul>"


def _legend(view: views.VerdictView) -> str:
    cats = ["TRUSTED", "CAUTION"]
    cats += views.flag_order({c for c in (views.cell_category(rows) for rows in view.cells.values())} - set(cats))
    if "no_signal" not in cats:
        cats.append("no_signal")
    return (
        '<p class="legend">'
        + "".join(
            f'<span style="background:{views.category_color(c)}">{escape(views.category_label(c))}</span>' for c in cats
        )
        + "</p>"
    )


def _grid(report: Report, view: views.VerdictView) -> str:
    from fer_diag.report.markdown import verdict_columns_note, verdict_legend, verdict_plots

    parts = [
        "<h3>Hook × score</h3>",
        "<p>One grid per basis. Each cell counts the targets (shifted sets and graded axes) of one score at one "
        "hook: T trusted, C caution, U untrusted, the untrusted ones by decisive flag ("
        + escape(verdict_legend(view))
        + "). The colour says what the cell holds at best; click a cell for its rows, flags, evidence and "
        "thresholds.</p>",
        _legend(view),
    ]
    for basis in view.bases:
        hooks, scores, quiet = view.grid(basis)
        parts.append(f"<h4>{escape(basis)} basis</h4>")
        if not scores:
            parts.append("<p>No score shows a signal at any hook: every cell would read UNTRUSTED (no signal).</p>")
            continue
        parts.append(_basis_grid(view, hooks, scores))
        if quiet:
            parts.append(f"<p>{escape(verdict_columns_note(quiet))}</p>")
    for name, path in verdict_plots(report).items():
        parts.append(f'<p><img alt="{escape(name)}" src="{escape(path)}"></p>')
    return "\n".join(parts)


def _basis_grid(view: views.VerdictView, hooks: list[str], scores: list[views.Score]) -> str:
    half = len(scores) / 2
    head = '<tr><th class="h">hook</th>' + "".join(f'<th class="v">{escape(views.score_label(s))}</th>' for s in scores)
    body = []
    for hook in hooks:
        cells = [f'<th class="h"><code>{escape(hook)}</code></th>']
        for i, score in enumerate(scores):
            rows = view.cells.get((hook, score), [])
            if not rows:
                cells.append("<td></td>")
                continue
            cat = views.cell_category(rows)
            side = " r" if i >= half else ""
            cells.append(
                f'<td style="background:{views.category_color(cat)}"><details><summary>'
                f"{escape(views.cell_text(rows))}</summary>"
                f'<div class="pop{side}">{_cell_detail(hook, score, rows)}</div></details></td>'
            )
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="vgrid"><thead>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _cell_detail(hook: str, score: views.Score, rows: list) -> str:
    """The rows of one hook × score cell: target, status, value, direction, NLL, every flag with its numbers."""
    trs = []
    notes = {r.basis_note for r in rows if r.basis_note}
    for r in rows:
        flags = "".join(_flag(f) for f in r.flags)
        status = r.status + (f" ({views.flag_label(r.decisive)})" if r.decisive else "")
        trs.append(
            f"<tr><td>{escape(r.target)}</td><td>{escape(status)}</td>"
            f"<td>{escape(views.value_word(r))} {escape(fmt_ci(r.value, r.ci))}</td>"
            f"<td>{escape(str(r.direction or '–'))}</td><td>{escape(fmt(r.nll_value, 2))}</td>"
            f"<td>{flags or 'no flag'}</td></tr>"
        )
    note = "".join(f"<p class='ev'>Basis-dependence test not applied: {escape(n)}.</p>" for n in sorted(notes))
    return (
        f"<b>{escape(hook)}</b> · {escape(views.score_label(score))}"
        "<table><tr><th>target</th><th>verdict</th><th>value [CI]</th><th>direction</th><th>NLL</th>"
        f"<th>flags</th></tr>{''.join(trs)}</table>{note}"
    )


def _flag(f) -> str:
    threshold = escape(views.fmt_setting(f.threshold))
    if f.name == "no_signal":  # its evidence is the row's own value and CI
        return f'<div class="flag"><b>no signal</b> <span class="ev">(threshold: {threshold})</span></div>'
    return (
        f'<div class="flag"><b>{escape(views.flag_label(f.name))}</b> '
        f"({'blocking' if f.blocking else 'non-blocking'}): {escape(f.message)}"
        f'<div class="ev">evidence: {escape(views.fmt_evidence(f.evidence))} · threshold: {threshold}</div></div>'
    )
