"""NER benchmark: CoNLL-2003 as a stream where entity types arrive over time, and joint.

    python -m benchmarks.ner_bench --scale small        # a sample of train and test sentences
    python -m benchmarks.ner_bench --scale full         # all 14,041 train / 3,453 test sentences

CoNLL-2003 is read from ../shared/data/conll2003/{train,test}.txt (never committed: the
Reuters text is not licensed for redistribution); without it the benchmark says so and
exits 0. The stream delivers three disjoint thirds of the train sentences: PER and LOC
first, then ORG, then MISC; each delivery is annotated with the types that exist by then
(later types are O, as a team that has not started labelling them would deliver). Each
stage fine-tunes the previous stage's tagger (head grown for the new type) on its third
plus replayed sentences, through the same stage functions as the flow
(tasks/ner/train.py, tasks/ner/evaluate.py). `naive` is the same stream without replay
(each stage fine-tunes on its third alone: the lower bound, and the cost the issue's
"1.5x naive" is measured against). `joint` trains once on all train sentences with all
four types. Entity-level micro F1 on the test split (CoNLL convention) is
reported beside the published BERT-base figure (92.4 test F1, Devlin et al. 2019) for scale.
Writes benchmarks/results/ner_conll2003_<scale>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.continual import machine
from benchmarks.streams import REPO, SHARED_DATA

RESULTS = REPO / "benchmarks" / "results"
STAGES = [["PER", "LOC"], ["ORG"], ["MISC"]]
BERT_BASE_TEST_F1 = 92.4
SCALES = {
    # on a quiet 2-core CPU; `--train/--test/--set` shrink it further on a busy one
    "small": {"train": 1500, "test": 800, "overrides": {}},
    "full": {"train": 0, "test": 0, "overrides": {}},
}
# The tagging recipe: 3 epochs at lr 3e-4, batches of 16 sentences (MiniLM's token head
# learns slowly at the classification default of 1e-4: one epoch of 300 sentences at 1e-4
# left entity F1 at 0); every stage replays as many old sentences as it brings new ones.
BASE_OVERRIDES = {"task.type": "ner", "model.max_length": 128, "train.early_stopping_patience": 0,
                  "train.epochs": 3, "train.lr": 3.0e-4, "train.batch_size": 16,
                  "replay.capacity": 2000, "replay.ratio": 1.0}


def load_conll(folder: Path, split: str) -> pd.DataFrame:
    from tasks.ner.conll import read_conll

    return read_conll((folder / f"{split}.txt").read_text(encoding="utf-8")).drop(columns="line")


def sample(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    if not n or n >= len(frame):
        return frame.reset_index(drop=True)
    return frame.sample(n=n, random_state=seed).reset_index(drop=True)


def restrict(tags, keep: set[str]) -> list[str]:
    """Tags of types not in `keep` become O (whole entities, so IOB2 stays well-formed)."""
    return [t if t == "O" or t[2:] in keep else "O" for t in tags]


def _evaluate(path: str, test: pd.DataFrame, types: set[str], params) -> dict:
    from tasks.ner.evaluate import evaluate_tagger
    from tasks.ner.model import load_tagger

    started = time.perf_counter()
    sheet = evaluate_tagger(load_tagger(path), test, "test", batch_size=params.evaluate.batch_size,
                            max_length=params.model.max_length, annotated={"test": types})["all"]["overall"]
    return {"f1": sheet["f1"], "precision": sheet["precision"], "recall": sheet["recall"],
            "macro_f1": sheet["macro_f1"], "per_type_f1": {k: v["f1"] for k, v in sheet["per_type"].items()},
            "eval_seconds": round(time.perf_counter() - started, 1)}


def run_joint(train: pd.DataFrame, test: pd.DataFrame, params, work: Path) -> dict:
    from tasks.train.finetune import train_candidate
    from tasks.ner.train import TAGGERS

    rows = train.assign(slice="joint", batch_id="joint")
    cand = train_candidate(training=TAGGERS, champion_dir=None, train_rows=rows, out_dir=work / "joint", params=params)
    return {"train_sentences": len(rows), "train_seconds": cand.train.seconds, "samples": cand.train.samples,
            "test": _evaluate(cand.path, test, {t for s in STAGES for t in s}, params)}


def run_stream(train: pd.DataFrame, test: pd.DataFrame, params, work: Path, seed: int,
               progress=lambda stages: None) -> dict:
    """Stage k: its third of the sentences, tagged with the types arrived so far.
    `progress(stages)` after each stage, so a run cut short keeps what it measured."""
    from tasks.train.finetune import train_candidate
    from tasks.ner.train import TAGGERS

    thirds = np.array_split(np.random.default_rng(seed).permutation(len(train)), len(STAGES))
    arrived: set[str] = set()
    champion, stages = None, []
    for k, (types, idx) in enumerate(zip(STAGES, thirds)):
        arrived |= set(types)
        rows = train.iloc[np.sort(idx)].reset_index(drop=True)
        rows = rows.assign(tags=[restrict(t, arrived) for t in rows["tags"]], slice=f"stage{k + 1}",
                           batch_id=f"stage{k + 1}")
        cand = train_candidate(training=TAGGERS, champion_dir=champion, train_rows=rows, out_dir=work / f"stage{k + 1}", params=params)
        stages.append({"stage": k + 1, "new_types": cand.new_labels, "types_so_far": sorted(arrived),
                       "train_sentences": len(rows), "replayed": cand.train.replay_rows, "samples": cand.train.samples,
                       "train_seconds": cand.train.seconds, "test": _evaluate(cand.path, test, set(arrived), params)})
        champion = cand.path
        print(json.dumps(stages[-1]), flush=True)
        progress(stages)
    return {"stages": stages, "final_test_f1": stages[-1]["test"]["f1"]}


def run_mode(mode: str, train: pd.DataFrame, test: pd.DataFrame, params, work: str, seed: int,
             threads: int | None = None, progress=lambda stages: None) -> dict:
    """One mode, timed; in its own process when the modes run side by side."""
    from flows.cli import offline_env

    offline_env()
    if threads:
        import torch

        torch.set_num_threads(threads)
    started = time.perf_counter()
    if mode == "joint":
        out = run_joint(train, test, params, Path(work))
    else:  # stream, or naive: the same stream with nothing replayed
        if mode == "naive":
            params = dataclasses.replace(params, replay=dataclasses.replace(params.replay, capacity=0, ratio=0.0))
        out = run_stream(train, test, params, Path(work) / mode, seed, progress=progress)
    return out | {"wall_seconds": round(time.perf_counter() - started, 1)}


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ner_bench", description=__doc__.splitlines()[0])
    ap.add_argument("--scale", default="small", choices=sorted(SCALES))
    ap.add_argument("--modes", default="stream,naive,joint",
                    help="comma-separated: stream (with replay), naive (without), joint (default: all three)")
    ap.add_argument("--data", type=Path, default=SHARED_DATA / "conll2003")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="params override")
    ap.add_argument("--train", type=int, default=None, help="train sentences (0 = all; default: the scale's)")
    ap.add_argument("--test", type=int, default=None, help="test sentences (0 = all; default: the scale's)")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--jobs", type=int, default=1,
                    help="2 = stream and joint side by side, one process and cpus//2 torch threads each")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--merge", type=Path, default=None, metavar="JSON",
                    help="an earlier result of the same scale: its modes not run now are kept (with their "
                         "command and date), the ones run now replace them")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> Path | None:
    import yaml

    from tasks.core.config import load_params

    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not (args.data / "train.txt").exists():
        print(f"ner_bench: skipped, CoNLL-2003 not found at {args.data} (it is never committed: see "
              "benchmarks/README and ../shared/data/README.md)")
        return None
    scale = SCALES[args.scale]
    overrides = BASE_OVERRIDES | scale["overrides"] | {k: yaml.safe_load(v) for k, v in
                                                        (s.split("=", 1) for s in args.set)}
    params = load_params(REPO / "params.yaml", overrides)
    n_train = scale["train"] if args.train is None else args.train
    n_test = scale["test"] if args.test is None else args.test
    train = sample(load_conll(args.data, "train"), n_train, args.seed)
    test = sample(load_conll(args.data, "test"), n_test, args.seed).assign(slice="test", batch_id="test")
    doc = {"benchmark": "ner_conll2003", "scale": args.scale, "date": dt.datetime.now(dt.timezone.utc).isoformat(
        timespec="seconds"), "machine": machine(), "command": "python -m benchmarks.ner_bench " +
        shlex.join(sys.argv[1:] if argv is None else argv), "base": params.model.base, "overrides": overrides,
        "train_sentences": len(train), "test_sentences": len(test), "stages": STAGES,
        "reference": {"bert_base_test_f1": BERT_BASE_TEST_F1, "source": "Devlin et al. 2019, Table 3"}}
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"ner_conll2003_{args.scale}.json"
    if args.merge:
        earlier = json.loads(args.merge.read_text())
        kept = [m for m in ("stream", "naive", "joint") if m in earlier and m not in args.modes.split(",")]
        doc |= {m: earlier[m] | {"measured": {"date": earlier["date"], "command": earlier["command"]}} for m in kept}

    def write(partial: bool) -> None:  # after every stage: a run cut short keeps its numbers
        out.write_text(json.dumps(doc | {"complete": not partial}, indent=2))

    modes = args.modes.split(",")
    with tempfile.TemporaryDirectory(prefix="ner-bench-") as tmp:
        if args.jobs > 1 and len(modes) > 1:
            import concurrent.futures as cf
            import multiprocessing
            import os

            threads = max(1, (os.cpu_count() or 1) // args.jobs)
            doc["machine"] |= {"jobs": args.jobs, "torch_threads": threads}
            with cf.ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn"),
                                        max_tasks_per_child=1) as pool:
                running = {pool.submit(run_mode, m, train, test, params, tmp, args.seed, threads): m for m in modes}
                for fut in cf.as_completed(running):
                    doc[running[fut]] = fut.result()
                    print(json.dumps({running[fut]: doc[running[fut]]}), flush=True)
                    write(True)
        else:
            for mode in modes:
                doc[mode] = run_mode(mode, train, test, params, tmp, args.seed, progress=lambda stages, m=mode: (
                    doc.update({m: {"stages": stages}}), write(True)))
                print(json.dumps({mode: doc[mode]}), flush=True)
                write(True)
    write(False)
    print(out)
    return out


if __name__ == "__main__":
    main()
