"""The audit end to end on a tiny model: report contents, renderings, resume after an interruption."""

import json
import random

import pytest
import torch
from sae_factory import make_sae

from fer_diag.audit import Audit, AuditConfig, default_hooks
from fer_diag.data.suite import SetKind, Suite, TextSet
from fer_diag.report.schema import Report

WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "while",
    "dogs",
    "ran",
    "past",
    "old",
    "mills",
    "and",
    "quiet",
    "rivers",
    "in",
    "the",
    "warm",
    "morning",
    "sun",
]


def _texts(seed: int, n: int = 6, scramble: bool = False) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(30)]
        text = " ".join(words)
        if scramble:
            text = "".join(rng.choice("qxzjv#@%&!") for _ in text)
        out.append(text)
    return out


def _suite() -> Suite:
    return Suite(
        [
            TextSet("id", SetKind.IN_DISTRIBUTION, texts=_texts(0)),
            TextSet("noise", SetKind.SHIFTED, texts=_texts(1, scramble=True)),
            TextSet("g0", SetKind.GRADED, texts=_texts(2), level=0.0, axis="shift"),
            TextSet("g1", SetKind.GRADED, texts=_texts(3, scramble=True), level=1.0, axis="shift"),
        ]
    )


CONFIG = AuditConfig(
    seq_len=32, max_seqs=6, batch_size=4, n_boot=50, random_init_control=True, control_sets=2, concepts=[]
)


def test_default_hooks_cover_every_third_and_last_layer():
    assert default_hooks(7) == [f"blocks.{i}.hook_resid_post" for i in (0, 3, 6)]
    assert default_hooks(30)[-2:] == ["blocks.27.hook_resid_post", "blocks.29.hook_resid_post"]


@pytest.fixture(scope="module")
def report_dir(tiny_hooked, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    Audit(tiny_hooked, hooks=["blocks.*.hook_resid_post"], suite=_suite(), config=CONFIG, out_dir=out).run()
    return out


def test_report_files_and_round_trip(report_dir):
    for name in ("report.json", "report.md", "report.html"):
        assert (report_dir / name).stat().st_size > 0
    report = Report.from_json(report_dir / "report.json")
    assert report.hooks == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    assert [s.name for s in report.text_sets] == ["id", "noise", "g0", "g1"]
    for plot in report.plots.values():
        assert (report_dir / plot).exists()
    html = (report_dir / "report.html").read_text()
    assert "data:image/png;base64," in html and "<script src=" not in html  # self-contained


def test_report_numbers_come_from_the_analyzers(report_dir):
    report = Report.from_json(report_dir / "report.json")
    profiles = report.sparsity["profiles"]["raw"]
    for hook in report.hooks:
        assert set(profiles[hook]) == {"id", "noise", "g0", "g1"}
        hoyer = profiles[hook]["id"]["metrics"]["hoyer"]["unmasked"]["seq_mean"]
        assert 0.0 < hoyer < 1.0
    rows = report.familiarity["detection"]
    assert {r["set_name"] for r in rows} == {"noise", "g0", "g1"}
    assert {r["metric"] for r in rows if r["source"] == "baseline"} == {"nll", "entropy", "maxprob"}
    assert report.familiarity["graded"], "graded axis must give ρ rows"
    # the random-init control measured the reference and one more set
    assert report.control["sets"] == ["id", "noise"]
    md = (report_dir / "report.md").read_text()
    assert f"{hoyer:.3f}" in md  # the Markdown shows the JSON's number


@pytest.mark.parametrize("with_sae", [False, True])
def test_interrupted_run_resumes_with_same_result(tiny_hooked, tmp_path, monkeypatch, with_sae):
    import fer_diag.audit as audit_mod

    saes = {"blocks.1.hook_resid_post": make_sae(tiny_hooked.d_model, "blocks.1.hook_resid_post")} if with_sae else None
    cfg = CONFIG.model_copy(update={"random_init_control": False, "ce_windows": 5})  # CE over 2 batches of 4

    def audit(out_dir=None):
        return Audit(
            tiny_hooked, hooks=["blocks.*.hook_resid_post"], saes=saes, suite=_suite(), config=cfg, out_dir=out_dir
        )

    calls = {"n": 0}
    original = audit_mod.SparsityAnalyzer.update

    def flaky(self, batch):
        if batch.set_name == "g0":
            calls["n"] += 1
            raise KeyboardInterrupt
        original(self, batch)

    monkeypatch.setattr(audit_mod.SparsityAnalyzer, "update", flaky)
    with pytest.raises(KeyboardInterrupt):
        audit(tmp_path).run()
    assert calls["n"] == 1
    assert (tmp_path / ".partial" / "state.pt").exists()
    monkeypatch.setattr(audit_mod.SparsityAnalyzer, "update", original)
    resumed = audit(tmp_path).run()
    assert sorted(resumed.run.resumed_sets) == ["id", "noise"]
    assert not (tmp_path / ".partial").exists()
    full = audit().run()
    for section in ("sparsity", "sae_fidelity"):
        assert json.dumps(resumed.model_dump(mode="json")[section], sort_keys=True) == json.dumps(
            full.model_dump(mode="json")[section], sort_keys=True
        )
    if with_sae:
        sets = resumed.sae_fidelity["hooks"]["blocks.1.hook_resid_post"]["sets"]
        assert set(sets) == {"id", "noise", "g0", "g1"}
        mask = audit()._windows(tiny_hooked, _suite())["id"].mask
        assert sets["id"]["ce_tokens"] == int(mask[:5, 1:].sum())  # predictions of counted tokens, 5 windows


def test_bridge_and_hooked_audits_agree(tiny_hooked, tiny_bridge):
    cfg = CONFIG.model_copy(update={"random_init_control": False, "n_boot": 0})
    a = Audit(tiny_hooked, hooks=["blocks.*.hook_resid_post"], suite=_suite(), config=cfg, progress=False).run()
    b = Audit(tiny_bridge, hooks=["blocks.*.hook_resid_post"], suite=_suite(), config=cfg, progress=False).run()
    for hook in a.hooks:
        x = a.sparsity["profiles"]["raw"][hook]["noise"]["metrics"]["hoyer"]["unmasked"]["seq_mean"]
        y = b.sparsity["profiles"]["raw"][hook]["noise"]["metrics"]["hoyer"]["unmasked"]["seq_mean"]
        assert x == pytest.approx(y, abs=1e-4)


def test_empty_text_set_is_a_clear_error(tiny_hooked):
    suite = Suite([TextSet("id", SetKind.IN_DISTRIBUTION, texts=_texts(0)), TextSet("empty", SetKind.SHIFTED)])
    with pytest.raises(ValueError, match="empty"):
        Audit(tiny_hooked, suite=suite, config=CONFIG, progress=False).run()


def test_user_graded_file_gets_a_length_controlled_graded_row(tiny_hooked, tmp_path):
    """A --graded file on the tiny model: its axis is audited like the built-in one, length control included."""
    rng = random.Random(5)
    rows = []
    for src in range(6):
        words = [rng.choice(WORDS) for _ in range(30)]
        for level, n_words in ((0, 30), (1, 20), (2, 12)):  # farther = shorter: length follows the level
            text = " ".join(words[:n_words])
            if level:
                text = "".join(c if rng.random() > 0.2 * level else rng.choice("qxzj#@") for c in text)
            rows.append({"text": text, "level": level, "source": f"s{src}"})
    path = tmp_path / "difficulty.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = CONFIG.model_copy(update={"random_init_control": False, "ce_windows": 0, "seq_len": 24, "min_tokens": 4})
    audit = Audit(
        tiny_hooked, hooks=["blocks.1.hook_resid_post"], suite=_suite(), graded_texts=[path], config=cfg, progress=False
    )
    report = audit.run()
    sets = {s.name: s for s in report.text_sets}
    assert [n for n in sets if n.startswith("difficulty")] == ["difficulty_0", "difficulty_1", "difficulty_2"]
    assert sets["difficulty_2"].axis == "difficulty" and sets["difficulty_2"].level == 2.0
    rows = [r for r in report.familiarity["graded"] if r["axis"] == "difficulty"]
    assert rows and {r["axis"] for r in report.familiarity["graded"]} == {"shift", "difficulty"}
    hoyer = next(r for r in rows if r["source"] == "sparsity" and r["metric"] == "hoyer" and r["basis"] == "raw")
    assert hoyer["levels"] == [0.0, 1.0, 2.0] and not hoyer["reference_as_level0"]
    assert hoyer["n_clusters"] == 6  # one cluster per source text, shared by its three levels
    assert hoyer["spearman_length_controlled"] is not None
    assert hoyer["spearman_length_controlled_ci"] is not None
    verdicts = [v for v in report.verdict.rows if v.target_kind == "axis" and v.target == "difficulty"]
    assert verdicts, "the verdict judges the user axis like the built-in one"


def test_graded_files_are_appended_to_the_suite_of_id_and_ood_files(tiny_hooked, tmp_path):
    id_path, ood_path, graded = tmp_path / "mine.txt", tmp_path / "other.txt", tmp_path / "mine.jsonl"
    id_path.write_text("\n".join(_texts(0)) + "\n")
    ood_path.write_text("\n".join(_texts(1, scramble=True)) + "\n")
    graded.write_text("".join(json.dumps({"text": t, "level": i % 2}) + "\n" for i, t in enumerate(_texts(2))))
    audit = Audit(tiny_hooked, id_texts=[id_path], ood_texts=[ood_path], graded_texts=[graded], config=CONFIG)
    suite = audit._build_suite(tiny_hooked)
    assert suite.names[:2] == ["mine", "other"] and suite.names[-2:] == ["mine_0", "mine_1"]
    assert suite.axes == ["shift", "mine"]  # the built-in axis from the ID text, then the user's
    assert [len(s) for s in suite.axis("mine")] == [3, 3]


# --------------------------------------------------------------------- probes and FER in the audit
def _concept_files(tmp_path):
    """A sequence-level concept (plain words vs scrambled) and a token-level one (the word "cat" vs "dog" marked)."""
    rng = random.Random(11)
    seq, tok = tmp_path / "kind.jsonl", tmp_path / "animal.jsonl"
    lines = [{"text": t, "label": "words"} for t in _texts(20, n=8)]
    lines += [{"text": t, "label": "noise"} for t in _texts(21, n=8, scramble=True)]
    seq.write_text("".join(json.dumps(x) + "\n" for x in lines))
    rows = []
    for i in range(16):
        animal = ("cat", "dogs")[i % 2]
        head = " ".join(rng.choice(WORDS) for _ in range(6)) + " "
        rows.append({"text": head + animal + " sat", "label": animal, "span": [len(head), len(head) + len(animal)]})
    tok.write_text("".join(json.dumps(x) + "\n" for x in rows))
    return [seq, tok]


def test_audit_probes_user_concepts_and_scores_fer_on_the_sae(tiny_hooked, tmp_path):
    hook = "blocks.1.hook_resid_post"
    saes = {hook: make_sae(tiny_hooked.d_model, hook)}
    cfg = CONFIG.model_copy(update={"random_init_control": False, "n_boot": 0, "probe_folds": 4, "fer_boot": 2})
    out = tmp_path / "out"
    report = Audit(
        tiny_hooked,
        hooks=["blocks.*.hook_resid_post"],
        saes=saes,
        suite=_suite(),
        concept_files=_concept_files(tmp_path),
        config=cfg,
        out_dir=out,
        progress=False,
    ).run()
    probes = report.frame("probes")
    assert set(probes.concept) == {"kind", "animal"}
    neurons = "blocks.1.mlp.hook_post"  # probed beside the SAE: FER on neurons vs latents
    assert set(zip(probes.hook, probes.basis, strict=True)) == {
        ("blocks.0.hook_resid_post", "raw"),
        (hook, "raw"),
        (hook, "sae"),
        (neurons, "raw"),
    }
    kind = probes[(probes.concept == "kind") & (probes.basis == "raw")]
    assert (kind.accuracy > 0.9).all()  # scrambled vs plain text: any layer reads it
    assert (probes.n == 16).all() and (probes.n_twin == 16).all()
    sparse = report.frame("probes.sparse")
    assert set(zip(sparse.hook, sparse.basis, strict=True)) == {(hook, "raw"), (hook, "sae")}  # at the SAE hooks
    fer = report.frame("fer")
    assert set(zip(fer.hook, fer.basis, strict=True)) == {(hook, "sae"), (neurons, "raw")}  # residual: not scored
    assert any("not features" in why for why in report.fer.not_scored)
    assert fer["index"].between(0, 1).all()
    animal = report.fer.rows[[r.concept for r in report.fer.rows].index("animal")]
    assert animal.absorption is not None  # token level, SAE basis: absorption defined
    kind_row = report.fer.rows[[r.concept for r in report.fer.rows].index("kind")]
    assert kind_row.absorption is None and "sequence" in kind_row.reasons["absorption"]
    for level in ("sequence", "token"):  # one co-activation graph per level: a window mean is not one token
        assert (out / report.fer.graphs[f"{hook}/sae/{level}"]).is_file()
    assert kind_row.modularity_deficit is None and "same level" in kind_row.reasons["modularity_deficit"]
    assert (out / "probe_directions.safetensors").is_file()
    md = (out / "report.md").read_text()
    assert "## Probes" in md and "## Fractured-entanglement" in md
    assert "probe_kind" in report.plots and "fer_graph" in report.plots
    from rich.console import Console

    from fer_diag.report.terminal import print_summary

    console = Console(record=True, width=200)
    print_summary(report, console)
    assert "concepts: linear probe accuracy" in console.export_text()


def test_checkpoint_of_another_state_format_is_not_resumed(tmp_path):
    from fer_diag.analyzers.baselines import BaselineAnalyzer
    from fer_diag.pipeline import STATE_FORMAT, Checkpoint

    ckpt = Checkpoint(tmp_path / "state.pt", "abc")
    ckpt.save({"baselines": BaselineAnalyzer()}, ["id"])
    assert ckpt.load({"baselines": BaselineAnalyzer()}) == {"id"}
    state = torch.load(ckpt.path, weights_only=False)
    torch.save(state | {"format": STATE_FORMAT - 1}, ckpt.path)  # written by an older fer-diag
    assert ckpt.load({"baselines": BaselineAnalyzer()}) == set()
