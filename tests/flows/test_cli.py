"""The `ratchet` command: exit codes of the contract, run in-process on the shared server."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from flows.cli import app

runner = CliRunner()


def test_missing_batch_file_is_a_usage_error(tmp_path):
    result = runner.invoke(app, ["retrain", "--batch", str(tmp_path / "nope.csv"), "--workspace", str(tmp_path)])
    assert result.exit_code == 2
    assert "no batch file" in result.output


def test_bad_params_key_is_a_configuration_error(workspace, toy, tmp_path, prefect_server):
    batch = tmp_path / "a.csv"
    toy(["weather", "music"], per_label=10).to_csv(batch, index=False)
    result = runner.invoke(app, ["retrain", "--batch", str(batch), "--workspace", str(workspace),
                                 "--set", "train.epochz=3"])
    assert result.exit_code == 2
    assert "train.epochz" in result.output


def test_retrain_any_text_label_csv_and_quarantine_exit_codes(workspace, toy, tmp_path, prefect_server):
    good = tmp_path / "plain.csv"
    frame = toy(["weather", "music"], per_label=30, seed=3).drop(columns=["split"])
    frame.to_csv(good, index=False)  # only text,label: the split comes from a hash of the text
    result = runner.invoke(app, ["retrain", "--batch", str(good), "--workspace", str(workspace)])
    assert result.exit_code == 0, result.output
    assert "promoted" in result.output

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "", "label": "weather"}\n' * 12)
    result = runner.invoke(app, ["retrain", "--batch", str(bad), "--workspace", str(workspace)])
    assert result.exit_code == 4, result.output
    assert "quarantined" in result.output


def test_models_list_and_rollback(workspace, toy, tmp_path, prefect_server):
    for i, labels in enumerate([["weather", "music"], ["food", "travel"]]):
        batch = tmp_path / f"b{i}.csv"
        toy(labels, per_label=30, seed=i, slice_name=f"S{i}").to_csv(batch, index=False)
        assert runner.invoke(app, ["retrain", "--batch", str(batch), "--workspace", str(workspace)]).exit_code == 0
    listed = runner.invoke(app, ["models", "list", "--workspace", str(workspace)])
    assert "v0002" in listed.output and "production" in listed.output
    rolled = runner.invoke(app, ["models", "promote", "v0001", "--workspace", str(workspace)])
    assert rolled.exit_code == 0
    from tasks.registry.store import Registry

    assert Registry(workspace / "models").resolve("production") == "v0001"
    assert runner.invoke(app, ["models", "promote", "v0009", "--workspace", str(workspace)]).exit_code == 2


# --- promote, rollback, status on a registry built directly (no flow run needed) -------

def registry_with(tmp_path, n: int):
    """A workspace whose registry holds `n` chained versions, the last one production."""
    from tasks.registry.store import Registry

    ws = tmp_path / "ws"
    reg = Registry(ws / "models")
    parent = None
    for i in range(n):
        cand = tmp_path / f"cand{i}"
        cand.mkdir()
        (cand / "model.safetensors").write_bytes(bytes([i]) * 64)
        meta = {"parent": parent, "batch_id": f"batch{i}", "source": f"b{i}.csv", "created_at": f"2025-01-0{i + 1}",
                "metrics": {"overall": {"rows": 10, "accuracy": 0.9 + i / 100, "macro_f1": 0.9}}}
        parent = reg.register(cand, meta)
        reg.promote(parent, reason="setup")
    return ws, reg


def test_models_promote_records_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("USER", "ops")
    ws, reg = registry_with(tmp_path, 3)
    result = runner.invoke(app, ["models", "promote", "v0001", "--workspace", str(ws), "--reason", "incident 42"])
    assert result.exit_code == 0, result.output
    assert reg.aliases() == {"production": "v0001", "previous": "v0003"}
    last = reg.history()[-1]
    assert (last["alias"], last["from"], last["to"], last["reason"], last["who"]) == (
        "production", "v0003", "v0001", "incident 42", "ops")


@pytest.mark.reliability
def test_models_promote_refuses_a_tampered_version(tmp_path):
    ws, reg = registry_with(tmp_path, 2)
    weights = reg.path("v0001") / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:10])
    result = runner.invoke(app, ["models", "promote", "v0001", "--workspace", str(ws)])
    assert result.exit_code == 2 and "model.safetensors" in result.output
    assert reg.resolve("production") == "v0002"


def test_rollback_moves_production_to_previous(tmp_path):
    ws, reg = registry_with(tmp_path, 2)
    result = runner.invoke(app, ["rollback", "--workspace", str(ws), "--reason", "bad answers"])
    assert result.exit_code == 0, result.output
    assert "v0001" in result.output
    assert reg.aliases() == {"production": "v0001", "previous": "v0002"}
    assert {h["reason"] for h in reg.history()[-2:]} == {"bad answers"}


def test_rollback_without_previous_is_a_usage_error(tmp_path):
    ws, reg = registry_with(tmp_path, 1)
    result = runner.invoke(app, ["rollback", "--workspace", str(ws)])
    assert result.exit_code == 2 and "previous" in result.output
    assert reg.resolve("production") == "v0001"
    empty = runner.invoke(app, ["rollback", "--workspace", str(tmp_path / "nothing")])
    assert empty.exit_code == 2


def test_status_json_lineage_aliases_integrity(tmp_path):
    import json

    ws, reg = registry_with(tmp_path, 3)
    (reg.path("v0002") / "model.safetensors").write_bytes(b"x" * 64)
    result = runner.invoke(app, ["status", "--json", "--workspace", str(ws)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["production"] == "v0003"
    assert [e["version"] for e in report["lineage"]] == ["v0003", "v0002", "v0001"]
    assert report["lineage"][-1] == {"version": "v0001", "batch_id": "batch0", "source": "b0.csv",
                                     "created_at": "2025-01-01", "accuracy": 0.9, "metric": "accuracy", "score": 0.9}
    assert report["aliases"] == {"production": "v0003", "previous": "v0002"}
    intact = {v["version"]: v["intact"] for v in report["versions"]}
    assert intact == {"v0001": True, "v0002": False, "v0003": True}
    assert "model.safetensors" in report["versions"][1]["problems"][0]
    assert report["last_move"]["to"] == "v0003"


def test_status_human_and_empty(tmp_path):
    ws, _ = registry_with(tmp_path, 2)
    result = runner.invoke(app, ["status", "--workspace", str(ws)])
    assert result.exit_code == 0, result.output
    assert "production: v0002" in result.output and "batch0" in result.output and "intact" in result.output
    import json

    empty = runner.invoke(app, ["status", "--json", "--workspace", str(tmp_path / "none")])
    assert empty.exit_code == 0 and json.loads(empty.output)["production"] is None


# --- the S3 mirror and the accuracy matrix through the CLI ------------------------------

def with_mirror(ws, bucket: str) -> str:
    uri = f"s3://{bucket}/registry"
    ws.mkdir(parents=True, exist_ok=True)
    (ws / "params.yaml").write_text(f"registry: {{mirror: '{uri}'}}\n")
    return uri


def test_push_status_rollback_and_pull_through_the_mirror(tmp_path, s3_bucket):
    import json

    ws, reg = registry_with(tmp_path, 2)
    with_mirror(ws, s3_bucket)
    status = json.loads(runner.invoke(app, ["status", "--json", "--workspace", str(ws)]).output)
    assert status["mirror"]["production"] is None and status["mirror"]["in_sync"] is False

    pushed = runner.invoke(app, ["models", "push", "v0001", "--workspace", str(ws)])
    assert pushed.exit_code == 0, pushed.output
    assert "production -> None" in pushed.output  # v0001 is not the local production: pushed only
    pushed = runner.invoke(app, ["models", "push", "--workspace", str(ws)])
    assert pushed.exit_code == 0 and "v0002 pushed, production -> v0002" in pushed.output, pushed.output
    status = json.loads(runner.invoke(app, ["status", "--json", "--workspace", str(ws)]).output)
    assert status["mirror"] == {"uri": f"s3://{s3_bucket}/registry", "production": "v0002",
                                "versions": ["v0001", "v0002"], "in_sync": True}

    rolled = runner.invoke(app, ["rollback", "--workspace", str(ws), "--reason", "bad answers"])
    assert rolled.exit_code == 0 and "production -> v0001" in rolled.output.splitlines()[-1], rolled.output
    human = runner.invoke(app, ["status", "--workspace", str(ws)]).output
    assert "production v0001, 2 versions, in sync" in human

    fresh = tmp_path / "fresh"
    with_mirror(fresh, s3_bucket)
    pulled = runner.invoke(app, ["models", "pull", "--workspace", str(fresh)])
    assert pulled.exit_code == 0 and "pulled v0001" in pulled.output, pulled.output
    from tasks.registry.store import Registry

    assert Registry(fresh / "models").resolve("production") == "v0001"
    assert runner.invoke(app, ["models", "pull", "v0007", "--workspace", str(fresh)]).exit_code == 1


def test_push_and_pull_without_a_mirror_are_usage_errors(tmp_path):
    ws, _ = registry_with(tmp_path, 1)
    for command in (["models", "push"], ["models", "pull"]):
        result = runner.invoke(app, [*command, "--workspace", str(ws)])
        assert result.exit_code == 2 and "registry.mirror" in result.output


@pytest.mark.reliability
def test_a_failing_mirror_fails_the_promote_loudly(tmp_path, s3_server):
    ws, reg = registry_with(tmp_path, 2)
    with_mirror(ws, "no-such-bucket-anywhere")
    result = runner.invoke(app, ["models", "promote", "v0001", "--workspace", str(ws)])
    assert result.exit_code == 1 and "S3 mirror not updated" in result.output and "models push v0001" in result.output
    assert reg.resolve("production") == "v0001"  # the local move stands
    status = json.loads(runner.invoke(app, ["status", "--json", "--workspace", str(ws)]).output)
    assert status["mirror"]["error"]


def test_status_shows_the_accuracy_matrix_bwt_and_forgetting(tmp_path):
    import json

    from tasks.registry.matrix import extend, stamp
    from tasks.registry.store import Registry

    reg = Registry(tmp_path / "ws" / "models")
    sheets = [({"b1": 0.9}, None), ({"b1": 0.8, "b2": 0.95}, {"b1": 0.9, "b2": 0.1})]
    record, parent = None, None
    for i, (cand, champ) in enumerate(sheets):
        as_sheet = lambda accs: {"batches": {b: {"accuracy": a} for b, a in accs.items()},  # noqa: E731
                                 "slices": {f"S{b}": {"accuracy": a} for b, a in accs.items()}}
        record = extend(record, parent_version=parent, batch_id=f"b{i + 1}", batch_ids=list(cand),
                        candidate=as_sheet(cand), champion=as_sheet(champ) if champ else None)
        path = tmp_path / f"c{i}"
        path.mkdir()
        (path / "model.safetensors").write_bytes(bytes([i]) * 64)
        parent = reg.register(path, {"parent": parent, "batch_id": f"b{i + 1}", "accuracy_matrix": record})
        record = reg.metadata(parent)["accuracy_matrix"]
        reg.promote(parent)
    assert record == stamp(record, "v0002")
    report = json.loads(runner.invoke(app, ["status", "--json", "--workspace", str(tmp_path / "ws")]).output)
    continual = report["continual"]
    assert continual["accuracy_matrix"]["accuracy"] == [[0.9, 0.1], [0.8, 0.95]]
    assert [r["version"] for r in continual["accuracy_matrix"]["rows"]] == ["v0001", "v0002"]
    assert continual["bwt"] == -0.1 and continual["forgetting"] == {"b1": 0.1}
    assert continual["slice_forgetting"] == {"Sb1": 0.1}
    human = runner.invoke(app, ["status", "--workspace", str(tmp_path / "ws")]).output
    assert "BWT -0.100, average forgetting +0.100" in human and "Sb1 +0.100" in human
    card = (reg.root / "production" / "README.md").read_text()
    assert "| v0001 | b1 | 0.9000 | 0.1000 |" in card and "| v0002 | b2 | 0.8000 | 0.9500 |" in card
