"""The GPU check, ready for whenever a machine with CUDA is at hand.

    python -m benchmarks.gpu_check            # writes benchmarks/results/gpu.json

On one GPU: CLINC150's second domain (1,500 training rows) through the whole `retrain`
flow with `train.device: cuda`, `train.precision: bf16`, then the bare `train_candidate`
on the same rows (benchmarks/overhead.py `flow_vs_bare`): samples/s, peak GPU memory,
model FLOPs utilisation and the overhead ratio (the flow's time outside the bare
fine-tune). With two or more GPUs, the same again with `train.processes: 2` (one rank a
GPU, NCCL). Without CUDA it says so and writes nothing: the CUDA code paths stay covered
by the tests that skip without CUDA (tests/tasks/test_cuda.py), saying why.

MFU = achieved training FLOP/s / the GPU's dense bf16 peak, with training FLOPs per
sample ~ 6 x parameters x tokens (forward + backward; attention's quadratic term is
small at <= 64 tokens); the peak is looked up by GPU name (PEAK_BF16_TFLOPS), else null.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

from benchmarks.continual import RESULTS, _now, _write, machine
from benchmarks.overhead import flow_vs_bare
from benchmarks.streams import REPO

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 125.0,
                    "A10": 125.0, "RTX 4090": 165.0, "RTX 3090": 71.0}


def peak_tflops(name: str) -> float | None:
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def mfu(run: dict, params: int, gpus: int, name: str) -> float | None:
    peak = peak_tflops(name)
    bare = run["bare_train"]
    if peak is None:
        return None
    achieved = 6 * params * run["bare_train_mean_tokens"] * bare["samples_per_s"]
    return round(achieved / (peak * 1e12 * gpus), 4)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--out", type=Path, default=RESULTS / "gpu.json")
    args = ap.parse_args(argv)
    from flows.cli import offline_env

    offline_env()
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing measured, nothing written "
              "(tests/tasks/test_cuda.py covers the CUDA path where one is)")
        return 0
    from tasks.train.model import load_base

    name, count = torch.cuda.get_device_name(0), torch.cuda.device_count()
    params = sum(p.numel() for p in load_base("minilm", ["a", "b"], seed=0).model.parameters())
    doc = {"date": _now(), "machine": machine(), "gpu": name, "gpus": count, "model_parameters": params,
           "command": shlex.join(["python", "-m", "benchmarks.gpu_check", *argv]), "runs": {}}
    settings = {"1 GPU": {"train.device": "cuda", "train.precision": "bf16"}}
    if count >= 2:
        settings["2 GPUs"] = {**settings["1 GPU"], "train.processes": 2}
    for label, overrides in settings.items():
        with tempfile.TemporaryDirectory(prefix="ratchet-gpu-") as tmp:
            torch.cuda.reset_peak_memory_stats()
            run = flow_vs_bare(args.params, overrides, Path(tmp))
        run["mfu"] = mfu(run, params, overrides.get("train.processes", 1), name)
        doc["runs"][label] = run
        print(f"[{label}] {run['bare_train']['samples_per_s']} samples/s, MFU {run['mfu']}, "
              f"peak {run['bare_train']['peak_memory_mb']} MiB, overhead {run['overhead_share']}", flush=True)
        _write(doc, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
