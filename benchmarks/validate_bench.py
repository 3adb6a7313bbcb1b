"""Validation of a 100k-row batch: how long parsing and the whole contract take.

A synthetic CSV of 100k rows (150 labels, short utterances like CLINC150's) is parsed
and validated with everything on: the GX suite, token lengths under the packaged MiniLM
tokenizer, duplicates, conflicting labels, the label vocabulary against 150 known labels,
KL against a reference, and leakage against a 20k-text exam and 80k past training texts.
A few bad rows are planted so the failure paths run too.

    python benchmarks/validate_bench.py [--rows 100000] [--out benchmarks/results/validate_100k.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.core.config import LabelsConfig, Params, ValidateConfig
from tasks.validate.context import _token_counter
from tasks.validate.contract import Context, normalise
from tasks.intake.parsing import parse_table
from tasks.validate.checks import validate_frame

WORDS = ("please can you tell me what is the my balance transfer money account card flight book "
         "hotel weather today tomorrow song play music order pizza set alarm timer remind call").split()


def make_csv(rows: int, seed: int = 0) -> tuple[bytes, list[str]]:
    rng = np.random.default_rng(seed)
    labels = [f"intent_{i:03d}" for i in range(150)]
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(4, 14)))) + f" {i}" for i in range(rows)]
    frame = pd.DataFrame({"text": texts, "label": rng.choice(labels, size=rows),
                          "split": np.where(rng.random(rows) < 0.2, "test", "train")})
    frame.loc[[10, 5000, 77_777 % rows], "text"] = ["", "x" * 3000, "  "]  # planted bad rows
    # long enough to be tokenised (the check skips texts that cannot exceed max_tokens)
    long_rows = rng.choice(rows, size=rows // 100, replace=False)
    frame.loc[long_rows, "text"] = [" ".join(rng.choice(WORDS, size=60)) + f" long {i}" for i in range(len(long_rows))]
    return frame.to_csv(index=False).encode("utf-8"), labels


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/validate_100k.json"))
    args = ap.parse_args()

    raw, labels = make_csv(args.rows)
    ctx_start = time.perf_counter()
    count_tokens = _token_counter(Params(), None)  # the packaged MiniLM tokenizer
    context = Context(known_labels=frozenset(labels), reference_labels={label: 100 for label in labels},
                      exam_texts=frozenset(normalise(f"exam text {i}") for i in range(20_000)),
                      past_train_texts=frozenset(normalise(f"past text {i}") for i in range(80_000)),
                      count_tokens=count_tokens)
    context_s = time.perf_counter() - ctx_start
    validate_frame(pd.DataFrame({"text": ["warm up"] * 3, "label": ["a"] * 3}), ValidateConfig(min_rows=1))

    timings = {}
    for policy in ("reject_batch", "drop_rows"):
        cfg = ValidateConfig(on_bad_rows=policy)
        start, cpu = time.perf_counter(), time.process_time()
        table = parse_table(raw, "batch.csv")
        parsed = time.perf_counter()
        result = validate_frame(table.frame, cfg, labels=LabelsConfig(), context=context,
                                rows=table.rows, malformed=table.malformed)
        done = time.perf_counter()
        timings[policy] = {"parse_s": round(parsed - start, 2), "validate_s": round(done - parsed, 2),
                           "total_s": round(done - start, 2),
                           "total_cpu_s": round(time.process_time() - cpu, 2), "verdict": result.verdict,
                           "failures": [f.expectation for f in result.failures],
                           "warnings": [f.expectation for f in result.warnings], "counts": result.counts()}
    report = {
        "rows": args.rows, "bytes": len(raw), "context_load_s": round(context_s, 2), "runs": timings,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_average_1m": round(os.getloadavg()[0], 1)},
        "note": "wall seconds (total_s) depend on the machine's load (load_average_1m on 2 cores); "
                "total_cpu_s is the CPU time this process used. GX suite + contract checks + leakage; token lengths under MiniLM's tokenizer for the 1% of "
                "rows long enough to possibly exceed max_tokens; context_load_s is loading the tokenizer; "
                "the GX import and first context are warmed up first",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
