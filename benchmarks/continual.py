"""Continual-learning benchmark: how close incremental updates get to joint training,
at what share of the cost of retraining on everything after every batch.

    python -m benchmarks.continual --scale small            # what `make bench` runs
    python -m benchmarks.continual --stream clinc150 --scale full

Each stream (benchmarks/streams.py) runs under each strategy (benchmarks/strategies.py)
through the real stage functions (benchmarks/harness.py); every strategy runs in a fresh
process so its peak memory is its own. Writes benchmarks/results/continual_<stream>_<scale>.json
with the issue's shape (`stream`, `scale`, `date`, `machine`, `command`, `strategies`)
plus `skipped`, `details` and `stream_info`, and PNG plots next to it.
`retrain_each` is not run: its cost is computed from the batch sizes and joint's speed.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import datetime as dt
import json
import multiprocessing
import os
import platform
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.streams import REPO, SHARED_DATA, Batch, Caps, StreamUnavailable, fingerprint, load_stream

RESULTS = REPO / "benchmarks" / "results"
SCALES: dict[str, dict[str, Any]] = {
    # about half an hour for everything on a quiet 2-core CPU: 30 train / 10 held-out rows per
    # CLINC150 intent (MiniLM reaches ~0.83 on a new domain in 2 epochs), fewer elsewhere
    "small": {"caps": {"clinc150": Caps(30, 10, 10), "banking77": Caps(20, None, 10), "fpb": Caps(60, None, 30)},
              "overrides": {"train.epochs": 2}, "sweep": [5.0],
              # every strategy of every stream would take over an hour on a 2-core CPU:
              # the small scale runs the bounds, the defaults and the 5% reservoir
              # baseline (CLINC150's replay@5% while the defaults are plain reservoir);
              # --strategies runs any other at this scale
              "strategies": {"clinc150": ["naive", "replay", "replay@5%", "reservoir@5%", "joint"],
                             "banking77": ["naive", "replay", "joint"],
                             "fpb": ["naive", "replay", "joint"]}},
    "full": {"caps": {}, "overrides": {}, "sweep": [1.0, 2.0, 5.0, 10.0], "strategies": {}},
}
LEFT_OUT = "not run at --scale {scale} (time); `--strategies {{name}}` or --scale full runs it"
SWEEP_STREAMS = {"clinc150"}


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def machine(threads: int | None = None) -> dict:
    import torch

    from tasks.core.config import TrainConfig
    from tasks.train.trainloop import pick_device

    info = {"platform": platform.platform(), "cpu": cpu_model(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": threads or torch.get_num_threads(), "cuda": torch.cuda.is_available(),
            # what train.precision: auto picks here (bf16 autocast needs AVX512-BF16 on a CPU)
            "autocast": "bf16" if pick_device(TrainConfig())[1] is not None else "fp32",
            "load_avg_1m_at_start": round(os.getloadavg()[0], 2)}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_strategy(name: str, batches: list[Batch], params, gate: str, joint: bool, workdir: str,
                 threads: int | None = None) -> dict:
    """One strategy over the stream (in its own process when isolated)."""
    from flows.cli import offline_env

    offline_env()
    import torch
    import transformers

    if threads:
        torch.set_num_threads(threads)

    transformers.utils.logging.disable_progress_bar()  # one bar per model load drowns the log
    from benchmarks.harness import run_incremental, run_joint

    with tempfile.TemporaryDirectory(dir=workdir, prefix=f"{name.replace('%', 'pct')}-") as tmp:
        run = run_joint(batches, params, Path(tmp)) if joint else run_incremental(batches, params, Path(tmp), gate)
    return {"result": run.result(joint=joint), "batches": run.batches}


def _pool(jobs: int) -> cf.ProcessPoolExecutor:
    # a fresh process per strategy (max_tasks_per_child=1), so its peak memory is its own
    return cf.ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                                  max_tasks_per_child=1)


def default_jobs() -> int:
    """Two strategies at a time where there are two cores or more: on this 2-core CPU two
    one-thread processes train ~1.4x more samples per second in all than one two-thread
    process (small matrices scale poorly across threads; one process's evaluation and
    model loading overlap the other's training)."""
    return 2 if (os.cpu_count() or 1) >= 2 else 1


def retrain_each(batches: list[Batch], epochs: int, joint: dict | None) -> dict:
    """Cost of fine-tuning from scratch on all data so far after every batch (not run)."""
    sizes = [len(b.train) for b in batches]
    samples = sum(sum(sizes[: i + 1]) for i in range(len(sizes))) * epochs
    rate = joint["samples_per_s"] if joint else None
    return {"acc": None, "bwt": None, "max_forgetting": None, "matrix": None, "samples": samples, "forward_rows": 0,
            "wall_s": round(samples / rate, 1) if rate else None, "samples_per_s": rate,
            "peak_mem_mb": joint["peak_mem_mb"] if joint else None, "promotions": None, "rejections": None}


class StreamRun:
    """One stream: its planned strategies and its results document, filled in as they finish.
    `progress(doc)` is called after each strategy, so a long run that is stopped keeps what
    it measured."""

    def __init__(self, stream: str, batches: list[Batch], *, scale: str, params_path: Path, overrides: dict,
                 wanted: list[str] | None, sweep: list[float], command: str, threads: int | None = None,
                 jobs: int = 1, left_out: str | None = None, progress=None):
        from benchmarks.strategies import plan

        total = sum(len(b.train) for b in batches)
        self.stream, self.batches, self.threads, self.progress = stream, batches, threads, progress
        self.params_path, self.overrides = params_path, overrides
        self.chosen = plan(params_path, overrides, total, sweep, wanted)
        if left_out:  # the scale's own selection: say what it left out and how to run it
            everything = plan(params_path, overrides, total, sweep, None)
            self.chosen.skipped.update({s.name: left_out.format(name=s.name) for s in everything.strategies
                                        if s.name not in wanted})
        self.doc = {"stream": stream, "scale": scale, "date": _now(),
                    "machine": {**machine(threads), "jobs": jobs}, "command": command, "strategies": {},
                    "skipped": dict(self.chosen.skipped), "details": {}, "stream_info": {
                        "batches": [{"name": b.name, "train": len(b.train), "dev": len(b.split.dev),
                                     "test": len(b.test), "labels": int(b.train["label"].nunique())} for b in batches],
                        "train_rows": total, "fingerprint": fingerprint(batches), "overrides": overrides}}

    def args(self, s, workdir: Path) -> tuple:
        print(f"[{self.stream}] {s.name}: {s.note}", flush=True)
        return (s.name, self.batches, self.chosen.params[s.name], s.gate, s.joint, str(workdir), self.threads)

    def record(self, s, out: dict | None, exc: BaseException | None) -> None:
        doc = self.doc
        if exc is not None:  # one broken strategy must not lose the others' numbers
            doc["skipped"][s.name] = f"failed: {type(exc).__name__}: {exc}"
            return
        p = self.chosen.params[s.name]
        doc["strategies"][s.name] = out["result"]
        doc["details"][s.name] = {"note": s.note, "gate": s.gate, "overrides": s.overrides,
                                  "replay": dataclasses.asdict(p.replay), "train": dataclasses.asdict(p.train),
                                  "batches": out["batches"]}
        print(f"[{self.stream}] {s.name}: acc {out['result']['acc']} in {out['result']['wall_s']:.0f} s", flush=True)
        if self.progress:
            self.progress(doc)

    def finish(self) -> dict:
        doc, chosen = self.doc, self.chosen
        order = [s.name for s in chosen.strategies]  # the plan's order, whatever order they finished in
        doc["strategies"] = {k: doc["strategies"][k] for k in order if k in doc["strategies"]}
        doc["details"] = {k: doc["details"][k] for k in order if k in doc["details"]}
        for name, twin in chosen.same_as.items():
            if twin in doc["strategies"]:
                doc["strategies"][name] = doc["strategies"][twin]
                doc["details"][name] = {"note": f"same settings as {twin}; not run twice"}
        epochs = load_epochs(self.params_path, self.overrides)
        doc["strategies"]["retrain_each"] = retrain_each(self.batches, epochs, doc["strategies"].get("joint"))
        doc["details"]["retrain_each"] = {"note": "estimated: samples from batch sizes x epochs, time at joint's samples/s"}
        doc["machine"]["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
        return doc


def run_all(runs: list[StreamRun], workdir: Path, *, isolate: bool, jobs: int, on_done=lambda run: None) -> None:
    """Every strategy of every stream: one after another in this process, or `jobs` at a
    time in fresh processes drawn from one pool for all streams, so the end of one stream
    does not leave a core idle. `on_done(run)` once each stream's last strategy is in."""
    if not isolate:
        for run in runs:
            for s in run.chosen.strategies:
                try:
                    out, exc = run_strategy(*run.args(s, workdir)), None
                except Exception as e:
                    out, exc = None, e
                run.record(s, out, exc)
            on_done(run)
        return
    left = {id(run): len(run.chosen.strategies) for run in runs}
    for run in runs:
        if not left[id(run)]:
            on_done(run)
    with _pool(jobs) as pool:
        running = {pool.submit(run_strategy, *run.args(s, workdir)): (run, s)
                   for run in runs for s in run.chosen.strategies}
        for fut in cf.as_completed(running):
            run, s = running[fut]
            run.record(s, None if fut.exception() else fut.result(), fut.exception())
            left[id(run)] -= 1
            if not left[id(run)]:
                on_done(run)


def threads_for(jobs: int, threads: int | None) -> int | None:
    """Torch threads per strategy process: as asked, else the cores shared out between jobs."""
    return threads or (max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None)


def run_stream(stream: str, batches: list[Batch], *, scale: str, params_path: Path, overrides: dict,
               wanted: list[str] | None, sweep: list[float], isolate: bool, workdir: Path,
               command: str, threads: int | None = None, jobs: int = 1, left_out: str | None = None,
               progress=None) -> dict:
    """All strategies over one stream; returns the results document."""
    jobs = max(1, jobs) if isolate else 1
    run = StreamRun(stream, batches, scale=scale, params_path=params_path, overrides=overrides, wanted=wanted,
                    sweep=sweep, command=command, threads=threads_for(jobs, threads), jobs=jobs,
                    left_out=left_out, progress=progress)
    run_all([run], workdir, isolate=isolate, jobs=jobs)
    return run.finish()


def load_epochs(params_path: Path, overrides: dict) -> int:
    from tasks.core.config import load_params

    return load_params(params_path, overrides).train.epochs


def _value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.continual", description=__doc__.splitlines()[0])
    ap.add_argument("--stream", default="all", help="clinc150, banking77, fpb or all (default)")
    ap.add_argument("--scale", default="small", choices=sorted(SCALES))
    ap.add_argument("--strategies", default=None, help="comma-separated subset (default: all)")
    ap.add_argument("--sweep", default=None,
                    help="buffer sizes in %% of training rows (default on clinc150: 1,5,10 small, 1,2,5,10 full)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="params override for every strategy, e.g. model.base=tiny")
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--shared-data", type=Path, default=SHARED_DATA)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--caps", default=None, metavar="TRAIN,DEV,TEST", help="rows per label per split (0 = all)")
    ap.add_argument("--batches", type=int, default=None, help="only the first N batches of each stream")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per strategy (default: torch's)")
    ap.add_argument("--jobs", type=int, default=None,
                    help="strategies run at once, each in its own process (default: 2 on 2+ cores)")
    ap.add_argument("--no-isolate", action="store_true", help="run strategies in this process")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--merge", type=Path, default=None, metavar="JSON",
                    help="lay the strategies run now over this earlier result of the same stream and scale "
                         "(each keeps the date, command and machine of its own run) and write it to --out")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> list[Path]:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    from flows.cli import offline_env

    offline_env()
    scale = SCALES[args.scale]
    overrides = {**scale["overrides"], **{k: _value(v) for k, _, v in (s.partition("=") for s in args.set)}}
    streams = ["clinc150", "banking77", "fpb"] if args.stream == "all" else args.stream.split(",")
    chosen = args.strategies.split(",") if args.strategies else None
    command = shlex.join(["python", "-m", "benchmarks.continual", *argv])
    args.out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    jobs = max(1, args.jobs or default_jobs()) if not args.no_isolate else 1
    runs: list[StreamRun] = []
    for stream in streams:
        caps = _caps(scale["caps"].get(stream, Caps()), args)
        path = args.out / f"continual_{stream}_{args.scale}.json"
        try:
            batches = load_stream(stream, caps, args.shared_data)
        except StreamUnavailable as exc:
            print(f"[{stream}] skipped: {exc}", flush=True)
            doc = {"stream": stream, "scale": args.scale, "date": _now(), "command": command, "strategies": {},
                   "skipped_stream": str(exc)}
            written.append(_write(doc, path))
            continue
        sweep = [float(x) for x in args.sweep.split(",")] if args.sweep else (
            scale["sweep"] if stream in SWEEP_STREAMS else [])
        wanted = chosen or scale["strategies"].get(stream)
        runs.append(StreamRun(stream, batches, scale=args.scale, params_path=args.params, overrides=overrides,
                              wanted=wanted, sweep=sweep, command=command, threads=threads_for(jobs, args.threads),
                              jobs=jobs, left_out=LEFT_OUT.format(scale=args.scale) if wanted and not chosen else None,
                              progress=lambda partial, path=path: _write({**partial, "partial": True}, path)))

    def done(run: StreamRun) -> None:
        path = args.out / f"continual_{run.stream}_{args.scale}.json"
        doc = run.finish()
        if args.merge:
            doc = merge(json.loads(args.merge.read_text()), doc)
        _write(doc, path)
        written.append(path)
        if not args.no_plots:
            from benchmarks.plots import plot_results

            written.extend(plot_results(doc, path.with_suffix("")))

    with tempfile.TemporaryDirectory(prefix="ratchet-bench-") as work:
        run_all(runs, Path(work), isolate=not args.no_isolate, jobs=jobs, on_done=done)
    return written


def merge(earlier: dict, later: dict) -> dict:
    """`later`'s measured strategies laid over `earlier` (the same stream rows, checked by
    fingerprint): strategies run at different times, each with its own run's date,
    command and machine under `details[name]["run"]`; the rest of `earlier` stays."""
    if earlier["stream_info"]["fingerprint"] != later["stream_info"]["fingerprint"]:
        raise SystemExit(f"--merge: {later['stream']} rows differ from the earlier result's (fingerprint "
                         f"{later['stream_info']['fingerprint']} vs {earlier['stream_info']['fingerprint']})")
    measured = [k for k, d in later["details"].items() if d.get("batches")]
    out = json.loads(json.dumps(earlier))
    for details in out["details"].values():
        details.setdefault("run", {k: earlier[k] for k in ("date", "command", "machine")})
    for name in measured:
        out["strategies"][name] = later["strategies"][name]
        out["details"][name] = later["details"][name] | {"run": {k: later[k] for k in ("date", "command", "machine")}}
        out["skipped"].pop(name, None)
    out["command"] = f"{earlier['command']}; then {later['command']}"
    out["updated"] = later["date"]  # `date` and `machine` stay the earlier run's: the header's
    return out


def _caps(caps: Caps, args: argparse.Namespace) -> Caps:
    if args.caps:
        caps = Caps(*[int(x) or None for x in args.caps.split(",")])
    return dataclasses.replace(caps, batches=args.batches) if args.batches else caps


def _write(doc: dict, path: Path) -> Path:
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {path}", flush=True)
    return path


if __name__ == "__main__":
    main()
