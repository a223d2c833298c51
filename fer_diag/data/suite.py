"""Suites: the named text sets an audit runs, and their tokenisation into windows.

A :class:`TextSet` is a list of texts with a *kind* (in-distribution, shifted, or
one level of a graded shift) and optional per-text labels. A :class:`Suite` is an
ordered collection of text sets. :func:`tokenize_windows` turns a text set into
fixed-length token windows with a mask that excludes BOS and padding, which is
what :mod:`fer_diag.capture` consumes.

:func:`default_suite` is the embedded default (DESIGN §4),
:func:`suite_from_files` the suite of ``--id-text`` / ``--ood-text``, and
:func:`graded_from_jsonl` / :func:`add_graded` the user's graded levels of
``--graded``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Literal

import torch

from fer_diag.data.sources import (
    DEFAULT_MIN_CHARS,
    SOURCES,
    MissingCorpusError,
    Records,
    english_fortunes,
    read_graded_jsonl,
    read_texts,
    words,
)
from fer_diag.errors import ConfigError, TextSetError


class SetKind(StrEnum):
    """Role of a text set in an audit."""

    IN_DISTRIBUTION = "in_distribution"
    SHIFTED = "shifted"
    GRADED = "graded"  # one level of a graded shift; ``TextSet.level`` is set


@dataclass
class TextSet:
    """A named list of texts.

    ``level`` orders graded sets along the shift axis (0 = unperturbed).
    ``labels`` are optional per-text labels (concepts for probes).
    ``token_ids`` is an alternative to ``texts`` for sets that are token ids
    already (random tokens); exactly one of the two is non-empty.
    ``groups`` gives each text a cluster id (its source text) for the graded
    cluster bootstrap: texts with the same id, in any set of the axis, are
    resampled together. ``None``: each text is its own cluster, numbered by its
    index (the built-in graded sets perturb text ``i`` of the same list at every
    level, so the index is the source).
    """

    name: str
    kind: SetKind
    texts: list[str] = field(default_factory=list)
    level: float | None = None
    axis: str | None = None  # graded-shift axis, e.g. "shift"
    labels: list[int] | None = None
    token_ids: list[list[int]] | None = None
    source: str = ""  # human-readable provenance, e.g. "fortunes-de"
    label_names: list[str] | None = None  # name of each label value, when labels came from strings
    groups: list[int] | None = None  # cluster id (source text) of each text; None: the text's index

    def __post_init__(self) -> None:
        if self.groups is not None and len(self.groups) != len(self):
            raise TextSetError(
                f"text set {self.name!r} has {len(self.groups)} groups for {len(self)} texts; "
                "give one cluster id per text (or groups=None)"
            )

    def __len__(self) -> int:
        return len(self.token_ids) if self.token_ids is not None else len(self.texts)


@dataclass
class Suite:
    """Ordered text sets; exactly one in-distribution reference set by default.

    ``skipped`` lists the sets left out because their corpus is missing, each
    with the reason and the command that installs it.
    """

    sets: list[TextSet]
    skipped: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[TextSet]:
        return iter(self.sets)

    def __len__(self) -> int:
        return len(self.sets)

    def __getitem__(self, name: str) -> TextSet:
        for s in self.sets:
            if s.name == name:
                return s
        raise KeyError(f"no text set named {name!r}; have {[s.name for s in self.sets]}")

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sets]

    @property
    def reference(self) -> TextSet:
        for s in self.sets:
            if s.kind is SetKind.IN_DISTRIBUTION:
                return s
        raise TextSetError("suite has no in-distribution text set; add one with kind=SetKind.IN_DISTRIBUTION")

    @property
    def axes(self) -> list[str]:
        """Graded-shift axes present, in order of first appearance."""
        return list(dict.fromkeys(s.axis for s in self.sets if s.kind is SetKind.GRADED and s.axis))

    def axis(self, name: str) -> list[TextSet]:
        """The graded sets of one axis, by increasing level."""
        sets = [s for s in self.sets if s.kind is SetKind.GRADED and s.axis == name]
        if not sets:
            raise KeyError(f"no graded axis named {name!r}; have {self.axes}")
        return sorted(sets, key=lambda s: s.level)


@dataclass
class Windows:
    """Token windows of one text set.

    tokens: [n, seq_len] int64, BOS first where the model uses one, right-padded.
    mask:   [n, seq_len] bool, True for positions that count in statistics
            (excludes position 0 / BOS and padding).
    source_index: [n] int64, index of the text each window came from.
    index:  [n] int64, the window's number in the whole set (``seq_index`` of its
            activations); a shard of the set keeps the numbers of its windows.
    cluster: [n] int64, the cluster (source text) of each window for the graded
            cluster bootstrap: ``TextSet.groups[source_index]`` when the set has
            groups, else ``source_index``.
    """

    set_name: str
    tokens: torch.Tensor
    mask: torch.Tensor
    source_index: torch.Tensor
    index: torch.Tensor = None  # type: ignore[assignment]  # default: 0..n-1
    cluster: torch.Tensor = None  # type: ignore[assignment]  # default: source_index

    def __post_init__(self) -> None:
        if self.index is None:
            self.index = torch.arange(len(self.tokens))
        if self.cluster is None:
            self.cluster = self.source_index

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def select(self, rows: torch.Tensor | slice) -> Windows:
        """A subset of the windows (a shard), keeping their numbers."""
        return Windows(
            self.set_name,
            self.tokens[rows],
            self.mask[rows],
            self.source_index[rows],
            self.index[rows],
            self.cluster[rows],
        )

    def head(self, n: int) -> Windows:
        """The first ``n`` windows."""
        return self.select(slice(0, n))


def tokenize_windows(
    text_set: TextSet,
    tokenizer,
    seq_len: int = 128,
    max_windows: int | None = None,
    min_tokens: int = 8,
    bos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> Windows:
    """Tokenise ``text_set`` into at most ``max_windows`` windows of ``seq_len`` tokens.

    Each text gives one window: BOS first when ``bos_token_id`` is given, then the
    text's tokens (no other special tokens), truncated to ``seq_len`` and
    right-padded with ``pad_token_id`` (else the tokenizer's pad, else its EOS,
    else 0). The mask is False at position 0 and on padding. Windows with fewer
    than ``min_tokens`` counted (mask-True) tokens are dropped, and the first
    ``max_windows`` remaining ones are kept. ``Windows.cluster`` carries the
    set's ``groups`` (else the text index). A set given as ``token_ids`` is used
    as is (BOS is still prepended). Raises :class:`~fer_diag.errors.TextSetError`
    naming the set when it is empty or nothing is left.

    ``tokenizer`` is a Hugging Face tokenizer (called with
    ``add_special_tokens=False``). Texts are cut to ``64 · seq_len`` characters
    before tokenising, which bounds the work on very long texts.
    """
    name = text_set.name
    if seq_len < 2:
        raise ConfigError(f"seq_len must be at least 2 (BOS + one token), got {seq_len}")
    if len(text_set) == 0:
        raise TextSetError(
            f"text set {name!r} is empty: give it at least one text (a non-empty file, or a corpus that is installed)"
        )
    pad = pad_token_of(tokenizer, pad_token_id)
    room = seq_len - (bos_token_id is not None)
    keep: list[list[int]] = []
    index: list[int] = []
    longest = 0
    for lo, ids_chunk in _content_ids(text_set, tokenizer, seq_len, max_windows):
        for k, ids in enumerate(ids_chunk):
            ids = ([bos_token_id] if bos_token_id is not None else []) + list(ids[:room])
            counted = len(ids) - 1
            longest = max(longest, counted)
            if counted >= min_tokens and (max_windows is None or len(keep) < max_windows):
                keep.append(ids)
                index.append(lo + k)
        if max_windows is not None and len(keep) >= max_windows:
            break
    if not keep:
        raise TextSetError(
            f"every text of set {name!r} has fewer than min_tokens={min_tokens} counted tokens "
            f"(longest: {longest}); pass longer texts (e.g. paragraphs separated by blank lines instead of "
            "single lines) or lower the minimum (--min-tokens, or min_tokens= from Python)"
        )
    tokens = torch.full((len(keep), seq_len), pad, dtype=torch.long)
    mask = torch.zeros((len(keep), seq_len), dtype=torch.bool)
    for r, ids in enumerate(keep):
        tokens[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[r, 1 : len(ids)] = True
    source = torch.tensor(index, dtype=torch.long)
    cluster = None if text_set.groups is None else torch.tensor([text_set.groups[i] for i in index], dtype=torch.long)
    return Windows(name, tokens, mask, source, cluster=cluster)


def pad_token_of(tokenizer, pad_token_id: int | None) -> int:
    for cand in (pad_token_id, getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if cand is not None:
            return int(cand)
    return 0


def _content_ids(
    text_set: TextSet, tokenizer, seq_len: int, max_windows: int | None
) -> Iterator[tuple[int, list[list[int]]]]:
    """``(first index, token ids)`` of successive chunks of the set's texts (no special tokens)."""
    if text_set.token_ids is not None:
        yield 0, text_set.token_ids
        return
    step = max(256, 2 * (max_windows or 0))
    texts = text_set.texts
    for lo in range(0, len(texts), step):
        chunk = [t[: 64 * seq_len] for t in texts[lo : lo + step]]
        yield lo, tokenizer(chunk, add_special_tokens=False)["input_ids"]


# ------------------------------------------------------------------ suites
#: Shifted sets of the default suite, in report order (each is a registered source).
DEFAULT_SHIFTED: tuple[str, ...] = (
    "fortunes_de",
    "fortunes_es",
    "fortunes_it",
    "fortunes_pl",
    "fortunes_ru",
    "fortunes_zh",
    "python_code",
    "iso_json",
    "latex",
)
ID_SET = "fortunes_en"


def _reader_kwargs(name: str, seq_len: int) -> dict:
    """Text-size parameters of a source, scaled up for windows longer than 128 tokens."""
    scale = max(1.0, seq_len / 128)
    if name.startswith("fortunes_"):
        return {"min_chars": round(DEFAULT_MIN_CHARS * scale)}
    return {
        "python_code": {"lines": round(24 * scale)},
        "iso_json": {"entries_per_text": round(4 * scale)},
        "latex": {"min_chars": round(300 * scale)},
    }.get(name, {})


def training_texts(max_texts: int | None = None, seed: int = 0, seq_len: int = 128) -> list[str]:
    """English fortune texts of the training split (for SAE training).

    They share no fortune entry with the audit's in-distribution or graded sets
    (see :func:`fer_diag.data.sources.is_heldout`).
    """
    return english_fortunes(max_texts, seed, split="train", **_reader_kwargs(ID_SET, seq_len))


def default_suite(
    tokenizer,
    n_per_set: int = 96,
    seed: int = 0,
    seq_len: int = 128,
    on_missing: Literal["skip", "raise"] = "skip",
) -> Suite:
    """The embedded default suite (DESIGN §4).

    * ``fortunes_en`` (in-distribution): ``n_per_set`` texts of the held-out
      English fortunes.
    * shifted: one set per foreign fortune language (``fortunes_de`` …
      ``fortunes_zh``), ``python_code``, ``iso_json``, ``latex``.
    * graded (:func:`fer_diag.data.shifts.graded_sets`): the ``shift`` axis,
      built from another ``n_per_set`` held-out texts, disjoint from the
      in-distribution set, so ``shift_0_clean`` against ``fortunes_en`` is a
      null comparison (expected AUROC ≈ 0.5). Only when the held-out split has
      a single text do both use it.

    Fortunes are joined into texts of ≥ 600 characters (× ``seq_len`` / 128 when
    longer windows are asked for) so windows are full. With
    ``on_missing="skip"`` a missing corpus leaves its set out and is recorded in
    ``Suite.skipped`` with its install command; ``"raise"`` raises
    :class:`~fer_diag.data.sources.MissingCorpusError`. Missing English fortunes
    always raise: there is no reference set without them.
    """
    from fer_diag.data.shifts import graded_sets

    if on_missing not in ("skip", "raise"):
        raise ConfigError(f"on_missing must be 'skip' or 'raise', got {on_missing!r}")
    heldout = english_fortunes(split="heldout", **_reader_kwargs(ID_SET, seq_len))
    picked = random.Random(seed).sample(range(len(heldout)), min(2 * n_per_set, len(heldout)))
    n_id = min(n_per_set, max(1, len(picked) // 2))
    id_texts = [heldout[i] for i in sorted(picked[:n_id])]
    graded_texts = [heldout[i] for i in sorted(picked[n_id:])] or id_texts
    sets = [TextSet(ID_SET, SetKind.IN_DISTRIBUTION, texts=id_texts, source="fortunes, fortunes-min (held-out)")]
    skipped: list[str] = []

    def missing(e: MissingCorpusError, what: str) -> None:
        if on_missing == "raise":
            raise e
        skipped.append(f"{what}: {e}")

    for name in DEFAULT_SHIFTED:
        spec = SOURCES[name]
        try:
            texts = spec.reader(n_per_set, seed, **_reader_kwargs(name, seq_len))
        except MissingCorpusError as e:
            missing(e, name)
            continue
        sets.append(TextSet(name, SetKind.SHIFTED, texts=texts, source=spec.package))
    try:
        vocab = words()
    except MissingCorpusError as e:
        missing(e, "shift_6_word_salad")
        vocab = []
    sets += graded_sets(graded_texts, tokenizer, seed, seq_len - 1, vocab, source="fortunes_en held-out")
    return Suite(sets, skipped)


def _as_paths(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    return [Path(paths)] if isinstance(paths, str | Path) else [Path(p) for p in paths]


def _read_set(paths: list[Path], field: str, label_field: str | None, n: int | None, seed: int) -> Records:
    """Concatenated records of ``paths`` (labels kept only when every file has the same label names)."""
    recs = [read_texts(p, field, label_field) for p in paths]
    for p, r in zip(paths, recs, strict=True):
        if not r.texts:
            raise TextSetError(f"{p} holds no text; pass a file with at least one non-empty line")
    if len({tuple(r.label_names or ()) for r in recs}) > 1:
        raise TextSetError(f"label values differ in kind between {', '.join(map(str, paths))}; use one labelling")
    texts = [t for r in recs for t in r.texts]
    labels = [y for r in recs for y in r.labels] if label_field is not None else None
    keep = sorted(random.Random(seed).sample(range(len(texts)), n)) if n is not None and len(texts) > n else None
    if keep is not None:
        texts = [texts[i] for i in keep]
        labels = [labels[i] for i in keep] if labels is not None else None
    return Records(texts, labels, recs[0].label_names)


def _unique(name: str, taken: set[str]) -> str:
    out, k = name, 2
    while out in taken:
        out, k = f"{name}_{k}", k + 1
    taken.add(out)
    return out


def suite_from_files(
    id_paths: str | Path | Sequence[str | Path],
    ood_paths: str | Path | Sequence[str | Path] = (),
    tokenizer=None,
    *,
    graded: bool = True,
    n_per_set: int | None = 256,
    seed: int = 0,
    seq_len: int = 128,
    field: str = "text",
    label_field: str | None = None,
) -> Suite:
    """A suite from user files (``--id-text`` / ``--ood-text``).

    Files are read by extension (``.jsonl`` / ``.ndjson``: one JSON object per
    line, text in ``field``; anything else: plain text, see
    :func:`fer_diag.data.sources.read_text_file`). All ``id_paths`` form the one
    in-distribution set (named after the first file); each of ``ood_paths`` is a
    shifted set named after its file. Each set keeps a seeded sample of at most
    ``n_per_set`` texts. With ``graded`` (needs ``tokenizer``) the graded axes
    of :func:`fer_diag.data.shifts.graded_sets` are built from the
    in-distribution texts themselves; without ``wamerican`` the word-salad step
    is skipped and recorded in ``Suite.skipped``.
    """
    from fer_diag.data.shifts import graded_sets

    ids = _as_paths(id_paths)
    if not ids:
        raise TextSetError("pass at least one in-distribution text file (--id-text)")
    taken: set[str] = set()
    rec = _read_set(ids, field, label_field, n_per_set, seed)
    ref = TextSet(
        _unique(ids[0].stem, taken),
        SetKind.IN_DISTRIBUTION,
        texts=rec.texts,
        labels=rec.labels,
        label_names=rec.label_names,
        source=", ".join(map(str, ids)),
    )
    sets = [ref]
    for p in _as_paths(ood_paths):
        r = _read_set([p], field, label_field, n_per_set, seed)
        sets.append(
            TextSet(
                _unique(p.stem, taken),
                SetKind.SHIFTED,
                texts=r.texts,
                labels=r.labels,
                label_names=r.label_names,
                source=str(p),
            )
        )
    skipped: list[str] = []
    if graded:
        if tokenizer is None:
            raise ConfigError("graded shifts need the tokenizer (random token ids); pass tokenizer= or graded=False")
        try:
            vocab = words()
        except MissingCorpusError as e:
            skipped.append(f"shift_6_word_salad: {e}")
            vocab = []
        sets += graded_sets(ref.texts, tokenizer, seed, seq_len - 1, vocab, source=ref.name)
    return Suite(sets, skipped)


# ------------------------------------------------------------ user graded levels
def graded_from_jsonl(
    paths: str | Path | Sequence[str | Path],
    n_per_set: int | None = None,
    seed: int = 0,
    *,
    field: str = "text",
) -> list[TextSet]:
    """User-supplied graded levels (``--graded``): one :class:`TextSet` per distinct (axis, level).

    Each file holds one JSON object per line (:func:`fer_diag.data.sources.read_graded_jsonl`):
    ``{"text": …, "level": <number>}`` with an optional ``"axis"`` (default: the
    file's stem) and an optional ``"source"`` (string or integer id of the text a
    line was made from). Lines of all ``paths`` are pooled, so one axis may span
    several files (give it the same ``"axis"``). Sets come in order of first
    appearance of their axis, then by increasing level, named
    ``f"{axis}_{level:g}"`` (``kind=GRADED``, ``level``, ``axis`` set).

    ``TextSet.groups`` holds the cluster id of each text for the graded cluster
    bootstrap: lines with the same ``"source"`` share one (across levels and
    files), a line without one is its own cluster. The ids are negative, so they
    never coincide with a text index of another set (the reference set stands in
    as level 0 on an axis without one, with its text indices as clusters).

    Each set keeps at most ``n_per_set`` texts: a seeded sample that favours the
    same sources at every level (each source gets one random rank), kept in file
    order. Lines with empty text are left out. Raises
    :class:`~fer_diag.errors.InputFileError` for a file that cannot be read as
    such lines (see the reader) and :class:`~fer_diag.errors.TextSetError` for a
    level with no text or an axis with fewer than 2 distinct levels.
    """
    files = _as_paths(paths)
    if not files:
        raise TextSetError("pass at least one graded-levels file (--graded FILE.jsonl)")
    if n_per_set is not None and n_per_set < 1:
        raise ConfigError(f"n_per_set must be at least 1, got {n_per_set}")
    cluster_of: dict[str, int] = {}
    next_id = -1
    # (axis, level) -> [(text, cluster id)], and where it came from for messages
    levels: dict[tuple[str, float], list[tuple[str, int]]] = {}
    lines_at: dict[tuple[str, float], list[str]] = {}
    files_of: dict[str, list[Path]] = {}
    for path in files:
        for rec in read_graded_jsonl(path, field):
            axis = rec.axis or path.stem
            if rec.source is None:
                cid, next_id = next_id, next_id - 1
            else:
                if rec.source not in cluster_of:
                    cluster_of[rec.source], next_id = next_id, next_id - 1
                cid = cluster_of[rec.source]
            key = (axis, rec.level)
            levels.setdefault(key, [])
            lines_at.setdefault(key, []).append(f"{path}:{rec.line}")
            if path not in files_of.setdefault(axis, []):
                files_of[axis].append(path)
            if rec.text.strip():
                levels[key].append((rec.text, cid))
    for (axis, level), items in levels.items():
        if not items:
            where = lines_at[(axis, level)]
            raise TextSetError(
                f"level {level:g} of graded axis {axis!r} has no text (its lines, {_some(where)}, all have an empty "
                f'"{field}"); give each level at least one non-empty text, or drop those lines'
            )
    axes = list(dict.fromkeys(axis for axis, _ in levels))
    rank = _source_ranks(sorted({cid for items in levels.values() for _, cid in items}, reverse=True), seed)
    taken: set[str] = set()
    sets: list[TextSet] = []
    for axis in axes:
        keys = sorted(k for k in levels if k[0] == axis)
        where = ", ".join(map(str, files_of[axis]))
        if len(keys) < 2:
            raise TextSetError(
                f"graded axis {axis!r} ({where}) has a single level ({keys[0][1]:g}); an axis needs at least 2 "
                f'distinct levels: add lines at other levels with "axis": {json.dumps(axis, ensure_ascii=False)} '
                '(a line without "axis" belongs to the axis named after its file)'
            )
        for key in keys:
            items = levels[key]
            if n_per_set is not None and len(items) > n_per_set:
                keep = sorted(sorted(range(len(items)), key=lambda i: (rank[items[i][1]], i))[:n_per_set])
                items = [items[i] for i in keep]
            level = key[1]
            sets.append(
                TextSet(
                    _unique(f"{axis}_{level:g}", taken),
                    SetKind.GRADED,
                    texts=[t for t, _ in items],
                    level=level,
                    axis=axis,
                    groups=[c for _, c in items],
                    source=f"{where} (level {level:g})",
                )
            )
    return sets


def _some(items: list[str], k: int = 3) -> str:
    return ", ".join(items[:k]) + (f" and {len(items) - k} more" if len(items) > k else "")


def _source_ranks(ids: list[int], seed: int) -> dict[int, int]:
    order = list(ids)
    random.Random(seed).shuffle(order)
    return {cid: r for r, cid in enumerate(order)}


def add_graded(suite: Suite, graded: Sequence[TextSet]) -> Suite:
    """``suite`` with the user's ``graded`` sets appended (a new :class:`Suite`; ``suite`` is left as is).

    A set whose name is taken gets a ``_2`` … suffix. A graded axis of ``graded``
    that the suite already has (the built-in ``shift`` axis, say) raises
    :class:`~fer_diag.errors.TextSetError`: the levels would mix with the suite's.
    """
    _check_axes(graded, suite.axes)
    taken = set(suite.names)
    added = [replace(s, name=_unique(s.name, taken)) for s in graded]
    return Suite([*suite.sets, *added], list(suite.skipped))


def check_graded_files(paths: Sequence[str | Path]) -> list[TextSet]:
    """Read and check ``--graded`` files before the model loads.

    :func:`graded_from_jsonl`, and no axis named like the built-in graded axis
    (which both the default suite and :func:`suite_from_files` build).
    """
    from fer_diag.data.shifts import SHIFT_AXIS

    sets = graded_from_jsonl(paths)
    _check_axes(sets, [SHIFT_AXIS])
    return sets


def _check_axes(graded: Sequence[TextSet], taken: Sequence[str]) -> None:
    from fer_diag.data.shifts import SHIFT_AXIS

    clash = [s for s in graded if s.axis and s.axis in set(taken)]
    if clash:
        axis = clash[0].axis
        builtin = f"the built-in graded axis is {SHIFT_AXIS!r}"
        raise TextSetError(
            f"graded axis {axis!r} of {clash[0].source} is already an axis of the suite ({builtin}); "
            'name yours differently: set "axis" on its lines, or rename the file '
            '(a line without "axis" belongs to the axis named after its file)'
        )
