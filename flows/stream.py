"""Stream: turn a dataset into batch files that arrive one after another.

Used by the demo (`make run`), the tests and the benchmarks to replay a real dataset as
a sequence of deliveries. CLINC150 (shipped under datasets/clinc150, CC BY 3.0) becomes
one CSV per domain, `text,label,slice,split`, with `split` taken from the dataset's own
train / val / test split, so each domain is a new slice with 15 new intents.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pandas as pd

CLINC_DIR = Path(__file__).resolve().parent.parent / "datasets" / "clinc150"
SPLITS = {"train": "train", "val": "val", "test": "test"}


def clinc150_domains(source: Path = CLINC_DIR) -> list[str]:
    return list(json.loads((source / "domains.json").read_text()))


def clinc150_frame(domain: str, source: Path = CLINC_DIR, per_intent: int | None = None) -> pd.DataFrame:
    """All rows of one domain; `per_intent` caps train rows per intent (for small demos/tests)."""
    data = json.loads((source / "data_full.json").read_text())
    intents = set(json.loads((source / "domains.json").read_text())[domain])
    rows = []
    for key, split in SPLITS.items():
        taken: dict[str, int] = {}
        for text, label in data[key]:
            if label not in intents:
                continue
            taken[label] = taken.get(label, 0) + 1
            if per_intent is not None and split == "train" and taken[label] > per_intent:
                continue
            rows.append({"text": text, "label": label, "slice": domain, "split": split})
    return pd.DataFrame(rows)


def write_clinc150_batches(out_dir: str | Path, domains: int | list[str] = 3,
                           per_intent: int | None = None, source: Path = CLINC_DIR) -> list[Path]:
    """Write one batch CSV per domain, numbered in arrival order; returns their paths."""
    names = clinc150_domains(source)
    chosen = names[:domains] if isinstance(domains, int) else list(domains)
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        raise ValueError(f"unknown CLINC150 domain(s): {', '.join(unknown)}; known: {', '.join(names)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, domain in enumerate(chosen, start=1):
        path = out / f"{i:02d}_{domain}.csv"
        clinc150_frame(domain, source, per_intent).to_csv(path, index=False)
        paths.append(path)
    return paths


def production_scores(outcome: dict) -> dict[str, float]:
    """Per-slice accuracy of whatever is production after a run."""
    details = outcome.get("details", {})
    key = "candidate_scores" if outcome["status"] == "promoted" else "champion_scores"
    sheet = details.get(key) or {}
    return {name: s["accuracy"] for name, s in sheet.get("slices", {}).items()}


# --- Prefect edge ------------------------------------------------------------------
from prefect import flow  # noqa: E402


@flow(name="stream-clinc150", log_prints=True)
def stream_clinc150(domains: int | list[str] = 3, workspace: str = ".", per_intent: int | None = None,
                    overrides: dict | None = None,
                    on_batch: Callable[[str, dict | None], None] | None = None) -> list[dict]:
    """Deliver CLINC150 domains one by one to the retrain flow (the `make run` demo);
    `on_batch` hears each file's name before its run, then the name and the outcome."""
    from flows.retrain import retrain

    landing = Path(workspace) / "data" / "landing" / "clinc150"
    outcomes = []
    for path in write_clinc150_batches(landing, domains, per_intent):
        if on_batch:
            on_batch(path.name, None)
        outcome = {"batch": path.name, **retrain(batch=str(path), workspace=workspace, overrides=overrides)}
        if on_batch:
            on_batch(path.name, outcome)
        outcomes.append(outcome)
    return outcomes
