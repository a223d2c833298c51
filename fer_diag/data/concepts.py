"""Concept sets: labelled examples for linear probes, built offline (DESIGN §5 "Concepts").

A :class:`ConceptSet` is a list of texts with one class label each, at one of two
*levels*:

- ``"sequence"``: the concept belongs to the whole text (the probe reads a pooled
  vector, e.g. the mean over counted tokens);
- ``"token"``: the concept belongs to one place in the text, given per example as
  a *character span* ``(start, end)``. The token to read is the one holding the
  span's last character; :func:`token_position` finds it for a given (fast)
  tokenizer, so the sets themselves do not depend on a tokenizer (except
  ``token_kinds``, which is made from one).

Every built-in set is seeded (same arguments → the same set), balanced (the same
number of examples per class) and carries a *shifted twin*: the same examples,
with the same labels, in a shifted form, for transfer (train in-distribution,
test on the twin). ``twin_shift`` says what the shift is.

Built-in concepts (:data:`CONCEPTS`, :func:`build_concepts`):

- ``language`` (sequence): fortunes in en/de/es/it/pl/ru/zh; twin: character noise.
- ``source_kind`` (sequence): English prose (fortunes) / Python code (stdlib) /
  JSON (iso-codes) / LaTeX (``.. math::`` docstring blocks); twin: character noise.
  The kinds differ in length and layout too; a probe may use that.
- ``first_letter`` (token): a wamerican word in ``"{word} has the first letter:"``
  after a few solved in-context examples, read at the word's last token
  (SAEBench's absorption task); 26 classes, letters with too few words dropped
  (``dropped`` says which and why); twin: character noise in the in-context examples.
- ``token_kinds`` (token): tokens of English fortunes classed by their own string
  (digit / punctuation / word start / capitalised word start / word piece); twin:
  character noise in the context before the token's word. Needs the tokenizer.

User concepts: :func:`concepts_from_jsonl` reads ``{"text": …, "label": …}`` lines
(sequence level), with ``"span": [start, end]`` for token level.

:func:`concept_windows` turns a concept set into one token window per example
(for a token-level one, cut right after the marked token).

A concept whose corpus is missing is skipped by :func:`build_concepts` with the
command that installs it (like :attr:`fer_diag.data.suite.Suite.skipped`); a
concept that loses some classes to a missing corpus keeps the others and lists
the lost ones in ``dropped``.
"""

from __future__ import annotations

import json
import random
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from fer_diag.data.shifts import char_noise
from fer_diag.data.sources import (
    FOREIGN_LANGUAGES,
    MissingCorpusError,
    check_text_file,
    english_fortunes,
    foreign_fortunes,
    iso_json,
    jsonl_objects,
    latex,
    python_code,
    words,
)
from fer_diag.data.suite import SetKind, TextSet, Windows, pad_token_of
from fer_diag.errors import BadInputError, InputFileError, TextSetError

Level = Literal["sequence", "token"]

#: Examples per class of the built-in sets unless told otherwise.
DEFAULT_N_PER_CLASS = 64
#: Fraction of non-space characters substituted in the character-noise twins.
TWIN_NOISE = 0.10
#: Languages of the ``language`` concept, in class order.
LANGUAGES: tuple[str, ...] = ("en", *FOREIGN_LANGUAGES)
#: The prompt of the ``first_letter`` concept (the answer follows after a space).
FIRST_LETTER_TEMPLATE = "{word} has the first letter:"
#: Token-kind classes of ``token_kinds``, in class order.
TOKEN_KINDS: tuple[str, ...] = ("digit", "punctuation", "word_start", "capitalised", "word_piece")


@dataclass
class ConceptSet:
    """Labelled examples of one concept.

    ``labels[i]`` indexes ``classes``; ``spans[i]`` (token level only) is the
    character span ``(start, end)`` of the marked place in ``texts[i]``: the
    probe reads the token that holds character ``end - 1`` (:func:`token_position`).
    ``twin`` is the shifted twin (same level and classes, ``twin=None`` itself;
    for the built-in sets the same examples and labels with shifted texts, for a
    user twin file other examples), ``twin_shift`` describes the shift. ``dropped`` lists classes left
    out, each with its reason; ``notes`` other things a reader should know
    (e.g. fewer examples per class than asked).
    """

    name: str
    level: Level
    classes: list[str]
    texts: list[str]
    labels: list[int]
    spans: list[tuple[int, int]] | None = None
    twin: ConceptSet | None = None
    dropped: list[str] = field(default_factory=list)
    source: str = ""
    seed: int = 0
    twin_shift: str = ""
    notes: list[str] = field(default_factory=list)
    #: the twin holds this set's examples, shifted, in the same order (example i ↔ twin example i)
    twin_paired: bool = True

    def __post_init__(self) -> None:
        if self.level not in ("sequence", "token"):
            raise BadInputError(f"concept {self.name!r}: level must be 'sequence' or 'token', got {self.level!r}")
        if len(self.labels) != len(self.texts):
            raise TextSetError(
                f"concept {self.name!r} has {len(self.labels)} labels for {len(self.texts)} texts; give one per text"
            )
        bad = [y for y in self.labels if not 0 <= y < len(self.classes)]
        if bad:
            raise TextSetError(
                f"concept {self.name!r}: label {bad[0]} is not a class index (0..{len(self.classes) - 1})"
            )
        if self.level == "token":
            if self.spans is None or len(self.spans) != len(self.texts):
                raise TextSetError(f"token-level concept {self.name!r} needs one character span per text")
            for i, (a, b) in enumerate(self.spans):
                if not 0 <= a < b <= len(self.texts[i]):
                    raise TextSetError(
                        f"concept {self.name!r}, example {i}: span ({a}, {b}) is not inside its text "
                        f"of {len(self.texts[i])} characters"
                    )
        elif self.spans is not None:
            raise TextSetError(f"sequence-level concept {self.name!r} takes no spans (spans=None)")
        if self.twin is not None and (self.twin.classes != self.classes or self.twin.level != self.level):
            raise TextSetError(f"the shifted twin of concept {self.name!r} must have the same level and classes")

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def counts(self) -> dict[str, int]:
        """Examples per class, in class order."""
        c = Counter(self.labels)
        return {name: c[i] for i, name in enumerate(self.classes)}

    def text_set(self, kind: SetKind = SetKind.IN_DISTRIBUTION) -> TextSet:
        """The examples as a labelled :class:`~fer_diag.data.suite.TextSet` (spans are not carried)."""
        return TextSet(
            name=self.name,
            kind=kind,
            texts=list(self.texts),
            labels=list(self.labels),
            label_names=list(self.classes),
            source=self.source,
        )


@dataclass
class ConceptSuite:
    """The concept sets built by :func:`build_concepts` and the ones skipped, each with its reason."""

    concepts: list[ConceptSet]
    skipped: list[str] = field(default_factory=list)

    def __iter__(self):
        return iter(self.concepts)

    def __len__(self) -> int:
        return len(self.concepts)

    def __getitem__(self, name: str) -> ConceptSet:
        for c in self.concepts:
            if c.name == name:
                return c
        raise KeyError(f"no concept named {name!r}; have {[c.name for c in self.concepts]}")

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.concepts]


# ----------------------------------------------------------------- helpers
def _missing_reason(e: MissingCorpusError) -> str:
    return f"corpus {e.source!r} missing; install with: {e.install_command}"


def _balanced(
    name: str, pools: dict[str, list[Any]], n_per_class: int, seed: int
) -> tuple[list[Any], list[int], list[str]]:
    """``n`` texts per class (n = min(n_per_class, smallest pool)), classes interleaved in a seeded order."""
    if n_per_class < 1:
        raise BadInputError(f"n_per_class must be at least 1, got {n_per_class}")
    n = min(n_per_class, *(len(p) for p in pools.values()))
    notes = []
    if n < n_per_class:
        small = min(pools, key=lambda k: len(pools[k]))
        notes.append(f"{n} examples per class, not {n_per_class}: class {small!r} has only {n}")
    rng = random.Random(f"{name}/{seed}")
    pairs = [(t, y) for y, pool in enumerate(pools.values()) for t in rng.sample(pool, n)]
    rng.shuffle(pairs)
    return [t for t, _ in pairs], [y for _, y in pairs], notes


def _pools(readers: dict[str, Callable[[], list[str]]]) -> tuple[dict[str, list[str]], list[str]]:
    """Read each class's texts; a class whose corpus is missing is dropped with its install command.

    Fewer than two readable classes re-raises the first :class:`MissingCorpusError`.
    """
    pools: dict[str, list[str]] = {}
    dropped: list[str] = []
    first: MissingCorpusError | None = None
    for cls, read in readers.items():
        try:
            pool = read()
        except MissingCorpusError as e:
            first = first or e
            dropped.append(f"{cls}: {_missing_reason(e)}")
            continue
        if pool:
            pools[cls] = pool
        else:
            dropped.append(f"{cls}: its corpus holds no text")
    if len(pools) < 2:
        if first is not None:
            raise first
        raise TextSetError(f"fewer than two classes have text ({dropped}); a concept needs two classes at least")
    return pools, dropped


def _noise_twin(cs: ConceptSet, level: float = TWIN_NOISE) -> ConceptSet:
    """``cs`` with ``level`` character noise (same labels): in every text, or at token level before each span.

    The noise substitutes characters one for one, so spans keep their offsets.
    """
    if cs.spans is None:
        texts = char_noise(cs.texts, level, seed=cs.seed)
    else:
        heads = char_noise([t[:a] for t, (a, _) in zip(cs.texts, cs.spans, strict=True)], level, seed=cs.seed)
        texts = [h + t[a:] for h, t, (a, _) in zip(heads, cs.texts, cs.spans, strict=True)]
    return ConceptSet(
        name=f"{cs.name}_twin",
        level=cs.level,
        classes=list(cs.classes),
        texts=texts,
        labels=list(cs.labels),
        spans=None if cs.spans is None else list(cs.spans),
        source=f"{cs.source}, character noise {level:.0%}",
        seed=cs.seed,
    )


# -------------------------------------------------------- sequence concepts
def _sequence_concept(
    name: str,
    readers: dict[str, Callable[[], list[str]]],
    n_per_class: int,
    seed: int,
    twin_noise: float,
    *,
    source: str,
    notes: Sequence[str] = (),
) -> ConceptSet:
    """A balanced sequence-level concept, one class per reader, with its character-noise twin."""
    pools, dropped = _pools(readers)
    texts, labels, balance_notes = _balanced(name, pools, n_per_class, seed)
    cs = ConceptSet(
        name=name,
        level="sequence",
        classes=list(pools),
        texts=texts,
        labels=labels,
        dropped=dropped,
        source=source,
        seed=seed,
        twin_shift=f"character noise, {twin_noise:.0%} of non-space characters substituted",
        notes=[*balance_notes, *notes],
    )
    cs.twin = _noise_twin(cs, twin_noise)
    return cs


def build_language(
    n_per_class: int = DEFAULT_N_PER_CLASS,
    seed: int = 0,
    *,
    tokenizer: Any = None,
    min_chars: int = 300,
    twin_noise: float = TWIN_NOISE,
) -> ConceptSet:
    """Language of a fortune text: en (held-out English fortunes), de, es, it, pl, ru, zh.

    Texts are fortune entries joined to at least ``min_chars`` characters. Twin:
    the same texts with ``twin_noise`` character noise. ``tokenizer`` is unused.
    """
    readers: dict[str, Callable[[], list[str]]] = {
        "en": lambda: english_fortunes(split="heldout", min_chars=min_chars),
        **{lang: (lambda lang=lang: foreign_fortunes(lang, min_chars=min_chars)) for lang in FOREIGN_LANGUAGES},
    }
    return _sequence_concept(
        "language",
        readers,
        n_per_class,
        seed,
        twin_noise,
        source="fortunes, fortunes-min (held-out entries), fortunes-de/-es/-it/-pl/-ru/-zh",
    )


def build_source_kind(
    n_per_class: int = DEFAULT_N_PER_CLASS,
    seed: int = 0,
    *,
    tokenizer: Any = None,
    twin_noise: float = TWIN_NOISE,
) -> ConceptSet:
    """Kind of source: prose (held-out English fortunes) / code (Python stdlib) / JSON (iso-codes) / LaTeX.

    Twin: the same texts with ``twin_noise`` character noise (there is no second
    source of each kind offline). The kinds also differ in length and layout.
    ``tokenizer`` is unused.
    """
    readers: dict[str, Callable[[], list[str]]] = {
        "prose": lambda: english_fortunes(split="heldout"),
        "code": python_code,
        "json": iso_json,
        "latex": latex,
    }
    return _sequence_concept(
        "source_kind",
        readers,
        n_per_class,
        seed,
        twin_noise,
        source="fortunes (held-out), Python stdlib sources, iso-codes JSON, torch/sympy `.. math::` blocks",
        notes=["classes differ in length and layout as well as in kind"],
    )


# ----------------------------------------------------------- token concepts
def first_letter_words(path: str | Path | None = None) -> list[str]:
    """wamerican words usable for ``first_letter``: lower-case ASCII letters only, two letters or more."""
    return [w for w in words(path=path) if w.isascii() and w.isalpha() and w.islower() and len(w) >= 2]


def _first_letter_prompt(word: str, examples: Sequence[str]) -> tuple[str, str]:
    """(context of solved examples, the prompt for ``word``); the context ends with a newline if not empty."""
    context = "".join(f"{FIRST_LETTER_TEMPLATE.format(word=w)} {w[0].upper()}\n" for w in examples)
    return context, FIRST_LETTER_TEMPLATE.format(word=word)


def build_first_letter(
    n_per_class: int = DEFAULT_N_PER_CLASS,
    seed: int = 0,
    *,
    tokenizer: Any = None,
    n_examples: int = 2,
    min_words: int | None = None,
    twin_noise: float = 0.30,
    path: str | Path | None = None,
) -> ConceptSet:
    """First letter of a wamerican word, read at the word's last token (SAEBench's absorption task).

    Each text is ``n_examples`` solved in-context lines ``"{w} has the first
    letter: {W}"`` (other random words) and then ``"{word} has the first
    letter:"``; its span is the word's. Classes are the letters ``a``–``z``; a
    letter with fewer than ``min_words`` words (default ``n_per_class``) is
    dropped and listed in ``dropped``. Twin: the same words and prompts with
    ``twin_noise`` character noise in the in-context lines only (the target
    word and its template are intact, so spans keep their place).
    ``tokenizer`` is unused.
    """
    vocab = first_letter_words(path)
    need = n_per_class if min_words is None else min_words
    by_letter: dict[str, list[str]] = {chr(c): [] for c in range(ord("a"), ord("z") + 1)}
    for w in vocab:
        by_letter[w[0]].append(w)
    dropped = [
        f"{letter}: {len(ws)} words in the list, fewer than the {need} needed"
        for letter, ws in by_letter.items()
        if len(ws) < max(need, 1)
    ]
    pools = {letter: ws for letter, ws in by_letter.items() if len(ws) >= max(need, 1)}
    if len(pools) < 2:
        raise TextSetError(f"first_letter: fewer than two letters have {need} words; lower n_per_class or min_words")
    targets, labels, notes = _balanced("first_letter", pools, n_per_class, seed)
    letters = list(pools)
    rng = random.Random(f"first_letter/context/{seed}")
    texts, twin_texts, spans = [], [], []
    contexts, prompts = [], []
    for word in targets:
        examples = []
        while len(examples) < n_examples:
            w = rng.choice(vocab)
            if w != word and w not in examples:
                examples.append(w)
        context, prompt = _first_letter_prompt(word, examples)
        contexts.append(context)
        prompts.append(prompt)
    noisy = iter(char_noise(contexts, twin_noise, seed=seed))
    for word, context, prompt in zip(targets, contexts, prompts, strict=True):
        texts.append(context + prompt)
        twin_texts.append(next(noisy) + prompt)
        spans.append((len(context), len(context) + len(word)))
    common = {"level": "token", "classes": letters, "labels": labels, "seed": seed, "source": "wamerican"}
    cs = ConceptSet(
        name="first_letter",
        texts=texts,
        spans=spans,
        dropped=dropped,
        twin_shift=f"character noise in the in-context examples, {twin_noise:.0%} of their non-space characters",
        notes=notes,
        **common,
    )
    cs.twin = ConceptSet(name="first_letter_twin", texts=twin_texts, spans=list(spans), **common)
    return cs


def _require_fast(tokenizer: Any) -> None:
    if tokenizer is None or not getattr(tokenizer, "is_fast", False):
        raise BadInputError(
            "token positions need a fast (Rust) Hugging Face tokenizer with offsets; "
            "load it with AutoTokenizer.from_pretrained(..., use_fast=True)"
        )


def _offsets(tokenizer: Any, text: str, add_special_tokens: bool = False) -> list[tuple[int, int]]:
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=add_special_tokens)
    return [tuple(o) for o in enc["offset_mapping"]]


def token_position(tokenizer: Any, text: str, char_end: int, add_special_tokens: bool = False) -> int:
    """Index of the token holding character ``char_end - 1`` of ``text`` (the last token of a span ending there).

    Uses the fast tokenizer's ``return_offsets_mapping``; special tokens (empty
    offsets) are never chosen. With ``add_special_tokens=True`` the index counts
    the tokens the tokenizer adds itself (e.g. a BOS); a BOS added later by the
    caller shifts the index by one.
    """
    _require_fast(tokenizer)
    if not 0 < char_end <= len(text):
        raise BadInputError(f"char_end {char_end} is outside the text of {len(text)} characters")
    best = _position(_offsets(tokenizer, text, add_special_tokens), char_end)
    if best is None:
        raise BadInputError(f"no token covers the text before character {char_end}; is it whitespace only?")
    return best


def _position(offsets: Sequence[tuple[int, int]], char_end: int) -> int | None:
    """The last non-empty token starting before ``char_end`` (the one holding character ``char_end - 1``)."""
    best = None
    for i, (a, b) in enumerate(offsets):
        if b > a:
            if a >= char_end:
                break
            best = i
    return best


def token_kind(piece: str, at_word_start: bool) -> str | None:
    """The :data:`TOKEN_KINDS` class of a token's string (``None``: whitespace, mixed or other).

    ``piece`` is the token's text; ``at_word_start``: it follows whitespace or the
    start of the text (or carries its own leading whitespace).
    """
    core = piece.strip()
    if not core:
        return None
    start = at_word_start or piece[0].isspace()
    if core.isascii() and core.isdigit():
        return "digit"
    if all(unicodedata.category(c)[0] in "PS" for c in core):
        return "punctuation"
    if core.isalpha():
        if start:
            return "capitalised" if core[0].isupper() else "word_start"
        return "word_piece" if core.islower() else None
    return None


def _same_token(tokenizer: Any, text: str, char_end: int, tok_id: int) -> bool:
    """Whether ``text`` tokenized alone has token ``tok_id`` at the token holding character ``char_end - 1``."""
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    i = _position([tuple(o) for o in enc["offset_mapping"]], char_end)
    return i is not None and enc["input_ids"][i] == tok_id


def build_token_kinds(
    n_per_class: int = DEFAULT_N_PER_CLASS,
    seed: int = 0,
    *,
    tokenizer: Any = None,
    max_context: int = 200,
    per_text: int = 2,
    twin_noise: float = TWIN_NOISE,
    texts: Sequence[str] | None = None,
) -> ConceptSet:
    """Kinds of the tokenizer's own tokens in running text (:data:`TOKEN_KINDS`).

    Held-out English fortunes (or ``texts``) are tokenized with ``tokenizer``;
    each token is classed by its string (:func:`token_kind`). An example is the
    text around one token: at most ``max_context`` characters before it (cut at
    whitespace) up to the end of its whitespace-delimited word, with the token's
    span; at most ``per_text`` examples of a kind come from one text. Only
    examples whose re-tokenized text still has the same token there are kept.
    Classes with fewer than ``n_per_class`` examples are balanced down (noted),
    classes with none are dropped. Twin: character noise in the context
    before the token's word (an example whose token the noise changes keeps its
    clean text; counted in the twin's notes).
    """
    _require_fast(tokenizer)
    corpus = list(texts) if texts is not None else english_fortunes(split="heldout", min_chars=300)
    rng = random.Random(f"token_kinds/{seed}")
    order = list(range(len(corpus)))
    rng.shuffle(order)
    pools: dict[str, list[tuple[str, tuple[int, int], int]]] = {k: [] for k in TOKEN_KINDS}
    for ti in order:
        if all(len(p) >= 2 * n_per_class for p in pools.values()):
            break
        text = corpus[ti]
        enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
        taken: Counter[str] = Counter()
        for tok_id, (a, b) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
            if b <= a:
                continue
            kind = token_kind(text[a:b], a == 0 or text[a - 1].isspace())
            if kind is None or len(pools[kind]) >= 2 * n_per_class or taken[kind] >= per_text:
                continue
            end = b
            while end < len(text) and not text[end].isspace():
                end += 1
            start = max(0, a - max_context)
            while start > 0 and not text[start - 1].isspace():
                start += 1
                if start >= a:
                    start = a
                    break
            example = text[start:end]
            span = (a - start, b - start)
            if _same_token(tokenizer, example, span[1], tok_id):
                pools[kind].append((example, span, tok_id))
                taken[kind] += 1
    dropped = [f"{k}: no token of this kind in the text" for k, p in pools.items() if not p]
    kept = {k: p for k, p in pools.items() if p}
    if len(kept) < 2:
        raise TextSetError("token_kinds: fewer than two token kinds found; pass more text")
    chosen, labels, notes = _balanced("token_kinds", kept, n_per_class, seed)
    classes = list(kept)
    ex_texts = [e for e, _, _ in chosen]
    spans = [s for _, s, _ in chosen]
    word_starts = []
    for e, (a, _b) in zip(ex_texts, spans, strict=True):
        w = a
        while w > 0 and not e[w - 1].isspace():
            w -= 1
        word_starts.append(w)
    noisy_ctx = char_noise([e[:w] for e, w in zip(ex_texts, word_starts, strict=True)], twin_noise, seed=seed)
    twin_texts, kept_clean = [], 0
    for (e, span, tok_id), w, ctx in zip(chosen, word_starts, noisy_ctx, strict=True):
        t = ctx + e[w:]
        if not _same_token(tokenizer, t, span[1], tok_id):
            t, kept_clean = e, kept_clean + 1
        twin_texts.append(t)
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    common = {"level": "token", "classes": classes, "labels": labels, "seed": seed}
    cs = ConceptSet(
        name="token_kinds",
        texts=ex_texts,
        spans=spans,
        dropped=dropped,
        source=f"tokens of {name!r} in {'held-out English fortunes' if texts is None else 'the given texts'}",
        twin_shift=f"character noise in the context before the token's word, {twin_noise:.0%}",
        notes=notes,
        **common,
    )
    twin_notes = [f"{kept_clean} examples kept clean: the noise changed their token"] if kept_clean else []
    cs.twin = ConceptSet(
        name="token_kinds_twin", texts=twin_texts, spans=list(spans), source=cs.source, notes=twin_notes, **common
    )
    return cs


# ----------------------------------------------------------------- windows
def concept_windows(
    cs: ConceptSet,
    tokenizer: Any,
    seq_len: int = 128,
    *,
    bos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> Windows:
    """One token window per example of ``cs``, for the probe analyzer.

    Sequence level: BOS (when given) and the text's first ``seq_len - 1``
    tokens. Token level: BOS and the tokens up to and including the marked one
    (the token holding the span's last character, :func:`token_position`), so the
    marked token is the window's last counted token; in a causal model the tokens
    after it cannot change its activations, so cutting them changes nothing it
    reads. Windows are as wide as the longest one (at most ``seq_len``) and come
    shortest first, so that a batch holds windows of similar length (with
    ``Capture(token_budget=…)`` it is only as wide as its longest window, and short windows go many to a pass);
    ``index`` and ``source_index`` are the example's index. Raises
    :class:`~fer_diag.errors.TextSetError` naming the example when a marked token
    falls outside ``seq_len`` tokens or a text has no token.
    """
    if seq_len < 2:
        raise BadInputError(f"seq_len must be at least 2 (BOS + one token), got {seq_len}")
    room = seq_len - (bos_token_id is not None)
    if cs.level == "token":
        _require_fast(tokenizer)
        ids_list = []
        for i, (text, (_, end)) in enumerate(zip(cs.texts, cs.spans or [], strict=True)):
            enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
            pos = _position([tuple(o) for o in enc["offset_mapping"]], end)
            if pos is None:
                raise TextSetError(f"concept {cs.name!r}, example {i}: no token covers its span {cs.spans[i]}")
            if pos >= room:
                raise TextSetError(
                    f"concept {cs.name!r}, example {i}: the marked token is token {pos + 1} of the text, outside "
                    f"the {seq_len}-token window; raise seq_len or shorten the context before the span"
                )
            ids_list.append(enc["input_ids"][: pos + 1])
    else:
        ids_list = [
            ids[:room]
            for ids in tokenizer([t[: 64 * seq_len] for t in cs.texts], add_special_tokens=False)["input_ids"]
        ]
        empty = [i for i, ids in enumerate(ids_list) if not ids]
        if empty:
            raise TextSetError(f"concept {cs.name!r}: example {empty[0]} has no token; remove empty texts")
    prefix = [bos_token_id] if bos_token_id is not None else []
    width = len(prefix) + max(len(ids) for ids in ids_list)
    tokens = torch.full((len(ids_list), width), pad_token_of(tokenizer, pad_token_id), dtype=torch.long)
    mask = torch.zeros((len(ids_list), width), dtype=torch.bool)
    for r, ids in enumerate(ids_list):
        row = prefix + list(ids)
        if len(row) < 2:
            raise TextSetError(
                f"concept {cs.name!r}, example {r}: one token and no BOS; position 0 never counts, so give the "
                "example some context before its marked token (or use a model with a BOS token)"
            )
        tokens[r, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[r, 1 : len(row)] = True  # position 0 / BOS never counts (DESIGN §5)
    return Windows(cs.name, tokens, mask, torch.arange(len(ids_list))).select(torch.argsort(mask.sum(1), stable=True))


# ------------------------------------------------------------ user concepts
JSONL_EXAMPLE = '{"text": "…", "label": "positive"}'
JSONL_SPAN_EXAMPLE = '{"text": "The cat sat", "label": "noun", "span": [4, 7], "span_text": "cat"}'


def _read_span(where: str, obj: dict, text: str) -> tuple[int, int] | None:
    """The optional character span of a token-level example (``"span": [start, end]``, ``"span_text"`` checked)."""
    if "span" not in obj:
        if "span_text" in obj:
            raise InputFileError(f"{where}: 'span_text' without 'span'; give the span too, e.g. {JSONL_SPAN_EXAMPLE}")
        return None
    span = obj["span"]
    ok = isinstance(span, list) and len(span) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in span)
    if not ok or not 0 <= span[0] < span[1] <= len(text):
        raise InputFileError(
            f"{where}: span {json.dumps(span)} must be [start, end] character offsets with "
            f"0 <= start < end <= {len(text)} (the text's length), e.g. {JSONL_SPAN_EXAMPLE}"
        )
    if "span_text" in obj and text[span[0] : span[1]] != obj["span_text"]:
        raise InputFileError(
            f"{where}: span {span} of the text is {text[span[0] : span[1]]!r}, not the span_text "
            f"{obj['span_text']!r}; fix the offsets (0-based, end excluded, counted in characters, not bytes)"
        )
    return span[0], span[1]


def _read_labelled(
    p: Path, text_field: str, label_field: str
) -> tuple[list[str], list[str | int], list[tuple[int, int]] | None]:
    """Texts, labels and spans (None when no line has one; all lines or none must) of a concept file."""
    texts: list[str] = []
    labels: list[str | int] = []
    spans: list[tuple[int, int] | None] = []
    for where, _, obj in jsonl_objects(p, JSONL_EXAMPLE):
        for key in (text_field, label_field):
            if key not in obj:
                raise InputFileError(
                    f"{where}: no field {key!r} (fields: {', '.join(map(repr, obj)) or 'none'}); "
                    f"give every line a text and a label, e.g. {JSONL_EXAMPLE}"
                )
        text, label = obj[text_field], obj[label_field]
        if not isinstance(text, str) or not text.strip():
            raise InputFileError(f"{where}: {text_field!r} must be a non-empty string; write the text in quotes")
        if isinstance(label, bool) or not isinstance(label, str | int) or (isinstance(label, str) and not label):
            raise InputFileError(
                f"{where}: label {json.dumps(label, ensure_ascii=False)} must be a non-empty string or an integer, "
                'e.g. "label": "positive"'
            )
        texts.append(text)
        labels.append(label)
        spans.append(_read_span(where, obj, text))
    given = [i for i, sp in enumerate(spans) if sp is not None]
    if not given:
        return texts, labels, None
    if len(given) < len(spans):
        missing = next(i for i, sp in enumerate(spans) if sp is None)
        raise InputFileError(
            f"{p}: example {missing + 1} has no span while others do; a token-level concept needs a span on "
            f"every line, e.g. {JSONL_SPAN_EXAMPLE} (or none, for a sequence-level concept)"
        )
    return texts, labels, spans  # type: ignore[return-value]


def concepts_from_jsonl(
    path: str | Path,
    *,
    name: str | None = None,
    min_per_class: int = 2,
    twin_path: str | Path | None = None,
    twin_noise: float = TWIN_NOISE,
    seed: int = 0,
    text_field: str = "text",
    label_field: str = "label",
) -> ConceptSet:
    """A concept from a JSON-lines file of ``{"text": …, "label": …}`` objects (token level with ``"span"``).

    Sequence level by default; when the lines carry ``"span": [start, end]``
    (character offsets, end excluded; optional ``"span_text"`` is checked
    against the text) the concept is token level and the probe reads the token
    holding the span's last character. All lines or none must have a span.

    Labels are strings or integers; the classes are their distinct values, sorted
    (integers numerically). Errors name the file, the line and the fix: a line
    that is not a JSON object, a missing field, an empty text, a label that is
    not a string or an integer (:class:`~fer_diag.errors.InputFileError`); a
    file with one class only, or a class with fewer than ``min_per_class``
    examples (:class:`~fer_diag.errors.TextSetError`). Twin: ``twin_path`` (same
    format and level; its classes must be among this file's), else the same
    texts with ``twin_noise`` character noise (token level: in the text before
    the span only, so the marked token itself is intact). Example order is the file's.
    """
    p = check_text_file(path)
    texts, raw, spans = _read_labelled(p, text_field, label_field)
    if not texts:
        raise InputFileError(f"{p} holds no examples; write one JSON object per line, e.g. {JSONL_EXAMPLE}")
    values = sorted(set(raw), key=lambda v: (isinstance(v, str), v))
    if len(values) < 2:
        raise TextSetError(
            f"{p}: every example has the label {values[0]!r}; a concept needs at least two classes: "
            "add examples of another class"
        )
    counts = Counter(raw)
    few = {str(v): counts[v] for v in values if counts[v] < min_per_class}
    if few:
        raise TextSetError(
            f"{p}: classes with fewer than {min_per_class} examples: {few}; add examples to them, "
            "remove them from the file, or lower min_per_class"
        )
    index = {v: i for i, v in enumerate(values)}
    classes = [str(v) for v in values]
    level: Level = "sequence" if spans is None else "token"
    cs = ConceptSet(
        name=name or p.stem,
        level=level,
        classes=classes,
        texts=texts,
        labels=[index[v] for v in raw],
        spans=spans,
        source=str(p),
        seed=seed,
    )
    if twin_path is None:
        cs.twin = _noise_twin(cs, twin_noise)
        where = "" if spans is None else " before the span"
        cs.twin_shift = f"character noise{where}, {twin_noise:.0%} of non-space characters substituted"
        return cs
    tp = check_text_file(twin_path)
    t_texts, t_raw, t_spans = _read_labelled(tp, text_field, label_field)
    if (t_spans is None) != (spans is None):
        raise TextSetError(f"{tp} and {p} must both have spans (token level) or both have none (sequence level)")
    unknown = sorted({str(v) for v in t_raw if v not in index})
    if unknown:
        raise TextSetError(f"{tp}: labels {unknown} are not classes of {p} ({classes}); use the same labels in both")
    cs.twin_shift = f"user-supplied: {tp} (other examples, not the same texts shifted)"
    cs.twin_paired = False
    cs.twin = ConceptSet(
        name=f"{cs.name}_twin",
        level=level,
        classes=classes,
        texts=t_texts,
        labels=[index[v] for v in t_raw],
        spans=t_spans,
        source=str(tp),
        seed=seed,
    )
    return cs


# ---------------------------------------------------------------- registry
#: Built-in concepts: name → builder ``(n_per_class, seed, *, tokenizer=None) -> ConceptSet``.
CONCEPTS: dict[str, Callable[..., ConceptSet]] = {
    "language": build_language,
    "source_kind": build_source_kind,
    "first_letter": build_first_letter,
    "token_kinds": build_token_kinds,
}
#: Concepts that need the model's tokenizer.
NEEDS_TOKENIZER = frozenset({"token_kinds"})


def build_concepts(
    names: Sequence[str] | None = None,
    tokenizer: Any = None,
    n_per_class: int = DEFAULT_N_PER_CLASS,
    seed: int = 0,
) -> ConceptSuite:
    """Build the named built-in concepts (all by default).

    A concept whose corpus is missing is skipped, its reason and install command
    in ``skipped``; so is one that needs a tokenizer when none is given.
    """
    names = list(CONCEPTS) if names is None else list(names)
    unknown = [n for n in names if n not in CONCEPTS]
    if unknown:
        raise BadInputError(f"unknown concept(s) {unknown}; choose among {list(CONCEPTS)}")
    out: list[ConceptSet] = []
    skipped: list[str] = []
    for n in names:
        if n in NEEDS_TOKENIZER and tokenizer is None:
            skipped.append(f"{n}: needs the model's tokenizer (none given)")
            continue
        try:
            out.append(CONCEPTS[n](n_per_class, seed, tokenizer=tokenizer))
        except MissingCorpusError as e:
            skipped.append(f"{n}: {_missing_reason(e)}")
    return ConceptSuite(out, skipped)
