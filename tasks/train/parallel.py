"""Data-parallel fine-tuning: `train.processes: N` runs the one training loop in N processes.

`finetune_parallel` starts N processes itself (torch.multiprocessing, "spawn"; no
launcher script), each joins a torch.distributed process group on 127.0.0.1 (gloo on
CPU, NCCL on CUDA with one GPU per rank) and runs tasks/train/trainloop.py `finetune`
as its rank: the same batches in the same order, decided by `train.seed`, each rank
training on its share of every batch, gradients averaged by one all-reduce per step.
So a 2-process run takes the same steps with the same schedule as a 1-process one, and
every rank holds the same weights. Rank 0 writes the checkpoints (and every rank's RNG
state with them), so a killed run resumes where it stopped, and it hands the trained
weights and the report back to the caller. Each rank trains its own copy of the
weights (spawn would otherwise share the caller's tensors between the ranks), so two
runs of the same inputs, and a killed run resumed, end with bitwise the same weights on
CPU, like a 1-process run (tests/tasks/test_parallel.py).

The children die with the parent (PR_SET_PDEATHSIG on Linux): a SIGKILLed flow leaves
no rank behind holding the port or a GPU.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tasks.core.config import ModelConfig, TrainConfig
from tasks.train.model import Classifier
from tasks.train.trainloop import SEQUENCE, TrainReport, TrainSet, finetune, pick_device

RESULT = "rank0.pt"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _own_copy(model: torch.nn.Module) -> None:
    """Give this rank its own weights. Spawn hands `clf` over through torch's pickler,
    which moves its tensors into shared memory: without a copy every rank (and the
    caller) would step the same storage, racing, once per rank."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.data = tensor.data.clone()


def backend_for(cfg: TrainConfig) -> str:
    """nccl with a GPU per rank, else gloo; refuses more CUDA ranks than GPUs."""
    device, _ = pick_device(cfg)
    if device.type != "cuda":
        return "gloo"
    if torch.cuda.device_count() < cfg.processes:
        raise RuntimeError(f"train.processes is {cfg.processes} but {torch.cuda.device_count()} GPU(s) are visible")
    return "nccl"


def _rank(rank: int, world: int, backend: str, port: int, threads: int, clf: Classifier, data: TrainSet,
          cfg: TrainConfig, model_cfg: ModelConfig, run_dir, head, out: Path) -> None:
    _die_with_parent()
    torch.set_num_threads(threads)
    _own_copy(clf.model)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        report = finetune(clf, data, cfg=cfg, model_cfg=model_cfg, run_dir=run_dir, head=head, rank=rank, world=world)
        if rank == 0:
            tmp = out / f".{RESULT}.tmp"
            torch.save({"state": clf.model.state_dict(), "report": report}, tmp)
            os.replace(tmp, out / RESULT)
    finally:
        dist.destroy_process_group()


def finetune_parallel(clf: Classifier, data: TrainSet, *, cfg: TrainConfig, model_cfg: ModelConfig,
                      run_dir=None, head=SEQUENCE) -> TrainReport:
    """`finetune` in `cfg.processes` processes; trains `clf` in place like it."""
    world, backend = cfg.processes, backend_for(cfg)
    threads = max(1, torch.get_num_threads() // world) if backend == "gloo" else torch.get_num_threads()
    out = Path(tempfile.mkdtemp(prefix="ratchet-ddp-"))
    try:
        mp.start_processes(_rank, nprocs=world, join=True, start_method="spawn",
                           args=(world, backend, _free_port(), threads, clf, data, cfg, model_cfg, run_dir, head, out))
        result = torch.load(out / RESULT, map_location="cpu", weights_only=False)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    clf.model.load_state_dict(result["state"])
    clf.model.eval().to("cpu")
    return result["report"]
