"""Sources: readers of the installed corpora and of user files (DESIGN §4).

Every reader returns a plain list of texts, read from disk (nothing downloads),
in a deterministic order (sorted files; a seeded sample when ``max_texts`` caps
the count, keeping corpus order). A missing corpus raises
:class:`MissingCorpusError`, whose message carries the command that installs it.

Corpus roots default to the Debian locations and can be moved with environment
variables (or each reader's ``root`` argument):

==========================  ===============================  =====================
variable                    default                          package
==========================  ===============================  =====================
``FER_DIAG_FORTUNES_DIR``   ``/usr/share/games/fortunes``    ``fortunes*``
``FER_DIAG_WORDS_FILE``     ``/usr/share/dict/words``        ``wamerican``
``FER_DIAG_ISO_CODES_DIR``  ``/usr/share/iso-codes/json``    ``iso-codes``
``FER_DIAG_STDLIB_DIR``     ``sysconfig`` ``stdlib`` path    (Python itself)
==========================  ===============================  =====================

Fortune entries are short (a line to a paragraph), so the fortune readers join
consecutive entries, separated by a blank line, until a text has at least
``min_chars`` characters (600 by default: ~130–170 English tokens, enough to
fill a 128-token window). Entries are de-duplicated first (the same quote sits
in several files).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import inspect
import json
import math
import os
import random
import re
import sysconfig
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel

from fer_diag.errors import BadInputError, FerDiagError, InputFileError, MissingFileError

FORTUNES_ENV = "FER_DIAG_FORTUNES_DIR"
WORDS_ENV = "FER_DIAG_WORDS_FILE"
ISO_CODES_ENV = "FER_DIAG_ISO_CODES_DIR"
STDLIB_ENV = "FER_DIAG_STDLIB_DIR"

DEFAULT_MIN_CHARS = 600

#: English fortune files of the Debian ``fortunes`` and ``fortunes-min`` packages (``off/`` never read).
#: Left out: ``ascii-art`` (pictures) and ``translate-me`` (Latin and other languages).
ENGLISH_FORTUNE_FILES: tuple[str, ...] = (
    # fortunes-min
    "fortunes", "literature", "riddles",
    # fortunes
    "art", "computers", "cookie", "debian", "definitions", "disclaimer", "drugs", "education", "ethnic", "food",
    "goedel", "humorists", "kids", "knghtbrd", "law", "linux", "linuxcookie", "love", "magic", "medicine",
    "men-women", "miscellaneous", "news", "paradoxum", "people", "perl", "pets", "platitudes", "politics",
    "pratchett", "science", "songs-poems", "sports", "startrek", "tao", "wisdom", "work", "zippy",
)  # fmt: skip

#: Languages of the foreign fortune packages; all but Chinese live in a sub-folder named by the code.
FOREIGN_LANGUAGES: dict[str, str] = {
    "de": "German",
    "es": "Spanish",
    "it": "Italian",
    "pl": "Polish",
    "ru": "Russian",
    "zh": "Chinese",
}
#: ``fortunes-zh`` installs its files at the top level of the fortunes folder.
CHINESE_FORTUNE_FILES: tuple[str, ...] = ("chinese", "song100", "tang300")
#: Picture files in the foreign packages (not prose).
_ART_FILES = frozenset({"ascii-art", "asciiart", "banner"})
#: Folders under the standard library that are not ordinary library code.
_STDLIB_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})

_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_OVERSTRIKE_RE = re.compile(r".\x08")
_TRIPLE_RE = re.compile(r"""(?<![\w'"])[rRuU]?("{3}|'{3})(?:\\.|(?!\1).)*?\1""", re.DOTALL)
_MATH_RE = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]*(?P<inline>.*)$")

# A held-out share of English fortune *entries* (by a stable hash of each entry), never used for SAE training.
HELDOUT_FRACTION = 0.25


class MissingCorpusError(FerDiagError, FileNotFoundError):
    """A corpus is not installed; the message names the command that installs it."""

    def __init__(self, source: str, path: str | Path, install_command: str, hint: str = "") -> None:
        self.source = source
        self.path = str(path)
        self.install_command = install_command
        msg = f"corpus {source!r} not found at {self.path}. Install it with: {install_command}"
        super().__init__(msg + (f" ({hint})" if hint else ""))

    def __str__(self) -> str:
        return str(self.args[0])


class Records(NamedTuple):
    """Texts read from a user file, with optional integer labels and their names."""

    texts: list[str]
    labels: list[int] | None = None
    label_names: list[str] | None = None


# --------------------------------------------------------------------- helpers
def _env_path(env: str, default: str | Path) -> Path:
    return Path(os.environ.get(env) or default)


def fortunes_root(root: str | Path | None = None) -> Path:
    """The fortunes folder: ``root``, else ``$FER_DIAG_FORTUNES_DIR``, else ``/usr/share/games/fortunes``."""
    return Path(root) if root is not None else _env_path(FORTUNES_ENV, "/usr/share/games/fortunes")


def words_path(path: str | Path | None = None) -> Path:
    """The word list: ``path``, else ``$FER_DIAG_WORDS_FILE``, else ``/usr/share/dict/words``."""
    return Path(path) if path is not None else _env_path(WORDS_ENV, "/usr/share/dict/words")


def iso_codes_root(root: str | Path | None = None) -> Path:
    """The iso-codes JSON folder: ``root``, else ``$FER_DIAG_ISO_CODES_DIR``, else ``/usr/share/iso-codes/json``."""
    return Path(root) if root is not None else _env_path(ISO_CODES_ENV, "/usr/share/iso-codes/json")


def stdlib_root(root: str | Path | None = None) -> Path:
    """The Python standard library: ``root``, else ``$FER_DIAG_STDLIB_DIR``, else this interpreter's."""
    return Path(root) if root is not None else _env_path(STDLIB_ENV, sysconfig.get_paths()["stdlib"])


def sample(items: Sequence[Any], max_texts: int | None, seed: int = 0) -> list[Any]:
    """A seeded sample of at most ``max_texts`` items, kept in their original order."""
    if max_texts is None or len(items) <= max_texts:
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), max_texts))
    return [items[i] for i in keep]


def _read(path: Path) -> str:
    """UTF-8 text; a few stray bytes become U+FFFD, a file that is mostly not UTF-8 is read as Latin-1."""
    data = path.read_bytes()
    text = data.decode("utf-8", errors="replace")
    return text if text.count("\ufffd") <= 0.01 * len(text) else data.decode("latin-1")


def check_text_file(path: str | Path, head: int = 1024) -> Path:
    """``path`` if it is an existing file that looks like text, else :class:`~fer_diag.errors.InputFileError`.

    Text means: no NUL byte and valid UTF-8 in the first ``head`` bytes (a multi-byte
    character cut at the end of that block is allowed). Binary files (executables, archives,
    images) and text in legacy 8-bit encodings are refused with a message naming the file;
    re-save the latter as UTF-8. A missing path raises :class:`~fer_diag.errors.MissingFileError`.
    """
    p = Path(path)
    if not p.exists():
        raise MissingFileError(f"text file {str(p)!r} does not exist; check the path")
    if not p.is_file():
        raise MissingFileError(f"{str(p)!r} is not a file; pass a .txt or .jsonl file")
    try:
        with p.open("rb") as f:
            block = f.read(head)
    except OSError as e:
        raise InputFileError(f"cannot read text file {str(p)!r} ({e.strerror or e}); check its permissions") from e
    if b"\0" in block:
        raise InputFileError(
            f"{str(p)!r} is not a text file (it holds NUL bytes: binary data); pass a UTF-8 .txt or .jsonl file"
        )
    try:
        block.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(block) - 3 or e.reason != "unexpected end of data":
            raise InputFileError(
                f"{str(p)!r} is not UTF-8 text (invalid byte at offset {e.start}); "
                "pass a UTF-8 .txt or .jsonl file (re-save it as UTF-8 if it is text)"
            ) from None
    return p


def join_entries(entries: Iterable[str], min_chars: int = DEFAULT_MIN_CHARS) -> list[str]:
    """Join consecutive entries (blank line between) into texts of at least ``min_chars`` characters.

    A short remainder at the end is dropped unless it is the only text.
    """
    texts: list[str] = []
    cur: list[str] = []
    size = 0
    for e in entries:
        cur.append(e)
        size += len(e) + 2
        if size >= min_chars:
            texts.append("\n\n".join(cur))
            cur, size = [], 0
    if cur and not texts:
        texts.append("\n\n".join(cur))
    return texts


# -------------------------------------------------------------------- fortunes
def parse_fortunes(text: str) -> list[str]:
    """Split a fortune file into entries.

    Entries are separated by a line holding only ``%``. Terminal overstriking
    (``x\\b``) and ANSI colour codes are removed, trailing whitespace is stripped,
    and empty entries are dropped.
    """
    text = _ANSI_RE.sub("", _OVERSTRIKE_RE.sub("", text.replace("\r\n", "\n")))
    entries = []
    for chunk in re.split(r"^%[ \t]*$", text, flags=re.MULTILINE):
        lines = [ln.rstrip() for ln in chunk.split("\n")]
        entry = "\n".join(lines).strip("\n")
        if entry.strip():
            entries.append(entry)
    return entries


def read_fortune_file(path: str | Path) -> list[str]:
    """Entries of one fortune file (see :func:`parse_fortunes`)."""
    return parse_fortunes(_read(Path(path)))


def _fortune_files(folder: Path, names: Iterable[str] | None = None) -> list[Path]:
    """Fortune files of ``folder``: sorted, no ``.dat``, nothing under ``off/``, one per real file.

    The UTF-8 ``.u8`` variant is preferred when it is non-empty (``fortunes-pl``
    ships empty ones next to UTF-8 base files).
    """
    if names is None:
        names = sorted(
            {p.name.removesuffix(".u8") for p in folder.iterdir() if p.is_file() and p.suffix != ".dat"} - _ART_FILES
        )
    out: list[Path] = []
    seen: set[Path] = set()
    for name in names:
        for cand in (folder / f"{name}.u8", folder / name):
            if cand.is_file() and cand.stat().st_size > 0:
                real = cand.resolve()
                if "off" not in real.parts and real not in seen:
                    seen.add(real)
                    out.append(cand)
                break
    return out


def _dedupe(entries: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for e in entries:
        key = " ".join(e.split())
        if key not in seen:
            seen.add(key)
            out.append(e)
    return out


def _read_entries(files: Sequence[Path]) -> list[str]:
    return _dedupe(e for f in files for e in read_fortune_file(f))


def is_heldout(entry: str) -> bool:
    """Whether an English fortune entry belongs to the held-out split.

    A stable hash of the whitespace-normalised entry decides, so the split does
    not depend on seeds, sample sizes or how entries are joined into texts.
    """
    digest = hashlib.sha256(" ".join(entry.split()).encode()).digest()
    return int.from_bytes(digest[:4], "big") < HELDOUT_FRACTION * 2**32


def english_fortune_entries(root: str | Path | None = None) -> list[str]:
    """All de-duplicated English fortune entries (``fortunes`` + ``fortunes-min``), in file order."""
    folder = fortunes_root(root)
    files = _fortune_files(folder, ENGLISH_FORTUNE_FILES) if folder.is_dir() else []
    if not files:
        install = "sudo apt-get install fortunes fortunes-min"
        raise MissingCorpusError("fortunes_en", folder, install, _hint(FORTUNES_ENV))
    return _read_entries(files)


def english_fortunes(
    max_texts: int | None = None,
    seed: int = 0,
    split: Literal["all", "train", "heldout"] = "all",
    min_chars: int = DEFAULT_MIN_CHARS,
    root: str | Path | None = None,
) -> list[str]:
    """English fortunes joined into texts of ≥ ``min_chars`` characters (the in-distribution default).

    ``split="heldout"`` keeps only held-out entries (:func:`is_heldout`: the audit's
    in-distribution set and the source of graded shifts); ``split="train"`` only the
    others (SAE training). The two never share an entry.
    """
    entries = english_fortune_entries(root)
    if split != "all":
        entries = [e for e in entries if is_heldout(e) == (split == "heldout")]
    return sample(join_entries(entries, min_chars), max_texts, seed)


def foreign_fortunes(
    lang: str,
    max_texts: int | None = None,
    seed: int = 0,
    min_chars: int = DEFAULT_MIN_CHARS,
    root: str | Path | None = None,
) -> list[str]:
    """Fortunes of ``fortunes-<lang>`` (de, es, it, pl, ru, zh), joined like :func:`english_fortunes`."""
    if lang not in FOREIGN_LANGUAGES:
        raise BadInputError(f"unknown fortune language {lang!r}; choose one of {sorted(FOREIGN_LANGUAGES)}")
    base = fortunes_root(root)
    if lang == "zh":
        files = _fortune_files(base, CHINESE_FORTUNE_FILES) if base.is_dir() else []
        where = base
    else:
        where = base / lang
        files = _fortune_files(where) if where.is_dir() else []
    if not files:
        install = f"sudo apt-get install fortunes-{lang}"
        raise MissingCorpusError(f"fortunes_{lang}", where, install, _hint(FORTUNES_ENV))
    return sample(join_entries(_read_entries(files), min_chars), max_texts, seed)


# ---------------------------------------------------------------- other kinds
def words(
    max_texts: int | None = None,
    seed: int = 0,
    path: str | Path | None = None,
    possessives: bool = False,
) -> list[str]:
    """Words of the ``wamerican`` list, one per text; ``possessives=False`` drops the ``'s`` forms."""
    p = words_path(path)
    if not p.is_file():
        raise MissingCorpusError("words", p, "sudo apt-get install wamerican", _hint(WORDS_ENV))
    out = [w for w in (ln.strip() for ln in _read(p).splitlines()) if w and (possessives or "'" not in w)]
    return sample(out, max_texts, seed)


def _stdlib_files(root: Path) -> list[Path]:
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _STDLIB_SKIP_DIRS)
        files.extend(Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py"))
    return sorted(files)


def python_code(
    max_texts: int | None = None,
    seed: int = 0,
    lines: int = 24,
    root: str | Path | None = None,
) -> list[str]:
    """Chunks of ``lines`` consecutive lines of the standard library's ``.py`` files.

    Test folders and ``site-packages`` are skipped; chunks with fewer than 200
    non-blank characters (mostly blank lines) are dropped.
    """
    folder = stdlib_root(root)
    files = _stdlib_files(folder) if folder.is_dir() else []
    if not files:
        raise MissingCorpusError(
            "python_code", folder, "a Python installation with its standard library sources", _hint(STDLIB_ENV)
        )
    chunks = []
    for f in files:
        src = _read(f).splitlines()
        for i in range(0, len(src), lines):
            chunk = "\n".join(src[i : i + lines]).strip("\n")
            if len("".join(chunk.split())) >= 200:
                chunks.append(chunk)
    return sample(chunks, max_texts, seed)


def iso_json(
    max_texts: int | None = None,
    seed: int = 0,
    entries_per_text: int = 4,
    root: str | Path | None = None,
) -> list[str]:
    """Groups of ``entries_per_text`` records of the iso-codes JSON files, each printed as indented JSON."""
    folder = iso_codes_root(root)
    files = sorted(folder.glob("iso_*.json")) if folder.is_dir() else []
    if not files:
        raise MissingCorpusError("iso_json", folder, "sudo apt-get install iso-codes", _hint(ISO_CODES_ENV))
    texts = []
    for f in files:
        for key, records in json.loads(_read(f)).items():
            for i in range(0, len(records), entries_per_text):
                texts.append(json.dumps({key: records[i : i + entries_per_text]}, indent=2, ensure_ascii=False))
    return sample(texts, max_texts, seed)


def math_blocks(doc: str) -> list[str]:
    """The ``.. math::`` blocks of one reST docstring (directive content, dedented)."""
    lines = inspect.cleandoc(doc).splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        m = _MATH_RE.match(lines[i])
        i += 1
        if not m:
            continue
        indent = len(m["indent"].expandtabs())
        body = [m["inline"]] if m["inline"].strip() else []
        while i < len(lines) and (
            not lines[i].strip() or len(lines[i].expandtabs()) - len(lines[i].expandtabs().lstrip()) > indent
        ):
            body.append(lines[i])
            i += 1
        block = inspect.cleandoc("\n".join(body)).strip()
        if block:
            blocks.append(block)
    return blocks


def _math_literals(src: str) -> Iterator[str]:
    """Values of the triple-quoted string literals of ``src`` that contain ``.. math::``."""
    for m in _TRIPLE_RE.finditer(src):
        if ".. math::" in m.group(0):
            try:
                value = ast.literal_eval(m.group(0))
            except (ValueError, SyntaxError):  # f-strings, bytes, or a literal cut at the wrong quotes
                continue
            if isinstance(value, str):
                yield value


def _package_dir(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    locs = list(spec.submodule_search_locations or []) if spec else []
    return Path(locs[0]) if locs else None


def latex(
    max_texts: int | None = None,
    seed: int = 0,
    packages: Sequence[str] = ("torch", "sympy"),
    max_files: int = 5000,
    min_chars: int = 300,
) -> list[str]:
    """LaTeX from the ``.. math::`` blocks of installed docstrings (``torch``, ``sympy``).

    Scans at most ``max_files`` ``.py`` files (sorted, package by package), reads
    their triple-quoted literals that hold a math block (escapes resolved as
    Python does), and joins consecutive blocks into texts of at least
    ``min_chars`` characters.
    """
    dirs = [d for d in map(_package_dir, packages) if d is not None]
    files = [f for d in dirs for f in sorted(d.rglob("*.py"))][:max_files]
    blocks = []
    for f in files:
        src = _read(f)
        if ".. math::" in src:
            blocks.extend(b for doc in _math_literals(src) for b in math_blocks(doc))
    texts = join_entries(_dedupe(blocks), min_chars)
    if not texts:
        where = ", ".join(map(str, dirs)) or f"site-packages (no {' / '.join(packages)} installed)"
        raise MissingCorpusError("latex", where, "pip install sympy", "LaTeX comes from `.. math::` docstring blocks")
    return sample(texts, max_texts, seed)


def _hint(env: str) -> str:
    return f"or point ${env} at a copy"


# ------------------------------------------------------------------ user files
def read_text_file(path: str | Path) -> list[str]:
    """Texts of a plain-text file.

    Rule: if the file has a blank line anywhere, each blank-line-separated
    paragraph is one text (its line breaks kept); otherwise each non-empty line
    is one text. Leading/trailing whitespace of each text is stripped.
    """
    text = _read(Path(path)).replace("\r\n", "\n")
    blank = re.compile(r"\n[ \t]*\n")
    parts = blank.split(text) if blank.search(text.strip()) else text.split("\n")
    return [p.strip() for p in parts if p.strip()]


def _labels(values: list[Any]) -> tuple[list[int], list[str] | None]:
    """Integer labels as given; anything else mapped to indices of its sorted distinct string forms."""
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return list(values), None
    names = sorted({str(v) for v in values})
    index = {n: i for i, n in enumerate(names)}
    return [index[str(v)] for v in values], names


def jsonl_objects(path: Path, example: str) -> Iterator[tuple[str, int, dict]]:
    """``("file:line", line number, object)`` for each non-blank line of a JSON-lines file.

    A line that is not JSON, or not a JSON object, raises
    :class:`~fer_diag.errors.InputFileError` naming the file and line, with
    ``example`` as the line to write instead.
    """
    for n, raw in enumerate(_read(path).splitlines(), 1):
        if not raw.strip():
            continue
        where = f"{path}:{n}"
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise InputFileError(
                f"{where}: not valid JSON ({e.msg}); write one JSON object per line, e.g. {example}"
            ) from None
        if not isinstance(obj, dict):
            raise InputFileError(f"{where}: not a JSON object; write one JSON object per line, e.g. {example}")
        yield where, n, obj


def read_jsonl(path: str | Path, field: str = "text", label_field: str | None = None) -> Records:
    """Texts (and optional labels) of a JSON-lines file, one object per line; blank lines are ignored."""
    texts: list[str] = []
    raw_labels: list[Any] = []
    for where, _, obj in jsonl_objects(Path(path), f'{{"{field}": …}}'):
        for key, arg in ((field, "field"), (label_field, "label_field")):
            if key is not None and key not in obj:
                raise InputFileError(
                    f"{where}: no field {key!r} (fields: {', '.join(map(repr, obj)) or 'none'}); give every line "
                    f"a {key!r} field, or from Python name the right one with {arg}=…"
                )
        texts.append(str(obj[field]))
        if label_field is not None:
            raw_labels.append(obj[label_field])
    if label_field is None:
        return Records(texts)
    return Records(texts, *_labels(raw_labels))


def read_texts(path: str | Path, field: str = "text", label_field: str | None = None) -> Records:
    """A user file by extension: ``.jsonl`` / ``.ndjson`` via :func:`read_jsonl`, anything else as plain text."""
    p = check_text_file(path)
    if p.suffix.lower() in {".jsonl", ".ndjson"}:
        return read_jsonl(p, field, label_field)
    return Records(read_text_file(p))


GRADED_EXAMPLE = '{"text": "…", "level": 0}'


class GradedLine(NamedTuple):
    """One line of a ``--graded`` file (:func:`read_graded_jsonl`)."""

    text: str
    level: float
    axis: str | None  # None: the caller's default axis (the file name)
    source: str | None  # source-text id, compared as a string; None: the line is its own source
    line: int  # 1-based line number in the file


def read_graded_jsonl(path: str | Path, field: str = "text") -> list[GradedLine]:
    """The lines of a graded-levels file: one JSON object per line, blank lines ignored.

    Each object has ``field`` (a string), ``level`` (a JSON number), and optionally
    ``axis`` (a non-empty string) and ``source`` (a string or an integer naming the
    source text a line was made from; ``null`` counts as absent). The file is
    checked with :func:`check_text_file` first (missing, binary, not UTF-8).
    Anything else raises :class:`~fer_diag.errors.InputFileError` naming the
    file, the line and the fix; an empty file raises it too.
    """
    p = check_text_file(path)
    out: list[GradedLine] = []
    for where, n, obj in jsonl_objects(p, GRADED_EXAMPLE):
        fields = ", ".join(map(repr, obj)) or "none"
        if field not in obj:
            raise InputFileError(
                f"{where}: no field {field!r} (fields: {fields}); give every line its text, e.g. {GRADED_EXAMPLE}"
            )
        text = obj[field]
        if not isinstance(text, str):
            raise InputFileError(f"{where}: {field!r} is {_json_kind(text)}, not a string; write the text in quotes")
        if "level" not in obj:
            raise InputFileError(
                f"{where}: no field 'level' (fields: {fields}); give every line a numeric level, e.g. "
                f"{GRADED_EXAMPLE} (0 for unshifted text, larger = farther)"
            )
        level = obj["level"]
        if isinstance(level, bool) or not isinstance(level, int | float):
            raise InputFileError(
                f"{where}: level {json.dumps(level, ensure_ascii=False)} is not a number; write it as a JSON number, "
                'e.g. "level": 2 (not "level": "2")'
            )
        if not math.isfinite(level):
            raise InputFileError(f"{where}: level {level} is not a finite number; use a finite JSON number")
        axis = obj.get("axis")
        if axis is not None and not (isinstance(axis, str) and axis.strip()):
            raise InputFileError(
                f'{where}: "axis" must be a non-empty string, got {json.dumps(axis, ensure_ascii=False)}; '
                f"name the axis (or leave the field out: the axis is then the file name {p.stem!r})"
            )
        source = obj.get("source")
        if source is not None and (isinstance(source, bool) or not isinstance(source, str | int)):
            raise InputFileError(
                f'{where}: "source" must be a string or an integer id of the source text, got '
                f"{json.dumps(source, ensure_ascii=False)}; lines made from the same text share it"
            )
        out.append(
            GradedLine(text, float(level), axis.strip() if axis else None, None if source is None else str(source), n)
        )
    if not out:
        raise InputFileError(f"{p} is empty; a --graded file holds one JSON object per line, e.g. {GRADED_EXAMPLE}")
    return out


def _json_kind(value: Any) -> str:
    return {dict: "an object", list: "a list", bool: "true/false", type(None): "null"}.get(type(value), "a number")


def from_hf_dataset(ds: Any, field: str = "text", label_field: str | None = None) -> Records:
    """Texts (and labels) of an in-memory Hugging Face ``datasets.Dataset`` (or any column mapping); no download."""
    columns = getattr(ds, "column_names", None) or list(ds.keys())
    for key in (field, label_field):
        if key is not None and key not in columns:
            raise BadInputError(f"dataset has no column {key!r}; columns: {columns}")
    texts = [str(t) for t in ds[field]]
    if label_field is None:
        return Records(texts)
    return Records(texts, *_labels(list(ds[label_field])))


# -------------------------------------------------------------------- registry
@dataclass(frozen=True)
class SourceSpec:
    """A named installed corpus: what it is, which package provides it, and its reader."""

    name: str
    description: str
    package: str
    install_command: str
    reader: Callable[..., list[str]]


SOURCES: dict[str, SourceSpec] = {
    s.name: s
    for s in [
        SourceSpec(
            "fortunes_en",
            "English fortunes (in-distribution default)",
            "fortunes fortunes-min",
            "sudo apt-get install fortunes fortunes-min",
            english_fortunes,
        ),
        *(
            SourceSpec(
                f"fortunes_{lang}",
                f"{language} fortunes",
                f"fortunes-{lang}",
                f"sudo apt-get install fortunes-{lang}",
                partial(foreign_fortunes, lang),
            )
            for lang, language in FOREIGN_LANGUAGES.items()
        ),
        SourceSpec(
            "python_code",
            "Python standard library source chunks",
            "python3",
            "a Python installation with its standard library sources",
            python_code,
        ),
        SourceSpec("iso_json", "iso-codes JSON records", "iso-codes", "sudo apt-get install iso-codes", iso_json),
        SourceSpec("latex", "LaTeX `.. math::` blocks of torch/sympy docstrings", "sympy", "pip install sympy", latex),
        SourceSpec("words", "wamerican word list", "wamerican", "sudo apt-get install wamerican", words),
    ]
}


class SourceStatus(BaseModel):
    """One row of ``fer-diag data``."""

    name: str
    description: str
    available: bool
    n_texts: int | None = None
    install_command: str
    reason: str | None = None


def availability(names: Sequence[str] | None = None) -> list[SourceStatus]:
    """Which registered corpora can be read, with their text counts and install commands."""
    rows = []
    for name in names or list(SOURCES):
        spec = SOURCES[name]
        try:
            n, reason = len(spec.reader()), None
        except MissingCorpusError as e:
            n, reason = None, str(e)
        rows.append(
            SourceStatus(
                name=name,
                description=spec.description,
                available=n is not None,
                n_texts=n,
                install_command=spec.install_command,
                reason=reason,
            )
        )
    return rows
