"""First deliveries of a few hundred rows: does the base model learn at all?

A team's first delivery is often small. With a fixed epoch count a few hundred rows get a
few dozen optimizer steps, and a freshly initialised head learns slowly at the encoder's
learning rate: a 274-sentence NER delivery ended at entity F1 0.00 (every token O). This
benchmark trains the base MiniLM on first deliveries of 100, 300 and 1,000 rows (text:
Banking77, 77 intents; NER: CoNLL-2003, 4 entity types, when ../shared/data has it) with
the shipped params and with each training-budget option on top, through the finetune
stage itself, and scores a fixed test sample. It also says whether a model collapsed: the
share of test rows given the most common answer (text) or of sentences tagged all-O (NER).

    python -m benchmarks.first_delivery [--sizes 100,300,1000] [--kinds classification,ner]

writes benchmarks/results/first_delivery.json after every run.
"""

from __future__ import annotations

import argparse
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
from benchmarks.ner_bench import load_conll, sample
from benchmarks.streams import BANKING_DIR, REPO, SHARED_DATA
from tasks.core.config import load_params, with_overrides

RESULTS = REPO / "benchmarks" / "results"
# what each run adds to params.yaml; "shipped" is params.yaml as it is
OPTIONS = {
    "shipped": {},
    "epochs only": {"train.min_steps": 0},
    "+ head lr x10": {"train.head_lr_scale": 10.0},
    # no optimizer step: LDA from the frozen encoder's features (sentence classifiers only)
    "stats head": {"train.stats_head": "alone"},
}
TEXT_ONLY = {"stats head"}
NER_BASE = {"task.type": "ner", "model.max_length": 128}


def text_rows(n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    train = pd.read_csv(BANKING_DIR / "train.csv").rename(columns={"category": "label"})
    test = pd.read_csv(BANKING_DIR / "test.csv").rename(columns={"category": "label"})
    return sample(train, n, seed), sample(test, 1000, 0)


def ner_rows(n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    folder = SHARED_DATA / "conll2003"
    return sample(load_conll(folder, "train"), n, seed), sample(load_conll(folder, "test"), 500, 0)


def run(kind: str, n: int, option: str, params, work: Path, seed: int = 0) -> dict:
    from tasks.kinds import get_kind
    from tasks.train.finetune import train_candidate

    plug = get_kind(kind)
    train, test = (text_rows if kind == "classification" else ner_rows)(n, seed)
    train = train.assign(slice="first", batch_id="first")
    exam = test.assign(slice="first", batch_id="first")
    started = time.perf_counter()
    cand = train_candidate(training=plug.training, champion_dir=None, train_rows=train, out_dir=work / "cand",
                           params=params)
    sheet = plug.evaluate(Path(cand.path), exam, ["first"], params)
    rows = sheet["rows"]
    if kind == "classification":
        collapse = float(pd.Series(rows["pred"]).value_counts(normalize=True).iloc[0])
    else:
        collapse = float(np.mean([set(p.split()) <= {"O"} for p in rows["pred"]]))
    return {"kind": kind, "rows": n, "option": option, "overrides": OPTIONS[option],
            "score": sheet["all"]["overall"][plug.metric], "metric": plug.metric,
            "collapse_share": round(collapse, 4), "steps": cand.train.steps, "epochs": cand.train.epochs,
            "stopped_early": cand.train.stopped_early, "final_loss": cand.train.final_loss,
            "train_seconds": cand.train.seconds, "seconds": round(time.perf_counter() - started, 1)}


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100,300,1000")
    ap.add_argument("--kinds", default="classification,ner")
    ap.add_argument("--options", default=",".join(OPTIONS))
    ap.add_argument("--out", type=Path, default=RESULTS / "first_delivery.json")
    args = ap.parse_args(argv)
    from flows.cli import offline_env

    offline_env()
    base = load_params(REPO / "params.yaml")
    result = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
              "command": "python -m benchmarks.first_delivery " + shlex.join(argv if argv is not None else sys.argv[1:]),
              "runs": [], "skipped": {}}
    for kind in args.kinds.split(","):
        if kind == "ner" and not (SHARED_DATA / "conll2003" / "train.txt").exists():
            result["skipped"]["ner"] = f"CoNLL-2003 not found under {SHARED_DATA} (not redistributable)"
            continue
        for n in map(int, args.sizes.split(",")):
            for option in args.options.split(","):
                if kind == "ner" and option in TEXT_ONLY:
                    continue
                params = with_overrides(base, (NER_BASE if kind == "ner" else {}) | OPTIONS[option], option)
                with tempfile.TemporaryDirectory(prefix="ratchet-first-") as tmp:
                    got = run(kind, n, option, params, Path(tmp))
                print(json.dumps(got), flush=True)
                result["runs"].append(got)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(result, indent=2) + "\n")
    return args.out


if __name__ == "__main__":
    main()
