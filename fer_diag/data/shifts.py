"""Graded shifts: perturbations of in-distribution text at fixed, seeded levels (DESIGN §4).

Each text shift is a pure function ``(texts, level, seed) -> texts``: the same
arguments always give the same output, and each text is perturbed with its own
generator seeded by ``(seed, index)``. Levels are fractions in ``[0, 1]``.

:func:`graded_sets` turns held-out in-distribution texts into
``SetKind.GRADED`` text sets on two axes (a set's ``axis`` and ``level``):

``char_noise`` (level = fraction of non-space characters substituted)
    ``char_noise_00`` 0.0 · ``char_noise_05`` 0.05 · ``char_noise_10`` 0.10 ·
    ``char_noise_20`` 0.20 · ``char_noise_40`` 0.40

``shift`` (ordinal level 0–4, "farther the shift"; only the order is meant)
    ``shift_0_clean`` 0 < ``shift_1_char_noise_10`` 1 < ``shift_2_word_shuffle`` 2
    < ``shift_3_word_salad`` 3 < ``shift_4_random_tokens`` 4

The order on ``shift`` goes from intact text, to corrupted spelling, to intact
words in the wrong order, to random real words, to random token ids that need
not spell anything. Levels 0 and 1 of ``shift`` hold the same texts as
``char_noise_00`` / ``char_noise_10`` (each axis is complete on its own, so a
rank correlation per axis needs no set from elsewhere).
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Sequence

import numpy as np

from fer_diag.data.sources import words
from fer_diag.data.suite import SetKind, TextSet

#: Substitution alphabet of :func:`char_noise`: printable ASCII without whitespace.
NOISE_ALPHABET = string.ascii_letters + string.digits + string.punctuation
_ALPHA_INDEX = {c: i for i, c in enumerate(NOISE_ALPHABET)}

CHAR_NOISE_LEVELS: tuple[float, ...] = (0.0, 0.05, 0.10, 0.20, 0.40)
#: Set name → ordinal level on the combined ``shift`` axis.
SHIFT_LEVELS: dict[str, int] = {
    "shift_0_clean": 0,
    "shift_1_char_noise_10": 1,
    "shift_2_word_shuffle": 2,
    "shift_3_word_salad": 3,
    "shift_4_random_tokens": 4,
}

_WS_SPLIT = re.compile(r"(\s+)")


def _check_level(level: float) -> None:
    if not 0.0 <= level <= 1.0:
        raise ValueError(f"shift level must be a fraction in [0, 1], got {level}")


def _rng(seed: int, index: int) -> random.Random:
    return random.Random(f"{seed}/{index}")


def char_noise(texts: Sequence[str], level: float, seed: int = 0) -> list[str]:
    """Substitute ``round(level · n)`` of each text's ``n`` non-space characters.

    Each chosen character is replaced by a different character of
    :data:`NOISE_ALPHABET`. The positions come from one seeded permutation per
    text and a higher level takes a longer prefix of it, so the corruptions of a
    lower level are a subset of those of a higher one (same seed).
    """
    _check_level(level)
    out = []
    for i, text in enumerate(texts):
        rng = _rng(seed, i)
        chars = list(text)
        positions = [j for j, c in enumerate(chars) if not c.isspace()]
        rng.shuffle(positions)
        for j in positions[: round(level * len(positions))]:
            r = rng.randrange(len(NOISE_ALPHABET) - 1)
            own = _ALPHA_INDEX.get(chars[j])
            chars[j] = NOISE_ALPHABET[r + 1 if own is not None and r >= own else r]
        out.append("".join(chars))
    return out


def _word_slots(parts: list[str]) -> list[int]:
    """Indices of the words in ``re.split(r"(\\s+)", text)`` (whitespace runs sit at odd indices)."""
    return [k for k in range(0, len(parts), 2) if parts[k]]


def word_shuffle(texts: Sequence[str], level: float = 1.0, seed: int = 0) -> list[str]:
    """Permute a ``level`` fraction of each text's words among their own positions.

    Words are whitespace-separated tokens (punctuation stays attached); the
    whitespace between them is kept, and so is each text's multiset of words.
    ``level=1`` shuffles all words.
    """
    _check_level(level)
    out = []
    for i, text in enumerate(texts):
        rng = _rng(seed, i)
        parts = _WS_SPLIT.split(text)
        slots = _word_slots(parts)
        chosen = rng.sample(slots, round(level * len(slots)))
        moved = [parts[k] for k in chosen]
        rng.shuffle(moved)
        for k, w in zip(chosen, moved, strict=True):
            parts[k] = w
        out.append("".join(parts))
    return out


def word_salad(
    texts: Sequence[str], level: float = 1.0, seed: int = 0, vocabulary: Sequence[str] | None = None
) -> list[str]:
    """Replace a ``level`` fraction of each text's words by random words of ``vocabulary``.

    ``vocabulary`` defaults to the ``wamerican`` word list (:func:`~fer_diag.data.sources.words`).
    The text keeps its word count and whitespace; ``level=1`` gives pure word salad.
    """
    _check_level(level)
    vocab = list(vocabulary) if vocabulary is not None else words()
    if not vocab:
        raise ValueError("word_salad needs a non-empty vocabulary")
    out = []
    for i, text in enumerate(texts):
        rng = _rng(seed, i)
        parts = _WS_SPLIT.split(text)
        slots = _word_slots(parts)
        for k in rng.sample(slots, round(level * len(slots))):
            parts[k] = rng.choice(vocab)
        out.append("".join(parts))
    return out


def special_token_ids(tokenizer) -> set[int]:
    """Ids of the tokenizer's special tokens (BOS/EOS/PAD/UNK… and added tokens marked special)."""
    ids = set(getattr(tokenizer, "all_special_ids", None) or [])
    for i, tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(tok, "special", False):
            ids.add(int(i))
    return ids


def random_tokens(tokenizer, n: int, length: int, seed: int = 0) -> list[list[int]]:
    """``n`` sequences of ``length`` token ids drawn uniformly from the vocabulary, special tokens excluded."""
    if n < 0 or length < 1:
        raise ValueError(f"random_tokens needs n >= 0 and length >= 1, got n={n}, length={length}")
    special = special_token_ids(tokenizer)
    candidates = np.array([t for t in range(len(tokenizer)) if t not in special], dtype=np.int64)
    if candidates.size == 0:
        raise ValueError("the tokenizer has no non-special tokens to draw from")
    draws = np.random.default_rng(seed).integers(0, candidates.size, size=(n, length))
    return candidates[draws].tolist()


def graded_sets(
    texts: Sequence[str],
    tokenizer,
    seed: int = 0,
    length: int = 127,
    vocabulary: Sequence[str] | None = None,
    source: str = "",
) -> list[TextSet]:
    """The graded sets of both axes (module docstring) built from ``texts``.

    ``length`` is the number of random token ids per sequence (the window length
    minus BOS). ``vocabulary`` feeds word salad: ``None`` reads ``wamerican``; an
    empty sequence leaves the word-salad step out.
    """
    texts = list(texts)
    prefix = f"{source} + " if source else ""

    def graded(name: str, axis: str, level: float, what: str, out: list[str]) -> TextSet:
        return TextSet(name, SetKind.GRADED, texts=out, level=level, axis=axis, source=prefix + what)

    def on_shift(name: str, what: str, out: list[str]) -> TextSet:
        return graded(name, "shift", SHIFT_LEVELS[name], what, out)

    noisy = {lv: char_noise(texts, lv, seed) for lv in CHAR_NOISE_LEVELS}
    sets = [
        graded(f"char_noise_{round(lv * 100):02d}", "char_noise", lv, f"char noise {lv:.0%}", noisy[lv])
        for lv in CHAR_NOISE_LEVELS
    ]
    sets.append(on_shift("shift_0_clean", "clean", texts))
    sets.append(on_shift("shift_1_char_noise_10", "char noise 10%", noisy[0.10]))
    sets.append(on_shift("shift_2_word_shuffle", "word shuffle", word_shuffle(texts, 1.0, seed)))
    vocab = list(vocabulary) if vocabulary is not None else words()
    if vocab:
        sets.append(on_shift("shift_3_word_salad", "word salad (wamerican)", word_salad(texts, 1.0, seed, vocab)))
    name = "shift_4_random_tokens"
    ids = random_tokens(tokenizer, len(texts), length, seed)
    sets.append(
        TextSet(name, SetKind.GRADED, level=SHIFT_LEVELS[name], axis="shift", token_ids=ids, source="random token ids")
    )
    return sets
