"""Data layer: corpus readers, graded shifts, tokenisation into windows, suites."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
import torch

from fer_diag.data import shifts, sources
from fer_diag.data.suite import SetKind, TextSet, default_suite, suite_from_files, tokenize_windows, training_texts
from fer_diag.errors import ConfigError, FerDiagError, InputFileError, MissingFileError, TextSetError

REAL_FORTUNES = Path("/usr/share/games/fortunes")
WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "away", "from", "home"]


@pytest.fixture(scope="module")
def tok():
    """A word-level tokenizer: [PAD]=0, [BOS]=1, [EOS]=2, [UNK]=3, then one id per word of ``WORDS``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[BOS]", "[EOS]", "[UNK]", *WORDS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="[BOS]", eos_token="[EOS]", pad_token="[PAD]", unk_token="[UNK]"
    )


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _fortunes(entries: list[str]) -> str:
    return "\n%\n".join(entries) + "\n%\n"


@pytest.fixture
def corpus_root(tmp_path: Path) -> Path:
    """A small fortunes tree: two English files, German with ``.u8``/``.dat``/``off/``, nothing else."""
    root = tmp_path / "fortunes"
    _write(root / "fortunes", _fortunes([f"English fortune number {i} about cats and dogs. " * 2 for i in range(300)]))
    _write(root / "science", _fortunes([f"Science says {i} things." for i in range(40)]))
    _write(root / "chinese", _fortunes(["中文"]))  # a zh file at the top level is not English
    _write(root / "de" / "witze", _fortunes(["Latin-1 Basis"]))
    _write(root / "de" / "witze.u8", _fortunes([f"Deutscher Witz Nummer {i}." for i in range(20)]))
    _write(root / "de" / "witze.dat", "binary index")
    _write(root / "de" / "leer.u8", "")  # an empty .u8 falls back to its base file
    _write(root / "de" / "leer", _fortunes(["Aus der Basisdatei."]))
    _write(root / "de" / "off" / "boese", _fortunes(["nicht lesen"]))
    return root


# ----------------------------------------------------------------- sources
def test_parse_fortunes_format(tmp_path: Path) -> None:
    raw = "First line\nsecond line\n%\n\n%\nBo\bol\bld and \x1b[33mcolour\x1b[m   \n%  \nLast\n\t\t-- Someone\n"
    entries = sources.read_fortune_file(_write(tmp_path / "f", raw))
    assert entries == ["First line\nsecond line", "Bold and colour", "Last\n\t\t-- Someone"]


def test_fortune_files_prefer_u8_and_skip_off_and_dat(corpus_root: Path) -> None:
    texts = sources.foreign_fortunes("de", min_chars=1, root=corpus_root)
    assert "Aus der Basisdatei." in texts
    assert "Deutscher Witz Nummer 0." in texts
    assert not any("Latin-1" in t or "nicht lesen" in t or "binary" in t for t in texts)


def test_join_entries_reaches_min_chars() -> None:
    entries = [f"entry {i:02d}" for i in range(10)]  # 8 chars each, 10 with the separator
    texts = sources.join_entries(entries, min_chars=30)
    assert texts == ["\n\n".join(entries[i : i + 3]) for i in (0, 3, 6)]  # the 1-entry remainder is dropped
    assert sources.join_entries(["short"], min_chars=100) == ["short"]


def test_english_split_is_disjoint_and_excludes_other_languages(corpus_root: Path) -> None:
    train = sources.english_fortunes(split="train", min_chars=1, root=corpus_root)
    held = sources.english_fortunes(split="heldout", min_chars=1, root=corpus_root)
    everything = sources.english_fortunes(min_chars=1, root=corpus_root)
    assert train and held
    assert not set(train) & set(held)
    assert sorted(train + held) == sorted(everything)
    assert all(sources.is_heldout(t) for t in held) and not any(sources.is_heldout(t) for t in train)
    assert not any("中文" in t for t in everything)


def test_sample_is_seeded_bounded_and_ordered() -> None:
    items = list(range(100))
    a = sources.sample(items, 10, seed=1)
    assert a == sources.sample(items, 10, seed=1) == sorted(a)
    assert len(a) == 10 and a != sources.sample(items, 10, seed=2)
    assert sources.sample(items, None) == items


def test_missing_corpus_names_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "nothing"
    empty.mkdir()
    with pytest.raises(sources.MissingCorpusError, match=re.escape("sudo apt-get install fortunes-de")):
        sources.foreign_fortunes("de", root=empty)
    monkeypatch.setenv(sources.FORTUNES_ENV, str(empty))
    with pytest.raises(FileNotFoundError, match=re.escape("sudo apt-get install fortunes fortunes-min")):
        sources.english_fortunes()
    monkeypatch.setenv(sources.WORDS_ENV, str(empty / "words"))
    with pytest.raises(sources.MissingCorpusError, match="wamerican"):
        sources.words()
    monkeypatch.setenv(sources.ISO_CODES_ENV, str(empty))
    with pytest.raises(sources.MissingCorpusError, match="iso-codes"):
        sources.iso_json()
    rows = {r.name: r for r in sources.availability(["fortunes_de", "words"])}
    assert not rows["fortunes_de"].available and rows["fortunes_de"].n_texts is None
    assert rows["fortunes_de"].install_command == "sudo apt-get install fortunes-de"
    assert "fortunes-de" in rows["fortunes_de"].reason


def test_unknown_language() -> None:
    with pytest.raises(ValueError, match="unknown fortune language"):
        sources.foreign_fortunes("xx")


def test_python_code_and_iso_json_from_given_roots(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    _write(lib / "mod.py", "\n".join(f"value_{i} = compute_something({i}, keyword=True)" for i in range(60)))
    _write(lib / "test" / "test_mod.py", "x = 1\n" * 200)
    chunks = sources.python_code(lines=24, root=lib)
    assert len(chunks) == 3 and chunks[0].count("\n") == 23 and "test" not in "".join(chunks)
    iso = tmp_path / "iso"
    _write(iso / "iso_1.json", json.dumps({"1": [{"code": str(i)} for i in range(9)]}))
    _write(iso / "schema-1.json", json.dumps({"ignored": True}))
    texts = sources.iso_json(entries_per_text=4, root=iso)
    assert [len(json.loads(t)["1"]) for t in texts] == [4, 4, 1]


def test_math_blocks() -> None:
    doc = """Intro.

    .. math::
        y = \\frac{1}{2}

        z = 3

    Args:
        x: input
    .. math:: a^2 + b^2
    """
    assert sources.math_blocks(doc) == ["y = \\frac{1}{2}\n\nz = 3", "a^2 + b^2"]


def test_read_text_file_rule(tmp_path: Path) -> None:
    lines = _write(tmp_path / "lines.txt", "one\n\ntwo\nthree\n")
    assert sources.read_text_file(lines) == ["one", "two\nthree"]  # a blank line: paragraphs
    spaced = _write(tmp_path / "spaced.txt", "one\ntwo\n   \nthree")  # a whitespace-only line is blank too
    assert sources.read_text_file(spaced) == ["one\ntwo", "three"]
    per_line = _write(tmp_path / "per_line.txt", "one\ntwo\nthree\n")
    assert sources.read_text_file(per_line) == ["one", "two", "three"]  # no blank line: one text per line


def test_read_jsonl_labels_and_errors(tmp_path: Path) -> None:
    rows = [{"text": "a", "y": "pos"}, {"text": "b", "y": "neg"}, {"text": "c", "y": "pos"}]
    path = _write(tmp_path / "d.jsonl", "\n".join(map(json.dumps, rows)) + "\n\n")
    rec = sources.read_jsonl(path, label_field="y")
    assert rec.texts == ["a", "b", "c"] and rec.labels == [1, 0, 1] and rec.label_names == ["neg", "pos"]
    assert sources.read_jsonl(path).labels is None
    with pytest.raises(ValueError, match="no field 'body'"):
        sources.read_jsonl(path, field="body")
    _write(path, '{"text": "a"}\nnot json\n')
    with pytest.raises(ValueError, match=r"d.jsonl:2"):
        sources.read_jsonl(path)


def test_jsonl_errors_name_fixes_that_work(tmp_path: Path) -> None:
    path = _write(tmp_path / "e.jsonl", json.dumps({"body": "a"}) + "\n")
    with pytest.raises(
        InputFileError, match=r"e.jsonl:1: no field 'text' \(fields: 'body'\); give every line a 'text'"
    ):
        sources.read_texts(path)
    _write(path, "[1, 2]\n")
    with pytest.raises(InputFileError, match="not a JSON object"):
        sources.read_texts(path)


@pytest.mark.parametrize(
    "content",
    [
        b"\x7fELF\x02\x01\x01\x00\x00\x00" + bytes(range(256)) * 8,  # an executable: NUL bytes
        "caf\u00e9 cr\u00e8me, na\u00efve fa\u00e7ade\n".encode("latin-1") * 20,  # 8-bit text, not UTF-8
    ],
    ids=["binary", "latin-1"],
)
def test_files_that_are_not_utf8_text_are_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "data.txt"
    path.write_bytes(content)
    with pytest.raises(InputFileError, match=re.escape(str(path))) as err:
        sources.read_texts(path)
    assert "UTF-8" in str(err.value) and isinstance(err.value, FerDiagError)
    with pytest.raises(InputFileError):
        suite_from_files(path, path, graded=False)


def test_real_binary_and_missing_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match=r"/bin/ls.*not a text file"):
        sources.check_text_file("/bin/ls")
    with pytest.raises(MissingFileError, match="does not exist") as err:
        sources.read_texts(tmp_path / "nope.txt")
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(MissingFileError, match="not a file"):
        sources.read_texts(tmp_path)


def test_utf8_text_cut_inside_a_character_at_the_first_kb_is_text(tmp_path: Path) -> None:
    path = tmp_path / "u.txt"
    path.write_bytes(b"a" * 1023 + "\u00e9 and more text\n".encode())  # é straddles byte 1024
    assert sources.read_texts(path).texts == ["a" * 1023 + "\u00e9 and more text"]


def test_from_hf_dataset() -> None:
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": ["x", "y"], "label": [0, 1]})
    assert sources.from_hf_dataset(ds, "text", "label") == sources.Records(["x", "y"], [0, 1], None)
    with pytest.raises(ValueError, match="no column 'body'"):
        sources.from_hf_dataset(ds, "body")


# ------------------------------------------------------------------ shifts
TEXT = "The quick brown fox jumps over the lazy dog while the cat sleeps on a warm mat. " * 5


def _changed(a: str, b: str) -> int:
    assert len(a) == len(b)
    return sum(x != y for x, y in zip(a, b, strict=True))


def test_char_noise_hits_fraction_deterministic_monotone() -> None:
    n = sum(not c.isspace() for c in TEXT)
    previous: set[int] = set()
    for level in shifts.CHAR_NOISE_LEVELS:
        (out,) = shifts.char_noise([TEXT], level, seed=3)
        assert out == shifts.char_noise([TEXT], level, seed=3)[0]
        assert _changed(TEXT, out) == pytest.approx(level * n, abs=1)
        assert [i for i, c in enumerate(out) if c.isspace()] == [i for i, c in enumerate(TEXT) if c.isspace()]
        changed = {i for i, (x, y) in enumerate(zip(TEXT, out, strict=True)) if x != y}
        assert previous <= changed and (level == 0 or len(changed) > len(previous))
        assert all(out[i] in shifts.NOISE_ALPHABET for i in changed)
        previous = changed
    assert shifts.char_noise([TEXT], 0.2, seed=3) != shifts.char_noise([TEXT], 0.2, seed=4)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        shifts.char_noise([TEXT], 1.5)


def test_word_shuffle_preserves_words_and_layout() -> None:
    text = "alpha beta\ngamma  delta epsilon zeta eta theta iota kappa"
    (out,) = shifts.word_shuffle([text], 1.0, seed=0)
    assert Counter(out.split()) == Counter(text.split())
    assert out != text and re.findall(r"\s+", out) == re.findall(r"\s+", text)
    assert shifts.word_shuffle([text], 1.0, seed=0) == [out]
    assert shifts.word_shuffle([text], 0.0, seed=0) == [text]


def test_word_salad_keeps_word_count() -> None:
    vocab = ["zebra", "quartz", "nimbus"]
    (out,) = shifts.word_salad([TEXT], 1.0, seed=1, vocabulary=vocab)
    assert len(out.split()) == len(TEXT.split()) and set(out.split()) <= set(vocab)
    (half,) = shifts.word_salad([TEXT], 0.5, seed=1, vocabulary=vocab)
    kept = sum(a == b for a, b in zip(half.split(), TEXT.split(), strict=True))
    assert kept == pytest.approx(len(TEXT.split()) / 2, abs=1)


def test_random_tokens_avoid_specials(tok) -> None:
    ids = shifts.random_tokens(tok, n=50, length=20, seed=0)
    assert len(ids) == 50 and all(len(r) == 20 for r in ids)
    flat = {t for r in ids for t in r}
    assert flat.isdisjoint({0, 1, 2, 3}) and flat <= set(range(4, len(tok)))
    assert ids == shifts.random_tokens(tok, n=50, length=20, seed=0) != shifts.random_tokens(tok, 50, 20, seed=1)


def test_graded_sets_one_ordered_axis(tok) -> None:
    sets = shifts.graded_sets([TEXT, TEXT[:100]], tok, seed=0, length=9, vocabulary=["zebra"])
    by_name = {s.name: s for s in sets}
    assert [(s.name, s.level) for s in sets] == [
        ("shift_0_clean", 0), ("shift_1_char_noise_05", 1), ("shift_2_char_noise_10", 2),
        ("shift_3_char_noise_20", 3), ("shift_4_char_noise_40", 4), ("shift_5_word_shuffle", 5),
        ("shift_6_word_salad", 6), ("shift_7_random_tokens", 7),
    ]  # fmt: skip
    assert all(s.kind is SetKind.GRADED and s.axis == shifts.SHIFT_AXIS for s in sets)
    assert by_name["shift_0_clean"].texts == [TEXT, TEXT[:100]]
    assert by_name["shift_2_char_noise_10"].texts == shifts.char_noise([TEXT, TEXT[:100]], 0.10, seed=0)
    assert [len(r) for r in by_name["shift_7_random_tokens"].token_ids] == [9, 9]
    no_salad = shifts.graded_sets([TEXT], tok, vocabulary=[])
    assert [s.level for s in no_salad] == [0, 1, 2, 3, 4, 5, 7]


# -------------------------------------------------------------- windows
def test_tokenize_windows_masks_bos_and_padding(tok) -> None:
    ts = TextSet("hand", SetKind.SHIFTED, texts=["the cat sat", "a dog ran far away from home", "cat"])
    w = tokenize_windows(ts, tok, seq_len=6, min_tokens=2, bos_token_id=1)
    v = tok.get_vocab()
    assert w.set_name == "hand"
    assert w.tokens.tolist() == [
        [1, v["the"], v["cat"], v["sat"], 0, 0],
        [1, v["a"], v["dog"], v["ran"], v["far"], v["away"]],  # truncated to seq_len
    ]
    assert w.mask.tolist() == [[False, True, True, True, False, False], [False, True, True, True, True, True]]
    assert w.source_index.tolist() == [0, 1]  # "cat" has 1 counted token < min_tokens
    assert w.tokens.dtype == torch.long and w.mask.dtype == torch.bool


def test_tokenize_windows_without_bos_pad_fallback_and_cap(tok) -> None:
    ts = TextSet("nobos", SetKind.SHIFTED, texts=["the cat", "the cat sat on a mat", "dog ran"])
    w = tokenize_windows(ts, tok, seq_len=4, min_tokens=1, pad_token_id=None, max_windows=2)
    assert len(w) == 2 and w.source_index.tolist() == [0, 1]
    assert w.mask.tolist() == [[False, True, False, False], [False, True, True, True]]
    tok_no_pad = tok.__class__(tokenizer_object=tok.backend_tokenizer, eos_token="[EOS]")
    w2 = tokenize_windows(ts, tok_no_pad, seq_len=4, min_tokens=1, bos_token_id=1)
    assert w2.tokens[0].tolist() == [1, tok.get_vocab()["the"], tok.get_vocab()["cat"], 2]  # padded with EOS


def test_tokenize_windows_token_ids(tok) -> None:
    ts = TextSet("ids", SetKind.GRADED, token_ids=[[5, 6, 7, 8, 9], [5]], level=4.0, axis="shift")
    w = tokenize_windows(ts, tok, seq_len=4, min_tokens=2, bos_token_id=1, pad_token_id=0)
    assert w.tokens.tolist() == [[1, 5, 6, 7]] and w.mask.sum().item() == 3


def test_tokenize_windows_errors_name_the_set(tok) -> None:
    with pytest.raises(ValueError, match="'empty_set' is empty"):
        tokenize_windows(TextSet("empty_set", SetKind.SHIFTED), tok)
    short = TextSet("tiny", SetKind.SHIFTED, texts=["cat", "the cat", ""])
    with pytest.raises(TextSetError, match=r"'tiny'.*min_tokens=8.*longest: 2.*--min-tokens"):
        tokenize_windows(short, tok, bos_token_id=1)
    with pytest.raises(ConfigError, match="seq_len must be at least 2"):
        tokenize_windows(short, tok, seq_len=1)


# ------------------------------------------------------------------ suites
def test_default_suite_skips_missing_with_install_command(
    corpus_root: Path, tmp_path: Path, tok, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(sources.FORTUNES_ENV, str(corpus_root))
    monkeypatch.setenv(sources.WORDS_ENV, str(tmp_path / "no_words"))
    monkeypatch.setenv(sources.ISO_CODES_ENV, str(tmp_path / "no_iso"))
    suite = default_suite(tok, n_per_set=4, seq_len=16)
    skipped = " | ".join(suite.skipped)
    for cmd in ("fortunes-es", "fortunes-it", "fortunes-pl", "fortunes-ru", "iso-codes", "wamerican"):
        assert f"sudo apt-get install {cmd}" in skipped
    assert {"fortunes_de", "fortunes_zh"} <= set(suite.names) and "shift_6_word_salad" not in suite.names
    assert suite.reference.name == "fortunes_en" and len(suite.reference) == 4
    assert suite.axes == ["shift"]
    assert [s.level for s in suite.axis("shift")] == [0, 1, 2, 3, 4, 5, 7]
    with pytest.raises(sources.MissingCorpusError, match="fortunes-es"):
        default_suite(tok, n_per_set=4, on_missing="raise")


def test_suite_from_files(tmp_path: Path, tok, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(sources.WORDS_ENV, str(_write(tmp_path / "words", "zebra\nquartz\nzebra's\n")))
    id_path = _write(tmp_path / "mine.txt", "the cat sat on a mat\nthe dog ran far away\n")
    ood_path = _write(tmp_path / "other.jsonl", json.dumps({"text": "from home far away"}) + "\n")
    suite = suite_from_files([id_path], [ood_path, ood_path], tok, seq_len=8)
    assert suite.names[:3] == ["mine", "other", "other_2"]
    assert suite.reference.texts == ["the cat sat on a mat", "the dog ran far away"]
    assert suite["other"].kind is SetKind.SHIFTED and suite["other"].texts == ["from home far away"]
    salad = suite["shift_6_word_salad"].texts
    assert {w for t in salad for w in t.split()} <= {"zebra", "quartz"}  # possessives dropped
    assert all(len(r) == 7 for r in suite["shift_7_random_tokens"].token_ids)
    assert suite_from_files(id_path, ood_path, graded=False).names == ["mine", "other"]
    with pytest.raises(ValueError, match="need the tokenizer"):
        suite_from_files(id_path, ood_path)
    _write(tmp_path / "blank.txt", "\n\n")
    with pytest.raises(TextSetError, match="holds no text"):
        suite_from_files(tmp_path / "blank.txt", ood_path, graded=False)
    with pytest.raises(TextSetError, match="--id-text"):
        suite_from_files([], ood_path, graded=False)


@pytest.fixture(scope="module")
def real_suite(tok):
    if not (REAL_FORTUNES / "fortunes").exists():
        pytest.skip("Debian fortunes not installed (sudo apt-get install fortunes fortunes-min)")
    return default_suite(tok, n_per_set=32, seed=0)


def test_default_suite_on_installed_corpora(real_suite, tok) -> None:
    suite = real_suite
    expected_shifted = {f"fortunes_{lang}" for lang in sources.FOREIGN_LANGUAGES} | {"python_code", "iso_json", "latex"}
    shifted = {s.name for s in suite if s.kind is SetKind.SHIFTED}
    assert shifted == expected_shifted - {s.split(":")[0] for s in suite.skipped}
    assert suite.reference.name == "fortunes_en" and len(suite.reference) == 32
    assert [s.name for s in suite.axis("shift")] == list(shifts.SHIFT_LEVELS)
    assert len(set(suite.names)) == len(suite.names)
    for s in suite:
        assert len(tokenize_windows(s, tok, seq_len=64, min_tokens=8, bos_token_id=1)) > 0, s.name


def test_default_suite_id_disjoint_from_training(real_suite) -> None:
    id_texts = set(real_suite.reference.texts)
    graded_src = set(real_suite["shift_0_clean"].texts)
    train = training_texts()
    heldout = set(sources.english_fortunes(split="heldout"))
    assert train and id_texts <= heldout and graded_src <= heldout
    assert not id_texts & set(train) and not id_texts & graded_src


# ------------------------------------------------------ user graded levels
def _jsonl(path: Path, rows: list) -> Path:
    return _write(path, "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def test_graded_from_jsonl_groups_by_axis_and_level(tmp_path: Path) -> None:
    from fer_diag.data.suite import graded_from_jsonl

    path = _jsonl(
        tmp_path / "difficulty.jsonl",
        [
            {"text": "hard a", "level": 2, "source": "a"},
            {"text": "easy a", "level": 0, "source": "a"},
            {"text": "easy b", "level": 0.0, "source": 7},
            "",  # blank lines are ignored
            {"text": "hard b", "level": 2.0, "source": "7"},  # 7 and "7" are the same source
            {"text": "mid", "level": 0.5},  # no source: its own cluster
            {"text": "mid 2", "level": 0.5, "source": None},
            {"text": "   ", "level": 0.5},  # empty text: left out
            {"text": "x", "level": 10, "axis": "topic"},
            {"text": "y", "level": -1, "axis": "topic", "source": "a"},
        ],
    )
    sets = graded_from_jsonl(path)
    assert [(s.name, s.axis, s.level) for s in sets] == [
        ("difficulty_0", "difficulty", 0.0),
        ("difficulty_0.5", "difficulty", 0.5),
        ("difficulty_2", "difficulty", 2.0),
        ("topic_-1", "topic", -1.0),
        ("topic_10", "topic", 10.0),
    ]
    assert all(s.kind is SetKind.GRADED for s in sets)
    by = {s.name: s for s in sets}
    assert by["difficulty_0"].texts == ["easy a", "easy b"] and by["difficulty_2"].texts == ["hard a", "hard b"]
    assert by["difficulty_0.5"].texts == ["mid", "mid 2"]
    # the same source shares a cluster across levels (and axes); a line without one is alone
    assert by["difficulty_0"].groups == by["difficulty_2"].groups
    assert by["topic_-1"].groups == by["difficulty_0"].groups[:1]
    mid = by["difficulty_0.5"].groups
    assert len(set(mid)) == 2 and not set(mid) & set(by["difficulty_0"].groups)
    assert all(g < 0 for s in sets for g in s.groups)  # never a text index of another set
    assert str(path) in by["difficulty_0"].source


def test_graded_from_jsonl_pools_files_and_samples_the_same_sources(tmp_path: Path) -> None:
    from fer_diag.data.suite import graded_from_jsonl

    a = _jsonl(tmp_path / "lo.jsonl", [{"text": f"t{i}", "level": 0, "axis": "ax", "source": i} for i in range(20)])
    b = _jsonl(tmp_path / "hi.jsonl", [{"text": f"u{i}", "level": 1, "axis": "ax", "source": i} for i in range(20)])
    full = graded_from_jsonl([a, b])
    assert [s.name for s in full] == ["ax_0", "ax_1"] and [len(s) for s in full] == [20, 20]
    small = graded_from_jsonl([a, b], n_per_set=5, seed=3)
    assert [len(s) for s in small] == [5, 5]
    assert small[0].groups == small[1].groups  # the same sources picked at both levels
    assert [int(t[1:]) for t in small[0].texts] == sorted(int(t[1:]) for t in small[0].texts)  # file order
    assert graded_from_jsonl([a, b], n_per_set=5, seed=3)[0].texts == small[0].texts  # seeded
    assert graded_from_jsonl([a, b], n_per_set=5, seed=4)[0].texts != small[0].texts


@pytest.mark.parametrize(
    ("rows", "error", "message"),
    [
        ([], InputFileError, r"g\.jsonl is empty; a --graded file holds one JSON object per line"),
        (["", "  "], InputFileError, r"g\.jsonl is empty"),
        (["not json"], InputFileError, r"g\.jsonl:1: not valid JSON .*one JSON object per line"),
        (["[1, 2]"], InputFileError, r"g\.jsonl:1: not a JSON object"),
        ([{"text": "a", "level": 0}, {"text": "b"}], InputFileError, r"g\.jsonl:2: no field 'level'.*numeric level"),
        ([{"level": 0}], InputFileError, r"g\.jsonl:1: no field 'text'"),
        ([{"text": 5, "level": 0}], InputFileError, r"g\.jsonl:1: 'text' is a number, not a string"),
        ([{"text": "a", "level": "2"}], InputFileError, r'g\.jsonl:1: level "2" is not a number.*"level": 2'),
        ([{"text": "a", "level": True}], InputFileError, r"g\.jsonl:1: level true is not a number"),
        (['{"text": "a", "level": NaN}'], InputFileError, r"g\.jsonl:1: level nan is not a finite number"),
        ([{"text": "a", "level": 0, "axis": ""}], InputFileError, r'g\.jsonl:1: "axis" must be a non-empty string'),
        ([{"text": "a", "level": 0, "source": 1.5}], InputFileError, r'g\.jsonl:1: "source" must be a string or'),
        (
            [{"text": "a", "level": 0}, {"text": "b", "level": 0}],
            TextSetError,
            r"graded axis 'g' \(.*g\.jsonl\) has a single level \(0\); an axis needs at least 2 distinct levels",
        ),
        (
            [{"text": "a", "level": 0}, {"text": "", "level": 1}, {"text": " ", "level": 1}],
            TextSetError,
            r"level 1 of graded axis 'g' has no text \(its lines, .*g\.jsonl:2, .*g\.jsonl:3, all have an empty",
        ),
    ],
)
def test_graded_from_jsonl_errors_name_file_line_and_fix(tmp_path: Path, rows, error, message) -> None:
    from fer_diag.data.suite import graded_from_jsonl

    path = _jsonl(tmp_path / "g.jsonl", rows) if rows else _write(tmp_path / "g.jsonl", "")
    with pytest.raises(error, match=message) as info:
        graded_from_jsonl(path)
    assert isinstance(info.value, FerDiagError)


def test_graded_files_that_are_not_text_or_missing_are_refused(tmp_path: Path) -> None:
    from fer_diag.data.suite import graded_from_jsonl

    binary = tmp_path / "b.jsonl"
    binary.write_bytes(b'{"text": "a", "level": 0}\n\x00\x01\x02')
    with pytest.raises(InputFileError, match="is not a text file"):
        graded_from_jsonl(binary)
    with pytest.raises(MissingFileError, match="does not exist"):
        graded_from_jsonl(tmp_path / "nope.jsonl")


def test_add_graded_appends_with_unique_names_and_refuses_a_taken_axis(tmp_path: Path, tok) -> None:
    from fer_diag.data.suite import Suite, add_graded, check_graded_files, graded_from_jsonl

    path = _jsonl(tmp_path / "noise.jsonl", [{"text": "the cat", "level": lv} for lv in (0, 1)])
    base = Suite(
        [
            TextSet("id", SetKind.IN_DISTRIBUTION, texts=["the cat sat"]),
            TextSet("noise_0", SetKind.SHIFTED, texts=["a dog"]),
        ],
        skipped=["x: missing"],
    )
    suite = add_graded(base, graded_from_jsonl(path))
    assert suite.names == ["id", "noise_0", "noise_0_2", "noise_1"] and base.names == ["id", "noise_0"]
    assert suite.axes == ["noise"] and suite.skipped == ["x: missing"]
    assert [s.level for s in suite.axis("noise")] == [0.0, 1.0]
    taken = _jsonl(tmp_path / "shift.jsonl", [{"text": "the cat", "level": lv} for lv in (0, 1)])
    shifted = Suite([*base.sets, *shifts.graded_sets(["the cat sat"], tok, vocabulary=[])])
    with pytest.raises(TextSetError, match=r"graded axis 'shift' of .*shift\.jsonl.* is already an axis of the suite"):
        add_graded(shifted, graded_from_jsonl(taken))
    with pytest.raises(TextSetError, match=r"set \"axis\" on its lines, or rename the file"):
        check_graded_files([taken])  # before the model loads: the built-in axis is always there
    assert [s.name for s in check_graded_files([path])] == ["noise_0", "noise_1"]


def test_windows_carry_the_cluster_of_each_text(tok) -> None:
    ts = TextSet(
        "g", SetKind.GRADED, texts=["the cat sat", "cat", "a dog ran"], level=1.0, axis="a", groups=[-4, -5, -4]
    )
    w = tokenize_windows(ts, tok, seq_len=6, min_tokens=2, bos_token_id=1)
    assert w.source_index.tolist() == [0, 2] and w.cluster.tolist() == [-4, -4]
    assert w.select(torch.tensor([1])).cluster.tolist() == [-4]
    plain = tokenize_windows(TextSet("p", SetKind.SHIFTED, texts=["cat", "the cat sat"]), tok, min_tokens=2)
    assert plain.cluster.tolist() == plain.source_index.tolist() == [1]
    with pytest.raises(TextSetError, match="2 groups for 3 texts"):
        TextSet("bad", SetKind.GRADED, texts=["a", "b", "c"], groups=[0, 1])
