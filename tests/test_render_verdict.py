"""Every rendering opens with the verdict (issue 8 §4): terminal, Markdown, HTML and the verdict heatmap.

Hand-built verdict sections pin the wording (sparser and denser signals at one hook must never share one
AUROC range); an audit of the tiny model checks that the numbers shown are the report's.
"""

from __future__ import annotations

import random
import re
import time
from collections import Counter

import pytest
from rich.console import Console
from test_audit import _suite

from fer_diag.audit import Audit, AuditConfig
from fer_diag.report import Report, views
from fer_diag.report.html import render_html
from fer_diag.report.markdown import VERDICT_PLOT, render_markdown
from fer_diag.report.render import write_report
from fer_diag.report.schema import ModelInfo, RunInfo, TextSetInfo
from fer_diag.report.sections import (
    DetectionRow,
    FamiliaritySection,
    FamiliaritySettings,
    Flag,
    HookSummary,
    Profile,
    SparsitySection,
    TokenMetricStats,
    VerdictConfig,
    VerdictRow,
    VerdictSection,
)
from fer_diag.report.terminal import print_summary

A, B = "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"
CI_METHODS = {"auroc": "Newcombe (2006) method-5 score interval", "spearman": "cluster bootstrap over source texts"}


# ------------------------------------------------------------------------------------ hand-built reports
def _flag(name: str, blocking: bool = True, **evidence) -> Flag:
    threshold = {"no_signal": {"auroc_min": 0.7, "ci_low_min": 0.5}, "basis_dependent": {"max_auroc_delta": 0.15}}
    return Flag(
        name=name,
        blocking=blocking,
        evidence=evidence,
        threshold=threshold.get(name, {"auroc_min": 0.7}),
        message=f"{name} message",
    )


def _row(
    hook, metric, target, status, value, direction, flags=(), kind="set", signal=None, nll=0.91, basis="raw"
) -> VerdictRow:
    blocking = [f.name for f in flags if f.blocking]
    return VerdictRow(
        hook=hook,
        basis=basis,
        metric=metric,
        reduce="mean",
        target=target,
        target_kind=kind,
        status=status,
        decisive=blocking[0] if status == "UNTRUSTED" else None,
        signal=(status != "UNTRUSTED" or all(f.name != "no_signal" for f in flags)) if signal is None else signal,
        value=value,
        ci=(round(value - 0.1, 4), round(min(value + 0.05, 1.0), 4)) if kind == "set" else (-0.7, -0.3),
        direction=direction,
        nll_value=nll,
        basis_note=None,
        flags=list(flags),
    )


def _rows() -> list[VerdictRow]:
    """Hook A: sparser signals (0.80 trusted, 0.75 caution) and a denser one (0.95, basis-dependent)."""
    basis = _flag("basis_dependent", auroc=0.05, auroc_rotated={"raw@rot0": 0.51}, max_delta=0.46, direction_flips=[])
    return [
        _row(A, "hoyer", "code", "TRUSTED", 0.8, "sparser_is_ood"),
        _row(A, "hoyer", "noise", "UNTRUSTED", 0.95, "denser_is_ood", [basis]),
        _row(
            A,
            "gini",
            "code",
            "CAUTION",
            0.75,
            "sparser_is_ood",
            [_flag("no_better_than_perplexity", False, auroc=0.75, auroc_nll=0.91, gain=0.011, gain_ci_low=-0.02)],
        ),
        _row(A, "gini", "noise", "UNTRUSTED", 0.61, "denser_is_ood", [_flag("no_signal", value=0.61)]),
        _row(A, "hoyer", "shift", "UNTRUSTED", -0.52, "denser_with_shift", [_flag("length_confounded")], kind="axis"),
        _row(A, "thresh_density", "code", "UNTRUSTED", 0.55, "sparser_is_ood", [_flag("no_signal", value=0.55)]),
        _row(B, "hoyer", "code", "UNTRUSTED", 0.9, "denser_is_ood", [_flag("massive", value_massive_masked=0.52)]),
        _row(B, "hoyer", "noise", "TRUSTED", 0.93, "denser_is_ood"),
    ]


def _summary(hook: str, rows: list[VerdictRow]) -> HookSummary:
    """The summary the verdict writes, filled in by hand for these rows."""
    mine = [r for r in rows if r.hook == hook]
    signal = [r for r in mine if r.signal]
    ranges: dict[str, tuple[float, float]] = {}
    for r in signal:
        if r.target_kind == "set":
            lo, hi = ranges.get(r.direction, (r.value, r.value))
            ranges[r.direction] = (min(lo, r.value), max(hi, r.value))

    def described(status):
        chosen = sorted((r for r in mine if r.status == status), key=lambda r: -abs(r.value))
        return [f"raw {r.metric}/{r.reduce} on {r.target}: AUROC {r.value:.2f} ({r.direction})" for r in chosen]

    return HookSummary(
        hook=hook,
        n_rows=len(mine),
        n_signal=len(signal),
        status_counts=dict(Counter(r.status for r in mine)),
        decisive_counts=dict(Counter(r.decisive for r in mine if r.decisive)),
        trusted=described("TRUSTED"),
        caution=described("CAUTION"),
        direction_counts=dict(Counter(r.direction for r in signal)),
        value_range_by_direction=ranges,
    )


def _hand_report(rows: list[VerdictRow] | None = None, hooks=(A, B), **sections) -> Report:
    rows = _rows() if rows is None else rows
    verdict = VerdictSection(
        config=VerdictConfig(),
        ci_methods=CI_METHODS,
        hooks=[_summary(h, rows) for h in dict.fromkeys(r.hook for r in rows)],
        rows=rows,
    )
    return Report(
        model=ModelInfo(name="hand", hf_class="HookedTransformer", n_layers=2, d_model=8),
        hooks=list(hooks),
        text_sets=[TextSetInfo(name=n, kind=k, n_windows=4, n_tokens=40) for n, k in (("id", "in_distribution"),)],
        run=RunInfo(seq_len=16, batch_size=2, max_seqs=4, device="cpu"),
        verdict=verdict,
        **sections,
    )


def _terminal(report: Report, width: int = 250) -> str:
    console = Console(record=True, width=width)
    print_summary(report, console)
    return console.export_text()


def _grid(md: str) -> list[str]:
    """The lines of the verdict's hook × score table (header, rule, one line per hook)."""
    block = md.split("### Hook × score", 1)[1].split("\n\n")
    return next(b for b in block if b.startswith("| hook |")).splitlines()


def _headings(md: str, level: str = "## ") -> list[str]:
    return [line for line in md.splitlines() if line.startswith(level)]


# ------------------------------------------------------------------------------------------ opening
def test_markdown_opens_with_the_verdict():
    md = render_markdown(_hand_report())
    assert _headings(md)[0] == "## Verdict"
    body = md.split("## Verdict", 1)[1].lstrip().splitlines()
    assert body[0] == (
        "**2 trusted signals at 2 of 2 hooks; 1 more with caution. 6 of 8 hook × score × target combinations show "
        "a signal; 3 of them are untrusted, by decisive flag: basis-dependent 1, carried by massive activations 1, "
        "length-confounded 1.**"
    )
    verdict = md.split("## Verdict", 1)[1].split("\n## ", 1)[0]
    for part in ("### Hook × score", "### Thresholds", "### Confidence intervals", "### Flags and the rows"):
        assert part in verdict


def test_terminal_opens_with_the_verdict():
    text = _terminal(_hand_report())
    assert text.splitlines()[0].startswith("Verdict — hand: 2 trusted signals at 2 of 2 hooks")
    assert "thresholds: auroc_min 0.7, auroc_ci_low_min 0.5, rho_min 0.3" in text
    assert "raw hoyer/mean on code: AUROC 0.80 (sparser_is_ood)" in text
    assert "1: no better than perplexity 1" in text  # the caution count with its flag
    assert "basis-dependent 1" in text and "length-confounded 1" in text  # untrusted by decisive flag


def test_html_opens_with_the_verdict_banner(tmp_path):
    report = _hand_report()
    md = render_markdown(report)
    html = render_html(md, tmp_path)
    body = html.split("<body>", 1)[1]
    assert re.findall(r"<h2[^>]*>(.*?)</h2>", body) == [h[3:] for h in _headings(md)]  # same sections, in order
    assert body.index('<section id="verdict">') < body.index("<h2>Text sets and run</h2>")
    assert "Run time: " in body  # everything the Markdown says outside its verdict section is kept
    assert re.findall(r"<h2[^>]*>(.*?)</h2>", body)[0] == "Verdict"
    banner = re.search(r'<div class="banner (\w+)"><strong>(.*?)</strong></div>', body)
    assert banner.group(1) == "ok" and banner.group(2).startswith("2 trusted signals at 2 of 2 hooks")
    assert body.index('class="banner') < body.index('<table class="vgrid">') < body.index("<h3>Thresholds</h3>")
    # the evidence one click away, without JavaScript or anything fetched
    assert body.count("<details>") == 3  # the hook × score cells with rows, of the 2 scores with a signal
    assert "<script" not in html and 'src="http' not in html and 'href="http' not in html
    assert "max_delta 0.460" in body and "max_auroc_delta 0.15" in body
    assert html.count("<h2>Verdict</h2>") == 1  # the Markdown verdict was replaced, not repeated


def test_html_from_plain_markdown_still_opens_with_the_verdict(tmp_path):
    html = render_html(str(render_markdown(_hand_report())), tmp_path)  # no report at hand: Markdown only
    assert re.findall(r"<h2[^>]*>(.*?)</h2>", html)[0] == "Verdict"


# ------------------------------------------------------------------------------------------ direction
def test_direction_aware_summaries_never_mix_directions(tmp_path):
    report = _hand_report()
    sparser, denser = "sparser_is_ood 2 (AUROC 0.75–0.80)", "denser_is_ood 1 (AUROC 0.95)"
    md = render_markdown(report)
    html = render_html(md, tmp_path)
    text = _terminal(report)
    for out in (md, html, text.replace("\n", " ")):
        assert sparser in out or sparser in re.sub(r"\s+", " ", out)
        assert denser in out
        assert "0.75–0.95" not in out and "0.80–0.95" not in out


def test_terminal_auroc_column_is_per_direction():
    hook = A
    det = []
    for set_name, auroc, direction in (("code", 0.8, "sparser_is_ood"), ("noise", 0.95, "denser_is_ood")):
        det.append(
            DetectionRow(
                source="sparsity",
                basis="raw",
                hook=hook,
                metric="hoyer",
                masked=False,
                reduce="mean",
                set_name=set_name,
                kind="shifted",
                level=None,
                n_id=4,
                n_ood=4,
                auroc=auroc if direction == "sparser_is_ood" else 1 - auroc,
                auroc_ci=None,
                direction="higher_is_ood",
                auroc_oriented=auroc,
                auroc_oriented_ci=None,
                sparsity_direction=direction,
                fpr_at_95tpr=0.5,
                auroc_length_matched=None,
                length_matched_pair_frac=0.0,
                masked_same_as_unmasked=True,
            )
        )
    stats = TokenMetricStats(
        mean=0.3, std=0.1, n_tokens=40, seq_mean=0.3, seq_std=0.1, last_mean=0.3, last_std=0.1, n_seqs=4
    )
    profile = Profile(
        n_tokens=40, n_seqs=4, masked_dims=[], masked_same_as_unmasked=True, metrics={"hoyer": {"unmasked": stats}}
    )
    sparsity = SparsitySection(
        max_seqs_per_set=4,
        massive_dims={},
        metric_sense={"hoyer": 1},
        sets={},
        profiles={"raw": {hook: {"id": profile}}, "raw@rot0": {hook: {"id": profile}}},
        feature_density={},
    )
    settings = FamiliaritySettings(
        reference_set="id", n_boot=10, ci=0.95, seed=0, length_bins=5, tpr=0.95, ci_methods=CI_METHODS
    )
    fam = FamiliaritySection(reference_set="id", settings=settings, detection=det, graded=[])
    report = _hand_report(sparsity=sparsity, familiarity=fam)
    report.text_sets += [TextSetInfo(name=n, kind="shifted", n_windows=4, n_tokens=40) for n in ("code", "noise")]
    text = _terminal(report)
    assert "sparser 0.80 · denser 0.95" in text and "0.80–0.95" not in text
    assert "raw@rot0 basis" not in text  # rotations are the basis flag's evidence, not a table of their own


# ------------------------------------------------------------------------------------------ grid and flags
def test_grid_counts_the_rows_and_leaves_out_scores_without_a_signal():
    md = render_markdown(_hand_report())
    lines = _grid(md)
    assert lines[0] == "| hook | raw gini/mean | raw hoyer/mean |"
    grid = {line.split(" | ")[0]: line for line in lines[2:]}
    assert grid[f"| `{A}`"] == f"| `{A}` | C 1 · U 1 (NS 1) | T 1 · U 2 (BAS 1, LEN 1) |"
    assert grid[f"| `{B}`"] == f"| `{B}` | · | T 1 · U 1 (MAS 1) |"
    assert "1 score(s) show no signal at any hook and are left out of the grid: raw thresh_density/mean." in md
    # the thresholds as configured, the CI methods as the report names them
    assert "| `basis_auroc_delta` | 0.15 |" in md and "| `n_boot` | 500 |" in md
    assert "| auroc | Newcombe (2006) method-5 score interval |" in md


def test_one_grid_and_one_heatmap_per_basis(tmp_path):
    sae = _row(B, "l0", "code", "UNTRUSTED", 0.88, "denser_is_ood", [_flag("sae_unfaithful", sets={"code": {}})])
    report = _hand_report([*_rows(), sae.model_copy(update={"basis": "sae"})])
    write_report(report, tmp_path)
    md = (tmp_path / "report.md").read_text()
    grid = md.split("### Hook × score", 1)[1].split("###", 1)[0]
    raw, sae_part = grid.split("**raw basis**", 1)[1].split("**sae basis**", 1)
    assert "| hook | raw gini/mean | raw hoyer/mean |" in raw
    assert "| hook | sae l0/mean |\n|---|---|\n| `blocks.1.hook_resid_post` | U 1 (SAE 1) |" in sae_part
    assert A not in sae_part  # a hook without an SAE has no row in the SAE grid
    assert {"verdict_grid_raw", "verdict_grid_sae"} <= set(report.plots)
    html = (tmp_path / "report.html").read_text()
    assert html.count('<table class="vgrid">') == 2


def test_flag_tables_list_the_rows_each_flag_decided_strongest_first_and_say_when_cut():
    rows = [
        _row(A, "hoyer", f"set{i}", "UNTRUSTED", round(0.71 + i / 100, 2), "sparser_is_ood", [_flag("massive")])
        for i in range(13)
    ]
    md = render_markdown(_hand_report(rows, hooks=(A,)))
    section = md.split("#### carried by massive activations (MAS, blocking)", 1)[1].split("####", 1)[0]
    assert "Decided 13 row(s)." in section
    assert "Showing the 10 with the strongest signal of 13; all are in report.json." in section
    listed = re.findall(r"AUROC (0\.\d\d) \[", section)
    assert listed == [f"{0.71 + i / 100:.2f}" for i in range(12, 2, -1)]


def test_report_without_a_verdict_still_renders(tmp_path):
    report = _hand_report().model_copy(update={"verdict": None})
    md = render_markdown(report)
    assert _headings(md)[0] == "## Verdict" and "No verdict in this report" in md
    assert "No verdict in this report" in render_html(md, tmp_path)
    assert _terminal(report).startswith("Verdict: none in this report")
    write_report(report, tmp_path / "out")
    assert not list((tmp_path / "out" / "plots").glob("verdict*"))
    assert not [name for name in report.plots if name.startswith(VERDICT_PLOT)]


def test_verdict_plot_is_drawn_and_embedded(tmp_path):
    report = _hand_report()
    write_report(report, tmp_path)
    assert (tmp_path / report.plots["verdict_grid_raw"]).stat().st_size > 1000
    md = (tmp_path / "report.md").read_text()
    verdict = md.split("## Verdict", 1)[1].split("\n## ", 1)[0]
    assert "![verdict_grid_raw](plots/verdict_grid_raw.png)" in verdict
    assert "## Plots" not in md  # the only plot is in the verdict
    html = (tmp_path / "report.html").read_text()
    section = html.split('<section id="verdict">', 1)[1].split("</section>", 1)[0]
    assert 'src="data:image/png;base64,' in section


def test_rendering_3000_rows_is_fast(tmp_path):
    rng = random.Random(0)
    metrics = [f"m{i}" for i in range(12)]
    rows = []
    for layer in range(30):
        hook = f"blocks.{layer}.hook_resid_post"
        for metric in metrics:
            for target in ("a", "b", "c", "d", "e", "f", "g", "h"):
                value = round(rng.uniform(0.5, 1.0), 4)
                direction = rng.choice(["sparser_is_ood", "denser_is_ood"])
                if value < 0.7:
                    rows.append(_row(hook, metric, target, "UNTRUSTED", value, direction, [_flag("no_signal")]))
                elif value < 0.9:
                    rows.append(_row(hook, metric, target, "UNTRUSTED", value, direction, [_flag("basis_dependent")]))
                else:
                    rows.append(_row(hook, metric, target, "TRUSTED", value, direction))
    report = _hand_report(rows, hooks=[f"blocks.{i}.hook_resid_post" for i in range(30)])
    assert len(report.verdict.rows) >= 2880
    start = time.perf_counter()
    md = render_markdown(report)
    html = render_html(md, tmp_path)
    _terminal(report)
    assert time.perf_counter() - start < 5.0
    assert len(html) < 3_000_000


# ------------------------------------------------------------------------------------------ a real audit
@pytest.fixture(scope="module")
def audited(tiny_hooked, tmp_path_factory) -> tuple[Report, object]:
    out = tmp_path_factory.mktemp("verdict-render")
    suite = _suite()
    config = AuditConfig(
        seq_len=32, max_seqs=6, batch_size=4, n_boot=20, random_init_control=True, control_sets=2, concepts=[]
    )
    hooks = ["blocks.*.hook_resid_post"]
    Audit(tiny_hooked, hooks=hooks, suite=suite, config=config, out_dir=out, progress=False).run()
    return Report.from_json(out / "report.json"), out


def test_numbers_shown_are_the_reports(audited):
    report, out = audited
    v = report.verdict
    assert v is not None and v.rows
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    text = re.sub(r"\s+", " ", _terminal(report, width=400))
    assert _headings(md)[0] == "## Verdict"
    counts = Counter(r.status for r in v.rows)
    signals = sum(r.signal for r in v.rows)
    sentence = f"{signals} of {len(v.rows)} hook × score × target combinations show a signal"
    for out_text in (md, html, text):
        assert sentence in out_text
        if counts.get("TRUSTED"):
            assert f"{counts['TRUSTED']} trusted signal" in out_text
    for h in v.hooks:
        for described in h.trusted[: views.BEST_FEW]:
            assert described in md and described in text and described in html
        for described in h.caution[: views.BEST_FEW]:  # the terminal counts them by flag
            assert described in md and described in html
        for direction, (lo, hi) in h.value_range_by_direction.items():
            n = h.direction_counts[direction]
            span = f"{lo:.2f}" if f"{lo:.2f}" == f"{hi:.2f}" else f"{lo:.2f}–{hi:.2f}"
            shown = f"{direction} {n} (AUROC {span})"
            assert shown in md and shown in html and shown in text
        untrusted = h.status_counts.get("UNTRUSTED", 0)
        assert f"**Untrusted:** {untrusted}: " in md
        for flag, n in h.decisive_counts.items():  # the untrusted ones by decisive flag, everywhere
            assert f"{views.flag_label(flag)} {n}" in md.split(f"**`{h.hook}`**", 1)[1].split("\n", 1)[0]
            assert f"{views.flag_label(flag)} {n}" in text
        caution = Counter(f.name for r in v.rows if r.hook == h.hook and r.status == "CAUTION" for f in r.flags)
        for flag, n in caution.items():
            assert f"{views.flag_label(flag)} {n}" in text
    # every grid cell equals the count of the JSON's rows of that hook × score
    grid = _grid(md)
    labels = grid[0].strip("| ").split(" | ")[1:]
    for line in grid[2:]:
        cells = line.strip("| ").split(" | ")
        hook = cells[0].strip("`")
        for label, cell in zip(labels, cells[1:], strict=True):
            basis, score = label.split(" ", 1)
            metric, reduce = score.split("/")
            mine = [r for r in v.rows if (r.hook, r.basis, r.metric, r.reduce) == (hook, basis, metric, reduce)]
            status = Counter(r.status for r in mine)
            for s, abbr in (("TRUSTED", "T"), ("CAUTION", "C"), ("UNTRUSTED", "U")):
                assert (f"{abbr} {status[s]}" in cell) == bool(status[s])
    # the thresholds are the config's, the interval methods the report's
    for key, value in v.config.model_dump().items():
        assert f"| `{key}` | {value:g} |" in md
    for method in {**report.familiarity.settings.ci_methods, **v.ci_methods}.values():
        assert method in md
    # evidence in the flag tables is the JSON's
    decided = [r for r in v.rows if r.decisive == "basis_dependent"]
    if decided:
        best = max(decided, key=lambda r: abs(r.value))
        (flag,) = [f for f in best.flags if f.name == "basis_dependent"]
        assert f"{flag.evidence['max_delta']:.3f}" in md.split("#### basis-dependent", 1)[1]
