"""The retrain flow with `train.stats_head: alone` (temporary Prefect server, tiny model):
two deliveries are validated, drift-checked, learned into the class statistics, judged
on every slice and promoted; the promoted version carries its statistics under the
integrity manifest and answers through them when served."""

from __future__ import annotations

import pytest

from flows.retrain import retrain
from tasks.core.config import load_params
from tasks.kinds import get_kind
from tasks.registry.store import Registry
from tasks.train.model import load_classifier
from tasks.train.stats_head import STATS_FILE, StatsHeadModel

STATS = "stats_head: alone, stats_features: 64, stats_bandwidth: 1.0, stats_shrinkage: 0.1, "


@pytest.fixture(scope="module")
def promoted(tmp_path_factory, prefect_server, one_torch_thread):
    from conftest import TINY_PARAMS, flow_workspace, toy_frame

    assert "train: {" in TINY_PARAMS
    root, ws = flow_workspace(tmp_path_factory, "stats-flow", TINY_PARAMS.replace("train: {", "train: {" + STATS))
    assert load_params(ws / "params.yaml").train.stats_head == "alone"
    a, b = root / "a.csv", root / "b.csv"
    toy_frame(["weather", "music"], per_label=30, seed=1, slice_name="A").to_csv(a, index=False)
    toy_frame(["food", "travel"], per_label=30, seed=2, slice_name="B").to_csv(b, index=False)
    return ws, [retrain(batch=str(a), workspace=str(ws)), retrain(batch=str(b), workspace=str(ws))]


def test_both_deliveries_are_learned_and_promoted(promoted):
    ws, outcomes = promoted
    assert [o["status"] for o in outcomes] == ["promoted", "promoted"], [o["reasons"] for o in outcomes]
    reg = Registry(ws / "models")
    production = ws / "models" / "production"
    assert (production / STATS_FILE).exists()
    clf = load_classifier(production)
    assert isinstance(clf.model, StatsHeadModel)
    assert set(clf.labels) == {"weather", "music", "food", "travel"}
    version = reg.resolve("production")
    assert reg.verify(version) == [] and STATS_FILE in reg.metadata(version)["files"]
    # the model card says the predictor is the statistics, not the transformers head
    assert "load_classifier" in (reg.path(version) / "README.md").read_text()


def test_the_served_answers_come_from_the_statistics(promoted):
    ws, _ = promoted
    params = load_params(ws / "params.yaml")
    predictor = get_kind("classification").predictor(ws / "models" / "production", params)
    answers = predictor.predict(predictor.parse(["will it rain tomorrow", "play some jazz"]))
    assert all(a["label"] in {"weather", "music", "food", "travel"} for a in answers)


def test_the_exams_pooled_vectors_are_kept_and_the_gate_decides_the_same_without_them(promoted, tmp_path):
    """A statistics version keeps its exam rows' pooled vectors (sealed), the next exam runs
    the encoder over the new rows only, and a version answers the exam the same with its
    stored vectors as with none."""
    import shutil

    from tasks.judge.evaluate import load_exam
    from tasks.judge.gate import decide
    from tasks.train.stats_head import VECTORS_FILE, load_vectors, vector_key

    ws, _ = promoted
    reg = Registry(ws / "models")
    params = load_params(ws / "params.yaml")
    first, second = [entry["version"] for entry in reversed(reg.lineage(reg.resolve("production")))]
    batches = [reg.metadata(v)["batch_id"] for v in (first, second)]
    exam = load_exam(ws / "data" / "exam", batches)
    assert VECTORS_FILE in reg.metadata(second)["files"] and reg.verify(second) == []
    kept = load_vectors(reg.path(second))
    assert {vector_key(t, params.model.max_length) for t in exam["text"]} <= set(kept)
    assert set(load_vectors(reg.path(first))) < set(kept)  # the first version's exam, then the new rows
    kind = get_kind("classification")
    bare = tmp_path / "no-vectors"
    shutil.copytree(reg.path(second), bare)
    (bare / VECTORS_FILE).unlink()
    with_vectors = kind.evaluate(reg.path(second), exam, [batches[1]], params)
    without = kind.evaluate(bare, exam, [batches[1]], params)
    assert with_vectors["rows"]["pred"] == without["rows"]["pred"]
    champion = kind.evaluate(reg.path(first), exam, [batches[1]], params)
    one, other = (decide(s, champion, params.gate, labels={first: reg.metadata(first)["labels"]})
                  for s in (with_vectors, without))
    assert one.to_dict() == other.to_dict()


def test_drift_judges_the_second_delivery_against_the_stored_reference(promoted):
    """The first version stored its vectors of drift's reference sample (its held-out rows,
    sealed); the second run's drift read every one of them and computed none."""
    import json

    from tasks.drift.reference import REFERENCE_FILE, stored_reference

    ws, outcomes = promoted
    reg = Registry(ws / "models")
    first, second = [entry["version"] for entry in reversed(reg.lineage(reg.resolve("production")))]
    for version in (first, second):
        assert REFERENCE_FILE in reg.metadata(version)["files"] and stored_reference(reg.path(version))
    drift = json.loads((ws / "reports" / outcomes[1]["run_id"] / "drift.json").read_text())
    used = drift["sampling"]["embedded_reference"]
    assert used["used"] > 0 and used["stored"] == used["used"] and used["computed"] == 0
