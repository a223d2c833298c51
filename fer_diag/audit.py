"""The audit: suite → capture → bases → analyzers → report (DESIGN §2).

``Audit(model, hooks=[...], saes={...}, suite=...).run()`` returns a
:class:`~fer_diag.report.schema.Report` and, with ``out_dir``, writes it as JSON,
Markdown and plots. Each finished text set is checkpointed in
``out_dir/.partial``; an interrupted run started again with the same settings
resumes after the last finished set.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from contextlib import nullcontext
from itertools import chain
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, Field
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fer_diag.analyzers.familiarity import FamiliarityAnalyzer
from fer_diag.analyzers.massive import MassiveAnalyzer, massive_dims, scaffold_intervention
from fer_diag.analyzers.sparsity import SparsityAnalyzer
from fer_diag.capture import ActivationBatch, Capture, hook_layer, resolve_hooks
from fer_diag.data.suite import SetKind, Suite, TextSet, Windows, tokenize_windows
from fer_diag.models import LoadedModel, load_model
from fer_diag.report.schema import ModelInfo, Report, RunInfo, TextSetInfo

PARTIAL = ".partial"


class AuditConfig(BaseModel):
    """Settings of an audit; printed in the report."""

    hooks: list[str] | None = Field(
        None, description="TL hook names / wildcards; default: resid_post of every 3rd layer, the last, and SAE hooks"
    )
    seq_len: int = Field(128, ge=4, description="tokens per window, BOS included")
    max_seqs: int = Field(48, ge=2, description="windows per text set")
    min_tokens: int = Field(8, ge=1, description="windows with fewer counted tokens are dropped")
    batch_size: int = Field(8, ge=1)
    seed: int = 0
    device: str = "cpu"
    need_logits: bool = Field(True, description="run the full model for the NLL / entropy / max-prob baselines")
    random_init_control: bool = Field(True, description="also measure a randomly initialised copy of the model")
    control_sets: int = Field(
        3, ge=1, description="text sets in the random-init control: ID, first shifted set, farthest graded level…"
    )
    control_seqs: int = Field(32, ge=1, description="windows per text set in the random-init control")
    default_saes: bool = Field(True, description="use the shipped SAEs of zoo models when no SAE is given")
    ce_windows: int = Field(4, ge=0, description="windows per set for the SAE CE-loss score (spliced forward)")
    n_boot: int = Field(500, ge=0, description="bootstrap resamples for confidence intervals")
    massive_abs: float = Field(100.0, description="massive activation: |h| above this (Sun et al. 2024)")
    massive_ratio: float = Field(1000.0, description="… and at least this × the layer's median |h|")


def default_hooks(n_layers: int, every: int = 3) -> list[str]:
    """``blocks.L.hook_resid_post`` for every ``every``-th layer and the last one."""
    layers = sorted({*range(0, n_layers, every), n_layers - 1})
    return [f"blocks.{layer}.hook_resid_post" for layer in layers]


class Audit:
    """Run the diagnostics of DESIGN §2 on one model.

    Parameters
    ----------
    model: a zoo name (``fer-diag models``), a ``LoadedModel``, or a TransformerLens
        ``HookedTransformer`` / ``TransformerBridge`` (pass ``tokenizer`` if it has none).
    hooks: TL hook names or wildcards; default ``config.hooks``.
    saes: sae-lens SAEs (objects, folders, or ``release/id``), matched to hooks by
        their ``metadata.hook_name``; default: the shipped SAEs of a zoo model.
    suite: a :class:`~fer_diag.data.suite.Suite`; default: the embedded default suite,
        or one built from ``id_texts`` / ``ood_texts`` files.
    """

    def __init__(
        self,
        model: Any = "smollm2-135m",
        hooks: list[str] | None = None,
        saes: Any = None,
        suite: Suite | None = None,
        *,
        id_texts: Iterable[Path] | None = None,
        ood_texts: Iterable[Path] | None = None,
        tokenizer: Any = None,
        config: AuditConfig | None = None,
        bridge: bool = False,
        out_dir: str | Path | None = None,
        resume: bool = True,
        progress: bool = True,
    ) -> None:
        self.config = config or AuditConfig()
        if hooks is not None:
            self.config = self.config.model_copy(update={"hooks": list(hooks)})
        self.model_arg = model
        self.saes_arg = saes
        self.suite = suite
        self.id_texts = list(id_texts or [])
        self.ood_texts = list(ood_texts or [])
        if bool(self.id_texts) != bool(self.ood_texts):
            raise ValueError("pass both --id-text and --ood-text (or neither, for the default suite)")
        self.tokenizer = tokenizer
        self.bridge = bridge
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.resume = resume
        self.progress = progress
        self.seconds: dict[str, float] = {}

    # ------------------------------------------------------------------ set-up
    def _load(self) -> LoadedModel:
        return load_model(self.model_arg, tokenizer=self.tokenizer, bridge=self.bridge, device=self.config.device)

    def _build_suite(self, loaded: LoadedModel) -> Suite:
        from fer_diag.data import suite as suite_mod

        if self.suite is not None:
            return self.suite
        if self.id_texts or self.ood_texts:
            return suite_mod.suite_from_files(self.id_texts, self.ood_texts, loaded.tokenizer)
        return suite_mod.default_suite(loaded.tokenizer, n_per_set=self.config.max_seqs, seed=self.config.seed)

    def _windows(self, loaded: LoadedModel, suite: Suite) -> dict[str, Windows]:
        c = self.config
        return {
            s.name: tokenize_windows(
                s,
                loaded.tokenizer,
                seq_len=c.seq_len,
                max_windows=c.max_seqs,
                min_tokens=c.min_tokens,
                bos_token_id=loaded.bos_token_id,
                pad_token_id=loaded.pad_token_id,
            )
            for s in suite
        }

    def _fingerprint(self, loaded: LoadedModel, hooks: list[str], windows: dict[str, Windows], saes: dict) -> str:
        h = hashlib.sha256()
        h.update(self.config.model_dump_json().encode())
        h.update(json.dumps([loaded.name, hooks, sorted(saes)]).encode())
        for name, w in windows.items():
            h.update(name.encode())
            h.update(w.tokens.numpy().tobytes())
        return h.hexdigest()[:16]

    def _calibrate_massive(self, first: ActivationBatch) -> dict[str, list[int]]:
        """Massive dims per hook from the first in-distribution batch; they are masked in the sparsity metrics.

        Masking needs the dims before the main pass; the full-run MassiveAnalyzer reports every
        dim it finds, and the report lists the calibrated (masked) dims next to them. The batch
        is then analysed like any other (no second forward pass).
        """
        c = self.config
        probe = MassiveAnalyzer(abs_threshold=c.massive_abs, ratio=c.massive_ratio)
        probe.update(first)
        return massive_dims(probe.compute())

    # --------------------------------------------------------------------- run
    def run(self) -> Report:
        c = self.config
        t0 = time.perf_counter()
        torch.manual_seed(c.seed)
        loaded = self._load()
        hooks = resolve_hooks(loaded.model, c.hooks or default_hooks(loaded.n_layers))
        saes = self._match_saes(loaded, hooks)
        if c.hooks is None:  # default hooks: add the hooks the default SAEs read
            hooks = sorted(set(hooks) | set(saes), key=hook_layer)
        suite = self._build_suite(loaded)
        windows = self._windows(loaded, suite)
        self.seconds["setup"] = time.perf_counter() - t0

        t1 = time.perf_counter()  # streaming: every batch through capture and the analyzers, the first one included
        capture = Capture(loaded.model, hooks, batch_size=c.batch_size, need_logits=c.need_logits)
        first = next(capture.batches(windows[suite.reference.name], suite.reference))
        massive_dims = self._calibrate_massive(first)
        analyzers = self._analyzers(hooks, massive_dims, saes)
        fingerprint = self._fingerprint(loaded, hooks, windows, saes)
        done = self._load_partial(fingerprint, analyzers)
        resumed = list(done)
        self._run_sets(capture, suite, windows, analyzers, saes, done, fingerprint, first)
        self.seconds["analysis"] = time.perf_counter() - t1

        massive = analyzers["massive"].compute()
        scaffold = self._scaffold(loaded, massive, first)
        control = {}
        if c.random_init_control:
            t2 = time.perf_counter()
            control = self._control(loaded, hooks, suite, windows, massive_dims)
            self.seconds["control"] = time.perf_counter() - t2

        t3 = time.perf_counter()
        report = self._report(loaded, hooks, suite, windows, analyzers, saes, control, resumed)
        report.massive = {**_jsonable(massive), "scaffold": scaffold}
        self.seconds["statistics"] = time.perf_counter() - t3  # AUROCs, bootstrap CIs, correlations
        self.seconds["total"] = time.perf_counter() - t0  # all but writing the report files
        report.run.seconds = dict(self.seconds)
        if self.out_dir is not None:
            from fer_diag.report.render import write_report

            write_report(report, self.out_dir)
            self._clear_partial()
        return report

    def _match_saes(self, loaded: LoadedModel, hooks: list[str]) -> dict:
        from fer_diag.sae.loading import default_saes, match_saes

        if self.saes_arg is None:
            if not (self.config.default_saes and loaded.spec is not None):
                return {}
            found = default_saes(loaded.name)
            if self.config.hooks is not None:
                found = {h: s for h, s in found.items() if h in hooks}
            # through match_saes: width check and device move, as for user SAEs
            return match_saes(found, loaded.model, list(found)) if found else {}
        return match_saes(self.saes_arg, loaded.model, hooks)

    def _analyzers(self, hooks: list[str], massive_dims: dict[str, list[int]], saes: dict) -> dict[str, Any]:
        analyzers: dict[str, Any] = {
            "sparsity": SparsityAnalyzer(massive_dims=massive_dims, max_seqs_per_set=self.config.max_seqs),
            "massive": MassiveAnalyzer(abs_threshold=self.config.massive_abs, ratio=self.config.massive_ratio),
            "familiarity": FamiliarityAnalyzer(max_seqs_per_set=self.config.max_seqs),
        }
        if saes:
            from fer_diag.analyzers.sae_fidelity import SAEFidelityAnalyzer
            from fer_diag.analyzers.shifted_latents import ShiftedLatentsAnalyzer

            analyzers["sae_fidelity"] = SAEFidelityAnalyzer(saes, massive_dims=massive_dims)
            analyzers["shifted_latents"] = ShiftedLatentsAnalyzer()
        return analyzers

    def _progress(self) -> Progress | nullcontext:
        if not self.progress:
            return nullcontext()
        return Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            transient=False,
        )

    def _run_sets(
        self, capture, suite, windows, analyzers, saes, done: set[str], fingerprint: str, first: ActivationBatch
    ) -> None:
        """Stream every unfinished set through the analyzers; ``first`` is the reference set's first batch."""
        from fer_diag.basis import SAEBasis

        basis = SAEBasis(saes) if saes else None
        todo = [s for s in suite if s.name not in done]
        with self._progress() as bar:
            task = bar.add_task("text sets", total=len(suite)) if bar else None
            if bar:
                bar.update(task, completed=len(done))
            for text_set in todo:
                w = windows[text_set.name]
                sub = bar.add_task(f"  {text_set.name}", total=len(w)) if bar else None
                batches = capture.batches(w, text_set)
                if text_set.name == suite.reference.name:
                    batches = chain([first], capture.batches(w, text_set, start=len(first.seq_index)))
                ce_left = self.config.ce_windows
                for batch in batches:
                    for name in ("sparsity", "massive", "familiarity"):
                        analyzers[name].update(batch)
                    if basis is not None:
                        latents = basis.read(batch)
                        analyzers["sparsity"].update(latents)
                        analyzers["shifted_latents"].update(latents)
                        analyzers["sae_fidelity"].update(batch, latents)
                        if ce_left > 0:
                            ce_left -= self._ce_splice(capture.model, basis, batch, ce_left, analyzers["sae_fidelity"])
                    if bar:
                        bar.advance(sub, len(batch.seq_index))
                done.add(text_set.name)
                self._save_partial(fingerprint, analyzers, done)
                if bar:
                    bar.remove_task(sub)
                    bar.advance(task)

    def _ce_splice(self, model, basis, batch: ActivationBatch, n_max: int, fidelity) -> int:
        """CE-loss sums of the SAEs on the batch's first ``n_max`` windows; returns how many it used."""
        t = time.perf_counter()
        n = min(n_max, len(batch.seq_index))
        clean = None if batch.token_nll is None else batch.token_nll[:n]
        acts = {h: a[:n] for h, a in batch.acts.items()}
        fidelity.update_ce(batch.set_name, basis.ce_sums(model, batch.tokens[:n], batch.mask[:n], clean, acts))
        self.seconds["sae_ce_splice"] = self.seconds.get("sae_ce_splice", 0.0) + time.perf_counter() - t
        return n

    # ------------------------------------------------------------ checkpoints
    def _partial_path(self) -> Path | None:
        return None if self.out_dir is None else self.out_dir / PARTIAL / "state.pt"

    def _save_partial(self, fingerprint: str, analyzers: dict, done: set[str]) -> None:
        path = self._partial_path()
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        states = {name: a.state_dict() for name, a in analyzers.items()}
        torch.save({"fingerprint": fingerprint, "done": sorted(done), "analyzers": states}, tmp)
        tmp.replace(path)  # atomic: a crash mid-write never leaves a broken checkpoint

    def _load_partial(self, fingerprint: str, analyzers: dict) -> set[str]:
        path = self._partial_path()
        if not (self.resume and path is not None and path.exists()):
            return set()
        state = torch.load(path, weights_only=False)
        if state.get("fingerprint") != fingerprint:
            return set()  # different settings: start over (the old checkpoint is overwritten)
        for name, analyzer_state in state["analyzers"].items():
            analyzers[name].load_state_dict(analyzer_state)
        return set(state["done"])

    def _clear_partial(self) -> None:
        path = self._partial_path()
        if path is not None and path.exists():
            path.unlink()
            path.parent.rmdir()

    def _scaffold(self, loaded: LoadedModel, massive, first: ActivationBatch) -> dict | None:
        """Sun et al.'s intervention at the first layer with massive activations, on the first ID batch.

        Sets the massive dims at position 0 to their mean across inputs, then to zero, and
        reports the mean NLL of each run against the clean one.
        """
        hook = massive.first_hook
        if hook is None:
            return None
        dims = [d for d in massive.hooks[hook].dims if d.hits_first_position > 0]
        if not dims:
            return None
        t = time.perf_counter()
        out = scaffold_intervention(
            loaded.model,
            first.tokens,
            hook,
            [d.dim for d in dims],
            [0],
            [d.value_mean for d in dims],
            loss_mask=first.mask,
            clean_nll=first.token_nll,
        )
        self.seconds["scaffold_intervention"] = time.perf_counter() - t
        return {"hook": hook, "dims": [d.dim for d in dims], "positions": [0], "windows": len(first.seq_index), **out}

    # ---------------------------------------------------------------- control
    def _control(self, loaded, hooks, suite, windows, massive_dims) -> dict:
        """The same sparsity measurement on a randomly initialised copy (same architecture and tokenizer)."""
        c = self.config
        source = loaded.name if loaded.spec is not None else loaded.model
        rand = load_model(
            source, tokenizer=loaded.tokenizer, bridge=self.bridge, random_init=True, seed=c.seed, device=c.device
        )
        capture = Capture(rand.model, hooks, batch_size=c.batch_size, need_logits=False)
        sets = _control_sets(suite, c.control_sets)
        sparsity = SparsityAnalyzer(massive_dims={}, max_seqs_per_set=c.control_seqs)
        control_windows = {s.name: windows[s.name].head(c.control_seqs) for s in sets}
        with self._progress() as bar:
            total = sum(len(w) for w in control_windows.values())
            task = bar.add_task("random-init control", total=total) if bar else None
            for s in sets:
                for batch in capture.batches(control_windows[s.name], s):
                    sparsity.update(batch)
                    if bar:
                        bar.advance(task, len(batch.seq_index))
        return {"sets": [s.name for s in sets], "sparsity": sparsity.compute()}

    # ----------------------------------------------------------------- report
    def _report(self, loaded, hooks, suite, windows, analyzers, saes, control, resumed) -> Report:
        c = self.config
        sparsity = analyzers["sparsity"].compute()
        sections: dict[str, Any] = {
            "sparsity": sparsity,
            "familiarity": analyzers["familiarity"].compute(sparsity, n_boot=c.n_boot, seed=c.seed),
        }
        if saes:
            sections["sae_fidelity"] = analyzers["sae_fidelity"].compute()
            sections["shifted_latents"] = analyzers["shifted_latents"].compute(tokenizer=loaded.tokenizer)
        if control:
            sections["control"] = control
        sections = {k: _jsonable(v) for k, v in sections.items()}
        return Report(
            model=ModelInfo(
                name=loaded.name,
                hf_class=type(loaded.model).__name__,
                n_layers=loaded.n_layers,
                d_model=loaded.d_model,
            ),
            hooks=hooks,
            saes={h: _describe_sae(s) for h, s in saes.items()},
            text_sets=[
                TextSetInfo(
                    name=s.name,
                    kind=s.kind.value,
                    n_windows=len(windows[s.name]),
                    n_tokens=int(windows[s.name].mask.sum()),
                    level=s.level,
                    axis=s.axis,
                    source=s.source,
                )
                for s in suite
            ],
            skipped_sets=list(getattr(suite, "skipped", [])),
            run=RunInfo(
                seq_len=c.seq_len, batch_size=c.batch_size, max_seqs=c.max_seqs, device=c.device, resumed_sets=resumed
            ),
            config=c.model_dump(),
            **sections,
        )


def _describe_sae(sae) -> dict[str, Any]:
    cfg = sae.cfg
    return {
        "architecture": cfg.architecture() if callable(getattr(cfg, "architecture", None)) else type(sae).__name__,
        "d_in": int(cfg.d_in),
        "d_sae": int(cfg.d_sae),
        "hook_name": cfg.metadata.hook_name,
    }


def _jsonable(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _control_sets(suite: Suite, n: int) -> list[TextSet]:
    """The reference, then the first shifted set, the farthest level of each graded axis, then the rest in order."""
    shifted = [s for s in suite if s.kind is SetKind.SHIFTED]
    farthest = [suite.axis(a)[-1] for a in suite.axes]
    order = {s.name: s for s in [suite.reference, *shifted[:1], *farthest, *suite]}  # first mention wins
    return list(order.values())[:n]
