"""The audit: wires config, model, suite and the pipeline, then assembles the report (DESIGN §2).

``Audit(model, hooks=[...], saes={...}, suite=...).run()`` returns a
:class:`~fer_diag.report.schema.Report` and, with ``out_dir``, writes it as JSON,
Markdown and plots. Each finished text set is checkpointed in
``out_dir/.partial``; an interrupted run started again with the same settings
resumes after the last finished set. The streaming lives in
:mod:`fer_diag.pipeline`, the statistics over results in
:mod:`fer_diag.familiarity`, the model interventions in :mod:`fer_diag.scaffold`
and :mod:`fer_diag.control`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, Field, field_validator

from fer_diag.analyzers.base import Analyzer
from fer_diag.analyzers.baselines import BaselineAnalyzer
from fer_diag.analyzers.massive import MassiveAnalyzer, calibrate_massive_dims
from fer_diag.analyzers.probes import ProbeAnalyzer, ProbeResult
from fer_diag.analyzers.sparsity import SparsityAnalyzer
from fer_diag.capture import Capture, available_hooks, hook_layer, resolve_hooks
from fer_diag.data.concepts import ConceptSuite, build_concepts, concept_windows, concepts_from_jsonl
from fer_diag.data.suite import SetKind, Suite, Windows, tokenize_windows
from fer_diag.errors import ConfigError
from fer_diag.familiarity import familiarity
from fer_diag.fer import ENTANGLEMENT, FRACTURE
from fer_diag.models import LoadedModel, check_seq_len, load_model
from fer_diag.pipeline import Checkpoint, Pipeline, progress_bar
from fer_diag.report.schema import ModelInfo, Report, RunInfo, TextSetInfo
from fer_diag.report.sections import FERRow, FERSection, ProbeSection
from fer_diag.verdict import VerdictConfig, verdict

PARTIAL = ".partial"
ID, SHIFTED = SetKind.IN_DISTRIBUTION, SetKind.SHIFTED
#: folder of the FER co-activation graphs (GraphML), next to report.json
FER_GRAPHS = "fer_graphs"
#: the probes' directions (one tensor per concept, hook and basis), next to report.json
PROBE_DIRECTIONS = "probe_directions.safetensors"


class AuditConfig(BaseModel):
    """Settings of an audit; printed in the report."""

    hooks: list[str] | None = Field(
        None, description="TL hook names / wildcards; default: resid_post of every 3rd layer, the last, and SAE hooks"
    )
    seq_len: int = Field(128, ge=4, description="tokens per window, BOS included")
    max_seqs: int = Field(32, ge=2, description="windows per text set")
    min_tokens: int = Field(8, ge=1, description="windows with fewer counted tokens are dropped")
    batch_size: int = Field(16, ge=1, description="windows per forward pass")
    seed: int = 0
    device: str = "cpu"
    need_logits: bool = Field(True, description="run the full model for the NLL / entropy / max-prob baselines")
    random_init_control: bool = Field(True, description="also measure a randomly initialised copy of the model")
    control_sets: int = Field(
        3, ge=1, description="text sets in the random-init control: ID, first shifted set, farthest graded level…"
    )
    control_seqs: int = Field(16, ge=1, description="windows per text set in the random-init control")
    default_saes: bool = Field(True, description="use the shipped SAEs of zoo models when no SAE is given")
    ce_windows: int = Field(4, ge=0, description="windows per set for the SAE CE-loss score and its CI (spliced)")
    ce_graded: bool = Field(
        False, description="also splice the graded levels (by default the reference and shifted sets; EV covers all)"
    )
    n_boot: int = Field(500, ge=0, description="bootstrap resamples for confidence intervals")
    massive_abs: float = Field(100.0, description="massive activation: |h| above this (Sun et al. 2024)")
    massive_ratio: float = Field(1000.0, description="… and at least this × the layer's median |h|")
    basis_rotations: int = Field(
        2, ge=0, description="random orthogonal bases per raw hook for the verdict's basis-dependence test"
    )
    concepts: list[str] | None = Field(
        None, description="built-in concept sets for the probes (fer_diag.data.concepts.CONCEPTS); None: all; []: none"
    )
    concept_per_class: int = Field(12, ge=2, description="examples per class of each built-in concept set")
    concept_seq_len: int = Field(
        32, ge=4, description="tokens per sequence-level concept window (a token-level one ends at its marked token)"
    )
    probe_folds: int = Field(5, ge=2, description="stratified folds of the probes' cross-validation")
    probe_neurons: bool = Field(
        True, description="also probe the MLP neurons (mlp.hook_post) at each SAE's layer: FER on neurons vs latents"
    )
    fer: bool = Field(True, description="FER scores on SAE latents and privileged neurons (needs the probes)")
    fer_boot: int = Field(
        0, ge=0, description="bootstrap replicates of each FER index CI (each costs a full FER pass; 0: no CI)"
    )
    n_jobs: int | None = Field(
        -1, description="processes for the probe and FER fits (joblib: -1 every core, None or 1 one process)"
    )
    verdict: VerdictConfig = Field(default_factory=VerdictConfig, description="thresholds of the verdict")

    @field_validator("n_jobs")
    @classmethod
    def _n_jobs(cls, value: int | None) -> int | None:
        if value == 0:
            raise ValueError("0 processes run nothing: use 1, a number of processes, or -1 (every core)")
        return value


def suite_windows(
    suite: Suite, loaded: LoadedModel, *, seq_len: int, max_windows: int, min_tokens: int
) -> dict[str, Windows]:
    """Every set of ``suite`` as token windows of ``loaded``'s tokenizer (:func:`tokenize_windows`), by set name."""
    return {
        s.name: tokenize_windows(
            s,
            loaded.tokenizer,
            seq_len=seq_len,
            max_windows=max_windows,
            min_tokens=min_tokens,
            bos_token_id=loaded.bos_token_id,
            pad_token_id=loaded.pad_token_id,
        )
        for s in suite
    }


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
    graded_texts: JSONL files of user graded levels (``--graded``, see
        :func:`~fer_diag.data.suite.graded_from_jsonl`), appended to the suite.
    concept_files: JSONL files of user concepts for the probes (``--concepts``, see
        :func:`~fer_diag.data.concepts.concepts_from_jsonl`), run with the built-in ones.
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
        graded_texts: Iterable[str | Path] | None = None,
        concept_files: Iterable[str | Path] | None = None,
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
        self.graded_texts = [
            Path(p) for p in ([graded_texts] if isinstance(graded_texts, str | Path) else graded_texts or [])
        ]
        self.concept_files = [
            Path(p) for p in ([concept_files] if isinstance(concept_files, str | Path) else concept_files or [])
        ]
        if bool(self.id_texts) != bool(self.ood_texts):
            raise ConfigError("pass both --id-text and --ood-text (or neither, for the default suite)")
        self.tokenizer = tokenizer
        self.bridge = bridge
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.resume = resume
        self.progress = progress
        self.seconds: dict[str, float] = {}
        self._checkpoints: list[Checkpoint | None] = []

    # ------------------------------------------------------------------ set-up
    def _build_suite(self, loaded: LoadedModel) -> Suite:
        from fer_diag.data import suite as suite_mod

        c = self.config
        if self.suite is not None:
            suite = self.suite
        elif self.id_texts:
            suite = suite_mod.suite_from_files(
                self.id_texts, self.ood_texts, loaded.tokenizer, seed=c.seed, seq_len=c.seq_len
            )
        else:
            suite = suite_mod.default_suite(loaded.tokenizer, n_per_set=c.max_seqs, seed=c.seed, seq_len=c.seq_len)
        if self.graded_texts:
            graded = suite_mod.graded_from_jsonl(self.graded_texts, n_per_set=c.max_seqs, seed=c.seed)
            suite = suite_mod.add_graded(suite, graded)
        return suite

    def _windows(self, loaded: LoadedModel, suite: Suite) -> dict[str, Windows]:
        c = self.config
        return suite_windows(suite, loaded, seq_len=c.seq_len, max_windows=c.max_seqs, min_tokens=c.min_tokens)

    def _fingerprint(self, loaded: LoadedModel, hooks: list[str], windows: dict[str, Windows], saes: dict) -> str:
        h = hashlib.sha256()
        h.update(self.config.model_dump_json().encode())
        h.update(json.dumps([loaded.name, hooks, sorted(saes)]).encode())
        # weights too: a retrained SAE or another model under the same name must not resume old statistics
        for module in [loaded.model, *saes.values()]:
            with torch.no_grad():
                h.update(repr([round(float(p.double().sum()), 6) for p in module.parameters()]).encode())
        for name, w in windows.items():
            h.update(name.encode())
            h.update(w.tokens.numpy().tobytes())
        return h.hexdigest()[:16]

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
        # default hooks: a user SAE adds its own hook, as the shipped ones do
        return match_saes(self.saes_arg, loaded.model, hooks, extend=self.config.hooks is None)

    def _analyzers(self, massive_dims: dict[str, list[int]], saes: dict, tokenizer) -> dict[str, Analyzer]:
        c = self.config
        analyzers: dict[str, Analyzer] = {
            "sparsity": SparsityAnalyzer(massive_dims=massive_dims, max_seqs_per_set=c.max_seqs),
            "massive": MassiveAnalyzer(abs_threshold=c.massive_abs, ratio=c.massive_ratio),
            "baselines": BaselineAnalyzer(max_seqs_per_set=c.max_seqs),
        }
        if saes:
            from fer_diag.analyzers.sae_fidelity import SAEFidelityAnalyzer
            from fer_diag.analyzers.shifted_latents import ShiftedLatentsAnalyzer

            analyzers["sae_fidelity"] = SAEFidelityAnalyzer(saes, massive_dims, n_boot=c.n_boot, seed=c.seed)
            analyzers["shifted_latents"] = ShiftedLatentsAnalyzer(tokenizer=tokenizer)
        return analyzers

    def _checkpoint(self, fingerprint: str, name: str = "state.pt") -> Checkpoint | None:
        if self.out_dir is None:
            return None
        return Checkpoint(self.out_dir / PARTIAL / name, fingerprint, resume=self.resume)

    def _concepts(self, loaded: LoadedModel) -> ConceptSuite:
        """The built-in concept sets of the config and the user's concept files (read first: errors come early)."""
        c = self.config
        user = [concepts_from_jsonl(p, seed=c.seed) for p in self.concept_files]
        built = build_concepts(c.concepts, loaded.tokenizer, n_per_class=c.concept_per_class, seed=c.seed)
        return ConceptSuite(built.concepts + user, built.skipped)

    def _probes(
        self, loaded: LoadedModel, hooks: list[str], saes: dict, concepts: ConceptSuite
    ) -> tuple[ProbeResult, ProbeAnalyzer]:
        """Stream the concept sets and their twins through a probe-only pipeline (no logits) and fit the probes."""
        from fer_diag.analyzers.probes import ConceptSpec, ProbeAnalyzer
        from fer_diag.basis import SAEBasis

        c = self.config
        if c.probe_neurons:  # privileged neurons beside each SAE: the FER comparison neurons vs latents
            known = set(available_hooks(loaded.model))
            neurons = {f"blocks.{hook_layer(h)}.mlp.hook_post" for h in saes if hook_layer(h) is not None} & known
            hooks = sorted({*hooks, *neurons}, key=lambda h: (hook_layer(h) or -1, h))
        roles = [(s, kind) for cs in concepts for s, kind in ((cs, ID), (cs.twin, SHIFTED)) if s is not None]
        sets = [s for s, _ in roles]
        windows = {  # token level: the window ends at the marked token, so only seq_len bounds it
            s.name: concept_windows(
                s,
                loaded.tokenizer,
                c.concept_seq_len if s.level == "sequence" else c.seq_len,
                bos_token_id=loaded.bos_token_id,
                pad_token_id=loaded.pad_token_id,
            )
            for s in sets
        }
        analyzer = ProbeAnalyzer(
            tuple(ConceptSpec.of(cs) for cs in concepts),
            n_folds=c.probe_folds,
            sparse_hooks=tuple(saes) or None,
            n_boot=min(c.n_boot, 200),
            seed=c.seed,
            n_jobs=c.n_jobs,
        )
        pipeline = Pipeline(
            Capture(loaded.model, hooks, need_logits=False, token_budget=c.batch_size * c.seq_len),
            {"probes": analyzer},
            sae_basis=SAEBasis(saes) if saes else None,
            checkpoint=self._checkpoint(self._fingerprint(loaded, hooks, windows, saes), "probes.pt"),
            progress=self.progress,
        )
        t = time.perf_counter()
        pipeline.run([s.text_set(kind) for s, kind in roles], windows)
        self.seconds["probe_stream"] = time.perf_counter() - t
        self._checkpoints.append(pipeline.checkpoint)
        t = time.perf_counter()
        result = analyzer.compute()
        self.seconds["probe_fits"] = time.perf_counter() - t
        result.section.skipped = list(concepts.skipped)
        return result, analyzer

    def _fer(self, analyzer: ProbeAnalyzer, saes: dict, probes: ProbeSection) -> tuple[FERSection, dict]:
        """FER scores at every hook × basis the probes saw where the basis has features (SAE latents, MLP neurons).

        Returns the section and the co-activation graphs (``hook/basis/level → networkx.Graph``).
        """
        import networkx as nx
        from joblib import Parallel, delayed

        from fer_diag.basis import basis_privilege
        from fer_diag.fer import FERConfig, fer_scores
        from fer_diag.verdict import decodable

        c = self.config
        cfg = FERConfig(n_boot=c.fer_boot, n_folds=c.probe_folds, seed=c.seed)
        places = sorted({(k[1], k[2]) for k in analyzer.samples}, key=lambda p: (hook_layer(p[0]) or -1, p))
        probe_rows = {(x.concept, x.hook, x.basis): x for x in probes.rows}
        rows, not_scored, graphs = [], [], {}
        scored = []
        for hook, basis in places:
            if basis == "raw" and basis_privilege(hook) is None:
                not_scored.append(
                    f"{hook}/raw: its coordinates are not features (a function-preserving rotation changes "
                    "them); FER is scored on SAE latents and privileged MLP neurons"
                )
            else:
                scored.append((hook, basis))
        jobs = (  # one process per place (joblib), results in submission order
            delayed(fer_scores)(
                analyzer.activations(hook, basis),
                None if basis == "raw" else saes[hook].W_dec.detach().double().cpu().numpy(),
                cfg,
            )
            for hook, basis in scored
        )
        with progress_bar(self.progress) as bar:
            task = bar.add_task("FER scores", total=len(scored)) if bar else None
            for (hook, basis), scores in zip(
                scored, Parallel(n_jobs=c.n_jobs, return_as="generator")(jobs), strict=True
            ):
                if bar:
                    bar.advance(task)
                for sc in scores:  # one co-activation graph per level (token, sequence) of the concepts
                    key = f"{hook}/{basis}/{sc.level}"
                    if key not in graphs:
                        graphs[key] = nx.node_link_graph(sc.graph, edges="edges")
                    probe = probe_rows.get((sc.concept, hook, basis))
                    comps = {k: getattr(sc, k) for k in (*FRACTURE, *ENTANGLEMENT)}
                    rows.append(
                        FERRow(
                            hook=hook,
                            basis=basis,
                            concept=sc.concept,
                            level=sc.level,
                            **{k: comp.value for k, comp in comps.items()},
                            reasons={k: comp.reason for k, comp in comps.items() if comp.value is None and comp.reason},
                            index=sc.index,
                            index_ci=sc.index_ci,
                            index_bias=sc.index_bias,
                            components_used=sc.components_used,
                            n_selective=len(sc.selective_latents),
                            decodable=None if probe is None else decodable(probe, c.verdict),
                        )
                    )
        section = FERSection(
            config=cfg.model_dump(),
            rows=rows,
            not_scored=not_scored,
            graphs={key: f"{FER_GRAPHS}/{key.replace('/', '.')}.graphml" for key in graphs},
        )
        return section, graphs

    # --------------------------------------------------------------------- run
    def run(self) -> Report:
        from fer_diag.basis import RotatedBasis, SAEBasis
        from fer_diag.scaffold import scaffold_report

        c = self.config
        t0 = time.perf_counter()
        torch.manual_seed(c.seed)
        loaded = load_model(self.model_arg, tokenizer=self.tokenizer, bridge=self.bridge, device=c.device)
        check_seq_len(loaded, c.seq_len)  # before any forward pass: a window longer than the context fails
        hooks = resolve_hooks(loaded.model, c.hooks or default_hooks(loaded.n_layers))
        saes = self._match_saes(loaded, hooks)
        if c.hooks is None:  # default hooks: add the hooks the default SAEs read
            hooks = sorted(set(hooks) | set(saes), key=hook_layer)
        suite = self._build_suite(loaded)
        windows = self._windows(loaded, suite)
        concepts = self._concepts(loaded)
        checkpoint = self._checkpoint(self._fingerprint(loaded, hooks, windows, saes))
        self.seconds["setup"] = time.perf_counter() - t0

        t1 = time.perf_counter()  # streaming: every batch through capture and the analyzers, the first one included
        capture = Capture(loaded.model, hooks, batch_size=c.batch_size, need_logits=c.need_logits)
        first = next(capture.batches(windows[suite.reference.name], suite.reference))
        massive_dims = calibrate_massive_dims(first, c.massive_abs, c.massive_ratio)
        analyzers = self._analyzers(massive_dims, saes, loaded.tokenizer)
        pipeline = Pipeline(
            capture,
            analyzers,
            sae_basis=SAEBasis(saes) if saes else None,
            rotations=[
                RotatedBasis(c.seed + i, d_head=getattr(loaded.model.cfg, "d_head", None))
                for i in range(c.basis_rotations)
            ],
            ce_windows=c.ce_windows,
            ce_sets=None if c.ce_graded else {t.name for t in suite if t.kind is not SetKind.GRADED},
            checkpoint=checkpoint,
            progress=self.progress,
            seconds=self.seconds,
        )
        resumed = pipeline.run(list(suite), windows, first)
        self._checkpoints.append(pipeline.checkpoint)
        self.seconds["analysis"] = time.perf_counter() - t1
        probes, fer, graphs = None, None, {}
        if len(concepts):
            t = time.perf_counter()
            probes, probe_analyzer = self._probes(loaded, hooks, saes, concepts)
            self.seconds["probes"] = time.perf_counter() - t
            if c.fer:
                t = time.perf_counter()
                fer, graphs = self._fer(probe_analyzer, saes, probes.section)
                self.seconds["fer"] = time.perf_counter() - t

        massive = analyzers["massive"].compute()
        t = time.perf_counter()
        scaffold = scaffold_report(loaded.model, massive, first)
        if scaffold is not None:
            self.seconds["scaffold_intervention"] = time.perf_counter() - t
        control = {}
        if c.random_init_control:
            from fer_diag.control import random_init_control

            t2 = time.perf_counter()
            control = random_init_control(
                loaded,
                hooks,
                suite,
                windows,
                n_sets=c.control_sets,
                n_seqs=c.control_seqs,
                batch_size=c.batch_size,
                seed=c.seed,
                device=c.device,
                bridge=self.bridge,
                progress=self.progress,
            )
            self.seconds["control"] = time.perf_counter() - t2

        t3 = time.perf_counter()
        sparsity = analyzers["sparsity"].compute()
        baselines = analyzers["baselines"].compute()
        clusters = {name: w.cluster.numpy() for name, w in windows.items()}
        fam = familiarity(sparsity, baselines, clusters=clusters, n_boot=c.n_boot, seed=c.seed)
        sections: dict[str, Any] = {  # the rotated bases are the verdict's instrument: their numbers are in its flags
            "sparsity": _without_rotations(_jsonable(sparsity)),
            "familiarity": replace(
                fam,
                detection=[r for r in fam.detection if not _rotated(r.basis)],
                graded=[r for r in fam.graded if not _rotated(r.basis)],
            ),
            "massive": {**_jsonable(massive), "scaffold": scaffold},
        }
        for name in ("sae_fidelity", "shifted_latents"):
            if name in analyzers:
                sections[name] = analyzers[name].compute()
        if control:
            sections["control"] = control
        if probes is not None:
            sections["probes"] = probes.section
        if fer is not None:
            sections["fer"] = fer
        self.seconds["statistics"] = time.perf_counter() - t3  # AUROCs, CIs, correlations
        t4 = time.perf_counter()
        sections["verdict"] = verdict(
            fam,
            sparsity,
            baselines,
            sections.get("sae_fidelity"),
            control["sparsity"] if control else None,
            c.verdict,
            probes.section if probes is not None else None,
            fer,
            n_jobs=c.n_jobs,
        )
        self.seconds["verdict"] = time.perf_counter() - t4
        report = self._report(loaded, hooks, suite, windows, saes, resumed, sections)
        self.seconds["total"] = time.perf_counter() - t0  # all but writing the report files
        report.run.seconds = dict(self.seconds)
        if self.out_dir is not None:
            from fer_diag.report.render import write_report

            if probes is not None:
                probes.save(self.out_dir / PROBE_DIRECTIONS)
            _write_graphs(graphs, fer, self.out_dir)  # before the report: its plots draw the worst graph
            write_report(report, self.out_dir)
            for checkpoint in self._checkpoints:
                if checkpoint is not None:
                    checkpoint.clear()
        return report

    # ----------------------------------------------------------------- report
    def _report(self, loaded, hooks, suite, windows, saes, resumed, sections: dict[str, Any]) -> Report:
        c = self.config
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
            **{k: _jsonable(v) for k, v in sections.items()},
        )


def _write_graphs(graphs: dict, fer: FERSection | None, out_dir: Path) -> None:
    """The FER co-activation graphs as GraphML, at the paths the FER section names."""
    import networkx as nx

    for key, graph in graphs.items():
        path = out_dir / fer.graphs[key]
        path.parent.mkdir(parents=True, exist_ok=True)
        nx.write_graphml(graph, path)


def _rotated(basis: str | None) -> bool:
    return bool(basis) and basis.startswith("raw@")


def _without_rotations(sparsity: dict[str, Any]) -> dict[str, Any]:
    """The sparsity section without the rotated bases (``raw@rot*``)."""
    out = dict(sparsity)
    for part in ("profiles", "feature_density"):
        out[part] = {basis: v for basis, v in sparsity[part].items() if not _rotated(basis)}
    return out


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
