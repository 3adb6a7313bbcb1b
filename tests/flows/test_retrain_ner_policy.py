"""The retrain policy on the NER path: batches it turns down stay pending and the next
retrain trains on them; production's F1 on a batch is the quality signal."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.retrain import retrain
from tasks.ner.conll import to_jsonl
from tasks.drift.policy import load_pending
from tasks.registry.store import Registry

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def policy_run(tmp_path_factory, prefect_server):
    from conftest import ner_workspace, toy_ner_frame

    root, ws = ner_workspace(tmp_path_factory, "nerpolicy")
    wait = {"retrain.when": "always", "retrain.min_rows": 50}
    paths = []
    for i, seed in enumerate((1, 3, 4)):
        path = root / f"{i}.jsonl"
        path.write_text(to_jsonl(toy_ner_frame(["PER", "LOC"], sentences=60, seed=seed, slice_name=f"s{i}")))
        paths.append(path)
    outcomes = [retrain(batch=str(p), workspace=str(ws), overrides=wait) for p in paths]
    return ws, root, outcomes


def test_a_small_batch_waits_pending_and_joins_the_next_retrain(policy_run):
    ws, _, (first, second, third) = policy_run
    assert first["status"] == "promoted", first["reasons"]
    assert second["status"] == "skipped" and second["exit_code"] == 5
    assert "retrain.min_rows is 50" in second["reasons"][0]
    assert second["details"]["pending"] == [second["batch_id"]]
    assert third["status"] == "promoted", third["reasons"]
    # the pending batch's sentences were trained on, its held-out ones examined, it is in the lineage
    assert third["details"]["train"]["new_rows"] > 50
    meta = Registry(ws / "models").metadata("v0002")
    assert meta["batch_ids"] == [first["batch_id"], second["batch_id"], third["batch_id"]]
    assert "s1" in meta["metrics"]["slices"]
    assert load_pending(ws / "data") == []


def test_production_f1_on_a_batch_is_the_quality_signal(policy_run):
    from conftest import toy_ner_frame

    ws, root, _ = policy_run
    same = root / "same.jsonl"
    same.write_text(to_jsonl(toy_ner_frame(["PER", "LOC"], sentences=40, seed=8)))
    # the same names, but every PER tagged LOC and every LOC PER: production is now wrong
    swapped = toy_ner_frame(["PER", "LOC"], sentences=40, seed=8)
    swap = {"PER": "LOC", "LOC": "PER"}
    swapped["tags"] = [[t if t == "O" else f"{t[:2]}{swap[t[2:]]}" for t in tags] for tags in swapped["tags"]]
    flipped = root / "swapped.jsonl"
    flipped.write_text(to_jsonl(swapped))
    reports = {}
    for name, path in (("same", same), ("swapped", flipped)):
        result = CliRunner().invoke(app, ["drift", str(path), "--workspace", str(ws), "--json"])
        assert result.exit_code == 0, result.output
        reports[name] = json.loads(result.stdout)
    assert reports["same"]["quality_dropped"] is False
    assert reports["swapped"]["quality_dropped"] is True and "quality" in reports["swapped"]["signals"]
    assert "production F1" in reports["swapped"]["reason"]

    # retrain.when: quality_drop retrains the swapped batch (and would skip the other)
    outcome = retrain(batch=str(flipped), workspace=str(ws), overrides={"retrain.when": "quality_drop"})
    assert outcome["details"]["policy"]["retrain"] is True, outcome["details"]["policy"]
    assert outcome["status"] in ("promoted", "rejected")
