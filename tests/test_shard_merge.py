"""One test for every analyzer: two shards processed apart and merged give the one-pass result.

Each text set of a small suite is split by window (even / odd window numbers);
each shard runs through its own pipeline (capture → bases → analyzers, with the
CE splice on the windows numbered below ``ce_windows``), the shard analyzers
are merged, and ``compute()`` is compared with one pass over everything:
integers equal, floats to 1e-6 relative.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import pkgutil

import numpy as np
import pytest
import torch
from pydantic import BaseModel
from sae_factory import make_sae
from test_audit import WORDS

import fer_diag.analyzers as analyzers_pkg
from fer_diag.analyzers.base import Analyzer
from fer_diag.analyzers.baselines import BaselineAnalyzer
from fer_diag.analyzers.massive import MassiveAnalyzer
from fer_diag.analyzers.probes import ConceptSpec, ProbeAnalyzer
from fer_diag.analyzers.sae_fidelity import SAEFidelityAnalyzer
from fer_diag.analyzers.shifted_latents import ShiftedLatentsAnalyzer
from fer_diag.analyzers.sparsity import SparsityAnalyzer
from fer_diag.basis import SAEBasis
from fer_diag.capture import Capture
from fer_diag.data.suite import SetKind, Suite, TextSet, tokenize_windows
from fer_diag.pipeline import Pipeline

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
REL = 1e-6


def _factories(d_model: int, tokenizer) -> dict[type[Analyzer], callable]:
    saes = {HOOKS[1]: make_sae(d_model, HOOKS[1])}
    return {
        SparsityAnalyzer: lambda: SparsityAnalyzer(massive_dims={HOOKS[0]: [1, 5]}, max_seqs_per_set=64),
        # thresholds low enough that the tiny random model has "massive" values to find
        MassiveAnalyzer: lambda: MassiveAnalyzer(abs_threshold=1.5, ratio=3.0),
        BaselineAnalyzer: lambda: BaselineAnalyzer(max_seqs_per_set=64),
        SAEFidelityAnalyzer: lambda: SAEFidelityAnalyzer(saes, massive_dims={HOOKS[1]: [2]}, n_boot=0),
        ShiftedLatentsAnalyzer: lambda: ShiftedLatentsAnalyzer(n_contexts=3, context=2, tokenizer=tokenizer),
        ProbeAnalyzer: lambda: ProbeAnalyzer(
            (ConceptSpec("topic", "sequence", ("low", "high"), twin="topic_twin"),), n_folds=2, ks=(1, 2), n_boot=20
        ),
    }, saes


def _all_analyzer_classes() -> set[type[Analyzer]]:
    for mod in pkgutil.iter_modules(analyzers_pkg.__path__):
        importlib.import_module(f"{analyzers_pkg.__name__}.{mod.name}")

    def walk(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from walk(sub)

    return {c for c in walk(Analyzer) if c.__module__.startswith("fer_diag.")}


def _plain(x):
    """Results as nested lists / dicts / scalars, so that two of them can be compared generically."""
    if isinstance(x, BaseModel):
        return _plain(x.model_dump())
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: _plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray | torch.Tensor):
        return _plain(x.tolist())
    if isinstance(x, np.generic):
        return x.item()
    return x


def max_rel_diff(a, b, path: str = "") -> float:
    """Largest relative float difference between two plain results; raises on any structural or integer mismatch."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (path, sorted(a), sorted(b))
        return max((max_rel_diff(a[k], b[k], f"{path}.{k}") for k in a), default=0.0)
    if isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), (path, a, b)
        return max((max_rel_diff(x, y, f"{path}[{i}]") for i, (x, y) in enumerate(zip(a, b, strict=True))), default=0.0)
    if isinstance(a, float) or isinstance(b, float):
        if math.isnan(a) and math.isnan(b):
            return 0.0
        scale = max(abs(a), abs(b))
        return 0.0 if scale < 1e-12 else abs(a - b) / scale
    assert a == b, (path, a, b)
    return 0.0


@pytest.fixture(scope="module")
def sharded(tiny_hooked):
    words = WORDS
    rng = np.random.default_rng(0)

    def texts(n: int, scramble: bool = False) -> list[str]:
        out = [" ".join(rng.choice(words, 24)) for _ in range(n)]
        return ["".join(rng.choice(list("qxzj#@%!"), len(t))) for t in out] if scramble else out

    suite = Suite(
        [
            TextSet("id", SetKind.IN_DISTRIBUTION, texts=texts(10)),
            TextSet("noise", SetKind.SHIFTED, texts=texts(9, scramble=True)),
            TextSet("g1", SetKind.GRADED, texts=texts(7, scramble=True), level=1.0, axis="shift"),
            # a labelled concept and its twin, for the probes: half the texts scrambled (label 1)
            TextSet("topic", SetKind.SHIFTED, texts=texts(6) + texts(6, scramble=True), labels=[0] * 6 + [1] * 6),
            TextSet("topic_twin", SetKind.SHIFTED, texts=texts(4) + texts(4, scramble=True), labels=[0] * 4 + [1] * 4),
        ]
    )
    tok = tiny_hooked.tokenizer
    windows = {
        s.name: tokenize_windows(s, tok, seq_len=24, bos_token_id=tiny_hooked.bos_token_id, min_tokens=4) for s in suite
    }
    factories, saes = _factories(tiny_hooked.d_model, tok)
    capture = Capture(tiny_hooked.model, HOOKS, batch_size=3, need_logits=True)

    def run(shard: int | None) -> dict[type, Analyzer]:
        built = {cls: make() for cls, make in factories.items()}
        named = {cls.__name__: a for cls, a in built.items()}
        pipe = Pipeline(capture, named, sae_basis=SAEBasis(saes), ce_windows=4, progress=False)
        if shard is None:
            pipe.run(list(suite), windows)
        else:
            parts = {n: w.select(w.index % 2 == shard) for n, w in windows.items()}
            pipe.run(list(suite), parts)
        return built

    one, left, right = run(None), run(0), run(1)
    return {cls: (one[cls], left[cls].merge(right[cls])) for cls in factories}


def test_every_analyzer_is_covered(sharded):
    assert set(sharded) == _all_analyzer_classes()


@pytest.mark.parametrize(
    "cls",
    [SparsityAnalyzer, MassiveAnalyzer, BaselineAnalyzer, SAEFidelityAnalyzer, ShiftedLatentsAnalyzer, ProbeAnalyzer],
    ids=lambda c: c.__name__,
)
def test_merged_shards_equal_one_pass(sharded, cls):
    one, merged = sharded[cls]
    want, got = _plain(one.compute()), _plain(merged.compute())
    assert max_rel_diff(got, want) <= REL
    assert want, "the analyzer saw nothing: the test would be empty"


def test_the_shards_were_not_trivial(sharded):
    massive = sharded[MassiveAnalyzer][0].compute()
    assert any(h.n_hits for h in massive.hooks.values()), "no massive values planted: the massive merge is untested"
    fidelity = sharded[SAEFidelityAnalyzer][0].compute()["hooks"][HOOKS[1]]["sets"]
    assert all(row["ce_windows"] == 4 for row in fidelity.values())  # windows 0..3 of each set, split over shards


def test_checkpoint_round_trip_is_exact(sharded, tmp_path):
    """state_dict → torch.save → load_state_dict gives the same result (what resume relies on)."""
    for one, _ in sharded.values():
        path = tmp_path / f"{type(one).__name__}.pt"
        torch.save(one.state_dict(), path)
        fresh = type(one)(**{**one.params(), **{h: getattr(one, h) for h in one.handles}})
        fresh.load_state_dict(torch.load(path, weights_only=False))
        assert max_rel_diff(_plain(fresh.compute()), _plain(one.compute())) == 0.0
