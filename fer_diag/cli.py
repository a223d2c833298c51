"""`fer-diag` command line (typer + rich).

Exit codes: 0 success; 1 an unexpected failure (traceback shown); 2 bad input
(unknown model / hook, missing corpus, empty text set, SAE mismatch…: the message
names the fix); 130 interrupted (finished text sets are kept; re-run the same
command to resume).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="fer-diag",
    help="Is a sparsity-as-familiarity signal trustworthy in this model? Audits over TransformerLens hooks.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
console = Console(stderr=True)

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def _user_errors() -> tuple[type[BaseException], ...]:
    from fer_diag.errors import USER_ERRORS

    return USER_ERRORS


def _fail(exc: BaseException) -> None:
    console.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(EXIT_BAD_INPUT)


@app.command()
def audit(
    model: Annotated[str, typer.Option(help="zoo name (see `fer-diag models`)")] = "smollm2-135m",
    hooks: Annotated[
        list[str] | None, typer.Option("--hooks", "-H", help="TL hook names or wildcards; repeatable")
    ] = None,
    sae: Annotated[
        list[str] | None, typer.Option("--sae", help="sae-lens SAE folder (or release/id when a hub is reachable)")
    ] = None,
    no_default_saes: Annotated[bool, typer.Option(help="do not use the shipped default SAEs")] = False,
    id_text: Annotated[list[Path] | None, typer.Option(help="in-distribution text file(s): .txt or .jsonl")] = None,
    ood_text: Annotated[list[Path] | None, typer.Option(help="shifted text file(s): .txt or .jsonl")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="report folder")] = Path("fer-diag-report"),
    max_seqs: Annotated[int, typer.Option(help="windows per text set")] = 64,
    seq_len: Annotated[int, typer.Option(help="tokens per window (BOS included)")] = 128,
    batch_size: Annotated[int, typer.Option()] = 8,
    bridge: Annotated[bool, typer.Option(help="wrap the model as a TransformerBridge")] = False,
    control: Annotated[bool, typer.Option(help="also audit a randomly initialised copy (learned vs intrinsic)")] = True,
    resume: Annotated[bool, typer.Option(help="reuse text sets finished by an interrupted run in --out")] = True,
    device: Annotated[str, typer.Option()] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="print the JSON report to stdout")] = False,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Audit a model: sparsity per layer and text set, massive activations, familiarity AUROCs, SAE fidelity."""
    from fer_diag.audit import Audit, AuditConfig

    config = AuditConfig(
        hooks=hooks or None,
        max_seqs=max_seqs,
        seq_len=seq_len,
        batch_size=batch_size,
        random_init_control=control,
        default_saes=not no_default_saes,
        seed=seed,
        device=device,
    )
    try:
        runner = Audit(
            model,
            saes=list(sae) if sae else None,
            id_texts=id_text,
            ood_texts=ood_text,
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
            "" if r.installed else r.install_command,
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


def main() -> None:  # pragma: no cover - console entry
    app()
