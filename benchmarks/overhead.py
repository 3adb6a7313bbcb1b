"""What the platform costs: the whole `retrain` flow against the bare training function.

    python -m benchmarks.overhead                 # 1,500- and 13,500-row deliveries + 1k/10k/100k stage timings
    python -m benchmarks.overhead --domains 1     # the 1,500-row delivery only
    python -m benchmarks.overhead --skip-flow     # stage timings only (no training)
    python -m benchmarks.overhead --path stats    # the class-statistics path (overhead_stats.json)
    python -m benchmarks.overhead --path ner      # a CoNLL-2003 tagger (overhead_ner.json)

`--path finetune` (the default) measures a fine-tune (`train.stats_head: off`): the bare
cost the issue's overhead targets are set against. `--path stats` measures what
params.yaml ships for a sentence classifier (`train.stats_head: alone`): its bare cost is
one forward pass a row, so the platform's stages are most of a run; no loop comparison.
`--path ner` measures a tagger (`task.type: ner`) on CoNLL-2003 sentences read from
../shared/data/conll2003 (not redistributable: the run stops with the reason when it is
absent): a first delivery of 500 sentences, then 1,500 training sentences per `--domains`
unit; no loop comparison (benchmarks/bare_loop.py is the sentence-classification loop).

1. Flow vs bare training. In a fresh workspace, CLINC150's first domain is delivered
   (this starts Prefect's temporary server and creates the champion; timed apart), then
   the next domain (1,500 training rows; with `--domains 9` the next nine as one delivery,
   13,500 rows) runs through the whole `retrain` flow. Each stage's time is read back from Prefect's own task-run records; orchestration is the
   flow's wall time not spent inside any task. Then `train_candidate` alone fine-tunes
   the same champion on the same rows: the bare cost of learning the batch.
   Last, `trainer_vs_bare`: the training loop itself against a plain PyTorch loop on the
   same rows and batches (benchmarks/bare_loop.py), as a ratio of samples/s.
2. Stage timings for 1k, 10k and 100k-row batches: intake (parse + split), validation
   (Great Expectations) and drift (Evidently) through the same task functions the flow
   calls. Rows are drawn with replacement from CLINC150 and Banking77 texts.

Writes benchmarks/results/overhead.json (overhead_stats.json for `--path stats`,
overhead_ner.json for `--path ner`).
"""

from __future__ import annotations

import argparse
import math
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from benchmarks.continual import RESULTS, _now, _write, machine
from benchmarks.streams import REPO

SIZES = [1_000, 10_000, 100_000]
# --path: (overrides, results file)
PATHS = {"finetune": ({"train.stats_head": "off"}, "overhead.json"),
         "stats": ({"train.stats_head": "alone"}, "overhead_stats.json"),
         # the same entity types in both deliveries: the shipped retrain policy would skip the second
         "ner": ({"task.type": "ner", "retrain.when": "always"}, "overhead_ner.json")}
NER_FIRST = 500  # sentences in the NER path's first delivery (it creates the champion)
EVALUATION = {"evaluate", "gate"}


def _stage(task_run_name: str) -> str:
    return task_run_name.rsplit("-", 1)[0]


def task_seconds(flow_run_id, patience_s: float = 30.0) -> dict[str, float]:
    """Seconds per stage from the Prefect API. Task states arrive as events, so wait
    until every task run has an end time and no new one appeared for a second."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline, last = time.monotonic() + patience_s, -1
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            done = [r for r in runs if r.end_time is not None and r.start_time is not None]
            if (len(done) == len(runs) == last) or time.monotonic() > deadline:
                break
            last = len(runs)
            time.sleep(1.0)
    out: dict[str, float] = {}
    for r in done:
        out[_stage(r.name)] = out.get(_stage(r.name), 0.0) + (r.end_time - r.start_time).total_seconds()
    return out


def flow_vs_bare(params_path: Path, overrides: dict, workdir: Path, domains: int = 1,
                 compare_loops: bool = True) -> dict:
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

    # Prefect may already be imported (and its settings read) before offline_env ran
    with temporary_settings({PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 180}):
        return _flow_vs_bare(params_path, overrides, workdir / f"domains-{domains}", domains, compare_loops)


def deliveries(landing: Path, domains: int) -> tuple[Path, Path]:
    """CLINC150's first domain, then the next `domains` domains as one delivery (1,500
    training rows a domain)."""
    from flows.stream import write_clinc150_batches

    paths = write_clinc150_batches(landing / "parts", 1 + domains)
    second = landing / f"02_next_{domains}_domains.csv"
    pd.concat([pd.read_csv(p) for p in paths[1:]], ignore_index=True).to_csv(second, index=False)
    first = landing / paths[0].name
    shutil.move(paths[0], first)
    shutil.rmtree(landing / "parts")
    return first, second


def conll_deliveries(landing: Path, domains: int, test_share: float) -> tuple[Path, Path]:
    """CoNLL-2003's first NER_FIRST training sentences, then enough of the next ones for
    1,500 training sentences a unit after the held-out share (JSONL deliveries)."""
    from benchmarks.ner_bench import load_conll
    from benchmarks.streams import SHARED_DATA
    from tasks.ner.conll import to_jsonl

    folder = SHARED_DATA / "conll2003"
    if not (folder / "train.txt").exists():
        raise SystemExit(f"--path ner needs CoNLL-2003 at {folder} (not redistributable, never committed)")
    sentences = load_conll(folder, "train")
    wanted = NER_FIRST + math.ceil(1500 * domains / (1 - test_share))
    landing.mkdir(parents=True, exist_ok=True)
    first, second = landing / "01_first.jsonl", landing / f"02_next_{domains}.jsonl"
    first.write_text(to_jsonl(sentences.iloc[:NER_FIRST]), encoding="utf-8")
    second.write_text(to_jsonl(sentences.iloc[NER_FIRST:wanted]), encoding="utf-8")
    return first, second


def _flow_vs_bare(params_path: Path, overrides: dict, workdir: Path, domains: int, compare_loops: bool) -> dict:
    from flows.retrain import retrain
    from tasks.core.config import load_params
    from tasks.core.workspace import Workspace
    from tasks.kinds import get_kind
    from tasks.train.finetune import train_candidate
    from tasks.intake.batch import parse_bytes
    from tasks.registry.store import Registry

    ws = workdir / "ws"
    ws.mkdir(parents=True)
    shutil.copyfile(params_path, ws / "params.yaml")
    params = load_params(ws / "params.yaml", overrides)
    kind = get_kind(params.task.type)
    first, second = conll_deliveries(ws / "data" / "landing", domains, params.intake.test_share) \
        if params.task.type == "ner" else deliveries(ws / "data" / "landing", domains)
    started = time.perf_counter()
    retrain(batch=str(first), workspace=str(ws), overrides=overrides)
    warmup_s = time.perf_counter() - started

    reg = Registry(ws / "models")
    before = reg.resolve("production")
    started = time.perf_counter()
    state = retrain(batch=str(second), workspace=str(ws), overrides=overrides, return_state=True)
    wall = time.perf_counter() - started
    outcome = state.result()
    stages = task_seconds(state.state_details.flow_run_id)

    raw = second.read_bytes()
    frame = kind.parse(raw, second.name, "utf-8")
    frame = parse_bytes(raw, second.name) if frame is None else frame
    split, _ = kind.split(frame, "bare", params.intake.test_share, Workspace.at(ws), [])
    champion = reg.path(before) if before else None  # what the flow trained from
    started = time.perf_counter()  # the same rows as the flow's finetune stage: train, and dev for early stopping
    bare = train_candidate(champion_dir=champion, train_rows=split.train, dev_rows=split.dev, out_dir=workdir / "bare",
                           params=params, training=kind.training)
    bare_s = time.perf_counter() - started
    loop = trainer_vs_bare(champion, split.train, split.dev, params, workdir) if compare_loops else None
    print(f"[trainer vs bare] {loop}", flush=True)
    return {"trainer_vs_bare": loop} | summarize(wall, stages, bare_s, warmup_s, len(split.train), outcome["status"], bare.train.samples) | {
        "bare_train": {k: getattr(bare.train, k) for k in ("device", "precision", "samples_per_s", "processes",
                                                           "samples_per_s_per_process", "peak_memory_mb",
                                                           "peak_memory_kind", "steps")},
        "bare_train_mean_tokens": mean_tokens(champion or params.model.base, split.train, params.model.max_length)}


def trainer_vs_bare(champion: str | None, rows: pd.DataFrame, dev: pd.DataFrame, params, workdir: Path) -> dict:
    """Ratchet's trainer (`finetune`: dev loss each epoch, early stopping, checkpoints every
    `train.checkpoint_every` steps, progress) against a plain PyTorch loop
    (benchmarks/bare_loop.py) on the same rows from the same weights, bare first.
    Replay and distillation are left out: both loops learn `rows` alone."""
    from benchmarks.bare_loop import bare_finetune
    from tasks.train.finetune import SENTENCES
    from tasks.train.trainloop import TrainSet, finetune

    warm = champion is not None
    clf, _, _ = SENTENCES.starting_point(champion, rows, params)
    bare = bare_finetune(clf, rows, params.train, params.model.max_length)
    clf, _, _ = SENTENCES.starting_point(champion, rows, params)
    started = time.perf_counter()
    report = finetune(clf, TrainSet(rows, 0, dev, None, warm=warm), cfg=params.train, model_cfg=params.model,
                      run_dir=workdir / "trainer.run")
    seconds = time.perf_counter() - started
    trainer = {"samples": report.samples, "steps": report.steps, "seconds": round(seconds, 2),
               "samples_per_s": round(report.samples / seconds, 1), "stopped_early": report.stopped_early,
               "checkpoint_every": params.train.checkpoint_every, "dev_rows": len(dev),
               "dev_loss_s": report.dev_s, "checkpoint_s": report.checkpoint_s}
    # the loop's own cost per step, apart from the two things it does that a bare loop does not
    steps_only = seconds - report.dev_s - report.checkpoint_s
    trainer["samples_per_s_steps_only"] = round(report.samples / steps_only, 1)
    shutil.rmtree(workdir / "trainer.run", ignore_errors=True)
    return {"rows": len(rows), "bare": bare, "trainer": trainer,
            "ratio": round(trainer["samples_per_s"] / bare["samples_per_s"], 4),
            "ratio_steps_only": round(trainer["samples_per_s_steps_only"] / bare["samples_per_s"], 4)}


def mean_tokens(model: str | Path, rows: pd.DataFrame, max_length: int) -> float:
    """Mean tokens a training row (special tokens included, cut at max_length): the
    sequence length a FLOPs estimate multiplies by."""
    from transformers import AutoTokenizer

    from tasks.train.model import minilm_path

    tok = AutoTokenizer.from_pretrained(minilm_path() if str(model) in ("minilm", "tiny") else model)
    texts = rows["text"].tolist() if "text" in rows.columns else [list(t) for t in rows["tokens"]]
    lengths = [len(ids) for ids in tok(texts, truncation=True, max_length=max_length,
                                       is_split_into_words="text" not in rows.columns)["input_ids"]]
    return round(sum(lengths) / max(len(lengths), 1), 2)


def summarize(wall: float, stages: dict[str, float], bare_s: float, warmup_s: float, rows: int,
              status: str, samples: int) -> dict:
    """Shares of the flow's wall time; overhead = flow wall time minus bare training."""
    share = {k: round(v / wall, 4) for k, v in sorted(stages.items())}
    share["orchestration"] = round(max(0.0, wall - sum(stages.values())) / wall, 4)
    evaluation = sum(v for k, v in stages.items() if k in EVALUATION)
    return {
        "batch_train_rows": rows, "status": status, "flow_wall_s": round(wall, 2),
        "bare_train_s": round(bare_s, 2), "bare_train_samples": samples,
        "stage_s": {k: round(v, 2) for k, v in sorted(stages.items())}, "stage_share": share,
        "overhead_share": round((wall - bare_s) / wall, 4),
        "overhead_share_without_evaluation": round((wall - bare_s - evaluation) / wall, 4),
        "first_run_with_server_start_s": round(warmup_s, 2),
    }


def by_size(runs: list[dict]) -> dict:
    """The flow-vs-bare runs keyed by the delivery's training rows, the first size also
    under `flow_vs_bare` (the key earlier results used), and the loop comparison."""
    out = {"flow_vs_bare": runs[0], "overhead_share": {str(r["batch_train_rows"]): r["overhead_share"] for r in runs},
           "by_size": {str(r["batch_train_rows"]): r for r in runs}}
    loop = next((r["trainer_vs_bare"] for r in runs if r.get("trainer_vs_bare")), None)
    return out | ({"trainer_vs_bare": loop} if loop else {})


def synthetic_batch(rows: int, seed: int = 0) -> pd.DataFrame:
    """`rows` CLINC150 and Banking77 utterances drawn with replacement (about 20 per label)."""
    from benchmarks.streams import Caps, load_stream

    pool = pd.concat([b.train.assign(split="train") for n in ("clinc150", "banking77")
                      for b in load_stream(n, Caps())], ignore_index=True)[["text", "label", "slice"]]
    # about 20 rows per label, so every new label passes labels.min_examples_new as in a real delivery
    labels = sorted(pool["label"].unique())[: max(1, rows // 20)]
    pool = pool[pool["label"].isin(labels)]
    frame = pool.sample(n=rows, replace=True, random_state=seed).reset_index(drop=True)
    return frame.assign(text=frame["text"] + " #" + frame.index.astype(str))  # distinct rows, as in a real batch


def stage_timings(sizes: list[int], params_path: Path, workdir: Path) -> list[dict]:
    from tasks.core.config import load_params
    from tasks.drift.detect import detect_drift
    from tasks.intake.batch import parse_bytes, split_batch
    from tasks.validate.checks import validate_frame

    params = load_params(params_path)
    reference = synthetic_batch(5_000, seed=1)
    out = []
    for n in sizes:
        raw = synthetic_batch(n).to_csv(index=False).encode()
        t0 = time.perf_counter()
        frame = parse_bytes(raw, "batch.csv")
        split = split_batch(frame, "b", params.intake.test_share)
        t1 = time.perf_counter()
        checked = validate_frame(frame, params.validate, None, labels=params.labels)
        t2 = time.perf_counter()
        detect_drift(pd.concat([split.train, split.test], ignore_index=True), reference, params.drift,
                      workdir / f"drift-{n}", params.train.seed)
        t3 = time.perf_counter()
        out.append({"rows": n, "bytes": len(raw), "intake_s": round(t1 - t0, 2), "validate_s": round(t2 - t1, 2),
                    "drift_s": round(t3 - t2, 2), "validation_passed": checked.passed})
        print(f"[stages] {n} rows: {out[-1]}", flush=True)
    return out


def main(argv: list[str] | None = None) -> Path:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="python -m benchmarks.overhead", description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--domains", default="1,9", help="CLINC150 domains in the measured delivery, one run each "
                    "(1,500 training rows a domain); the trainer-vs-bare-loop comparison runs on the first")
    ap.add_argument("--skip-flow", action="store_true")
    ap.add_argument("--path", choices=sorted(PATHS), default="finetune",
                    help="what learns the batch: finetune (train.stats_head off), stats (the statistics head) "
                    "or ner (a CoNLL-2003 tagger)")
    ap.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/overhead.json "
                    "(overhead_stats.json for --path stats, overhead_ner.json for --path ner)")
    args = ap.parse_args(argv)
    out = args.out or RESULTS / PATHS[args.path][1]
    from flows.cli import offline_env

    offline_env()
    import yaml

    overrides = PATHS[args.path][0] | {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.set)}
    doc = {"date": _now(), "machine": machine(), "path": args.path,
           "command": shlex.join(["python", "-m", "benchmarks.overhead", *argv])}
    with tempfile.TemporaryDirectory(prefix="ratchet-overhead-") as tmp:
        if not args.skip_flow:
            runs = []
            for i, domains in enumerate(int(x) for x in args.domains.split(",")):
                runs.append(flow_vs_bare(args.params, overrides, Path(tmp), domains,
                                         compare_loops=i == 0 and args.path == "finetune"))
                print(f"[flow] {runs[-1]}", flush=True)
                _write(doc | by_size(runs), out)  # each size as it finishes
            doc |= by_size(runs)
        if args.path == "finetune":  # the stages before training do not depend on it
            doc["stages"] = stage_timings([int(x) for x in args.sizes.split(",")], args.params, Path(tmp))
    out.parent.mkdir(parents=True, exist_ok=True)
    return _write(doc, out)


if __name__ == "__main__":
    main()
