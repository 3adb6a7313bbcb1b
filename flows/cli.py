"""The `ratchet` command: the edge between a terminal and the flows.

`ratchet retrain --batch PATH` runs one batch and exits with the contract's code
(0 promoted, after one or more attempts; 3 rejected, the batch stays pending;
4 quarantined, 5 skipped, 2 usage/config error, 1 unexpected). `ratchet pending`
lists or drops the batches waiting to be learned.
`ratchet drift PATH` validates a batch and checks it for drift against production
without training. `ratchet demo` streams CLINC150 domains through the flow and prints what production
knows after each one. `ratchet models ...` reads and moves registry aliases;
`ratchet rollback` and `ratchet status` are the two an operator reaches for first.
`ratchet notify-landed FILE` tells the Prefect server a file landed (its retrain trigger starts a run).
`ratchet serve-model` answers predictions over HTTP with production and follows its moves.
"""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Ratchet: continual learning for text models.")
models_app = typer.Typer(no_args_is_help=True, help="Inspect the registry and move aliases (rollback).")
app.add_typer(models_app, name="models")
convert_app = typer.Typer(no_args_is_help=True, help="Convert delivered files into batch files.")
app.add_typer(convert_app, name="convert")
from flows.pending_cli import pending_app  # noqa: E402

app.add_typer(pending_app, name="pending")
console = Console()


def offline_env() -> None:
    """Environment defaults, set before Prefect or transformers are imported: no
    telemetry, never a model hub, and patience for the temporary Prefect server."""
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")  # else every dvc command forks an analytics daemon
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _quiet_defaults() -> None:
    offline_env()
    import logging

    # Stage functions log progress (loss, samples/s) to plain loggers; Prefect's
    # console handler shows them once they pass the level.
    logging.getLogger("tasks").setLevel(logging.INFO)


def _overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise typer.BadParameter(f"--set expects section.key=value, got '{pair}'")
        import yaml

        out[key] = yaml.safe_load(value)
    return out


@app.command()
def retrain(batch: str = typer.Option(..., "--batch", help="Batch file: CSV, JSONL or Parquet; a path or s3://bucket/key."),
            workspace: Path = typer.Option(Path("."), help="Repository root to work in."),
            force: bool = typer.Option(False, help="Train even on a batch seen before, whatever the retrain policy says."),
            set_: list[str] = typer.Option([], "--set", help="Override a param, e.g. train.epochs=1.")) -> None:
    """Run one batch through validate, drift, finetune, evaluate, gate, promote."""
    _quiet_defaults()
    from rich.markup import escape

    from tasks.core.config import ConfigError
    from tasks.registry.store import RegistryError
    from tasks.core.storage import is_s3

    if not is_s3(batch) and not Path(batch).exists():
        console.print(f"[red]error:[/] no batch file at {escape(batch)}")
        raise typer.Exit(2)
    try:
        from flows.retrain import retrain as retrain_flow

        outcome = retrain_flow(batch=str(batch), workspace=str(workspace), force=force, overrides=_overrides(set_))
    except (ConfigError, typer.BadParameter) as exc:
        console.print(f"[red]configuration error:[/] {exc}")
        raise typer.Exit(2)
    except RegistryError as exc:  # e.g. production failed its integrity check: nothing was trained
        console.print(f"[red]registry error:[/] {escape(str(exc))}\n  see `ratchet status`; "
                      "`ratchet rollback` or `ratchet models promote VERSION` moves production to an intact version",
                      soft_wrap=True, highlight=False)
        raise typer.Exit(1)
    colour = {"promoted": "green", "rejected": "yellow", "quarantined": "red", "skipped": "cyan"}[outcome["status"]]
    console.print(f"[{colour}]{outcome['status']}[/] batch {outcome['batch_id']} -> production {outcome['production']}")
    for reason in outcome["reasons"]:
        console.print(f"  - {escape(reason)}", highlight=False)  # reasons quote delivered text
    if outcome["details"].get("drift"):
        _print_drift(outcome["details"]["drift"])
    for a in outcome["details"].get("attempts") or []:
        verdict = "passed" if a["promote"] else "rejected"
        console.print(f"  attempt {a['attempt']} {verdict} in {a['seconds']:.0f} s"
                      + (f" with {a['overrides']}" if a["overrides"] else ""), highlight=False)
    flips = outcome["details"].get("flips") or {}
    if flips.get("negative_rate") is not None:
        console.print(f"  negative flips: {flips['negative']} rows ({flips['negative_rate']:.2%} of the old exam), "
                      f"positive {flips['positive']}" + (f"; rows in {flips['rows_file']}" if flips.get("rows_file") else ""))
    if outcome["details"].get("gate_table"):
        console.print(outcome["details"]["gate_table"])
    if (outcome["details"].get("mirror") or {}).get("error"):
        console.print(f"[yellow]S3 mirror not updated:[/] {outcome['details']['mirror']['error']}")
    if (outcome["details"].get("mlflow") or {}).get("error"):
        console.print(f"[yellow]MLflow not updated:[/] {outcome['details']['mlflow']['error']} "
                      "(retry: ratchet models mlflow-sync)", soft_wrap=True, highlight=False)
    console.print(f"  decision: reports/{outcome['run_id']}/decision.json")
    raise typer.Exit(outcome["exit_code"])


@app.command()
def drift(path: Path = typer.Argument(..., help="Batch file: CSV, JSONL or Parquet."),
          workspace: Path = typer.Option(Path("."), help="Repository root to work in."),
          as_json: bool = typer.Option(False, "--json", help="The DriftResult as one JSON object on stdout."),
          set_: list[str] = typer.Option([], "--set", help="Override a param, e.g. drift.max_embed_rows=200.")) -> None:
    """Validate a batch and check it for drift against production; stores and trains nothing.
    Exit 0 when checked (drifted or not: see `drifted`), 4 when validation fails, 2 on usage."""
    _quiet_defaults()
    import datetime as dt

    from tasks.core.config import ConfigError, load_params
    from tasks.intake.batch import batch_id_for
    from tasks.kinds import get_kind
    from tasks.kinds.files import check_drift
    from tasks.core.workspace import Workspace

    if not path.exists():
        console.print(f"[red]error:[/] no batch file at {path}")
        raise typer.Exit(2)
    ws = Workspace.at(workspace)
    try:
        params = load_params(ws.params_path, _overrides(set_))
    except (ConfigError, typer.BadParameter) as exc:
        console.print(f"[red]configuration error:[/] {exc}")
        raise typer.Exit(2)
    run_id = f"drift-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{batch_id_for(path.read_bytes())}"
    checked, result = check_drift(get_kind(params.task.type), str(path), ws, params, run_id)
    if as_json:
        typer.echo(json.dumps({"drifted": None if result is None else result.drifted, "validation": checked.to_dict(),
                               **(result.to_dict() if result else {})}, indent=2, default=str))
    elif result is None:
        console.print(f"[red]quarantine-worthy:[/] {checked.summary()}")
    else:
        _print_drift(result.headline())
    raise typer.Exit(0 if result is not None else 4)


def _print_drift(head: dict) -> None:
    from rich.markup import escape

    colour = "yellow" if head["drifted"] or head["quality_dropped"] else "green"
    verdict = "drifted" if head["drifted"] else "no drift"
    if head["quality_dropped"]:
        verdict += ", champion quality dropped"
    console.print(f"[{colour}]{verdict}[/] signals: {escape(', '.join(head['signals']) or 'none')}"
                  + (" (sampled)" if head["sampled"] else ""), highlight=False)
    console.print(f"  {escape(head['reason'])}", highlight=False)  # the reason names delivered labels
    console.print(f"  report: {head['json_path']}")


@app.command()
def validate(path: str = typer.Argument(..., help="Batch file to check: a path or s3://bucket/key."),
             workspace: Path = typer.Option(Path("."), help="Repository root whose production model, "
                                            "exam and params the file is checked against."),
             set_: list[str] = typer.Option([], "--set", help="Override a param, e.g. labels.allow_new=false."),
             as_json: bool = typer.Option(False, "--json", help="The full result as JSON on stdout.")) -> None:
    """Check a batch file against the contract, without training or writing anything.
    Exit 0 when it would be accepted (with or without warnings), 4 when rejected."""
    _quiet_defaults()
    from rich.markup import escape

    from tasks.core.config import ConfigError, load_params
    from tasks.kinds import get_kind
    from tasks.kinds.files import check_file
    from tasks.core.storage import StorageError, is_s3
    from tasks.core.workspace import Workspace

    if not is_s3(path) and not Path(path).is_file():
        console.print(f"[red]error:[/] no batch file at {escape(path)}")
        raise typer.Exit(2)
    ws = Workspace.at(workspace)
    try:
        params = load_params(ws.params_path, _overrides(set_))
        batch_id, result = check_file(get_kind(params.task.type), path, ws, params)
    except (ConfigError, typer.BadParameter) as exc:
        console.print(f"[red]configuration error:[/] {escape(str(exc))}")
        raise typer.Exit(2)
    except StorageError as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2)
    from tasks.intake.batch import is_decided

    known = is_decided(batch_id, ws)
    if as_json:
        typer.echo(json.dumps({"batch_id": batch_id, "already_accepted": known, **result.to_dict()}, indent=2))
    else:
        _print_validation(batch_id, result)
        if known:
            console.print(f"note: this exact file was already accepted as {batch_id}; `ratchet retrain` would skip it")
    raise typer.Exit(4 if result.verdict == "rejected" else 0)


def _print_validation(batch_id: str, result) -> None:
    from rich.markup import escape

    colour = {"accepted": "green", "accepted_with_warnings": "yellow", "rejected": "red"}[result.verdict]
    counts = result.counts()
    console.print(f"[{colour}]{result.verdict}[/] batch {batch_id}: {counts['rows']} rows, "
                  f"{counts['dropped_bad_rows']} would be dropped, {counts['kept_rows']} would go on")
    if result.failures or result.warnings:
        table = Table(show_lines=False)
        for column in ["", "check", "column", "rows", "example rows", "problem"]:
            table.add_column(column)
        for mark, items in (("[red]FAIL[/]", result.failures), ("[yellow]WARN[/]", result.warnings)):
            for f in items:
                table.add_row(mark, escape(f.expectation), escape(str(f.column or "")), str(f.count),
                              ", ".join(map(str, f.examples)), escape(f.message))
        Console(width=max(console.width, 160)).print(table, highlight=False)
    if result.verdict == "accepted_with_warnings":
        console.print("accepted with warnings: the batch would go on; see the warnings above")


@convert_app.command("conll")
def convert_conll(path: Path = typer.Argument(..., help="CoNLL column file: token first, IOB2 tag last, blank lines between sentences."),
                  out: Optional[Path] = typer.Option(None, help="Output JSONL (default: PATH with .jsonl)."),
                  slice_: Optional[str] = typer.Option(None, "--slice", help="Value of the `slice` column for every sentence."),
                  split: Optional[str] = typer.Option(None, help="Value of the `split` column (train, dev, test).")) -> None:
    """CoNLL column format -> a NER batch (JSONL with tokens, tags) for task.type: ner."""
    from tasks.ner.conll import ConllError
    from tasks.ner.conll import convert_conll as convert

    if not path.exists():
        console.print(f"[red]error:[/] no file at {path}")
        raise typer.Exit(2)
    try:
        written = convert(path, out, slice_name=slice_, split=split)
    except (ConllError, UnicodeDecodeError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2)
    console.print(str(written))


@app.command()
def stream(out: Path = typer.Option(Path("data/landing/clinc150"), help="Where batch files are written."),
           domains: int = typer.Option(3, help="How many CLINC150 domains (1-10).")) -> None:
    """Write CLINC150 domains as batch files, one per domain."""
    from flows.stream import write_clinc150_batches

    for path in write_clinc150_batches(out, domains):
        console.print(str(path))


@app.command()
def demo(domains: int = typer.Option(int(os.environ.get("RATCHET_DOMAINS", 3)), help="CLINC150 domains to stream (1-10)."),
         workspace: Path = typer.Option(Path("."), help="Repository root to work in."),
         set_: list[str] = typer.Option([], "--set", help="Override a param, e.g. train.epochs=1."),
         verbose: bool = typer.Option(False, "--verbose", help="Show the Prefect, transformers and DVC logs here "
                                      "as they come, instead of in the log file."),
         log: Optional[Path] = typer.Option(None, help="Log file, appended to (default: reports/demo-<time>.log "
                                            "in the workspace).")) -> None:
    """Stream CLINC150 domains through the retrain flow and show what production knows:
    a line per stage of each batch, then a table; the full logs go to a file under reports/."""
    _quiet_defaults()
    from flows.console import BatchLines, LogRoute, log_path
    from flows.stream import clinc150_domains, production_scores, stream_clinc150  # Prefect's logging is set up

    route = None if verbose else LogRoute(log or log_path(workspace))
    # left in place until the process ends: the temporary Prefect server logs its stop at exit
    terminal = route.start() if route else sys.stdout
    out = Console(file=terminal, highlight=False, soft_wrap=True)
    if route:
        out.print(f"logs: {route.path} (--verbose shows them here)")
    started = time.perf_counter()
    lines = BatchLines(terminal, total=min(domains, len(clinc150_domains())))
    try:
        outcomes = stream_clinc150(domains=domains, workspace=str(workspace), overrides=_overrides(set_),
                                   on_batch=lines)
    except BaseException:
        if route:
            route.stop()  # the error reaches the terminal
        raise
    seconds = time.perf_counter() - started
    slices = list(dict.fromkeys(s for o in outcomes for s in production_scores(o)))  # arrival order
    table = Table(title=f"Production accuracy per slice after each batch ({seconds / 60:.1f} min)")
    for column in ["batch", "decision", "production", *slices]:
        table.add_column(column)
    for o in outcomes:
        scores = production_scores(o)
        table.add_row(Path(o["batch"]).stem, o["status"], str(o["production"]),
                      *[f"{scores[s]:.3f}" if s in scores else "-" for s in slices])
    Console(file=terminal, width=max(out.width, 240)).print(table)  # the table takes only what it needs
    summary = {"seconds": round(seconds, 1), "domains": domains, "machine": _machine(), "outcomes": [
        {"batch": o["batch"], "status": o["status"], "production": o["production"],
         "attempts": len(o["details"].get("attempts") or []), "pending": o["details"].get("pending", []),
         "negative_flip_rate": (o["details"].get("flips") or {}).get("negative_rate"),
         "slices": production_scores(o)} for o in outcomes]}
    path = Path(workspace) / "reports" / "demo_summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2))
    out.print(f"summary: {path}")


@app.command()
def serve(workspace: Path = typer.Option(Path("."), help="Repository root to work in."),
          limit: Optional[int] = typer.Option(None, help="Most flow runs at once (default: no limit).")) -> None:
    """Serve the deployments: manual retrain runs, the nightly sweep (ops.schedule_cron) and
    the landing-zone watcher. Needs PREFECT_API_URL pointing at a `prefect server start`."""
    _quiet_defaults()
    from flows.deploy import serve_all

    serve_all(str(workspace.resolve()), limit=limit)


LOOPBACK = ("127.0.0.1", "::1", "localhost")


@app.command("serve-model")
def serve_model(workspace: Path = typer.Option(Path("."), help="Repository root whose models/ to serve."),
                host: str = typer.Option("127.0.0.1", help="Address to bind; any other than loopback needs RATCHET_SERVE_TOKEN."),
                port: int = typer.Option(8080, help="Port to listen on."),
                alias: str = typer.Option("production", help="The registry alias to answer with and follow."),
                from_mirror: bool = typer.Option(False, help="Follow the S3 mirror's alias (registry.mirror), pulling each new version."),
                poll: float = typer.Option(1.0, help="Seconds between checks of the alias."),
                max_batch: int = typer.Option(64, help="Most inputs answered by one forward pass."),
                max_wait_ms: float = typer.Option(5.0, help="How long a request waits for others to share its batch."),
                max_inputs: int = typer.Option(256, help="Most inputs in one request (more: 413)."),
                max_body: int = typer.Option(1 << 20, help="Largest request body in bytes (more: 413).")) -> None:
    """Answer predictions from production over HTTP (MLflow's /invocations, /ping; /version,
    /health) and switch to each new version when the alias moves, rollback included, without
    a failed request. A bearer token (env RATCHET_SERVE_TOKEN) guards every route but /ping."""
    offline_env()
    token = os.environ.get("RATCHET_SERVE_TOKEN") or None
    if host not in LOOPBACK and token is None:
        console.print(f"[red]error:[/] refusing to serve on {host} without a token: set RATCHET_SERVE_TOKEN "
                      "(clients send 'Authorization: Bearer <token>')", soft_wrap=True)
        raise typer.Exit(2)
    import uvicorn

    from tasks.core.config import ConfigError, load_params
    from tasks.serve.app import Limits, build_app
    from tasks.serve.follow import Follower

    try:
        params = load_params(workspace.resolve() / "params.yaml")
    except (ConfigError, FileNotFoundError) as exc:
        console.print(f"[red]configuration error:[/] {exc}")
        raise typer.Exit(2)
    mirror = _mirror(workspace) if from_mirror else None
    if from_mirror and mirror is None:
        console.print("[red]error:[/] --from-mirror needs registry.mirror in params.yaml")
        raise typer.Exit(2)
    follower = Follower(_registry(workspace), params, alias=alias, mirror=mirror)
    limits = Limits(max_body_bytes=max_body, max_inputs=max_inputs, max_batch=max_batch, max_wait_ms=max_wait_ms,
                    poll_s=poll)
    console.print(f"serving models/{alias} of {workspace.resolve()} on http://{host}:{port}"
                  + (" (bearer token required)" if token else ""), soft_wrap=True, highlight=False)
    uvicorn.run(build_app(follower, token=token, limits=limits), host=host, port=port, log_level="warning",
                access_log=False)


@app.command()
def watch(workspace: Path = typer.Option(Path("."), help="Repository root to work in."),
          landing: Optional[str] = typer.Option(None, help="Folder or s3://bucket/prefix (default: ops.landing)."),
          fan_out: bool = typer.Option(False, help="Start each batch as a run of the ratchet-retrain deployment.")) -> None:
    """One sweep of the landing zone now: every new batch, oldest first, exactly once."""
    _quiet_defaults()
    from flows.deploy import sweep_landing
    from tasks.intake.landing import LandingBusy

    try:
        handled = sweep_landing(workspace=str(workspace.resolve()), landing=landing, fan_out=fan_out)
    except LandingBusy as exc:
        console.print(f"[yellow]{exc}[/]")
        raise typer.Exit(0)
    for entry in handled:
        console.print(f"{entry['status']:>11}  {entry['batch_id']}  {entry['uri']}")
    if not handled:
        console.print("no new batches")


@app.command("notify-landed")
def notify_landed(file: str = typer.Argument(..., help="The delivered batch file: a path or s3://bucket/key."),
                  workspace: Path = typer.Option(Path("."), help="Repository root the batch belongs to.")) -> None:
    """Emit `ratchet.batch.landed` for FILE: the served retrain deployment's trigger starts a
    run on it within seconds (exit 2 without PREFECT_API_URL or when FILE is missing, 1 when
    the server cannot be reached)."""
    from flows import events
    from tasks.core.storage import is_s3
    from tasks.intake.batch import batch_id_of

    if not events.enabled():
        console.print("[red]error:[/] PREFECT_API_URL is not set: no Prefect server would hear the event")
        raise typer.Exit(2)
    if not is_s3(file) and not Path(file).is_file():
        console.print(f"[red]error:[/] no such file: {file}", soft_wrap=True, highlight=False)
        raise typer.Exit(2)
    source = file if is_s3(file) else str(Path(file).resolve())  # the run reads it from the runner's cwd
    batch_id = None if is_s3(file) else batch_id_of(source)
    try:
        event_id = events.send(events.LANDED, workspace, events.landed(source, batch_id, "notify-landed"),
                               batch_id=batch_id, **{events.START_RUN: "true"})
    except Exception as exc:  # the server is down or refuses us
        console.print(f"[red]event not sent:[/] {type(exc).__name__}: {exc}", soft_wrap=True, highlight=False)
        raise typer.Exit(1)
    console.print(f"{events.LANDED} {source} (batch {batch_id or '?'}, event {event_id})", soft_wrap=True,
                  highlight=False)


def _announce(workspace: Path, event: str, version: str, previous: str | None, reason: str | None, by: str) -> None:
    """After a manual production move: its event, when a server listens (never fatal)."""
    from flows import events

    if not events.enabled():
        return
    reg = _registry(workspace)
    batch_id = reg.metadata(version).get("batch_id")
    try:
        events.send(event, workspace, events.moved(version, previous, reason, by, batch_id, reg.root),
                    batch_id=batch_id, version=version)
    except Exception as exc:  # the move stands; only the notification is lost
        console.print(f"[yellow]event {event} not sent:[/] {type(exc).__name__}: {exc}", soft_wrap=True,
                      highlight=False)


def _machine() -> dict:
    import platform

    import torch

    return {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()}


def _exam_score(meta: dict) -> float:
    """A version's headline exam score in its task type's metric (accuracy, a tagger's F1)."""
    from tasks.registry.store import score_metric

    return meta["metrics"]["overall"][score_metric(meta)]


@models_app.command("list")
def models_list(workspace: Path = typer.Option(Path("."))) -> None:
    """Versions, their parent, batch and overall exam score (accuracy, or F1 for a tagger); aliases marked."""
    reg = _registry(workspace)
    marks: dict[str, list[str]] = {}
    for alias, version in reg.aliases().items():
        marks.setdefault(version, []).append(alias)
    table = Table()
    for column in ["version", "aliases", "parent", "batch", "exam score", "created"]:
        table.add_column(column)
    for version in reg.versions():
        meta = reg.metadata(version)
        table.add_row(version, ", ".join(sorted(marks.get(version, []))), str(meta.get("parent")),
                      meta.get("batch_id", ""), f"{_exam_score(meta):.3f}", meta.get("created_at", ""))
    console.print(table)


@contextmanager
def _alias_lock(workspace: Path):
    """The flock a retrain run holds from resolving production to promoting: a manual move
    waits for a run in progress on this host instead of being overwritten by it."""
    from flows.lock import LockTimeout, file_lock

    path = workspace.resolve() / "models" / ".promote.lock"
    try:
        with file_lock(path, 0):
            yield
            return
    except LockTimeout:
        console.print("a retrain run holds the registry; waiting for it to finish…")
    with file_lock(path, None):
        yield


def _registry(workspace: Path):
    from tasks.registry.store import Registry

    return Registry(workspace.resolve() / "models")


@models_app.command("promote")
def models_promote(version: str, workspace: Path = typer.Option(Path(".")),
                   reason: Optional[str] = typer.Option(None, help="Why; recorded in models/history.jsonl.")) -> None:
    """Point production at VERSION (it must pass its integrity check)."""
    from tasks.registry.store import RegistryError

    reg = _registry(workspace)
    current = reg.resolve("production")
    try:
        with _alias_lock(workspace):
            reg.promote(version, reason)
    except RegistryError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2)
    console.print(f"production -> {version}")
    from flows.events import PROMOTED

    _announce(workspace, PROMOTED, version, current, reason, "ratchet models promote")
    _export(workspace, strict=False)
    _publish(workspace, version, reason)


@app.command()
def rollback(workspace: Path = typer.Option(Path("."), help="Repository root to work in."),
             reason: Optional[str] = typer.Option(None, help="Why; recorded in models/history.jsonl.")) -> None:
    """Move production back to the `previous` version (exit 2 when there is none)."""
    from tasks.registry.store import RegistryError

    reg = _registry(workspace)
    current = reg.resolve("production")
    try:
        with _alias_lock(workspace):
            version = reg.rollback(reason)
    except RegistryError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2)
    console.print(f"production -> {version} (was {current})")
    from flows.events import ROLLED_BACK

    _announce(workspace, ROLLED_BACK, version, current, reason, "ratchet rollback")
    _export(workspace, strict=False)
    _publish(workspace, version, reason)


def _mirror(workspace: Path):
    """The S3 mirror params.yaml names (`registry.mirror`), or None."""
    from tasks.core.config import ConfigError, load_params
    from tasks.registry.registry_s3 import Mirror

    try:
        return Mirror.from_config(load_params(workspace.resolve() / "params.yaml").registry)
    except ConfigError as exc:
        console.print(f"[red]configuration error:[/] {exc}")
        raise typer.Exit(2)


def _publish(workspace: Path, version: str | None, reason: str | None) -> None:
    """After a local alias move: the same move on the mirror, when there is one. Exit 1
    when it fails: production moved here but not for machines that pull from S3."""
    mirror = _mirror(workspace)
    if mirror is None:
        return
    from tasks.registry.store import RegistryError
    from tasks.registry.registry_s3 import publish
    from tasks.core.storage import StorageError

    try:
        done = publish(_registry(workspace), mirror, version, reason)
    except (RegistryError, StorageError) as exc:
        console.print(f"[red]S3 mirror not updated:[/] {exc}\n  retry: ratchet models push {version or ''}",
                      soft_wrap=True, highlight=False)
        raise typer.Exit(1)
    console.print(f"mirror {done['mirror']}: {done['version']} pushed, production -> {done['production']}",
                  soft_wrap=True, highlight=False)


def _export(workspace: Path, version: str | None = None, strict: bool = True) -> None:
    """After a local alias move: MLflow's `champion` alias follows (registry.mlflow_uri).
    A failure says how to retry; with `strict` it exits 1."""
    from tasks.core.config import load_params
    from tasks.registry.mlflow_export import MlflowTarget, sync

    target = MlflowTarget.from_config(load_params(workspace.resolve() / "params.yaml").registry, workspace.resolve())
    if target is None:
        if strict:
            console.print("[red]error:[/] no registry.mlflow_uri in params.yaml")
            raise typer.Exit(2)
        return
    try:
        done = sync(_registry(workspace), target, version)
    except Exception as exc:  # the local move stands
        console.print(f"[red]MLflow not updated:[/] {type(exc).__name__}: {exc}\n  retry: ratchet models mlflow-sync",
                      soft_wrap=True, highlight=False)
        if strict:
            raise typer.Exit(1)
        return
    console.print(f"MLflow {done['model']}: {done['version']} is version {done['mlflow_version']}; "
                  f"@champion -> version {done['champion']}" + (f" (logged {', '.join(done['logged'])})"
                                                                      if done["logged"] else ""),
                  soft_wrap=True, highlight=False)


@models_app.command("mlflow-sync")
def models_mlflow_sync(version: Optional[str] = typer.Argument(None, help="Default: the local production."),
                       workspace: Path = typer.Option(Path("."))) -> None:
    """Export VERSION (and production) to the MLflow registry (registry.mlflow_uri) if it
    lacks them, and point its `champion` alias at production. Safe to rerun."""
    _export(workspace, version)


@models_app.command("push")
def models_push(version: Optional[str] = typer.Argument(None, help="Default: the local production."),
                workspace: Path = typer.Option(Path(".")),
                reason: Optional[str] = typer.Option(None, help="Why; recorded in the mirror's history/.")) -> None:
    """Upload a version to the S3 mirror (registry.mirror) and move its production there
    when it is the local production. Completes an interrupted push; safe to rerun."""
    if _mirror(workspace) is None:
        console.print("[red]error:[/] no registry.mirror in params.yaml")
        raise typer.Exit(2)
    _publish(workspace, version, reason)


@models_app.command("pull")
def models_pull(version: Optional[str] = typer.Argument(None, help="Default: the mirror's production."),
                workspace: Path = typer.Option(Path(".")),
                promote: bool = typer.Option(True, help="Make the pulled version the local production.")) -> None:
    """Restore a version from the S3 mirror into models/, checking every file's SHA-256
    first; a fresh machine runs this, then loads models/production."""
    from tasks.registry.store import RegistryError
    from tasks.registry.registry_s3 import pull
    from tasks.core.storage import StorageError

    mirror = _mirror(workspace)
    if mirror is None:
        console.print("[red]error:[/] no registry.mirror in params.yaml")
        raise typer.Exit(2)
    try:
        got = pull(mirror, _registry(workspace), version, promote=promote)
    except (RegistryError, StorageError) as exc:
        console.print(f"[red]error:[/] {exc}", soft_wrap=True)
        raise typer.Exit(1)
    console.print(f"pulled {got} from {mirror.uri}" + (f"; production -> {got}" if promote else ""),
                  soft_wrap=True, highlight=False)


def mirror_report(reg, mirror) -> dict:
    """Where the S3 mirror's production is, and whether it matches the local one."""
    from tasks.registry.registry_s3 import MirrorError
    from tasks.core.storage import StorageError

    try:
        remote = mirror.aliases()[0].get("production")
        versions = mirror.versions()
    except (MirrorError, StorageError) as exc:
        return {"uri": mirror.uri, "error": str(exc)}
    return {"uri": mirror.uri, "production": remote, "versions": versions,
            "in_sync": remote == reg.resolve("production")}


def status_report(reg) -> dict:
    """Production, its lineage to the first batch, aliases and every version's integrity:
    what an operator needs to know before trusting, or rolling back, production."""
    from tasks.registry.store import RegistryError

    production = reg.resolve("production")
    integrity = {}
    for version in reg.versions():
        try:
            integrity[version] = reg.verify(version)
        except RegistryError as exc:  # e.g. a half-written directory without metadata.json
            integrity[version] = [str(exc)]
    from tasks.registry.matrix import summary

    history = reg.history()
    record = reg.metadata(production).get("accuracy_matrix") if production else None
    return {"production": production, "lineage": reg.lineage(production) if production else [],
            "aliases": reg.aliases(), "last_move": history[-1] if history else None,
            "versions": [{"version": v, "intact": not p, "problems": p} for v, p in integrity.items()],
            "continual": {"accuracy_matrix": record, **(summary(record) or {})} if record else None}


def _print_status(report: dict) -> None:
    from rich.markup import escape

    from tasks.registry.matrix import metric_label

    console.print(f"production: [bold]{report['production'] or 'none'}[/]")
    aliases = ", ".join(f"{a} -> {v}" for a, v in sorted(report["aliases"].items()))
    console.print(f"aliases: {aliases or 'none'}")
    if report["last_move"]:
        m = report["last_move"]
        console.print(f"last move: {m['time']} {m['alias']} {m['from']} -> {m['to']} by {m['who']}"
                      + (f" ({m['reason']})" if m.get("reason") else ""))
    table = Table(title="production lineage (newest first)")
    metric = metric_label(report["lineage"][0].get("metric") if report["lineage"] else None)
    for column in ["version", "batch", "source", "created", f"exam {metric}"]:
        table.add_column(column)
    for e in report["lineage"]:
        acc = e.get("score", e.get("accuracy"))
        table.add_row(str(e["version"]), str(e.get("batch_id") or ""), str(e.get("source") or ""),
                      str(e.get("created_at") or ""), "-" if acc is None else f"{acc:.3f}")
    console.print(table)
    for v in report["versions"]:
        verdict = "[green]intact[/]" if v["intact"] else "[red]" + escape("; ".join(v["problems"])) + "[/]"
        console.print(f"  {v['version']}: {verdict}", highlight=False)
    _print_continual(report.get("continual"))
    for p in report.get("pending") or []:
        console.print(f"pending: {p['batch_id']} since {p.get('since', '?')}, {p.get('attempts', 0)} attempt(s): "
                      f"{escape(str(p.get('why', '')))}", highlight=False, soft_wrap=True)
    m = report.get("mirror")
    if m:
        state = (f"[red]{escape(m['error'])}[/]" if m.get("error") else f"production {m['production'] or 'none'}, "
                 f"{len(m['versions'])} versions, " + ("[green]in sync[/]" if m["in_sync"] else "[yellow]behind[/]"))
        console.print(f"mirror {m['uri']}: {state}", highlight=False, soft_wrap=True)


def _print_continual(continual: dict | None) -> None:
    """The production lineage's accuracy matrix, BWT and forgetting (tasks/registry/matrix.py)."""
    from tasks.registry.matrix import metric_label

    if not continual:
        return
    record = continual["accuracy_matrix"]
    score = metric_label(record.get("metric"))
    table = Table(title=f"{score} matrix: rows = versions (learned batch), columns = batch held-out sets")
    for column in ["version", "learned", *[str(b)[:12] for b in record["batches"]]]:
        table.add_column(column)
    for row, values in zip(record["rows"], record["accuracy"]):
        table.add_row(str(row["version"]), str(row["batch_id"])[:12], *["-" if v is None else f"{v:.3f}" for v in values])
    console.print(table)
    fmt = lambda v: "-" if v is None else f"{v:+.3f}"  # noqa: E731
    console.print(f"BWT {fmt(continual.get('bwt'))}, average forgetting {fmt(continual.get('average_forgetting'))}")
    forgot = ", ".join(f"{k} {v:+.3f}" for k, v in sorted((continual.get("slice_forgetting") or {}).items()))
    if forgot:
        console.print(f"forgetting per slice: {forgot}", soft_wrap=True)


@app.command()
def status(workspace: Path = typer.Option(Path("."), help="Repository root to work in."),
           as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout.")) -> None:
    """Production, its lineage back to the first batch, aliases, integrity of every version."""
    from tasks.drift.policy import pending_report

    report = status_report(_registry(workspace))
    report["pending"] = pending_report(workspace.resolve() / "data")
    mirror = _mirror(workspace)
    if mirror:
        report["mirror"] = mirror_report(_registry(workspace), mirror)
    if as_json:
        typer.echo(json.dumps(report, indent=2, default=str))
    else:
        _print_status(report)


@app.command()
def audit(version: str = typer.Argument(..., help="Registry version to rebuild, e.g. v0002."),
          workspace: Path = typer.Option(Path("."), help="Repository root (git + DVC) to work in."),
          set_: list[str] = typer.Option([], "--set", help="What-if: replay with a param changed."),
          as_json: bool = typer.Option(False, "--json", help="The report as one JSON object.")) -> None:
    """Rebuild VERSION from its recorded git revision, DVC data and params; compare.
    Exit 0 PASS, 3 FAIL (the report names what differs), 2 when it cannot be audited."""
    _quiet_defaults()
    from tasks.audit.record import AuditError
    from tasks.audit.audit_run import audit_version
    from tasks.registry.store import RegistryError

    try:
        report = audit_version(workspace, version, _overrides(set_))
    except (AuditError, RegistryError) as exc:
        console.print(f"[red]cannot audit:[/] {exc}", highlight=False)
        raise typer.Exit(2)
    typer.echo(json.dumps(report.to_dict(), indent=2, default=str) if as_json else report.text())
    raise typer.Exit(0 if report.passed else 3)


def main() -> None:
    try:
        app()
    except SystemExit:
        raise
    except Exception as exc:  # the contract: 1 for anything unexpected, with a readable line
        console.print(f"[red]unexpected failure:[/] {type(exc).__name__}: {exc}")
        sys.exit(1)


if __name__ == "__main__":
    main()
