"""Graded shifts: perturbations of in-distribution text at fixed, seeded levels (DESIGN §4).

Each text shift is a pure function ``(texts, level, seed) -> texts``: the same
arguments always give the same output, and each text is perturbed with its own
generator seeded by ``(seed, index)``. Levels are fractions in ``[0, 1]``.

The graded suite is one ordered axis, ``shift``, in the order DESIGN §4 lists it
(:func:`graded_sets`; a set's ``level`` is its ordinal rank, only the order is meant):

    ``shift_0_clean`` < ``shift_1_char_noise_05`` < ``shift_2_char_noise_10``
    < ``shift_3_char_noise_20`` < ``shift_4_char_noise_40`` < ``shift_5_word_shuffle``
    < ``shift_6_word_salad`` < ``shift_7_random_tokens``

It goes from intact text, to more and more corrupted spelling (fraction of
non-space characters substituted), to intact words in the wrong order, to
random real words, to random token ids that need not spell anything. Every set
but the last perturbs the same held-out texts. A missing word list leaves out
level 6; the order of the rest is unchanged.
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

#: Fractions of substituted characters on the ``shift`` axis (0 is the clean text).
CHAR_NOISE_LEVELS: tuple[float, ...] = (0.0, 0.05, 0.10, 0.20, 0.40)
#: Name of the graded axis of :func:`graded_sets`.
SHIFT_AXIS = "shift"
#: Set name → ordinal level on the ``shift`` axis.
SHIFT_LEVELS: dict[str, int] = {
    name: rank
    for rank, name in enumerate(
        [
            "shift_0_clean",
            *(f"shift_{i}_char_noise_{round(p * 100):02d}" for i, p in enumerate(CHAR_NOISE_LEVELS[1:], 1)),
            "shift_5_word_shuffle",
            "shift_6_word_salad",
            "shift_7_random_tokens",
        ]
    )
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
    """The graded sets of the ``shift`` axis (module docstring) built from ``texts``.

    ``length`` is the number of random token ids per sequence (the window length
    minus BOS). ``vocabulary`` feeds word salad: ``None`` reads ``wamerican``; an
    empty sequence leaves the word-salad step out.
    """
    texts = list(texts)
    prefix = f"{source} + " if source else ""
    vocab = list(vocabulary) if vocabulary is not None else words()
    perturbed: dict[str, tuple[str, list[str]]] = {"shift_0_clean": ("clean", texts)}
    for name, p in zip(list(SHIFT_LEVELS)[1:5], CHAR_NOISE_LEVELS[1:], strict=True):
        perturbed[name] = (f"char noise {p:.0%}", char_noise(texts, p, seed))
    perturbed["shift_5_word_shuffle"] = ("word shuffle", word_shuffle(texts, 1.0, seed))
    if vocab:
        perturbed["shift_6_word_salad"] = ("word salad (wamerican)", word_salad(texts, 1.0, seed, vocab))

    def graded(name: str, what: str, **content) -> TextSet:
        return TextSet(name, SetKind.GRADED, level=SHIFT_LEVELS[name], axis=SHIFT_AXIS, source=what, **content)

    sets = [graded(name, prefix + what, texts=out) for name, (what, out) in perturbed.items()]
    ids = random_tokens(tokenizer, len(texts), length, seed)
    sets.append(graded("shift_7_random_tokens", "random token ids", token_ids=ids))
    return sets
