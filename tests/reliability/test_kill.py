"""SIGKILL drills: a child `ratchet retrain` is killed for real, mid fine-tune or inside
the promotion, and the same command is run again.

Guarantees proved (README, Guarantees): production is unchanged and loadable after the
kill, no partial version is ever listed, the rerun resumes (from the last checkpoint) or
finishes the interrupted promotion, and the batch ends up in production exactly once.
Each drill runs for every built-in task type (tests/kinds/deliveries.py: CSV text
batches, JSONL sentences for ner).
"""

from __future__ import annotations

import json
import random
import signal
import time

import pytest

from drills import CHILD_TIMEOUT, Reaped, child_env, make_production, production_works, ratchet, registry_is_consistent
from faults import POINTS
from kinds.deliveries import DELIVERIES
from tasks.kinds import KINDS

pytestmark = [pytest.mark.reliability, pytest.mark.usefixtures("one_torch_thread")]

# the file lock alone (no Prefect limit): the SIGKILLed holder's flock dies with it
PARAMS = """\
model: {base: tiny, max_length: 32}
validate: {min_rows: 5}
replay: {capacity: 200, ratio: 1.0}
train: {epochs: EPOCHS, batch_size: 8, lr: 2.0e-3, warmup_ratio: 0.0, seed: 7, precision: fp32, checkpoint_every: 5}
gate: {tolerance: 0.2, min_new_slice_score: 0.5, min_slice_size: 10, n_resamples: 200}
ops: {promote_limit: ""}
"""


def setup(tmp_path, epochs: int, kind: str):
    d = DELIVERIES[kind]
    ws, first = make_production(tmp_path, PARAMS.replace("EPOCHS", str(epochs)) + d.task_params, kind)
    batch = d.write(tmp_path / "b", d.batches[1], seed=2, slice_name="B", size=40)
    return ws, first, batch


def snapshot(ws):
    models = ws / "models"
    return {"aliases": (models / "aliases.json").read_bytes(), "link": (models / "production").resolve(),
            "versions": sorted(p.name for p in (models / "versions").iterdir())}


def assert_exactly_once(ws, first, batch):
    """The batch is in production once, its exam rows once, one production move for it,
    and running the same command again is a skip (exit 5), not a second training."""
    from flows.retrain import retrain
    from tasks.intake.batch import batch_id_for
    from tasks.registry.store import Registry

    reg = Registry(ws / "models")
    bid = batch_id_for(batch.read_bytes())
    assert reg.versions() == ["v0001", "v0002"]
    assert reg.resolve("production") == "v0002" and (ws / "models" / "production").resolve().name == "v0002"
    assert reg.metadata("v0002")["batch_ids"] == [first, bid]
    assert [h["to"] for h in reg.history() if h["alias"] == "production"] == ["v0001", "v0002"]
    assert sorted(p.stem for p in (ws / "data" / "exam").glob("*.parquet")) == sorted([first, bid])
    again = retrain(batch=str(batch), workspace=str(ws))
    assert again["status"] == "skipped" and again["exit_code"] == 5
    assert Registry(ws / "models").versions() == ["v0001", "v0002"]
    assert not list((ws / "models").glob(".aliases.json.*")) and not list((ws / "models" / "versions").glob(".*"))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_sigkill_during_finetune_then_rerun_resumes_and_promotes_once(tmp_path, prefect_api_url, kind):
    from flows.retrain import retrain

    ws, first, batch = setup(tmp_path, epochs=60, kind=kind)  # ~420 steps: the kill lands mid-training
    before = snapshot(ws)
    child = ratchet(["retrain", "--batch", str(batch), "--workspace", str(ws)], child_env(prefect_api_url))
    scratch = ws / ".ratchet" / "candidates"
    deadline = time.monotonic() + CHILD_TIMEOUT
    with Reaped(child):
        while not list(scratch.glob("*.run/checkpoint.pt")):
            assert child.poll() is None, child.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, f"no checkpoint within {CHILD_TIMEOUT} s"
            time.sleep(0.05)
        time.sleep(random.uniform(0.0, 0.6))  # a random step after the first checkpoint
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL
    log = child.stdout.read().decode()

    assert list(scratch.glob("*.run/checkpoint.pt")), log[-2000:]
    assert not [p for p in scratch.iterdir() if not p.name.endswith((".run", ".tmp"))], \
        "the kill came after training finished: nothing was interrupted"
    assert snapshot(ws) == before  # production, its link and the versions: untouched
    registry_is_consistent(ws / "models")
    production_works(ws, kind)
    assert not list((ws / "reports").glob("*/decision.json"))  # no decision: the batch is not "seen"

    outcome = retrain(batch=str(batch), workspace=str(ws))  # the same command again
    assert outcome["status"] == "promoted", outcome["reasons"]
    assert outcome["details"]["train"]["resumed_from_step"] >= 5  # from the checkpoint, not from scratch
    assert not list(scratch.glob("*.run"))
    assert_exactly_once(ws, first, batch)
    production_works(ws, kind)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_sigkill_inside_the_promotion_then_rerun_finishes_it(tmp_path, prefect_api_url, kind):
    """One child per kill point, started together (each has its own workspace)."""
    from flows.retrain import retrain

    setups = {point: setup(tmp_path / point, epochs=12, kind=kind) for point in POINTS}
    children = {point: ratchet(["retrain", "--batch", str(batch), "--workspace", str(ws)],
                               child_env(prefect_api_url), fault=point)
                for point, (ws, _, batch) in setups.items()}
    with Reaped(*children.values()):
        for point, child in children.items():
            log = child.communicate(timeout=CHILD_TIMEOUT)[0].decode()
            assert child.returncode == -signal.SIGKILL, (point, log[-3000:])

    for point, (ws, first, batch) in setups.items():
        production = registry_is_consistent(ws / "models")
        assert production == ("v0002" if point == "after_alias_write" else "v0001"), point
        production_works(ws, kind)  # whichever complete version the link names
        assert not list((ws / "reports").glob("*/decision.json"))

        outcome = retrain(batch=str(batch), workspace=str(ws))  # the same command again
        if point == "after_alias_write":  # the move had happened: the rerun repairs the link and says so
            assert outcome["status"] == "skipped" and "already in production v0002" in outcome["reasons"][0]
            assert any("production link" in r for r in outcome["details"]["recovered"])
        else:  # registered, never promoted: the rerun promotes that very version, no twin
            assert outcome["status"] == "promoted" and outcome["version"] == "v0002", (point, outcome["reasons"])
        decision = json.loads((ws / "reports" / outcome["run_id"] / "decision.json").read_text())
        assert decision["status"] == outcome["status"]
        registry_is_consistent(ws / "models")
        assert_exactly_once(ws, first, batch)
        production_works(ws, kind)
