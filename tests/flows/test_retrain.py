"""The text classifier's own side of the retrain flow (temporary Prefect server, tiny
model): production is a plain transformers text-classification directory, the accuracy
matrix counts unknown labels as errors, scores are kept per label, and promotions are
mirrored to S3. What every task type gets from the flow (promotion with replay, the gate
on every old slice, quarantine, rejection, skips, status and card, resume after a kill)
is tests/flows/test_conformance.py."""

from __future__ import annotations

import pytest

from flows.retrain import retrain
from tasks.registry.store import Registry


MIRROR = "s3://retrain-flow-mirror/registry"


@pytest.fixture(scope="module")
def promoted(tmp_path_factory, prefect_server, s3_server, one_torch_thread):
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


def test_production_is_a_plain_text_classification_directory(promoted):
    ws, _, outcomes = promoted
    assert [o["status"] for o in outcomes] == ["promoted", "promoted"], [o["reasons"] for o in outcomes]
    from transformers import pipeline

    clf = pipeline("text-classification", model=str(ws / "models" / "production"))
    assert clf("please rain today")[0]["label"] in {"weather", "music", "food", "travel"}


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
