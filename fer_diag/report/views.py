"""Tables drawn from a :class:`~fer_diag.report.schema.Report`, shared by every rendering.

Views only select and arrange numbers the analyzers computed; they compute
nothing new (except picking, e.g., the largest of computed AUROCs).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fer_diag.capture import hook_layer
from fer_diag.report.schema import Report
from fer_diag.report.sections import DetectionRow, GradedRow, Profile

#: metrics shown in headline tables, per basis (all metrics are in the JSON)
HEADLINE = {"raw": ("hoyer", "thresh_density", "participation_ratio"), "sae": ("l0", "hoyer")}
BASELINES = ("nll", "entropy", "maxprob")


def fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        if x != x:  # NaN
            return "–"
        if abs(x) >= 1e4 or (0 < abs(x) < 1e-3):
            return f"{x:.2e}"
        if x.is_integer() and abs(x) >= 10:  # a threshold such as 100.0, not a measurement
            return str(int(x))
        return f"{x:.{digits}f}"
    return str(x)


def fmt_ci(value: float | None, ci: Iterable[float] | None, digits: int = 2) -> str:
    if value is None:
        return "–"
    if not ci:
        return fmt(value, digits)
    lo, hi = ci
    return f"{fmt(value, digits)} [{fmt(lo, digits)}, {fmt(hi, digits)}]"


def headline_metrics(basis: str) -> tuple[str, ...]:
    return HEADLINE.get("raw" if basis == "raw" else "sae", ())


def bases(report: Report) -> list[str]:
    return list(report.sparsity.profiles) if report.sparsity else []


def profiles(report: Report, basis: str) -> dict[str, dict[str, Profile]]:
    """``hook → set → Profile`` of one basis (empty when the basis or the section is absent)."""
    return report.sparsity.profiles.get(basis, {}) if report.sparsity else {}


def reference_set(report: Report) -> str | None:
    """The familiarity reference set, else the first in-distribution set."""
    if report.familiarity is not None:
        return report.familiarity.reference_set
    return next(iter(set_names(report, ["in_distribution"])), None)


def set_names(report: Report, kinds: Iterable[str] | None = None) -> list[str]:
    kinds = set(kinds) if kinds is not None else None
    return [s.name for s in report.text_sets if kinds is None or s.kind in kinds]


def detection_sets(report: Report) -> list[str]:
    """Columns of the familiarity table: the shifted sets, then the farthest level of each graded axis."""
    farthest: dict[str, tuple[float, str]] = {}
    for s in report.text_sets:
        if s.kind == "graded" and s.level is not None and s.level >= farthest.get(s.axis or "", (-1e300, ""))[0]:
            farthest[s.axis or ""] = (s.level, s.name)
    return set_names(report, kinds=["shifted"]) + [name for _, name in farthest.values()]


def profile_value(
    report: Report, basis: str, hook: str, set_name: str, metric: str, masked: bool = False, stat: str = "seq_mean"
) -> float | None:
    """A per-set aggregate of one metric (``seq_mean`` = mean over windows of the window mean)."""
    prof = profiles(report, basis).get(hook, {}).get(set_name)
    if prof is None:
        return None
    entry = prof.metrics.get(metric, {})
    side = entry.get("masked" if masked else "unmasked") or entry.get("unmasked")
    return getattr(side, stat, None)  # window metrics have no token statistics


def detection_rows(report: Report, **where: Any) -> list[DetectionRow]:
    """Familiarity detection rows whose fields equal ``where``."""
    return _select(report.familiarity.detection if report.familiarity else [], where)


def graded_rows(report: Report, **where: Any) -> list[GradedRow]:
    """Graded-shift rows whose fields equal ``where``."""
    return _select(report.familiarity.graded if report.familiarity else [], where)


_INDEX: dict[str, Any] = {}


def _select(rows: list, where: dict[str, Any]) -> list:
    """Rows matching ``where``, through an index on (source, metric) of the last row list asked about."""
    if "source" not in where or "metric" not in where:
        return [r for r in rows if all(getattr(r, k, None) == v for k, v in where.items())]
    # a report holds many thousands of rows and renderings ask ~10^3 times; rebuilt when the list changes
    if _INDEX.get("rows") is not rows or _INDEX.get("n") != len(rows):
        index: dict[tuple, list] = {}
        for r in rows:
            index.setdefault((r.source, r.metric), []).append(r)
        _INDEX.update(rows=rows, n=len(rows), index=index)
    bucket = _INDEX["index"].get((where["source"], where["metric"]), [])
    return [r for r in bucket if all(getattr(r, k, None) == v for k, v in where.items())]


def baseline_auroc(report: Report, set_name: str, metric: str = "nll") -> DetectionRow | None:
    rows = detection_rows(report, source="baseline", metric=metric, set_name=set_name)
    return rows[0] if rows else None


def layer_of(hook: str) -> int:
    layer = hook_layer(hook)
    return -1 if layer is None else layer
