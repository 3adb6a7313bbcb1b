"""Checkpoints of a fine-tune in progress, so a killed `ratchet retrain` resumes.

A checkpoint holds everything the training loop's future depends on: model, optimizer
and scheduler state, the step and position inside the epoch, losses so far, the early
stopping state and the torch random generators (dropout). Data order is re-derived
from the seed and the epoch, so a resumed run takes exactly the steps the killed run
would have taken and ends with bitwise the same weights (on CPU).

Each checkpoint is written to a temporary file and renamed over the last one, so a kill
while writing leaves the previous checkpoint intact. A checkpoint made for other inputs
(another batch, other params) carries another fingerprint and is ignored.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

FILE = "checkpoint.pt"


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: str | Path, *, fingerprint: str, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler: Any, loop: dict[str, Any]) -> Path:
    """Write model/optimizer/scheduler/RNG state and the loop's own state atomically."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "fingerprint": fingerprint, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "rng": rng_state(), "loop": loop,
    }
    tmp = run_dir / f".{FILE}.tmp"
    torch.save(payload, tmp)
    os.replace(tmp, run_dir / FILE)
    return run_dir / FILE


def load_checkpoint(run_dir: str | Path | None, *, fingerprint: str, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler: Any) -> dict[str, Any] | None:
    """Restore a matching checkpoint into model/optimizer/scheduler and the RNGs; return
    the loop state, or None when there is none for these inputs."""
    path = Path(run_dir) / FILE if run_dir else None
    if path is None or not path.exists():
        return None
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if payload.get("fingerprint") != fingerprint:
        return None
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    restore_rng(payload["rng"])
    return payload["loop"]
