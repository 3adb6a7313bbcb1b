"""MLflow registry export against a local SQLite-backed tracking store: every exported
Ratchet version is one MLflow version of one registered model, `champion` follows
production (rollback included), a resync logs nothing twice, and what MLflow holds loads
and answers as the version does."""

from __future__ import annotations

import pytest

pytest.importorskip("mlflow", reason="the mlflow extra is not installed (pip install -e '.[mlflow]')")

from tasks.core.config import RegistryConfig  # noqa: E402
from tasks.judge.evaluate import predict_scored  # noqa: E402
from tasks.registry.mlflow_export import CHAMPION, TAG, MlflowTarget, exported, sync  # noqa: E402
from tasks.registry.store import Registry  # noqa: E402
from tasks.train.model import load_classifier  # noqa: E402
from tests.conftest import tiny_version  # noqa: E402


@pytest.fixture
def setup(tmp_path):
    reg = Registry(tmp_path / "models")
    target = MlflowTarget.from_config(RegistryConfig(mlflow_uri="sqlite:///mlflow/mlflow.db", mlflow_model="intents"),
                                      tmp_path)
    (tmp_path / "mlflow").mkdir()
    return reg, target, tmp_path


def test_a_relative_sqlite_uri_lives_in_the_workspace_with_its_artifacts(tmp_path):
    target = MlflowTarget.from_config(RegistryConfig(mlflow_uri="sqlite:///mlflow.db"), tmp_path)
    assert target.uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert target.artifacts == (tmp_path.resolve() / "mlartifacts").as_uri() and target.model == "ratchet"
    assert MlflowTarget.from_config(RegistryConfig(), tmp_path) is None


def test_promotions_become_versions_and_champion_follows_production_and_rollback(setup):
    import mlflow
    from mlflow import MlflowClient

    reg, target, tmp = setup
    first = tiny_version(reg, tmp, 1)
    reg.promote(first)
    done = sync(reg, target)
    assert (done["version"], done["mlflow_version"], done["champion"], done["logged"]) == (first, "1", "1", [first])

    second = tiny_version(reg, tmp, 2)
    reg.promote(second)
    assert sync(reg, target, second)["logged"] == [second]
    client = MlflowClient(tracking_uri=target.uri, registry_uri=target.uri)
    assert str(client.get_model_version_by_alias("intents", CHAMPION).version) == "2"

    reg.rollback(reason="test")
    again = sync(reg, target)
    assert again["logged"] == [] and again["champion"] == "1"  # nothing logged twice; the alias moved back
    assert str(client.get_model_version_by_alias("intents", CHAMPION).version) == "1"
    assert exported(client, target) == {first: "1", second: "2"}

    mv = client.get_model_version("intents", "2")
    assert mv.tags[TAG] == second and mv.tags["ratchet.lineage"] == second
    assert mv.tags["ratchet.parent"] == "None"  # tiny_version registers without a parent
    run = client.get_run(mv.run_id)
    assert run.data.metrics["accuracy"] == pytest.approx(0.52) and "slice.A.accuracy" in run.data.metrics
    assert {"ratchet/gate.json", "ratchet/metadata.json"} <= {a.path for a in client.list_artifacts(mv.run_id, "ratchet")}

    mlflow.set_registry_uri(target.uri)
    served = mlflow.pyfunc.load_model(f"models:/intents@{CHAMPION}")  # the champion is the first version again
    label, _ = predict_scored(load_classifier(reg.path(first)), ["play some guitar"], batch_size=4, max_length=32)[0]
    assert served.predict(["play some guitar"])["label"].tolist() == [label]


def test_a_version_logged_but_not_tagged_is_found_by_its_run(setup):
    """A crash between logging and tagging the MLflow version: the run's tag still names
    the Ratchet version, so the next sync does not log it again."""
    from mlflow import MlflowClient

    reg, target, tmp = setup
    reg.promote(tiny_version(reg, tmp, 1))
    sync(reg, target)
    client = MlflowClient(tracking_uri=target.uri, registry_uri=target.uri)
    client.delete_model_version_tag("intents", "1", TAG)
    assert sync(reg, target)["logged"] == []


def test_a_statistics_version_is_exported_as_a_model_that_answers_through_its_statistics(setup):
    """A class-statistics version's pipeline would answer with the unused classifier rows:
    MLflow gets a pyfunc that answers as Ratchet's loader does (label and score)."""
    import mlflow

    from conftest import TINY_PARAMS, toy_frame
    from tasks.core.config import load_params
    from tasks.intake.batch import split_batch
    from tasks.train.finetune import train_candidate

    reg, target, tmp = setup
    (tmp / "params.yaml").write_text(TINY_PARAMS)
    params = load_params(tmp / "params.yaml", {"train.stats_head": "alone", "train.stats_features": 48,
                                                "train.stats_bandwidth": 1.0, "train.stats_shrinkage": 0.1})
    rows = split_batch(toy_frame(["weather", "music", "food"], per_label=20, seed=0), "b-one", 0.3).train
    cand = train_candidate(champion_dir=None, train_rows=rows, out_dir=tmp / "stats-candidate", params=params)
    version = reg.register(cand.path, {"task": "classification", "pipeline_tag": "text-classification",
                                       "batch_id": "b-one", "params": params.to_dict(),
                                       "metrics": {"overall": {"accuracy": 0.9}}})
    reg.promote(version)
    assert sync(reg, target)["logged"] == [version]
    mlflow.set_registry_uri(target.uri)
    served = mlflow.pyfunc.load_model(f"models:/intents@{CHAMPION}")
    texts = ["play some guitar", "is it going to rain", "a pizza please", "the a my"]
    answers = predict_scored(load_classifier(reg.path(version)), texts, batch_size=4, max_length=32)
    got = served.predict(texts)
    assert got["label"].tolist() == [a[0] for a in answers]
    assert got["score"].tolist() == pytest.approx([a[1] for a in answers], abs=1e-6)
