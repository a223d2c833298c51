"""The typed report: sections validate what the analyzers write, versions, DataFrames, `fer-diag schema`."""

from __future__ import annotations

import copy
import json
import math

import pytest
from pydantic import ValidationError
from rich.console import Console
from sae_factory import make_sae
from test_audit import _suite
from typer.testing import CliRunner

from fer_diag.audit import Audit, AuditConfig
from fer_diag.errors import FerDiagError
from fer_diag.report import SCHEMA_VERSION, Report, ReportFileError, ReportVersionError
from fer_diag.report.markdown import render_markdown
from fer_diag.report.sections import (
    SECTIONS,
    ControlSection,
    DetectionRow,
    FamiliaritySection,
    MassiveSection,
    SAEFidelitySection,
    ShiftedLatentsSection,
    SparsitySection,
)
from fer_diag.report.terminal import print_summary

SAE_HOOK = "blocks.1.hook_resid_post"


CONFIG = AuditConfig(
    seq_len=32, max_seqs=6, batch_size=4, n_boot=20, random_init_control=True, control_sets=2, concepts=[]
)


@pytest.fixture(scope="module")
def audit_dir(tiny_hooked, tmp_path_factory):
    """A report written by the audit: every section present (an SAE on one hook, the random-init control)."""
    out = tmp_path_factory.mktemp("typed-report")
    saes = {SAE_HOOK: make_sae(tiny_hooked.d_model, SAE_HOOK)}
    hooks = ["blocks.*.hook_resid_post"]
    Audit(tiny_hooked, hooks=hooks, saes=saes, suite=_suite(), config=CONFIG, out_dir=out, progress=False).run()
    return out


@pytest.fixture
def raw(audit_dir) -> dict:
    """The report.json as plain JSON (a fresh copy per test)."""
    return json.loads((audit_dir / "report.json").read_text())


@pytest.fixture
def report(audit_dir) -> Report:
    return Report.from_json(audit_dir / "report.json")


def _write(tmp_path, data: dict, name: str = "report.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


# ----------------------------------------------------------------- hand-built parts the tiny model never produces
def _massive_section() -> dict:
    """A massive section with dims and a scaffold test (a random tiny model has no massive activations)."""
    dim = {
        "dim": 7,
        "n_hits": 12,
        "n_seqs": 12,
        "seq_frac": 1.0,
        "hits_first_position": 12,
        "hits_later_positions": 0,
        "max_abs": 2512.5,
        "value_mean": -2400.25,
        "value_cv": 0.01,
        "top_tokens": [[1, 12]],
    }
    hook = {
        "hook": "blocks.1.hook_resid_post",
        "layer": 1,
        "n_seqs": 12,
        "n_positions": 300,
        "median_abs": 0.5,
        "threshold": 500.0,
        "n_hits": 12,
        "n_hit_tokens": 12,
        "energy_share_mean": 0.97,
        "energy_share_max": 0.99,
        "dims": [dim, {**dim, "dim": 3, "n_hits": 2, "hits_first_position": 2, "top_tokens": [[1, 2]]}],
    }
    quiet = {**hook, "hook": "blocks.0.hook_resid_post", "layer": 0, "n_hits": 0, "n_hit_tokens": 0, "dims": []}
    quiet |= {"energy_share_mean": None, "energy_share_max": None}
    scaffold = {
        "hook": "blocks.1.hook_resid_post",
        "dims": [7, 3],
        "n_positions": 12,
        "nll_clean": 3.25,
        "nll_mean": 3.3,
        "nll_zero": 9.75,
        "delta_mean": 0.05,
        "delta_zero": 6.5,
        "positions": [0],
        "windows": 12,
    }
    return {
        "abs_threshold": 100.0,
        "ratio": 1000.0,
        "bin_ratio": 2 ** (1 / 32),
        "hooks": {"blocks.0.hook_resid_post": quiet, "blocks.1.hook_resid_post": hook},
        "first_layer": 1,
        "first_hook": "blocks.1.hook_resid_post",
        "scaffold": scaffold,
    }


# ------------------------------------------------------------------------------------------- sections
def test_sections_are_typed_models(report):
    assert report.schema_version == SCHEMA_VERSION
    assert isinstance(report.sparsity, SparsitySection)
    assert isinstance(report.massive, MassiveSection)
    assert isinstance(report.familiarity, FamiliaritySection)
    assert isinstance(report.sae_fidelity, SAEFidelitySection)
    assert isinstance(report.shifted_latents, ShiftedLatentsSection)
    assert isinstance(report.control, ControlSection)
    assert all(isinstance(r, DetectionRow) for r in report.familiarity.detection)
    hoyer = report.sparsity.profiles["raw"][SAE_HOOK]["id"].metrics["hoyer"]["unmasked"]
    assert 0 < hoyer.seq_mean < 1 and hoyer.n_tokens > 0
    pr = report.sparsity.profiles["raw"][SAE_HOOK]["id"].metrics["participation_ratio"]["unmasked"]
    assert not hasattr(pr, "mean")  # a window metric has no per-token statistics


def test_round_trip_is_equal(report, raw, tmp_path):
    again = Report.from_json(report.to_json(tmp_path / "again.json"))
    assert again == report
    assert again.model_dump_json() == report.model_dump_json()
    # the typed sections write the JSON the analyzers produced, key for key
    assert json.loads(again.model_dump_json()) == raw


def test_section_json_keeps_the_analyzer_shape(raw):
    """Spot checks of the 1.x shapes the typed sections must keep (scripts reading report.json rely on them)."""
    fid = raw["sae_fidelity"]["hooks"][SAE_HOOK]["sets"]["noise"]
    assert "massive_masked" not in fid  # only written for hooks with massive dims, not as null
    gained = raw["shifted_latents"]["hooks"][SAE_HOOK]["noise"]["gained"]
    assert gained and {"latent", "rate_reference", "rate", "change", "contexts"} == set(gained[0])
    assert set(raw["control"]) == {"sets", "sparsity"}
    assert raw["control"]["sets"] == ["id", "noise"]


def test_older_major_version_is_refused_naming_both(raw, tmp_path):
    raw["schema_version"] = "1.0"
    with pytest.raises(ReportVersionError) as err:
        Report.from_json(_write(tmp_path, raw))
    assert "1.0" in str(err.value) and SCHEMA_VERSION in str(err.value)
    assert isinstance(err.value, FerDiagError)  # a user error: the CLI exits 2 with the message


def test_newer_minor_version_is_read(raw, tmp_path):
    raw["schema_version"] = f"{SCHEMA_VERSION.split('.')[0]}.9"
    assert Report.from_json(_write(tmp_path, raw)).schema_version.endswith(".9")


def _drop(d: dict, path: list) -> None:
    for key in path[:-1]:
        d = d[key]
    del d[path[-1]]


def _add(d: dict, path: list, key: str) -> None:
    for k in path:
        d = d[k]
    d[key] = 1


DROPPED = {
    "sparsity": ["sparsity", "metric_sense"],
    "sparsity.profile": ["sparsity", "profiles", "raw", SAE_HOOK, "id", "metrics", "hoyer", "unmasked", "seq_std"],
    "massive": ["massive", "hooks", SAE_HOOK, "n_hits"],
    "familiarity": ["familiarity", "detection", 0, "auroc"],
    "sae_fidelity": ["sae_fidelity", "hooks", SAE_HOOK, "sets", "id", "ce_tokens"],
    "shifted_latents": ["shifted_latents", "hooks", SAE_HOOK, "noise", "lost"],
    "control": ["control", "sparsity", "profiles"],
}


@pytest.mark.parametrize("where", list(DROPPED))
def test_missing_key_in_a_section_is_rejected(raw, tmp_path, where):
    path = DROPPED[where]
    _drop(raw, path)
    with pytest.raises(ReportFileError, match=str(path[-1])):
        Report.from_json(_write(tmp_path, raw))


ADDED = {
    "sparsity": ["sparsity"],
    "sparsity.density": ["sparsity", "feature_density", "sae", SAE_HOOK, "id"],
    "massive": ["massive"],
    "familiarity": ["familiarity", "graded", 0],
    "sae_fidelity": ["sae_fidelity", "hooks", SAE_HOOK],
    "shifted_latents": ["shifted_latents", "hooks", SAE_HOOK, "noise", "gained", 0, "contexts", 0],
    "control": ["control"],
}


@pytest.mark.parametrize("where", list(ADDED))
def test_extra_key_in_a_section_is_rejected(raw, tmp_path, where):
    _add(raw, ADDED[where], "surprise")
    with pytest.raises(ReportFileError, match="surprise"):
        Report.from_json(_write(tmp_path, raw))


def test_wrong_type_is_rejected(raw):
    raw["familiarity"]["detection"][0]["n_id"] = "many"
    with pytest.raises(ValidationError):
        Report.model_validate(raw)


def test_not_a_report_is_a_user_error(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("[1, 2]")
    with pytest.raises(ReportFileError):
        Report.from_json(path)
    path.write_text("{not json")
    with pytest.raises(ReportFileError):
        Report.from_json(path)


def test_massive_details_and_scaffold_validate_and_render(report):
    r = report.model_copy(deep=True)
    r.massive = _massive_section()  # assignment validates, as construction does
    assert isinstance(r.massive, MassiveSection) and r.massive.scaffold.nll_zero == 9.75
    assert r.massive.hooks[SAE_HOOK].dims[0].top_tokens == [(1, 12)]
    assert json.loads(r.model_dump_json())["massive"] == _massive_section()
    md = render_markdown(r)
    assert "| blocks.1.hook_resid_post | 7 | 2512.500 |" in md
    assert "set to zero 9.750" in md
    with pytest.raises(ValidationError):
        r.massive = {**_massive_section(), "median_abs_mean": 1.0}


def test_fidelity_with_massive_dims_validates(raw):
    sets = raw["sae_fidelity"]["hooks"][SAE_HOOK]["sets"]
    masked = {"explained_variance": 0.5, "cosine": 0.9, "relative_mse": 0.4, "ev_drop": 0.1}
    sets["noise"]["massive_masked"] = masked
    r = Report.model_validate(raw)
    assert r.sae_fidelity.hooks[SAE_HOOK].sets["noise"].massive_masked.cosine == 0.9
    dumped = json.loads(r.model_dump_json())["sae_fidelity"]["hooks"][SAE_HOOK]["sets"]
    assert dumped["noise"]["massive_masked"] == masked and "massive_masked" not in dumped["id"]
    frame = r.frame("sae_fidelity").set_index("set")
    assert frame.loc["noise", "masked_cosine"] == 0.9 and math.isnan(frame.loc["id", "masked_cosine"])


def test_nan_is_written_as_null_and_read_back(report, tmp_path):
    r = report.model_copy(deep=True)
    r.familiarity.detection[0].fpr_at_95tpr = float("nan")
    data = json.loads(r.to_json(tmp_path / "r.json").read_text())
    assert data["familiarity"]["detection"][0]["fpr_at_95tpr"] is None
    assert math.isnan(Report.from_json(tmp_path / "r.json").familiarity.detection[0].fpr_at_95tpr)


def test_absent_sections_are_none(raw):
    for name in ("sae_fidelity", "shifted_latents", "control"):
        raw.pop(name)
    raw["massive"] = {}  # 1.x wrote absent sections as {}
    r = Report.model_validate(raw)
    assert r.sae_fidelity is None and r.shifted_latents is None and r.control is None and r.massive is None
    assert "## Massive activations" not in render_markdown(r)
    assert set(SECTIONS) <= set(Report.model_fields)


def test_dict_style_reads_still_work(report):
    """Scripts written against the untyped 1.x sections keep working."""
    row = report.familiarity["detection"][0]
    assert row["auroc"] == row.auroc and row.get("nope", 5) == 5
    assert report.control["sets"] == ["id", "noise"]
    with pytest.raises(KeyError):
        row["nope"]


# --------------------------------------------------------------------------------------------- frames
def test_frames_lists_every_row_like_section():
    names = Report.frames()
    for name in (
        "familiarity.detection",
        "familiarity.graded",
        "sparsity.profiles",
        "sae_fidelity",
        "massive.dims",
        "shifted_latents",
        "control",
    ):
        assert name in names


def test_frame_rows_and_columns_match_the_section(report, raw):
    det = report.frame("familiarity.detection")
    assert len(det) == len(raw["familiarity"]["detection"])
    assert {"hook", "metric", "set_name", "auroc", "auroc_ci_low", "auroc_ci_high", "masked"} <= set(det.columns)
    first = raw["familiarity"]["detection"][0]
    assert det.iloc[0]["auroc"] == first["auroc"] and det.iloc[0]["auroc_ci_low"] == first["auroc_ci"][0]

    assert len(report.frame("familiarity.graded")) == len(raw["familiarity"]["graded"])

    prof = report.frame("sparsity.profiles")
    n = sum(
        len(variants)
        for hooks in raw["sparsity"]["profiles"].values()
        for sets in hooks.values()
        for p in sets.values()
        for variants in p["metrics"].values()
    )
    assert len(prof) == n
    assert {"basis", "hook", "set", "metric", "variant", "mean", "seq_mean", "n_seqs"} <= set(prof.columns)
    sel = prof.query("basis == 'raw' and set == 'id' and metric == 'hoyer' and variant == 'unmasked'")
    want = raw["sparsity"]["profiles"]["raw"][SAE_HOOK]["id"]["metrics"]["hoyer"]["unmasked"]["seq_mean"]
    assert sel.set_index("hook").loc[SAE_HOOK, "seq_mean"] == want
    pr = prof[prof.metric == "participation_ratio"]
    assert len(pr) and pr["mean"].isna().all() and pr["seq_mean"].notna().all()

    fid = report.frame("sae_fidelity")
    assert len(fid) == sum(len(h["sets"]) for h in raw["sae_fidelity"]["hooks"].values())
    assert {"hook", "set", "explained_variance", "ev_drop", "ce_score", "reference_ev"} <= set(fid.columns)

    shifted = report.frame("shifted_latents")
    entries = [
        lat
        for sets in raw["shifted_latents"]["hooks"].values()
        for entry in sets.values()
        for side in ("gained", "lost")
        for lat in entry[side]
    ]
    assert len(shifted) == len(entries) > 0
    assert {"hook", "set", "side", "rank", "latent", "rate", "change", "top_context"} <= set(shifted.columns)

    control = report.frame("control")
    assert len(control) == sum(
        len(v)
        for hooks in raw["control"]["sparsity"]["profiles"].values()
        for sets in hooks.values()
        for p in sets.values()
        for v in p["metrics"].values()
    )
    assert set(control["set"]) == {"id", "noise"}


def test_massive_frames(report):
    r = report.model_copy(deep=True)
    r.massive = _massive_section()
    dims = r.frame("massive.dims")
    assert len(dims) == 2 and list(dims["dim"]) == [7, 3] and set(dims["hook"]) == {SAE_HOOK}
    assert {"hook", "layer", "dim", "max_abs", "value_cv", "seq_frac", "top_tokens"} <= set(dims.columns)
    hooks = r.frame("massive.hooks").set_index("hook")
    assert hooks.loc[SAE_HOOK, "n_dims"] == 2 and hooks.loc["blocks.0.hook_resid_post", "n_dims"] == 0


def test_every_frame_builds_and_absent_sections_give_empty_frames(report, raw):
    for name in Report.frames():
        assert len(report.frame(name).columns) > 0, name
    raw.pop("sae_fidelity")
    empty = Report.model_validate(raw).frame("sae_fidelity")
    assert len(empty) == 0 and list(empty.columns) == list(report.frame("sae_fidelity").columns)


def test_unknown_frame_lists_valid_names(report):
    with pytest.raises(KeyError) as err:
        report.frame("familiarity.detections")
    assert "familiarity.detection" in str(err.value) and "sparsity.profiles" in str(err.value)


# ------------------------------------------------------------------------------------------ renderings
def test_renderings_read_the_typed_sections(report, audit_dir):
    md = render_markdown(report)
    hoyer = report.sparsity.profiles["raw"][SAE_HOOK]["id"].metrics["hoyer"]["unmasked"].seq_mean
    assert f"{hoyer:.3f}" in md
    assert "## SAE fidelity per text set" in md and "## Which latents shift" in md
    assert "## Learned or intrinsic? Trained vs random-init" in md
    console = Console(record=True, width=200)
    print_summary(report, console)
    assert SAE_HOOK in console.export_text()


# ------------------------------------------------------------------------------------------- CLI
def _refs(node) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_schema_command_prints_the_report_json_schema():
    from fer_diag.cli import app

    result = CliRunner().invoke(app, ["schema"])
    assert result.exit_code == 0, result.output
    schema = json.loads(result.stdout)
    assert schema["title"] == "Report" and schema["type"] == "object"
    assert set(SECTIONS) <= set(schema["properties"])
    defs = schema["$defs"]
    for name in ("SparsitySection", "MassiveSection", "FamiliaritySection", "DetectionRow", "ControlSection"):
        assert defs[name]["additionalProperties"] is False, name
    for ref in _refs(schema):  # every reference resolves
        assert ref.startswith("#/$defs/") and ref.removeprefix("#/$defs/") in defs, ref
    assert "auroc" in defs["DetectionRow"]["required"]


def test_schema_lists_what_a_report_holds(raw):
    schema = Report.model_json_schema()
    for name in ("familiarity", "sparsity"):
        section = copy.deepcopy(raw[name])
        ref = next(r for r in _refs(schema["properties"][name]))
        assert set(schema["$defs"][ref.removeprefix("#/$defs/")]["properties"]) == set(section)
