"""Concept sets (fer_diag.data.concepts): balance, seeds, labels, spans, token positions, twins, user files."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from fer_diag.data import concepts as C
from fer_diag.data.sources import MissingCorpusError, words
from fer_diag.errors import InputFileError, TextSetError

N = 8


def _have(reader) -> bool:
    try:
        reader(max_texts=1)
    except MissingCorpusError:
        return False
    return True


needs_fortunes = pytest.mark.skipif(
    not _have(lambda **k: C.english_fortunes(split="heldout", **k)), reason="fortunes not installed"
)
needs_words = pytest.mark.skipif(not _have(words), reason="wamerican not installed")


@pytest.fixture(scope="module")
def language():
    return C.build_language(N, seed=3)


@pytest.fixture(scope="module")
def first_letter():
    return C.build_first_letter(N, seed=3)


@needs_fortunes
def test_language_balanced_and_seeded(language):
    assert language.level == "sequence" and language.spans is None
    assert set(language.counts.values()) == {N}
    assert set(language.classes) <= set(C.LANGUAGES) and len(language.classes) >= 2
    again = C.build_language(N, seed=3)
    assert again.texts == language.texts and again.labels == language.labels
    other = C.build_language(N, seed=4)
    assert other.texts != language.texts


@needs_fortunes
def test_language_twin_same_labels_other_text(language):
    twin = language.twin
    assert twin is not None and twin.twin is None
    assert twin.labels == language.labels and twin.classes == language.classes
    assert all(t != s for t, s in zip(twin.texts, language.texts, strict=True))
    assert "character noise" in language.twin_shift


@needs_fortunes
def test_source_kind_balanced_with_noise_twin():
    cs = C.build_source_kind(N, seed=1)
    assert cs.classes == ["prose", "code", "json", "latex"] or cs.dropped
    assert set(cs.counts.values()) == {N}
    assert cs.twin.labels == cs.labels and cs.twin.texts != cs.texts
    assert "character noise" in cs.twin_shift


@needs_words
def test_first_letter_labels_and_spans(first_letter):
    cs = first_letter
    assert cs.level == "token" and len(cs.classes) + len(cs.dropped) == 26
    assert set(cs.counts.values()) == {N}
    for text, y, (a, b) in zip(cs.texts, cs.labels, cs.spans, strict=True):
        word = text[a:b]
        assert word.isalpha() and word[0] == cs.classes[y]
        assert text[b:] == " has the first letter:"
        assert text[:a].count("\n") == 2  # two solved in-context examples before it (the default)
    again = C.build_first_letter(N, seed=3)
    assert again.texts == cs.texts and again.labels == cs.labels


@needs_words
def test_first_letter_drops_rare_letters_with_reason():
    counts = Counter(w[0] for w in C.first_letter_words())
    need = sorted(counts.values())[1] + 1  # at least the two rarest letters fall short
    cs = C.build_first_letter(2, seed=0, min_words=need)
    short = {letter for letter, n in counts.items() if n < need}
    assert {d.split(":")[0] for d in cs.dropped} == short
    assert all("fewer than" in d for d in cs.dropped)
    assert not short & set(cs.classes)


@needs_words
def test_first_letter_twin_noises_only_the_context(first_letter):
    cs, twin = first_letter, first_letter.twin
    assert twin.labels == cs.labels and twin.spans == cs.spans
    assert twin.texts != cs.texts
    for t, s, (a, _b) in zip(twin.texts, cs.texts, cs.spans, strict=True):
        assert t[a:] == s[a:] and len(t) == len(s)  # target word and prompt intact
    assert (
        sum(t[: s.rfind("\n")] != s[: s.rfind("\n")] for t, s in zip(twin.texts, cs.texts, strict=True)) > len(cs) / 2
    )


def test_token_position_finds_the_last_token_of_a_word(tiny_tokenizer):
    text = "The quick brown fox jumps over the unfamiliar dog."
    for word in ("quick", "unfamiliar", "dog", "The"):
        a = text.index(word)
        b = a + len(word)
        i = C.token_position(tiny_tokenizer, text, b)
        offsets = tiny_tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)["offset_mapping"]
        s, e = offsets[i]
        assert s < b <= e  # that token holds the word's last character
        assert e <= b + 1  # and does not run into the next word
        if i + 1 < len(offsets):
            assert offsets[i + 1][0] >= b - (1 if text[b - 1] == " " else 0)
        decoded = tiny_tokenizer.decode(
            tiny_tokenizer(text, add_special_tokens=False)["input_ids"][: i + 1]
        )  # everything up to it spells the text up to the word's end
        assert decoded == text[:b]


def test_token_position_on_first_letter_prompts(tiny_tokenizer):
    text = "cat has the first letter: C\nunfamiliar has the first letter:"
    b = text.index(" has the first letter:", 20)
    i = C.token_position(tiny_tokenizer, text, b)
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tiny_tokenizer.decode(ids[: i + 1]).endswith("unfamiliar")
    assert not tiny_tokenizer.decode(ids[i + 1 : i + 2]).startswith("r")


def test_token_kinds_from_the_tokenizer(tiny_tokenizer):
    corpus = [
        "Wow, the Quick brown fox jumps over 12 lazy dogs; unfamiliar text! Then 345 more. "
        "A language Model reads familiar text, and 6789 Sparse shifted inputs."
    ] * 3
    cs = C.build_token_kinds(2, seed=0, tokenizer=tiny_tokenizer, texts=corpus, per_text=3)
    assert cs.level == "token" and set(cs.counts.values()) == {2}
    assert set(cs.classes) <= set(C.TOKEN_KINDS)
    for text, y, (a, b) in zip(cs.texts, cs.labels, cs.spans, strict=True):
        piece = text[a:b]
        start = a == 0 or text[a - 1].isspace()
        assert C.token_kind(piece, start) == cs.classes[y]
        i = C.token_position(tiny_tokenizer, text, b)
        s, e = tiny_tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)["offset_mapping"][i]
        assert (s, e) == (a, b)
    assert cs.twin.labels == cs.labels and cs.twin.classes == cs.classes


def test_token_kind_classes():
    assert C.token_kind("42", False) == "digit"
    assert C.token_kind(",", False) == "punctuation"
    assert C.token_kind(" fox", False) == "word_start"
    assert C.token_kind("fox", True) == "word_start"
    assert C.token_kind(" Fox", False) == "capitalised"
    assert C.token_kind("iliar", False) == "word_piece"
    assert C.token_kind(" ", False) is None


def _jsonl(tmp_path, rows, name="c.jsonl"):
    p = tmp_path / name
    p.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return p


def test_user_jsonl_concept(tmp_path):
    rows = [{"text": f"a good example, number {i}", "label": "pos"} for i in range(3)] + [
        {"text": f"a bad example, number {i}", "label": "neg"} for i in range(3)
    ]
    cs = C.concepts_from_jsonl(_jsonl(tmp_path, rows), min_per_class=3)
    assert cs.name == "c" and cs.level == "sequence" and cs.classes == ["neg", "pos"]
    assert cs.labels == [1, 1, 1, 0, 0, 0]
    assert cs.twin.labels == cs.labels and cs.twin.texts != cs.texts
    ints = C.concepts_from_jsonl(
        _jsonl(tmp_path, [{"text": "a", "label": 10}, {"text": "b", "label": 2}] * 2, "i.jsonl")
    )
    assert ints.classes == ["2", "10"] and ints.labels == [1, 0, 1, 0]


def test_user_jsonl_twin_file(tmp_path):
    rows = [{"text": "x", "label": "a"}, {"text": "y", "label": "b"}] * 2
    twin = _jsonl(tmp_path, [{"text": "z", "label": "b"}] * 2, "t.jsonl")
    cs = C.concepts_from_jsonl(_jsonl(tmp_path, rows), twin_path=twin)
    assert cs.twin.texts == ["z", "z"] and cs.twin.labels == [1, 1] and "user-supplied" in cs.twin_shift
    bad = _jsonl(tmp_path, [{"text": "z", "label": "c"}], "u.jsonl")
    with pytest.raises(TextSetError, match="'c'"):
        C.concepts_from_jsonl(_jsonl(tmp_path, rows), twin_path=bad)


@pytest.mark.parametrize(
    ("rows", "error", "match"),
    [
        ([{"text": "a", "label": "x"}] * 4, TextSetError, r"c\.jsonl: every example has the label 'x'.*another class"),
        (
            [{"text": "a", "label": "x"}] * 4 + [{"text": "b", "label": "y"}],
            TextSetError,
            r"c\.jsonl: classes with fewer than 2 examples: \{'y': 1\}.*lower min_per_class",
        ),
        ([{"text": "a", "label": "x"}, {"text": "b"}], InputFileError, r"c\.jsonl:2: no field 'label'.*give every"),
        ([{"label": "x"}], InputFileError, r"c\.jsonl:1: no field 'text'"),
        ([{"text": "a", "label": None}], InputFileError, r"c\.jsonl:1: label null must be"),
        ([{"text": "", "label": "x"}], InputFileError, r"c\.jsonl:1: 'text' must be a non-empty string"),
        (["{not json"], InputFileError, r"c\.jsonl:1: not valid JSON"),
        (["[1, 2]"], InputFileError, r"c\.jsonl:1: not a JSON object"),
        ([""], InputFileError, r"holds no examples"),
    ],
)
def test_user_jsonl_errors(tmp_path, rows, error, match):
    with pytest.raises(error, match=match):
        C.concepts_from_jsonl(_jsonl(tmp_path, rows))


def test_missing_corpus_is_skipped_with_install_command(monkeypatch):
    def missing(**_):
        raise MissingCorpusError("words", "/nowhere/words", "sudo apt-get install wamerican")

    monkeypatch.setattr(C, "words", missing)
    suite = C.build_concepts(["first_letter", "token_kinds"], tokenizer=None, n_per_class=2)
    assert len(suite) == 0
    assert any(s.startswith("first_letter:") and "sudo apt-get install wamerican" in s for s in suite.skipped)
    assert any(s.startswith("token_kinds:") and "tokenizer" in s for s in suite.skipped)


@needs_fortunes
def test_missing_language_drops_the_class(monkeypatch):
    real = C.foreign_fortunes

    def some_missing(lang, **kw):
        if lang == "pl":
            raise MissingCorpusError("fortunes_pl", "/nowhere/pl", "sudo apt-get install fortunes-pl")
        return real(lang, **kw)

    monkeypatch.setattr(C, "foreign_fortunes", some_missing)
    cs = C.build_language(2, seed=0)
    assert "pl" not in cs.classes and any("fortunes-pl" in d for d in cs.dropped)


def test_unknown_concept_name():
    with pytest.raises(ValueError, match="unknown concept"):
        C.build_concepts(["colour"])


# --------------------------------------------------------------------- token-level user spans, windows
def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_user_token_level_concept_with_spans_and_twin(tmp_path):
    rows = [
        {"text": f"the {w} sat down", "label": w, "span": [4, 4 + len(w)], "span_text": w} for w in ["cat", "dog"] * 3
    ]
    cs = C.concepts_from_jsonl(_write(tmp_path / "animal.jsonl", rows))
    assert cs.level == "token" and cs.classes == ["cat", "dog"] and cs.spans[0] == (4, 7)
    twin = cs.twin
    assert twin.level == "token" and twin.spans == cs.spans
    for text, noisy, (a, _) in zip(cs.texts, twin.texts, cs.spans, strict=True):
        assert noisy[a:] == text[a:]  # noise only before the span: the marked word is intact


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ({"text": "the cat", "label": "x", "span": [4, 9]}, "must be \\[start, end\\]"),
        ({"text": "the cat", "label": "x", "span": [4, 7], "span_text": "dog"}, "not the span_text"),
        ({"text": "the cat", "label": "x", "span_text": "cat"}, "without 'span'"),
    ],
)
def test_user_span_errors_name_the_fix(tmp_path, row, match):
    good = {"text": "a dog", "label": "y", "span": [2, 5]}
    with pytest.raises(InputFileError, match=match):
        C.concepts_from_jsonl(_write(tmp_path / "c.jsonl", [row, good, good]))


def test_spans_on_some_lines_only_is_an_error(tmp_path):
    rows = [{"text": "a dog", "label": "y", "span": [2, 5]}, {"text": "a cat", "label": "x"}]
    with pytest.raises(InputFileError, match="has no span while others do"):
        C.concepts_from_jsonl(_write(tmp_path / "c.jsonl", rows * 2))


def test_concept_windows_end_at_the_marked_token_and_read_what_the_full_text_gives(tiny_hooked, tmp_path):
    """Causal model: cutting the window after the marked token leaves its activations as in the whole text."""
    import torch

    rows = [  # contexts of different lengths, longest first: the windows come back reordered
        {"text": f"{'the ' * n}old {w} sat on the quiet mat", "label": w, "span": [4 * n + 4, 4 * n + 4 + len(w)]}
        for n, w in [(3, "cat"), (0, "dogs"), (2, "cat"), (1, "dogs")]
    ]
    cs = C.concepts_from_jsonl(_write(tmp_path / "c.jsonl", rows))
    tok, bos = tiny_hooked.tokenizer, tiny_hooked.bos_token_id
    w = C.concept_windows(cs, tok, 32, bos_token_id=bos, pad_token_id=tiny_hooked.pad_token_id)
    assert (w.tokens[:, 0] == bos).all() and not w.mask[:, 0].any()
    hook = "blocks.1.hook_resid_post"
    _, cache = tiny_hooked.model.run_with_cache(w.tokens, names_filter=[hook])
    lengths = w.mask.sum(1)
    assert (lengths[1:] >= lengths[:-1]).all()  # shortest first
    assert w.index.tolist() != list(range(len(cs.texts)))  # reordered: the rows are not in example order
    assert sorted(w.index.tolist()) == list(range(len(cs.texts))) and (w.index == w.source_index).all()
    for r, i in enumerate(w.index.tolist()):  # row r holds example i
        text = cs.texts[i]
        last = int(w.mask[r].nonzero().max())
        pos = C.token_position(tok, text, cs.spans[i][1])
        assert last == pos + 1  # BOS shifts the text's tokens by one
        full = torch.tensor([[bos, *tok(text, add_special_tokens=False)["input_ids"]]])
        _, whole = tiny_hooked.model.run_with_cache(full, names_filter=[hook])
        torch.testing.assert_close(cache[hook][r, last], whole[hook][0, last], atol=1e-5, rtol=1e-5)


def test_marked_token_beyond_the_window_is_an_error(tiny_hooked, tmp_path):
    head = "word " * 40
    rows = [{"text": head + w, "label": w, "span": [len(head), len(head) + len(w)]} for w in ["cat", "dog"] * 2]
    cs = C.concepts_from_jsonl(_write(tmp_path / "c.jsonl", rows))
    with pytest.raises(TextSetError, match="outside the 16-token window; raise seq_len"):
        C.concept_windows(cs, tiny_hooked.tokenizer, 16, bos_token_id=tiny_hooked.bos_token_id)
