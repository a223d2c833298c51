"""The `fer-diag` command line: exit codes, error messages, and the audit on the real default model."""

import json

import pytest
from typer.testing import CliRunner

from fer_diag.cli import EXIT_BAD_INPUT, app

runner = CliRunner()


def test_unknown_model_lists_known_names():
    result = runner.invoke(app, ["audit", "--model", "gpt-17", "--no-control"])
    assert result.exit_code == EXIT_BAD_INPUT
    assert "smollm2-135m" in result.output


def test_id_text_without_ood_text_is_bad_input(tmp_path, monkeypatch):
    import fer_diag.audit as audit_mod

    monkeypatch.setattr(audit_mod.Audit, "_load", lambda self: pytest.fail("must fail before loading the model"))
    f = tmp_path / "id.txt"
    f.write_text("one text\n")
    result = runner.invoke(app, ["audit", "--id-text", str(f)])
    assert result.exit_code == EXIT_BAD_INPUT
    assert "--ood-text" in result.output


def test_data_lists_sources_as_json():
    result = runner.invoke(app, ["data", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    names = {r["name"] for r in rows}
    assert {"fortunes_en", "python_code"} <= names
    for r in rows:
        assert r["available"] or "apt-get install" in r["install_command"]


def test_models_lists_the_zoo_as_json():
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    assert {r["name"] for r in json.loads(result.stdout)} >= {"smollm2-135m", "gemma3-270m"}


@pytest.mark.integration
def test_unknown_hook_on_real_model_names_close_match(tmp_path):
    result = runner.invoke(app, ["audit", "--hooks", "blocks.3.hook_resid_pots", "--out", str(tmp_path)])
    assert result.exit_code == EXIT_BAD_INPUT
    assert "blocks.3.hook_resid_post" in result.output


@pytest.mark.integration
def test_audit_on_default_model_writes_report(tmp_path):
    out = tmp_path / "r"
    args = ["audit", "--max-seqs", "4", "--ce-windows", "2", "--no-control", "--out", str(out), "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["name"] == "smollm2-135m" and report["model"]["n_layers"] == 30
    # massive activations of SmolLM2 (DESIGN §4): present, at the first token, in the middle layers
    assert report["massive"]["first_layer"] is not None and report["massive"]["first_layer"] <= 15
    scaffold = report["massive"]["scaffold"]
    assert scaffold["nll_zero"] > scaffold["nll_mean"] + 1.0  # zeroing the scaffold breaks the model
    profiles = report["sparsity"]["profiles"]["raw"]
    assert "fortunes_en" in profiles["blocks.15.hook_resid_post"]
    if report["saes"]:
        for hook, fid in report["sae_fidelity"]["hooks"].items():
            assert fid["reference_ev"] is not None, hook
    assert (out / "report.md").exists() and (out / "report.html").exists()


def test_audit_option_defaults_are_the_config_defaults():
    import inspect

    from fer_diag.audit import AuditConfig
    from fer_diag.cli import audit

    params = inspect.signature(audit).parameters
    fields = AuditConfig.model_fields
    for name in ("max_seqs", "seq_len", "batch_size", "ce_windows", "seed", "device"):
        assert params[name].default == fields[name].default, name
    assert params["control"].default == fields["random_init_control"].default
