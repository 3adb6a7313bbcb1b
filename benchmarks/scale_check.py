"""What the scale-out settings buy on this machine: `train.processes` 1 vs 2, and the exam
in one process vs on a Dask LocalCluster (`evaluate.dask: local`).

    python -m benchmarks.scale_check [--rows 600] [--exam 1000,4000]

1. MiniLM fine-tuned from the base on `--rows` CLINC150 training rows (fp32 or the CPU's
   bf16, as `train.precision: auto` picks), one epoch, no early stopping, through the
   finetune stage: samples/s with 1 and with 2 processes.
2. The base MiniLM with a 151-intent head answering `--exam` CLINC150 test rows:
   seconds in one process (all threads) and on a LocalCluster of 2 single-thread
   workers (its start included, as a run pays it; Prefect's temporary server is started
   before, untimed: inside a retrain run it is already there), and whether the sheets agree.

Writes benchmarks/results/scale.json after each part.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from benchmarks.continual import RESULTS, _now, _write, machine
from benchmarks.streams import REPO


def clinc(split: str) -> pd.DataFrame:
    data = json.loads((REPO / "datasets" / "clinc150" / "data_full.json").read_text())
    return pd.DataFrame(data[split], columns=["text", "label"])


def training(rows: int, tmp: Path) -> dict:
    from tasks.core.config import params_from_dict
    from tasks.train.finetune import train_candidate

    train = clinc("train").sample(rows, random_state=0).reset_index(drop=True).assign(slice="clinc", batch_id="b-scale")
    out = {}
    for processes in (1, 2):
        params = params_from_dict({"train": {"epochs": 1, "min_steps": 0, "early_stopping_patience": 0,
                                             "dev_share": 0.0, "checkpoint_every": 0, "processes": processes}})
        started = time.perf_counter()
        got = train_candidate(champion_dir=None, train_rows=train, out_dir=tmp / f"p{processes}", params=params)
        out[f"{processes} process(es)"] = {"samples_per_s": got.train.samples_per_s, "steps": got.train.steps,
                                           "wall_s": round(time.perf_counter() - started, 1),
                                           "precision": got.train.precision}
        print(f"[train] {processes}: {out[f'{processes} process(es)']}", flush=True)
    return out


def exam(sizes: list[int], tmp: Path) -> list[dict]:
    from flows.exam_dask import examine_on_dask
    from tasks.core.config import params_from_dict
    from tasks.judge.reuse import examine
    from tasks.kinds import get_kind
    from tasks.train.model import load_base, save_classifier

    test = clinc("test")
    labels = sorted(set(clinc("train")["label"]) | {"oos"})
    model = save_classifier(load_base("minilm", labels, seed=1), tmp / "exam-model")
    kind, out = get_kind("classification"), []
    warm = test.head(8).assign(slice="clinc", batch_id="b-exam")  # Prefect's temporary server starts here, untimed
    examine_on_dask(kind, model, warm, ["b-exam"], params_from_dict({"evaluate": {"dask": "local"}}))
    for n in sizes:
        rows = test.sample(n, random_state=0, replace=n > len(test)).reset_index(drop=True)
        rows = rows.assign(slice="clinc", batch_id="b-exam")
        one = params_from_dict({})
        dask = params_from_dict({"evaluate": {"dask": "local", "dask_workers": 2}})
        started = time.perf_counter()
        here, _ = examine(kind, model, rows, ["b-exam"], one)
        one_s = time.perf_counter() - started
        started = time.perf_counter()
        there, _ = examine_on_dask(kind, model, rows, ["b-exam"], dask)
        dask_s = time.perf_counter() - started
        out.append({"rows": n, "one_process_s": round(one_s, 1), "dask_local_2_workers_s": round(dask_s, 1),
                    "same_sheets": there == here})
        print(f"[exam] {out[-1]}", flush=True)
    return out


def main(argv: list[str] | None = None) -> Path:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="python -m benchmarks.scale_check", description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=600)
    ap.add_argument("--exam", default="1000,4000")
    ap.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    args = ap.parse_args(argv)
    from flows.cli import offline_env

    offline_env()
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

    doc = {"date": _now(), "machine": machine(), "command": shlex.join(["python", "-m", "benchmarks.scale_check",
                                                                         *argv])}
    with tempfile.TemporaryDirectory(prefix="ratchet-scale-") as tmp, \
            temporary_settings({PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 180}):
        doc["training"] = training(args.rows, Path(tmp))
        _write(doc, args.out)
        doc["exam"] = exam([int(x) for x in args.exam.split(",")], Path(tmp))
    return _write(doc, args.out)


if __name__ == "__main__":
    main()
