"""`fer-diag bench`: the audit's cost as a ratio of the model's own forward pass, measured in one run.

The floor is the model's forward pass over exactly the windows the audit reads
(the full forward, since the audit needs logits for the perplexity baselines).
The audit's capture does not form the logits of a HookedTransformer (it reduces
them to the per-token readouts one vocabulary chunk at a time,
:func:`fer_diag.capture.unembed_readouts`), which makes it cheaper than the plain
forward pass; ``capture_s`` times that capture alone, so that ``ratio_analyzers``
(audit over capture) shows what the analyzers themselves add.
Floor and audit are timed alternately (a floor before every audit run: ``2 ×
repeats`` floors), and the fastest of each is kept, so load from other processes
on a shared machine hits both alike; ``floor_spread`` (slowest / fastest floor)
says how loaded the machine was.
The streaming ratio is reported twice: the pipeline itself (capture, bases and
every analyzer) without the verdict's random-basis sparsity, and with it (the
extra sparsity of ``basis_rotations`` rotated copies of each raw hook, which the
basis-dependence test needs). Reported separately: the SAE CE-loss splice (extra
forward passes by design) and the random-init control (a second model). Peak memory is the peak RSS of a
fresh process auditing the same set at two corpus sizes: streaming means it
should not grow with the number of windows.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import time
from typing import Any

import torch
from pydantic import BaseModel

from fer_diag.audit import Audit, AuditConfig
from fer_diag.capture import Capture
from fer_diag.data.suite import Suite, Windows, default_suite, tokenize_windows
from fer_diag.models import LoadedModel, load_model
from fer_diag.report.schema import Report


class BenchResult(BaseModel):
    model: str
    hooks: list[str]
    n_saes: int
    windows: int
    tokens: int
    forward_s: float
    #: slowest / fastest floor of the run: 1.0 on a quiet machine; well above it, the ratios are noisy too
    floor_spread: float
    #: capture + every analyzer over every window (the part that grows with the corpus); target ≤ 1.15 × forward
    audit_stream_s: float
    ratio_stream: float
    #: the capture alone (forward pass, cached hooks, per-token readouts; no analyzer), and ``capture_s / forward_s``
    capture_s: float
    ratio_capture: float
    #: ``audit_stream_s / capture_s``: the share of the streaming cost that the bases and analyzers add
    ratio_analyzers: float
    #: the same with the verdict's rotated bases (``basis_rotations`` extra sparsity passes per raw hook)
    basis_rotations: int
    audit_stream_rotations_s: float
    ratio_stream_rotations: float
    #: the whole audit without CE splice and control, at this corpus size (fixed costs do not shrink with it)
    audit_total_s: float
    ratio_total: float
    #: per-run work that does not grow with the corpus: setup, scaffold intervention, statistics
    fixed_s: dict[str, float]
    #: the SAE CE-loss splice on ``ce_windows`` windows (extra forward passes by design)
    ce_splice_s: float
    peak_rss_mb: dict[int, float]
    torch_threads: int


def _reference_suite(loaded: LoadedModel, n: int, seed: int) -> Suite:
    suite = default_suite(loaded.tokenizer, n_per_set=n, seed=seed, on_missing="skip")
    return Suite([suite.reference])


@torch.inference_mode()
def _forward_floor(loaded: LoadedModel, tokens: torch.Tensor, batch_size: int) -> float:
    t = time.perf_counter()
    for lo in range(0, len(tokens), batch_size):
        loaded.model(tokens[lo : lo + batch_size])
    return time.perf_counter() - t


def _capture(loaded: LoadedModel, hooks: list[str], windows: Windows, suite: Suite, batch_size: int) -> float:
    """Seconds to capture every batch as the audit does (logits reduced to readouts), with no analyzer."""
    t = time.perf_counter()
    for _ in Capture(loaded.model, hooks, batch_size=batch_size, need_logits=True).batches(windows, suite.reference):
        pass
    return time.perf_counter() - t


def _audit(loaded: LoadedModel, suite: Suite, config: AuditConfig, saes: Any) -> tuple[float, Audit, Report]:
    t = time.perf_counter()
    runner = Audit(loaded, suite=suite, saes=saes, config=config, progress=False)
    report = runner.run()
    return time.perf_counter() - t, runner, report


def _peak_rss_child(model: str, n: int, config: dict, saes: Any, seed: int, queue) -> None:
    loaded = load_model(model, progress=False)
    suite = _reference_suite(loaded, n, seed)
    _audit(loaded, suite, AuditConfig(**{**config, "max_seqs": n}), saes)
    queue.put(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def peak_rss(model: str, n: int, config: AuditConfig, saes: Any = None, seed: int = 0) -> float:
    """Peak RSS (MiB) of a fresh process that loads ``model`` and audits ``n`` windows."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_peak_rss_child, args=(model, n, config.model_dump(), saes, seed, queue))
    proc.start()
    value = queue.get()
    proc.join()
    return float(value)


def run_bench(
    model: str = "smollm2-135m",
    hooks: list[str] | None = None,
    n_seqs: int = 32,
    memory_sizes: tuple[int, int] = (16, 64),
    repeats: int = 3,
    batch_size: int = 8,
    seq_len: int = 128,
    use_saes: bool = True,
    seed: int = 0,
) -> BenchResult:
    loaded = load_model(model, progress=False)
    config = AuditConfig(
        hooks=hooks,
        max_seqs=n_seqs,
        batch_size=batch_size,
        seq_len=seq_len,
        random_init_control=False,
        default_saes=use_saes,
        seed=seed,
        concepts=[],  # the bench measures the streaming pipeline; the probes' stage is timed in report.run.seconds
    )
    suite = _reference_suite(loaded, n_seqs, seed)
    windows = tokenize_windows(
        suite.reference,
        loaded.tokenizer,
        seq_len=seq_len,
        max_windows=n_seqs,
        bos_token_id=loaded.bos_token_id,
        pad_token_id=loaded.pad_token_id,
    )
    saes = None if use_saes else {}
    with_rot = config.model_copy(update={"ce_windows": 0})
    no_ce = with_rot.model_copy(update={"basis_rotations": 0})
    _forward_floor(loaded, windows.tokens[:batch_size], batch_size)  # warm-up
    floors, runs, rot_runs, captures = [], [], [], []
    for _ in range(repeats):
        floors.append(_forward_floor(loaded, windows.tokens, batch_size))
        runs.append(_audit(loaded, suite, no_ce, saes))
        captures.append(_capture(loaded, runs[-1][2].hooks, windows, suite, batch_size))
        floors.append(_forward_floor(loaded, windows.tokens, batch_size))
        rot_runs.append(_audit(loaded, suite, with_rot, saes))
    total, fastest, report = min(runs, key=lambda run: run[0])
    stream = min(run[1].seconds["analysis"] for run in runs)
    stream_rot = min(run[1].seconds["analysis"] for run in rot_runs)
    _, with_ce, _ = _audit(loaded, suite, config, saes)
    floor, capture = min(floors), min(captures)
    return BenchResult(
        model=loaded.name,
        hooks=report.hooks,
        n_saes=len(report.saes),
        windows=len(windows),
        tokens=int(windows.tokens.numel()),
        forward_s=floor,
        floor_spread=max(floors) / floor,
        audit_stream_s=stream,
        ratio_stream=stream / floor,
        capture_s=capture,
        ratio_capture=capture / floor,
        ratio_analyzers=stream / capture,
        basis_rotations=config.basis_rotations,
        audit_stream_rotations_s=stream_rot,
        ratio_stream_rotations=stream_rot / floor,
        audit_total_s=total,
        ratio_total=total / floor,
        fixed_s={k: fastest.seconds.get(k, 0.0) for k in ("setup", "scaffold_intervention", "statistics", "verdict")},
        ce_splice_s=with_ce.seconds.get("sae_ce_splice", 0.0),
        peak_rss_mb={n: peak_rss(model, n, no_ce, saes, seed) for n in memory_sizes},
        torch_threads=torch.get_num_threads(),
    )
