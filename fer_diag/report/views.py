"""Tables drawn from a :class:`~fer_diag.report.schema.Report`, shared by every rendering.

Views only select and arrange numbers the analyzers computed; they compute
nothing new (except picking, e.g., the largest of computed AUROCs).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fer_diag.capture import hook_layer
from fer_diag.report.schema import Report
from fer_diag.report.sections import DetectionRow, GradedRow, HookSummary, Profile, VerdictRow, VerdictSection

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


def is_raw(basis: str) -> bool:
    """The model's own coordinates or a fixed rotation of them (``raw@rot0``), not an SAE."""
    return basis == "raw" or basis.startswith("raw@")


def headline_metrics(basis: str) -> tuple[str, ...]:
    return HEADLINE.get("raw" if is_raw(basis) else "sae", ())


def bases(report: Report, rotated: bool = False) -> list[str]:
    """The bases of the sparsity section; the fixed random rotations (``raw@rot*``) only with ``rotated``.

    The rotations are evidence for the verdict's basis-dependence flag (shown there, and in
    report.json); the long per-basis tables show the model's own basis and the SAEs.
    """
    names = list(report.sparsity.profiles) if report.sparsity else []
    return names if rotated else [b for b in names if not b.startswith("raw@")]


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


# --------------------------------------------------------------------------- verdict
# The verdict section is already the answer; these helpers only count, select and word its rows.

#: flag name → words a reader understands (unknown flags, e.g. future FER / probe flags, keep their name)
FLAG_LABELS = {
    "no_signal": "no signal",
    "sae_unfaithful": "SAE unfaithful",
    "basis_dependent": "basis-dependent",
    "massive": "carried by massive activations",
    "length_confounded": "length-confounded",
    "not_learned": "not learned",
    "inconsistent_direction": "inconsistent direction",
    "no_better_than_perplexity": "no better than perplexity",
    "concepts_not_decodable": "no concept decodable",
    "structure_broken": "structure broken (FER)",
}
#: flag name → the abbreviation the hook × score grid uses
FLAG_ABBR = {
    "no_signal": "NS",
    "sae_unfaithful": "SAE",
    "basis_dependent": "BAS",
    "massive": "MAS",
    "length_confounded": "LEN",
    "not_learned": "NL",
    "inconsistent_direction": "DIR",
    "no_better_than_perplexity": "PPL",
    "concepts_not_decodable": "DEC",
    "structure_broken": "FER",
}
STATUS_ABBR = {"TRUSTED": "T", "CAUTION": "C", "UNTRUSTED": "U"}
STATUSES = ("TRUSTED", "CAUTION", "UNTRUSTED")
#: how many trusted / caution signals a per-hook answer names (the rest are counted)
BEST_FEW = 3

Score = tuple[str, str, str]  # (basis, metric, reduce)


def flag_label(name: str) -> str:
    return FLAG_LABELS.get(name, name.replace("_", " "))


def flag_abbr(name: str) -> str:
    return FLAG_ABBR.get(name, name[:3].upper())


def flag_order(names: Iterable[str]) -> list[str]:
    """Flag names as the renderings list them: the blocking flags in the verdict's decisive order, then the
    non-blocking ones, then ``no_signal`` (the least telling reason), then any flag not known here."""
    from fer_diag.report.sections import BLOCKING

    known = [n for n in BLOCKING if n != "no_signal"] + [n for n in FLAG_LABELS if n not in BLOCKING]
    known.append("no_signal")
    return sorted(set(names), key=lambda n: (known.index(n) if n in known else len(known), n))


def score_of(row: VerdictRow) -> Score:
    return (row.basis, row.metric, row.reduce)


def score_label(score: Score) -> str:
    basis, metric, reduce = score
    return f"{basis} {metric}/{reduce}"


def value_word(row: VerdictRow) -> str:
    return "AUROC" if row.target_kind == "set" else "ρ"


def counted(counts: dict[str, int], order: Iterable[str] | None = None, label=flag_label) -> str:
    """``{"basis_dependent": 4, "no_signal": 2}`` → ``"basis-dependent 4, no signal 2"`` (flag order)."""
    keys = list(order) if order is not None else flag_order(counts)
    return ", ".join(f"{label(k)} {counts[k]}" for k in keys if counts.get(k))


def direction_summary(h: HookSummary, digits: int = 2) -> str:
    """Signals of a hook per direction, each with its own AUROC range: never one range over both directions."""
    parts = []
    for direction, n in sorted(h.direction_counts.items(), key=lambda kv: (-kv[1], kv[0])):
        span = h.value_range_by_direction.get(direction)
        if span is None:
            parts.append(f"{direction} {n}")
            continue
        lo, hi = span
        rng = fmt(lo, digits) if fmt(lo, digits) == fmt(hi, digits) else f"{fmt(lo, digits)}–{fmt(hi, digits)}"
        parts.append(f"{direction} {n} (AUROC {rng})")
    return "; ".join(parts)


@dataclass
class VerdictView:
    """The verdict rows arranged for rendering: by hook × score, the grid's columns, the rows each flag decided."""

    section: VerdictSection
    hooks: list[str]
    scores: list[Score]
    cells: dict[tuple[str, Score], list[VerdictRow]]
    #: scores with a signal on some target at some hook (the grid's columns)
    signal_scores: list[Score]
    summaries: dict[str, HookSummary]

    @property
    def rows(self) -> list[VerdictRow]:
        return self.section.rows

    @property
    def bases(self) -> list[str]:
        """The bases judged, the model's own first (one grid each)."""
        return list(dict.fromkeys(s[0] for s in self.scores))

    def grid(self, basis: str) -> tuple[list[str], list[Score], list[Score]]:
        """One basis's grid: its hooks, the scores with a signal at some hook (columns), the scores without."""
        scores = [s for s in self.scores if s[0] == basis]
        hooks = [h for h in self.hooks if any((h, s) in self.cells for s in scores)]
        signal = set(self.signal_scores)
        return hooks, [s for s in scores if s in signal], [s for s in scores if s not in signal]

    def hook_rows(self, hook: str) -> list[VerdictRow]:
        return [r for s in self.scores for r in self.cells.get((hook, s), [])]

    def status_counts(self, rows: Iterable[VerdictRow] | None = None) -> Counter:
        return Counter(r.status for r in (self.rows if rows is None else rows))

    def hooks_with(self, status: str) -> list[str]:
        """The hooks with at least one row of ``status``."""
        found = {r.hook for r in self.rows if r.status == status}
        return [h for h in self.hooks if h in found]

    def decided(self) -> dict[str, list[VerdictRow]]:
        """Flag name → the rows it decided: the decisive flag of an UNTRUSTED row, every flag of a CAUTION row."""
        out: dict[str, list[VerdictRow]] = {}
        for r in self.rows:
            if r.status == "UNTRUSTED" and r.decisive:
                out.setdefault(r.decisive, []).append(r)
            elif r.status == "CAUTION":
                for f in r.flags:
                    out.setdefault(f.name, []).append(r)
        return {name: out[name] for name in flag_order(out)}

    def raised(self) -> Counter:
        """Flag name → rows that carry it (decisive or not)."""
        return Counter(f.name for r in self.rows for f in r.flags)


def verdict_view(report: Report) -> VerdictView | None:
    """The report's verdict arranged by hook × score (None when the report has no verdict section)."""
    v = report.verdict
    if v is None:
        return None
    cells: dict[tuple[str, Score], list[VerdictRow]] = {}
    order: dict[str, int] = {h: i for i, h in enumerate(report.hooks)}
    with_signal: set[Score] = set()
    for r in v.rows:
        s = score_of(r)
        cells.setdefault((r.hook, s), []).append(r)
        order.setdefault(r.hook, len(order))
        if r.signal:
            with_signal.add(s)
    hooks = sorted({r.hook for r in v.rows} | {h.hook for h in v.hooks}, key=lambda h: order.get(h, len(order)))
    scores = sorted({s for _, s in cells}, key=lambda s: (s[0] != "raw", s))
    return VerdictView(
        section=v,
        hooks=hooks,
        scores=scores,
        cells=cells,
        signal_scores=[s for s in scores if s in with_signal],
        summaries={h.hook: h for h in v.hooks},
    )


#: colour of a hook × score cell by :func:`cell_category` (HTML grid and heatmap alike)
CATEGORY_COLORS = {
    "TRUSTED": "#7cc97a",
    "CAUTION": "#ffd866",
    "basis_dependent": "#f28b82",
    "massive": "#c39bd3",
    "length_confounded": "#fdae61",
    "sae_unfaithful": "#f48fb1",
    "no_signal": "#e6e6e6",
}
OTHER_BLOCKING_COLOR = "#e57373"


def category_color(category: str) -> str:
    return CATEGORY_COLORS.get(category, OTHER_BLOCKING_COLOR)


def category_label(category: str) -> str:
    """Legend text of a :func:`cell_category`."""
    fixed = {"TRUSTED": "trusted signal", "CAUTION": "signal with caution", "no_signal": "no signal"}
    return fixed.get(category, f"signal, untrusted: {flag_label(category)}")


def cell_category(rows: list[VerdictRow]) -> str:
    """What a hook × score cell says at a glance.

    ``TRUSTED`` / ``CAUTION`` when any target is; else the most frequent decisive flag among the
    targets with a signal (why the signal there is not trusted); else ``no_signal``.
    """
    status = {r.status for r in rows}
    if "TRUSTED" in status:
        return "TRUSTED"
    if "CAUTION" in status:
        return "CAUTION"
    blocked = Counter(r.decisive for r in rows if r.signal and r.decisive)
    if blocked:
        top = max(blocked.values())
        return flag_order(k for k, n in blocked.items() if n == top)[0]
    return "no_signal"


def cell_text(rows: list[VerdictRow], sep: str = " · ") -> str:
    """``"T 1 · C 1 · U 2 (BAS 1, NS 1)"``: a hook × score cell's targets per status, untrusted by decisive flag."""
    counts = Counter(r.status for r in rows)
    parts = [f"{STATUS_ABBR[s]} {counts[s]}" for s in STATUSES if counts.get(s)]
    decisive = Counter(r.decisive for r in rows if r.status == "UNTRUSTED" and r.decisive)
    if decisive:
        parts[-1] += " (" + counted(decisive, label=flag_abbr) + ")"
    return sep.join(parts)


def overall_answer(view: VerdictView) -> str:
    """One sentence: how many trusted signals at how many hooks, and why the other signals are not trusted."""
    counts = view.status_counts()
    n_rows = len(view.rows)
    n_hooks = len(view.hooks)
    signal = [r for r in view.rows if r.signal]
    trusted_hooks = view.hooks_with("TRUSTED")
    if counts.get("TRUSTED"):
        out = (
            f"{counts['TRUSTED']} trusted signal{'s' if counts['TRUSTED'] != 1 else ''} "
            f"at {len(trusted_hooks)} of {n_hooks} hook{'s' if n_hooks != 1 else ''}"
        )
    else:
        out = f"No trusted signal at any of the {n_hooks} hook{'s' if n_hooks != 1 else ''}"
    if counts.get("CAUTION"):
        out += f"; {counts['CAUTION']} more with caution"
    out += f". {len(signal)} of {n_rows} hook × score × target combinations show a signal"
    blocked = Counter(r.decisive for r in signal if r.status == "UNTRUSTED" and r.decisive)
    if blocked:
        n_blocked = sum(blocked.values())
        out += f"; {n_blocked} of them are untrusted, by decisive flag: " + counted(blocked)
    return out + "."


def hook_answer(view: VerdictView, hook: str, best: int = BEST_FEW) -> dict[str, str]:
    """The answer for one hook, in parts: ``counts``, ``trusted``, ``caution`` (``caution_flags`` without the
    named signals), ``untrusted`` (by decisive flag), ``directions`` (signals per direction)."""
    h = view.summaries.get(hook)
    rows = view.hook_rows(hook)
    counts = Counter(r.status for r in rows) if h is None else Counter(h.status_counts)
    out = {"counts": " · ".join(f"{STATUS_ABBR[s]} {counts.get(s, 0)}" for s in STATUSES)}
    trusted = h.trusted if h is not None else []
    caution = h.caution if h is not None else []
    more = f" (+{len(trusted) - best} more)" if len(trusted) > best else ""
    out["trusted"] = "; ".join(trusted[:best]) + more if trusted else "none"
    caution_flags = Counter(f.name for r in rows if r.status == "CAUTION" for f in r.flags)
    out["caution_flags"] = f"{len(caution)}: {counted(caution_flags)}" if caution else "none"
    out["caution"] = out["caution_flags"]
    if caution:
        out["caution"] += " — best: " + "; ".join(caution[:best])
        if len(caution) > best:
            out["caution"] += f" (+{len(caution) - best} more)"
    decisive = dict(h.decisive_counts) if h is not None else Counter(r.decisive for r in rows if r.decisive)
    n_untrusted = counts.get("UNTRUSTED", 0)
    out["untrusted"] = f"{n_untrusted}: {counted(decisive)}" if n_untrusted else "none"
    out["directions"] = direction_summary(h) if h is not None and h.direction_counts else "no signal"
    return out


def fmt_evidence(x: Any, digits: int = 3) -> str:
    """An evidence or threshold value as text: numbers as :func:`fmt`, dicts as ``k v, …``, lists joined."""
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int | float) or x is None:
        return fmt(x, digits)
    if isinstance(x, dict):
        if not x:
            return "–"
        return "; ".join(f"{k} {fmt_evidence(v, digits)}" for k, v in x.items())
    if isinstance(x, list | tuple):
        if not x:
            return "none"
        if len(x) == 2 and all(isinstance(v, int | float) and not isinstance(v, bool) for v in x):
            return f"[{fmt(float(x[0]), digits)}, {fmt(float(x[1]), digits)}]"  # an interval
        return ", ".join(fmt_evidence(v, digits) for v in x)
    return str(x)


def fmt_setting(x: Any) -> str:
    """A configured value (a threshold, a count) as written: ``0.7``, ``500``, ``max_auroc_delta 0.15, …``."""
    if isinstance(x, dict):
        return ", ".join(f"{k} {fmt_setting(v)}" for k, v in x.items()) or "–"
    if isinstance(x, float):
        return f"{x:g}"
    return str(x)


def flag_sort_key(row: VerdictRow) -> float:
    """Rows a flag decided, strongest signal first."""
    return -abs(row.value) if row.value is not None and row.value == row.value else 0.0
