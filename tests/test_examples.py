"""The examples in examples/ run as shipped and write their reports."""

import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.integration
@pytest.mark.parametrize(
    "script, report_dir",
    [("own_transformerlens_model.py", "own-model-report"), ("python_api.py", "example-report")],
)
def test_example_runs_and_writes_its_report(script, report_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(EXAMPLES / script), run_name="__main__")
    assert (tmp_path / report_dir / "report.json").stat().st_size > 0
    assert (tmp_path / report_dir / "report.md").read_text().startswith("# fer-diag audit")
    assert capsys.readouterr().out.strip()  # the example prints what it read back


@pytest.mark.integration
def test_rotated_model_example_shows_invariant_scores_unmoved(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(EXAMPLES / "rotated_model.py"), run_name="__main__")
    out = capsys.readouterr().out
    largest = float(out.rsplit("largest move", 1)[1].split()[0])
    assert largest < 0.02  # participation ratio and SAE latents do not see the rotation


def test_fer_calibration_example_prints_an_index_that_follows_each_planted_factor(capsys):
    """No model needed: the generator's sweeps, as a user would run them to read the index's scale."""
    runpy.run_path(str(EXAMPLES / "fer_calibration.py"), run_name="__main__")
    out = capsys.readouterr().out
    rhos = [float(part.split()[0]) for part in out.split("FER index) = ")[1:]]
    assert len(rhos) == 2 and min(rhos) >= 0.9, out
