"""Retrain policy: after drift, decide whether this batch warrants a fine-tune.

Retraining costs compute and risks regressions; not retraining lets quality rot. The
policy reads the `DriftResult` and `params.yaml`'s `retrain` section:

- `when: always` retrains on every accepted batch; `drift` when the data moved;
  `quality_drop` when the champion's accuracy on the batch fell; `drift_or_quality`
  (the shipped params.yaml) on either. Without a `retrain` section: `always`, as
  before the policy existed. `--force` overrides everything.
- Before the first promotion there is nothing to serve, so the first batch always trains.
- `min_rows`: skip until at least this many training rows (this batch plus the pending
  ones) are waiting; `min_interval_hours`: skip when production is younger than this,
  unless its quality dropped (a model that is getting answers wrong is not made to wait).

A skipped batch stays accepted: its rows are stored, its held-out rows are in the exam,
and its id goes to data/pending.json. The next run treats pending batches as part of
the reference and trains on their rows, and the version it promotes lists them in its
lineage; then they are no longer pending.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from tasks.config import RetrainConfig

PENDING_FILE = "pending.json"


@dataclass(frozen=True)
class PolicyDecision:
    retrain: bool
    reason: str
    when: str

    def to_dict(self) -> dict:
        return asdict(self)


def decide(drift, cfg: RetrainConfig, *, has_champion: bool, force: bool = False, waiting_rows: int = 0,
           champion_created_at: str | None = None, now: dt.datetime | None = None) -> PolicyDecision:
    """Whether to fine-tune on this batch (plus the pending ones), and why in one line."""
    def answer(retrain: bool, reason: str) -> PolicyDecision:
        return PolicyDecision(retrain, reason, cfg.when)

    if force:
        return answer(True, "--force: the retrain policy is overridden")
    if not has_champion:
        return answer(True, "no production model yet: the first batch always trains")
    dropped = bool(drift.quality_dropped)
    if waiting_rows < cfg.min_rows:
        return answer(False, f"only {waiting_rows} training rows waiting, retrain.min_rows is {cfg.min_rows}")
    age = _age_hours(champion_created_at, now)
    if cfg.min_interval_hours and age is not None and age < cfg.min_interval_hours and not dropped:
        return answer(False, f"production is {age:.1f} h old, retrain.min_interval_hours is {cfg.min_interval_hours}")
    triggers = {"always": True, "drift": drift.drifted, "quality_drop": dropped,
                "drift_or_quality": drift.drifted or dropped}
    fired = ", ".join(drift.signals) or "none"
    if triggers[cfg.when]:
        return answer(True, f"retrain.when={cfg.when}: retraining (signals: {fired})")
    wanted = {"drift": "no drift", "quality_drop": "no quality drop",
              "drift_or_quality": "neither drift nor a quality drop"}[cfg.when]
    return answer(False, f"retrain.when={cfg.when}: {wanted} (signals: {fired}); "
                         "the batch stays accepted and joins the next retrain")


def _age_hours(created_at: str | None, now: dt.datetime | None) -> float | None:
    if not created_at:
        return None
    created = dt.datetime.fromisoformat(created_at)
    if created.tzinfo is None:
        created = created.replace(tzinfo=dt.timezone.utc)
    now = now or dt.datetime.now(dt.timezone.utc)
    return (now - created).total_seconds() / 3600


# --- pending batches: accepted, not yet trained on ------------------------------------
def pending_path(data_dir: Path) -> Path:
    return Path(data_dir) / PENDING_FILE


def load_pending(data_dir: Path) -> list[str]:
    """Ids of accepted batches that no promoted version has trained on yet, in order."""
    path = pending_path(data_dir)
    return list(json.loads(path.read_text())["batch_ids"]) if path.exists() else []


def _write_pending(data_dir: Path, ids: list[str]) -> None:
    path = pending_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"batch_ids": ids}, indent=2))
    os.replace(tmp, path)  # never a half-written list


def add_pending(data_dir: Path, batch_id: str) -> list[str]:
    ids = load_pending(data_dir)
    if batch_id not in ids:
        ids.append(batch_id)
        _write_pending(data_dir, ids)
    return ids


def clear_pending(data_dir: Path, trained: list[str]) -> list[str]:
    """Drop the ids a promoted version now lists in its lineage."""
    ids = [b for b in load_pending(data_dir) if b not in set(trained)]
    if pending_path(data_dir).exists():
        _write_pending(data_dir, ids)
    return ids
