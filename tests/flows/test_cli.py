"""The `ratchet` command: exit codes of the contract, run in-process on the shared server."""

from __future__ import annotations

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
    from tasks.registry import Registry

    assert Registry(workspace / "models").resolve("production") == "v0001"
    assert runner.invoke(app, ["models", "promote", "v0009", "--workspace", str(workspace)]).exit_code == 2
