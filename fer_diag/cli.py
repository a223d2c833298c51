"""`fer-diag` command line (typer + rich).

Exit codes: 0 success; 1 an unexpected failure, i.e. a bug (traceback shown); 2 bad
input, any :class:`~fer_diag.errors.FerDiagError` (unknown model / hook, missing or
non-text file, unwritable ``--out``, option out of range, missing corpus, empty text
set, SAE mismatch…: the message names the fix); 130 interrupted (finished text sets
are kept; re-run the same command to resume). What can be checked without the model
(files, output folder, option ranges, model installed, window length) is checked
before the model loads.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fer_diag.errors import ConfigError, FerDiagError, InputFileError
from fer_diag.sae.recipe import SAETrainingConfig

app = typer.Typer(
    name="fer-diag",
    help="Is a sparsity-as-familiarity signal trustworthy in this model? Audits over TransformerLens hooks.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
console = Console(stderr=True)


SAE_DEFAULTS = SAETrainingConfig()  # train-sae defaults = the shipped recipe

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def _user_errors() -> tuple[type[BaseException], ...]:
    from fer_diag.errors import USER_ERRORS

    return USER_ERRORS


def _fail(exc: BaseException) -> None:
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(str(exc))}")  # messages hold brackets: [batch, pos, d], hooks=[...]
    raise typer.Exit(EXIT_BAD_INPUT)


#: CLI option of each config field whose name does not map to ``--field-name``.
_OPTION_OF_FIELD = {"random_init_control": "--control/--no-control", "default_saes": "--default-saes/--no-default-saes"}


def _option(field: str) -> str:
    return _OPTION_OF_FIELD.get(field, "--" + field.replace("_", "-"))


def _build_config(cls, **values):
    """``cls(**values)`` (a pydantic model); a validation error becomes a :class:`ConfigError` naming the option."""
    from pydantic import ValidationError

    try:
        return cls(**values)
    except ValidationError as e:
        bounds = {"ge": "{} or more", "gt": "more than {}", "le": "{} or less", "lt": "less than {}"}
        problems = []
        for err in e.errors():
            option = _option(str(err["loc"][0])) if err["loc"] else cls.__name__
            ctx = err.get("ctx") or {}
            bound = next((bounds[k].format(ctx[k]) for k in bounds if k in ctx), None)
            fix = f"pass {option} {bound}" if bound else err["msg"]
            problems.append(f"{option} {err.get('input')} is out of range: {fix}" if bound else f"{option}: {fix}")
        raise ConfigError("; ".join(problems)) from None


def _concept_names(value: str) -> list[str] | None:
    """``--builtin-concepts``: None for all, [] for none, else the named sets (unknown names refused)."""
    from fer_diag.data.concepts import CONCEPTS

    if value.strip() == "all":
        return None
    names = [] if value.strip() == "none" else [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONCEPTS]
    if unknown:
        raise ConfigError(f"--builtin-concepts: unknown {unknown}; choose among {', '.join(CONCEPTS)}, all or none")
    return names


def _check_text_files(paths: list[Path] | None) -> None:
    from fer_diag.data.sources import check_text_file

    for p in paths or []:
        check_text_file(p)


def _check_out_dir(out: Path) -> None:
    """Create ``out`` if needed and check that a file can be written there (before any long step)."""
    import tempfile

    if out.exists() and not out.is_dir():
        raise InputFileError(f"--out {out} is a file, not a folder; pass a folder path (created if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise InputFileError(
            f"cannot write to --out {out} ({e.strerror or e}); pass a folder you can write to"
        ) from None


@app.command()
def audit(
    model: Annotated[str, typer.Option(help="zoo name (see `fer-diag models`)")] = "smollm2-135m",
    hooks: Annotated[
        list[str] | None, typer.Option("--hooks", "-H", help="TL hook names or wildcards; repeatable")
    ] = None,
    sae: Annotated[
        list[str] | None, typer.Option("--sae", help="sae-lens SAE folder (or release/id when a hub is reachable)")
    ] = None,
    default_saes: Annotated[
        bool, typer.Option("--default-saes/--no-default-saes", help="use the shipped default SAEs of zoo models")
    ] = True,
    id_text: Annotated[list[Path] | None, typer.Option(help="in-distribution text file(s): .txt or .jsonl")] = None,
    ood_text: Annotated[list[Path] | None, typer.Option(help="shifted text file(s): .txt or .jsonl")] = None,
    graded: Annotated[
        list[Path] | None,
        typer.Option(
            "--graded",
            help='your graded levels, JSONL: {"text": …, "level": <number>} per line, optional "axis" (default: '
            'the file name) and "source" (id of the text a line was made from); added to the suite; repeatable',
        ),
    ] = None,
    concepts: Annotated[
        list[Path] | None,
        typer.Option(
            "--concepts",
            help='your concept for the probes, JSONL: {"text": …, "label": …} per line (sequence level), or with '
            '"span": [start, end] character offsets (token level; optional "span_text" is checked); repeatable',
        ),
    ] = None,
    builtin_concepts: Annotated[
        str,
        typer.Option(
            help="built-in concept sets for the probes, comma-separated (language,source_kind,first_letter,"
            "token_kinds), 'all' or 'none'"
        ),
    ] = "all",
    concept_per_class: Annotated[int, typer.Option(help="examples per class of each built-in concept set")] = 12,
    fer_boot: Annotated[
        int, typer.Option(help="bootstrap replicates of each FER index CI (each costs one more FER pass; 0: no CI)")
    ] = 0,
    n_jobs: Annotated[
        int, typer.Option(help="processes for the probe and FER fits (joblib: -1 every core, 1 one process)")
    ] = -1,
    out: Annotated[Path, typer.Option("--out", "-o", help="report folder")] = Path("fer-diag-report"),
    max_seqs: Annotated[int, typer.Option(help="windows per text set")] = 32,
    seq_len: Annotated[int, typer.Option(help="tokens per window (BOS included)")] = 128,
    min_tokens: Annotated[int, typer.Option(help="windows with fewer counted tokens are dropped")] = 8,
    batch_size: Annotated[int, typer.Option(help="windows per forward pass")] = 16,
    bridge: Annotated[bool, typer.Option(help="wrap the model as a TransformerBridge")] = False,
    control: Annotated[bool, typer.Option(help="also audit a randomly initialised copy (learned vs intrinsic)")] = True,
    ce_windows: Annotated[
        int, typer.Option(help="windows per reference / shifted set for the SAE CE-loss score and its CI (0: skip)")
    ] = 4,
    resume: Annotated[bool, typer.Option(help="reuse text sets finished by an interrupted run in --out")] = True,
    device: Annotated[str, typer.Option()] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="print the JSON report to stdout")] = False,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Audit a model: sparsity per layer and text set, massive activations, familiarity AUROCs, SAE fidelity,
    concept probes and the verdict."""
    from fer_diag.audit import Audit, AuditConfig

    try:  # everything that can be checked without the model, before it loads
        config = _build_config(
            AuditConfig,
            hooks=hooks or None,
            max_seqs=max_seqs,
            seq_len=seq_len,
            min_tokens=min_tokens,
            batch_size=batch_size,
            random_init_control=control,
            ce_windows=ce_windows,
            default_saes=default_saes,
            seed=seed,
            device=device,
            concepts=_concept_names(builtin_concepts),
            concept_per_class=concept_per_class,
            fer_boot=fer_boot,
            n_jobs=n_jobs,
        )
        if bool(id_text) != bool(ood_text):
            raise ConfigError("pass both --id-text and --ood-text (or neither, for the default suite)")
        _check_text_files(id_text)
        _check_text_files(ood_text)
        if graded:
            from fer_diag.data.suite import check_graded_files

            check_graded_files(graded)  # format, levels, axes: the whole file, not just its first bytes
        if concepts:
            from fer_diag.data.concepts import concepts_from_jsonl

            for path in concepts:
                concepts_from_jsonl(path)  # the whole file: fields, spans, classes
        from fer_diag.models import check_available, check_seq_len

        check_seq_len(model, seq_len, bridge=bridge)  # also refuses an unknown model name
        from fer_diag.capture import check_hook_kinds

        check_hook_kinds(hooks or [])
        check_available(model)
        if sae:
            from fer_diag.sae.loading import check_sae_spec

            for spec in sae:
                check_sae_spec(spec)
        _check_out_dir(out)
    except FerDiagError as exc:
        _fail(exc)
    try:
        runner = Audit(
            model,
            saes=list(sae) if sae else None,
            id_texts=id_text,
            ood_texts=ood_text,
            graded_texts=graded,
            concept_files=concepts,
            config=config,
            bridge=bridge,
            out_dir=out,
            resume=resume,
        )
        report = runner.run()
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted[/]: finished text sets are kept in {out}; re-run to resume.")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except _user_errors() as exc:
        _fail(exc)
    from fer_diag.report.terminal import print_summary

    if as_json:
        sys.stdout.write(report.model_dump_json(indent=2) + "\n")
    else:
        print_summary(report, Console())
        console.print(f"report written to [bold]{out}[/] (report.json, report.md, plots/)")


@app.command()
def compare(
    model_a: Annotated[str, typer.Argument(help="model A: zoo name (see `fer-diag models`)")] = "smollm2-135m",
    model_b: Annotated[
        str, typer.Argument(help="model B: rotated:SEED (rotation of A), random-init[:SEED], or a zoo name")
    ] = "rotated:0",
    hooks: Annotated[
        list[str] | None, typer.Option("--hooks", "-H", help="similarity hooks of A; default every resid_post")
    ] = None,
    hooks_b: Annotated[list[str] | None, typer.Option("--hooks-b", help="similarity hooks of B; default A's")] = None,
    sae: Annotated[list[str] | None, typer.Option("--sae", help="sae-lens SAE folder for A's audit")] = None,
    sae_b: Annotated[list[str] | None, typer.Option("--sae-b", help="sae-lens SAE folder for B's audit")] = None,
    default_saes: Annotated[
        bool, typer.Option("--default-saes/--no-default-saes", help="use the shipped default SAEs of zoo models")
    ] = True,
    out: Annotated[Path, typer.Option("--out", "-o", help="comparison folder")] = Path("fer-diag-compare"),
    max_seqs: Annotated[int, typer.Option(help="windows per text set for behaviour and similarity")] = 6,
    audit_max_seqs: Annotated[int, typer.Option(help="windows per text set in each model's audit")] = 8,
    seq_len: Annotated[int, typer.Option(help="tokens per window (BOS included)")] = 64,
    batch_size: Annotated[int, typer.Option(help="windows per forward pass")] = 8,
    token_samples: Annotated[int, typer.Option(help="token positions sampled for token-level similarity")] = 1024,
    token_level: Annotated[
        bool | None,
        typer.Option("--token-level/--no-token-level", help="token-level measures (default: on for one tokenizer)"),
    ] = None,
    knn_k: Annotated[int, typer.Option(help="neighbours of the mutual k-NN alignment")] = 10,
    audit: Annotated[bool, typer.Option(help="audit both models and put the diagnostics side by side")] = True,
    device: Annotated[str, typer.Option()] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="print the JSON comparison to stdout")] = False,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Compare two models on one suite: same behaviour? different inside? (CKA, mutual k-NN, audits side by side)."""
    from fer_diag.audit import AuditConfig
    from fer_diag.compare import CompareConfig, check_pair_spec, compare_audit_config
    from fer_diag.compare import compare as run_compare

    try:  # everything that can be checked without the models, before they load
        audit_config = None
        if audit:
            updates = {"max_seqs": audit_max_seqs, "seq_len": seq_len, "default_saes": default_saes}
            values = compare_audit_config().model_dump() | updates | {"seed": seed, "device": device}
            audit_config = _build_config(AuditConfig, **values)
        config = _build_config(
            CompareConfig,
            hooks=hooks or None,
            hooks_b=hooks_b or None,
            max_seqs=max_seqs,
            seq_len=seq_len,
            batch_size=batch_size,
            token_samples=token_samples,
            token_level=token_level,
            knn_k=knn_k,
            seed=seed,
            device=device,
            audit=audit_config,
        )
        from fer_diag.capture import check_hook_kinds
        from fer_diag.models import check_available, check_seq_len

        check_seq_len(model_a, seq_len)
        check_available(model_a)
        check_pair_spec(model_b)
        check_hook_kinds([*(hooks or []), *(hooks_b or [])])
        if sae or sae_b:
            from fer_diag.sae.loading import check_sae_spec

            for spec in [*(sae or []), *(sae_b or [])]:
                check_sae_spec(spec)
        _check_out_dir(out)
    except FerDiagError as exc:
        _fail(exc)
    try:
        result = run_compare(
            model_a,
            model_b,
            saes_a=list(sae) if sae else None,
            saes_b=list(sae_b) if sae_b else None,
            config=config,
            out_dir=out,
        )
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted[/]: each finished audit text set is kept in {out}; re-run to resume.")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except _user_errors() as exc:
        _fail(exc)
    if as_json:
        sys.stdout.write(result.model_dump_json(indent=2) + "\n")
    else:
        from fer_diag.report.comparison_render import print_comparison

        print_comparison(result, Console())
        console.print(f"comparison written to [bold]{out}[/] (comparison.json, comparison.md, comparison.html, a/, b/)")


@app.command()
def models(
    hooks: Annotated[str | None, typer.Option(help="list the hook names of this zoo model (loads it)")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List the model zoo and what is installed / cached."""
    from fer_diag.models import list_models, load_model

    if hooks:
        from fer_diag.capture import available_hooks

        try:
            loaded = load_model(hooks)
        except _user_errors() as exc:
            _fail(exc)
        names = available_hooks(loaded.model)
        sys.stdout.write("\n".join(names) + "\n")
        return
    rows = list_models()
    if as_json:
        sys.stdout.write(json.dumps([r.model_dump() for r in rows], indent=2) + "\n")
        return
    table = Table(title="fer-diag model zoo")
    for col in ("name", "installed", "cached", "layers", "d_model", "install"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r.name,
            "yes" if r.installed else "no",
            "yes" if r.cached else "no",
            str(r.n_layers),
            str(r.d_model),
            "" if r.installed or r.cached else r.install,
        )
    Console().print(table)


@app.command()
def data(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show which corpora are installed, and the command that installs each missing one."""
    from fer_diag.data.sources import availability

    rows = availability()
    if as_json:
        sys.stdout.write(json.dumps([r.model_dump() for r in rows], indent=2) + "\n")
        return
    table = Table(title="fer-diag corpora")
    for col in ("source", "available", "texts", "what", "install"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r.name,
            "yes" if r.available else "[red]no[/]",
            str(r.n_texts if r.available else "-"),
            r.description,
            "" if r.available else r.install_command,
        )
    Console().print(table)


@app.command("train-sae")
def train_sae(
    hook: Annotated[list[str], typer.Option("--hook", "-H", help="TL hook name; repeatable (one forward feeds all)")],
    model: Annotated[str, typer.Option(help="zoo name")] = "smollm2-135m",
    out: Annotated[Path, typer.Option("--out", "-o", help="folder; one sae-lens folder per hook inside")] = Path(
        "fer-diag-saes"
    ),
    text: Annotated[
        list[Path] | None, typer.Option(help="training text file(s); default: the English-fortune training split")
    ] = None,
    architecture: Annotated[str, typer.Option(help="sae-lens architecture: topk, batchtopk, standard, jumprelu")] = (
        SAE_DEFAULTS.architecture
    ),
    d_sae: Annotated[int, typer.Option()] = SAE_DEFAULTS.d_sae,
    k: Annotated[int, typer.Option(help="active latents (topk / batchtopk)")] = SAE_DEFAULTS.k,
    training_tokens: Annotated[int, typer.Option()] = SAE_DEFAULTS.training_tokens,
    cache_tokens: Annotated[int, typer.Option(help="activations captured once, then trained on for several epochs")] = (
        SAE_DEFAULTS.cache_tokens
    ),
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Train SAEs offline with sae-lens's trainer; saves sae-lens folders plus a card.json (EV, L0, dead fraction)."""
    from fer_diag.data.sources import english_fortunes, read_texts
    from fer_diag.models import check_available, load_model
    from fer_diag.sae.training import sae_dir_name, train_saes

    try:
        cfg = _build_config(
            SAETrainingConfig,
            architecture=architecture,
            d_sae=d_sae,
            k=k,
            training_tokens=training_tokens,
            cache_tokens=cache_tokens,
            seed=seed,
        )
        _check_text_files(text)
        check_available(model)
        _check_out_dir(out)
        loaded = load_model(model)
        if text:
            texts = [t for path in text for t in read_texts(path).texts]
            eval_texts = None
        else:
            texts, eval_texts = english_fortunes(split="train"), english_fortunes(split="heldout")
        results = train_saes(loaded, hook, texts, eval_texts=eval_texts, config=cfg, out_dir=out)
    except _user_errors() as exc:
        _fail(exc)
    table = Table(title="trained SAEs")
    for col in ("hook", "folder", "EV (held-out)", "L0", "dead", "tokens"):
        table.add_column(col)
    for h, (_, card) in results.items():
        ev = card.get("heldout", {})
        table.add_row(
            h,
            str(out / sae_dir_name(h)),
            f"{ev.get('explained_variance', float('nan')):.3f}",
            f"{ev.get('l0', float('nan')):.1f}",
            f"{ev.get('dead_fraction', float('nan')):.3f}",
            str(card.get("tokens_seen")),
        )
    Console().print(table)


@app.command()
def bench(
    model: Annotated[str, typer.Option(help="zoo name")] = "smollm2-135m",
    hooks: Annotated[list[str] | None, typer.Option("--hooks", "-H")] = None,
    n_seqs: Annotated[int, typer.Option(help="windows timed")] = 32,
    small: Annotated[int, typer.Option(help="corpus size (windows) for the first memory figure")] = 16,
    large: Annotated[int, typer.Option(help="corpus size (windows) for the second memory figure")] = 64,
    repeats: Annotated[int, typer.Option(help="audit runs per variant, each after its own floor")] = 3,
    default_saes: Annotated[
        bool, typer.Option("--default-saes/--no-default-saes", help="time the shipped default SAEs too")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Time the audit against the model's own forward pass on the same tokens (a ratio, one run) and peak memory."""
    from fer_diag.bench import run_bench

    try:
        res = run_bench(
            model,
            hooks=hooks or None,
            n_seqs=n_seqs,
            memory_sizes=(small, large),
            repeats=repeats,
            use_saes=default_saes,
        )
    except _user_errors() as exc:
        _fail(exc)
    if as_json:
        sys.stdout.write(res.model_dump_json(indent=2) + "\n")
        return
    out = Console()
    t = Table(
        title=f"{res.model}: {len(res.hooks)} hooks, {res.n_saes} SAEs, {res.windows} windows, {res.tokens} tokens",
        caption=f"{res.torch_threads} torch threads; fastest of the repeats, floor and audit timed alternately; "
        f"slowest floor {res.floor_spread:.2f} × the fastest (machine load)",
    )
    for col in ("what", "seconds", "× forward"):
        t.add_column(col, justify="left" if col == "what" else "right")
    t.add_row("forward pass (floor)", f"{res.forward_s:.2f}", "1.000")
    t.add_row(
        "audit, streaming: capture + analyzers (target ≤ 1.15)", f"{res.audit_stream_s:.2f}", f"{res.ratio_stream:.3f}"
    )
    t.add_row("  of which capture alone: forward, hooks, readouts", f"{res.capture_s:.2f}", f"{res.ratio_capture:.3f}")
    t.add_row("  of which bases and analyzers (× capture alone)", "", f"{res.ratio_analyzers:.3f}")
    t.add_row(
        f"  + verdict's random-basis sparsity ({res.basis_rotations} rotations)",
        f"{res.audit_stream_rotations_s:.2f}",
        f"{res.ratio_stream_rotations:.3f}",
    )
    t.add_row("audit, whole (no CE splice, no control)", f"{res.audit_total_s:.2f}", f"{res.ratio_total:.3f}")
    for stage, sec in res.fixed_s.items():
        t.add_row(f"  fixed per run: {stage}", f"{sec:.2f}", "")
    t.add_row("SAE CE-loss splice (extra passes)", f"{res.ce_splice_s:.2f}", f"{res.ce_splice_s / res.forward_s:.3f}")
    for n, mb in res.peak_rss_mb.items():
        t.add_row(f"peak RSS (MiB), {n} windows", f"{mb:.0f}", "")
    out.print(t)


@app.command()
def schema() -> None:
    """Print the JSON Schema of report.json (the `Report` model, this fer-diag's schema version)."""
    from fer_diag.report.schema import Report

    sys.stdout.write(json.dumps(Report.model_json_schema(), indent=2, ensure_ascii=False) + "\n")


def main() -> None:  # pragma: no cover - console entry
    app()
