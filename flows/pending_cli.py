"""`ratchet pending ...`: the batches accepted but not yet in production's lineage.

A batch is pending when the retrain policy skipped it, or when the gate rejected every
remediation attempt on it; the next retrain trains on its rows and examines its held-out
ones. `ratchet pending drop ID --reason TEXT` removes one on purpose (recorded in
data/pending.json's history); the data team redelivers it with --force if it was a mistake.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

pending_app = typer.Typer(no_args_is_help=True, help="Batches waiting to be learned: list, drop.")
console = Console()


@pending_app.command("list")
def pending_list(workspace: Path = typer.Option(Path("."), help="Repository root to work in."),
                 as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout.")) -> None:
    """Pending batches: id, why, since when, attempts so far."""
    from tasks.drift.policy import pending_history, pending_report

    data = workspace.resolve() / "data"
    report = {"pending": pending_report(data), "history": pending_history(data)}
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    table = Table(title="pending batches (the next retrain trains on them)")
    for column in ["batch", "since", "attempts", "why"]:
        table.add_column(column)
    for p in report["pending"]:
        table.add_row(p["batch_id"], str(p.get("since", "")), str(p.get("attempts", 0)), str(p.get("why", "")))
    console.print(table)


@pending_app.command("drop")
def pending_drop(batch_id: str = typer.Argument(..., help="The pending batch id (see `ratchet pending list`)."),
                 reason: str = typer.Option(..., "--reason", help="Why; recorded in the pending history."),
                 workspace: Path = typer.Option(Path("."), help="Repository root to work in.")) -> None:
    """Stop carrying a pending batch into retrains (exit 2 when it is not pending)."""
    from flows.lock import file_lock
    from tasks.drift.policy import drop_pending

    root = workspace.resolve()
    try:  # the lock a retrain run holds while it reads and settles the pending list
        with file_lock(root / "models" / ".promote.lock", None):
            entry = drop_pending(root / "data", batch_id, reason)
    except KeyError as exc:
        console.print(f"[red]error:[/] {exc.args[0]}")
        raise typer.Exit(2)
    console.print(f"dropped pending batch {batch_id} ({entry['reason']})")
