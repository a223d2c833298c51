"""Write a report folder: report.json, report.md, report.html, plots/."""

from __future__ import annotations

from pathlib import Path

from fer_diag.report.html import render_html
from fer_diag.report.markdown import render_markdown
from fer_diag.report.plots import draw_all
from fer_diag.report.schema import Report


def write_report(report: Report, out_dir: str | Path) -> Path:
    """Render every format of ``report`` into ``out_dir``; returns the JSON path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report.plots = draw_all(report, out)
    md = render_markdown(report)
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(render_html(md, out, report))
    return report.to_json(out / "report.json")
