"""The flow exports each promotion to MLflow (registry.mlflow_uri, a SQLite store here);
a down MLflow never blocks a promotion, `ratchet models mlflow-sync` completes it, and
`champion` follows a rollback made with `ratchet rollback`."""

from __future__ import annotations

import pytest

pytest.importorskip("mlflow", reason="the mlflow extra is not installed (pip install -e '.[mlflow]')")

from typer.testing import CliRunner  # noqa: E402

from flows.cli import app  # noqa: E402
from flows.retrain import retrain  # noqa: E402
from tasks.core.config import load_params  # noqa: E402
from tasks.registry.mlflow_export import CHAMPION, MlflowTarget  # noqa: E402
from tests.conftest import flow_workspace, TINY_PARAMS, toy_frame  # noqa: E402

DOWN = "http://127.0.0.1:9"  # nothing listens there


def test_promotions_reach_mlflow_and_a_down_mlflow_blocks_nothing(tmp_path_factory, prefect_server, one_torch_thread):
    from mlflow import MlflowClient

    root, ws = flow_workspace(tmp_path_factory, "mlflow",
                              TINY_PARAMS + "registry: {mlflow_uri: 'sqlite:///mlflow.db', mlflow_model: intents}\n")
    a, b = root / "a.csv", root / "b.csv"
    toy_frame(["weather", "music"], per_label=30, seed=1, slice_name="A").to_csv(a, index=False)
    toy_frame(["food", "travel"], per_label=30, seed=2, slice_name="B").to_csv(b, index=False)

    first = retrain(batch=str(a), workspace=str(ws), overrides={"registry.mlflow_uri": DOWN})
    assert first["status"] == "promoted" and first["exit_code"] == 0, first["reasons"]
    assert first["details"]["mlflow"]["error"] and first["details"]["mlflow"]["retry"] == "ratchet models mlflow-sync"

    cli = CliRunner()
    synced = cli.invoke(app, ["models", "mlflow-sync", "--workspace", str(ws)])
    assert synced.exit_code == 0, synced.output
    assert "v0001 is version 1" in synced.output and "logged v0001" in synced.output

    second = retrain(batch=str(b), workspace=str(ws))
    assert second["status"] == "promoted", second["reasons"]
    assert {k: second["details"]["mlflow"][k] for k in ("version", "mlflow_version", "champion", "logged")} == {
        "version": "v0002", "mlflow_version": "2", "champion": "2", "logged": ["v0002"]}
    target = MlflowTarget.from_config(load_params(ws / "params.yaml").registry, ws)
    client = MlflowClient(tracking_uri=target.uri, registry_uri=target.uri)
    mv = client.get_model_version("intents", "2")
    assert mv.tags["ratchet.lineage"] == "v0001 > v0002" and mv.tags["ratchet.parent"] == "v0001"
    assert client.get_run(mv.run_id).data.metrics["slice.A.accuracy"] > 0

    rolled = cli.invoke(app, ["rollback", "--workspace", str(ws), "--reason", "test"])
    assert rolled.exit_code == 0, rolled.output
    assert str(client.get_model_version_by_alias("intents", CHAMPION).version) == "1"
    assert cli.invoke(app, ["models", "mlflow-sync", "--workspace", str(ws)]).exit_code == 0  # idempotent
    assert len(client.search_model_versions("name='intents'")) == 2
