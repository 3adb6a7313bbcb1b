"""Drift with and without the reference vectors a version stores at promotion.

    python -m benchmarks.drift_reference     # -> benchmarks/results/drift_reference.json

Production is all-MiniLM-L6-v2 with a head over CLINC150's first three domains (untrained:
the timing is the point, as in drift_bench.py), saved as a version directory. The batch is
the fourth domain (train and held-out rows), the reference its three predecessors'
training rows, the embeddings' reference sample their held-out rows. The whole drift stage
(`detect_drift`, Evidently imported and the model loaded beforehand, as in a run's later
stages) runs `--repeats` times each way, alternating: with `drift_reference.npz` removed
(production's encoder embeds the reference sample) and with it stored
(`store_drift_reference`, timed: what a fine-tuned version pays once at promotion).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd

from benchmarks.continual import RESULTS, _now, _write, machine
from benchmarks.streams import REPO, Caps, load_stream


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.drift_reference", description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS / "drift_reference.json")
    args = ap.parse_args(argv)
    import evidently  # noqa: F401  (about 3 s once per process: not what is compared)

    from tasks.core.config import load_params
    from tasks.drift.detect import detect_drift, store_drift_reference
    from tasks.drift.embed_drift import load_champion
    from tasks.drift.reference import REFERENCE_FILE
    from tasks.train.model import load_base

    params = load_params(REPO / "params.yaml")
    cfg, seed, max_length = params.drift, params.train.seed, params.model.max_length
    batches = load_stream("clinc150", Caps())
    reference = pd.concat([b.train for b in batches[:3]], ignore_index=True)
    heldout = pd.concat([b.test for b in batches[:3]], ignore_index=True)
    current = pd.concat([batches[3].train, batches[3].test], ignore_index=True)
    with tempfile.TemporaryDirectory(prefix="ratchet-drift-ref-") as tmp:
        version = Path(tmp) / "v0001"
        clf = load_base("minilm", sorted(reference["label"].unique()), seed)
        clf.model.save_pretrained(version)
        clf.tokenizer.save_pretrained(version)
        champion = load_champion(version, base="minilm", metadata={"version": "v0001"}, seed=seed,
                                 max_length=max_length)
        detect_drift(current, reference, cfg, Path(tmp) / "warm", seed, champion, heldout)  # first-call costs
        seconds: dict[str, list[float]] = {"computed": [], "stored": [], "store_at_promotion": []}
        used = {}
        for i in range(2 * args.repeats):
            mode = ("computed", "stored")[i % 2]
            if mode == "stored":
                started = time.perf_counter()
                store_drift_reference(version, heldout, cfg, seed, max_length)
                seconds["store_at_promotion"].append(time.perf_counter() - started)
            else:
                (version / REFERENCE_FILE).unlink(missing_ok=True)
            started = time.perf_counter()
            result = detect_drift(current, reference, cfg, Path(tmp) / f"{mode}-{i}", seed, champion, heldout)
            seconds[mode].append(time.perf_counter() - started)
            used[mode] = result.sampling["embedded_reference"]
            print(f"[drift] {mode}: {seconds[mode][-1]:.2f} s {used[mode]}", flush=True)
    doc = {"date": _now(), "machine": machine(), "command": "python -m benchmarks.drift_reference",
           "batch_rows": len(current), "reference_rows": len(reference), "heldout_rows": len(heldout),
           "max_embed_rows": cfg.max_embed_rows, "embedded_reference": used,
           "seconds": {k: [round(v, 2) for v in vs] for k, vs in seconds.items()},
           "median_s": {k: round(statistics.median(vs), 2) for k, vs in seconds.items()}}
    print(doc["median_s"], flush=True)
    return _write(doc, args.out)


if __name__ == "__main__":
    main()
