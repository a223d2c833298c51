"""The random-init control: the same sparsity measurement on a randomly initialised copy of the model.

A sparsity gap between text sets that a random network shows too is a
property of the tokens and the architecture, not of what the model learned
(the verdict's "not learned" flag reads it). Same architecture, tokenizer,
hooks and windows; no massive-dim masking (a random model has none to learn).
"""

from __future__ import annotations

from fer_diag.analyzers.sparsity import SparsityAnalyzer
from fer_diag.capture import Capture
from fer_diag.data.suite import SetKind, Suite, TextSet, Windows
from fer_diag.models import LoadedModel, load_model
from fer_diag.pipeline import Pipeline


def control_sets(suite: Suite, n: int) -> list[TextSet]:
    """The reference, then the first shifted set, the farthest level of each graded axis, then the rest in order."""
    shifted = [s for s in suite if s.kind is SetKind.SHIFTED]
    farthest = [suite.axis(a)[-1] for a in suite.axes]
    order = {s.name: s for s in [suite.reference, *shifted[:1], *farthest, *suite]}  # first mention wins
    return list(order.values())[:n]


def random_init_control(
    loaded: LoadedModel,
    hooks: list[str],
    suite: Suite,
    windows: dict[str, Windows],
    *,
    n_sets: int = 3,
    n_seqs: int = 32,
    batch_size: int = 8,
    seed: int = 0,
    device: str = "cpu",
    bridge: bool = False,
    progress: bool = True,
) -> dict:
    """Sparsity of a random-init copy on ``n_sets`` control sets × ``n_seqs`` windows: ``{"sets", "sparsity"}``."""
    source = loaded.name if loaded.spec is not None else loaded.model
    rand = load_model(source, tokenizer=loaded.tokenizer, bridge=bridge, random_init=True, seed=seed, device=device)
    sets = control_sets(suite, n_sets)
    sparsity = SparsityAnalyzer(max_seqs_per_set=n_seqs)
    pipeline = Pipeline(Capture(rand.model, hooks, batch_size=batch_size), {"sparsity": sparsity}, progress=progress)
    pipeline.run(sets, {s.name: windows[s.name].head(n_seqs) for s in sets})
    return {"sets": [s.name for s in sets], "sparsity": sparsity.compute()}
