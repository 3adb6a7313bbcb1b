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

A batch the gate rejected after every remediation attempt is kept pending the same
way (flows/retrain.py), with why and how many attempts it had.

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

from tasks.core.config import RetrainConfig

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


def _read(data_dir: Path) -> dict:
    path = pending_path(data_dir)
    state = json.loads(path.read_text()) if path.exists() else {}
    return {"batch_ids": list(state.get("batch_ids", [])), "info": dict(state.get("info", {})),
            "history": list(state.get("history", []))}


def load_pending(data_dir: Path) -> list[str]:
    """Ids of accepted batches that no promoted version has trained on yet, in order."""
    return _read(data_dir)["batch_ids"]


def pending_report(data_dir: Path) -> list[dict]:
    """One entry per pending batch: id, why, since when, attempts (`ratchet status --json`)."""
    state = _read(data_dir)
    return [{"batch_id": b, **state["info"].get(b, {})} for b in state["batch_ids"]]


def pending_history(data_dir: Path) -> list[dict]:
    return _read(data_dir)["history"]


def _write(data_dir: Path, state: dict) -> None:
    path = pending_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, path)  # never a half-written list


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def add_pending(data_dir: Path, batch_id: str, why: str = "skipped by the retrain policy",
                attempts: int = 0) -> list[str]:
    """Keep a batch pending (skipped by the policy, or rejected after every attempt)."""
    state = _read(data_dir)
    info = state["info"].get(batch_id, {"since": _now(), "attempts": 0})
    info.update(why=why, attempts=int(info.get("attempts", 0)) + attempts, updated=_now())
    state["info"][batch_id] = info
    if batch_id not in state["batch_ids"]:
        state["batch_ids"].append(batch_id)
        state["history"].append({"time": _now(), "batch_id": batch_id, "action": "pending", "why": why})
    _write(data_dir, state)
    return state["batch_ids"]


def clear_pending(data_dir: Path, trained: list[str], version: str | None = None) -> list[str]:
    """Drop the ids a promoted version now lists in its lineage."""
    if not pending_path(data_dir).exists():
        return []
    state = _read(data_dir)
    done = [b for b in state["batch_ids"] if b in set(trained)]
    state["batch_ids"] = [b for b in state["batch_ids"] if b not in set(trained)]
    for b in done:
        state["info"].pop(b, None)
        state["history"].append({"time": _now(), "batch_id": b, "action": "learned", "version": version})
    _write(data_dir, state)
    return state["batch_ids"]


def drop_pending(data_dir: Path, batch_id: str, reason: str, who: str = "") -> dict:
    """Remove a pending batch on purpose (`ratchet pending drop`): it will not be trained
    on unless delivered again with --force. Recorded in the pending history."""
    state = _read(data_dir)
    if batch_id not in state["batch_ids"]:
        raise KeyError(f"batch {batch_id} is not pending (pending: {', '.join(state['batch_ids']) or 'none'})")
    state["batch_ids"].remove(batch_id)
    info = state["info"].pop(batch_id, {})
    entry = {"time": _now(), "batch_id": batch_id, "action": "dropped", "reason": reason,
             "who": who or os.environ.get("USER", ""), "was": info}
    state["history"].append(entry)
    _write(data_dir, state)
    return entry
