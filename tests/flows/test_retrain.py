"""The retrain flow end to end on a real (temporary) Prefect server with a tiny model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from flows.retrain import retrain
from tasks.registry.store import Registry


MIRROR = "s3://retrain-flow-mirror/registry"


@pytest.fixture(scope="module")
def promoted(tmp_path_factory, prefect_server, s3_server):
    """A workspace after two toy batches went through the flow, mirrored to S3 (moto)."""
    from conftest import TINY_PARAMS, toy_frame
    from tasks.core.storage import s3_client

    root = tmp_path_factory.mktemp("flow")
    ws = root / "ws"
    ws.mkdir()
    s3_client().create_bucket(Bucket=MIRROR.split("/")[2])
    (ws / "params.yaml").write_text(TINY_PARAMS + f"registry: {{mirror: '{MIRROR}'}}\n")
    a = root / "a.csv"
    b = root / "b.csv"
    toy_frame(["weather", "music"], per_label=30, seed=1, slice_name="A").to_csv(a, index=False)
    toy_frame(["food", "travel"], per_label=30, seed=2, slice_name="B").to_csv(b, index=False)
    outcomes = [retrain(batch=str(a), workspace=str(ws)), retrain(batch=str(b), workspace=str(ws))]
    return ws, a, outcomes


def test_two_batches_are_promoted_and_production_loads(promoted):
    ws, _, outcomes = promoted
    assert [o["status"] for o in outcomes] == ["promoted", "promoted"], [o["reasons"] for o in outcomes]
    assert [o["exit_code"] for o in outcomes] == [0, 0]
    reg = Registry(ws / "models")
    assert reg.versions() == ["v0001", "v0002"]
    assert reg.aliases() == {"production": "v0002", "previous": "v0001"}
    meta = reg.metadata("v0002")
    assert meta["parent"] == "v0001" and len(meta["batch_ids"]) == 2
    assert set(meta["metrics"]["slices"]) == {"A", "B"}

    from transformers import pipeline

    clf = pipeline("text-classification", model=str(ws / "models" / "production"))
    assert clf("please rain today")[0]["label"] in {"weather", "music", "food", "travel"}


def test_every_outcome_leaves_reports(promoted):
    ws, _, outcomes = promoted
    for outcome in outcomes:
        run = ws / "reports" / outcome["run_id"]
        decision = json.loads((run / "decision.json").read_text())
        assert decision["status"] == outcome["status"]
        assert (run / "drift.html").exists() and (run / "drift.json").exists()
    second = outcomes[1]["details"]
    assert second["gate"]["promote"] is True
    assert any(c["kind"] == "old_slice" for c in second["gate"]["checks"])
    assert sorted(second["new_labels"]) == ["food", "travel"]


def test_held_out_rows_join_the_exam_and_never_train(promoted):
    import pandas as pd

    ws, _, outcomes = promoted
    for outcome in outcomes:
        batch = ws / "data" / "batches" / outcome["batch_id"]
        train = set(pd.read_parquet(batch / "train.parquet")["text"])
        exam = set(pd.read_parquet(ws / "data" / "exam" / f"{outcome['batch_id']}.parquet")["text"])
        assert exam and not (train & exam)
    buffer = pd.read_parquet(ws / "models" / "production" / "replay.parquet")
    all_exam = set(pd.concat(pd.read_parquet(p) for p in (ws / "data" / "exam").glob("*.parquet"))["text"])
    assert not (set(buffer["text"]) & all_exam)


def test_same_batch_twice_is_skipped(promoted, tmp_path):
    ws, a, _ = promoted
    work = tmp_path / "ws"
    shutil.copytree(ws, work, symlinks=True)
    outcome = retrain(batch=str(a), workspace=str(work))
    assert outcome["status"] == "skipped" and outcome["exit_code"] == 5
    assert Registry(work / "models").resolve("production") == "v0002"


def test_missing_label_column_is_quarantined_byte_for_byte(promoted, tmp_path):
    ws, _, _ = promoted
    work = tmp_path / "ws"
    shutil.copytree(ws, work, symlinks=True)
    bad = tmp_path / "no_label.csv"
    bad.write_bytes(b"text,slice\r\nhello there,A\r\n\"quoted, text\",A\r\n" * 5)
    outcome = retrain(batch=str(bad), workspace=str(work))
    assert outcome["status"] == "quarantined" and outcome["exit_code"] == 4
    assert any("label" in reason for reason in outcome["reasons"])
    kept = Path(outcome["details"]["quarantine"])
    assert (kept / "raw" / "no_label.csv").read_bytes() == bad.read_bytes()
    report = json.loads((kept / "report.json").read_text())
    assert report["validation"]["passed"] is False
    assert Registry(work / "models").resolve("production") == "v0002"
    assert not (work / "data" / "batches" / outcome["batch_id"]).exists()
    assert not (work / "data" / "exam" / f"{outcome['batch_id']}.parquet").exists()


def test_accuracy_matrix_per_label_scores_and_mirror_after_two_promotions(promoted, tmp_path):
    from tasks.registry.matrix import summary
    from tasks.registry.registry_s3 import Mirror, pull

    ws, _, outcomes = promoted
    reg = Registry(ws / "models")
    first, second = (o["batch_id"] for o in outcomes)
    record = reg.metadata("v0002")["accuracy_matrix"]
    assert record["batches"] == [first, second] and record["slices"] == ["A", "B"]
    assert [(r["version"], r["batch_id"]) for r in record["rows"]] == [("v0001", first), ("v0002", second)]
    batches = reg.metadata("v0002")["metrics"]["batches"]
    assert record["accuracy"][1] == [batches[first]["accuracy"], batches[second]["accuracy"]]
    assert record["accuracy"][0][0] == reg.metadata("v0001")["metrics"]["batches"][first]["accuracy"]
    # v0001 was examined on the second batch before learning it: its labels were unknown to it
    assert record["accuracy"][0][1] == 0.0
    assert summary(record)["bwt"] == round(record["accuracy"][1][0] - record["accuracy"][0][0], 4)
    assert reg.metadata("v0001")["accuracy_matrix"]["rows"] == [{"version": "v0001", "batch_id": first}]
    per_label = reg.metadata("v0002")["metrics"]["per_label"]
    assert set(per_label["slices"]["A"]) == {"weather", "music"} and set(per_label["batches"][second]) == {"food", "travel"}
    assert "## Continual learning" in (ws / "models" / "production" / "README.md").read_text()

    assert outcomes[1]["details"]["mirror"]["production"] == "v0002"
    mirror = Mirror(MIRROR)
    assert mirror.versions() == ["v0001", "v0002"]
    assert mirror.aliases()[0] == {"production": "v0002", "previous": "v0001"}
    fresh = Registry(tmp_path / "fresh" / "models")
    assert pull(mirror, fresh) == "v0002"
    from transformers import pipeline

    clf = pipeline("text-classification", model=str(fresh.root / "production"))
    assert clf("please rain today")[0]["label"] in {"weather", "music", "food", "travel"}
