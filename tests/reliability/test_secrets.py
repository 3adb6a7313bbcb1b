"""Secrets drill: planted fake S3 credentials are used for real (an s3:// batch, the
registry mirror, a failing push) and then searched for in every output Ratchet writes.

Guarantee proved (README, Guarantees): credentials never appear in logs (the console,
Python logging at the levels Ratchet sets, Prefect's stored flow-run logs), reports,
decision JSON, quarantine reports, model cards and version metadata, the registry
history, the objects of the S3 mirror, or Prefect artifacts and flow-run parameters.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from drills import make_production

pytestmark = pytest.mark.reliability

KEY_ID = "AKIARATCHETPLANTED77"
SECRET = "RatchetPlanted/Secret+Key0123456789abcdefXYZ"
TOKEN = "RatchetPlantedSessionToken/zzz999"
PLANTED = (KEY_ID, SECRET, TOKEN)


def leaks(text: str) -> list[str]:
    return [p for p in PLANTED if p in text]


def scan_tree(root: Path) -> dict[str, list[str]]:
    """Every file under root (binary files too: a key would be ASCII in them)."""
    found = {}
    for path in root.rglob("*"):
        if path.is_file():
            hit = leaks(path.read_bytes().decode("latin-1"))
            if hit:
                found[str(path)] = hit
    return found


def test_the_scanner_finds_a_planted_key(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "x.bin").write_bytes(b"\x00\x01" + SECRET.encode() + b"\xff")
    assert scan_tree(tmp_path) == {str(tmp_path / "a" / "b" / "x.bin"): [SECRET]}


def prefect_outputs(flow_run_ids: list) -> str:
    """Artifacts, logs and parameters of the flow runs, read back through the Prefect API."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, \
        FlowRunFilterId, LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=flow_run_ids)))
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=flow_run_ids)))
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=flow_run_ids)))
    assert len(flow_run_ids) == 2 and artifacts and logs and len(runs) == 2
    return "\n".join([*(f"{a.key} {a.description} {a.data}" for a in artifacts), *(lg.message for lg in logs),
                      *(f"{r.name} {r.parameters}" for r in runs)])


def test_planted_credentials_appear_in_no_output(tmp_path, s3_bucket, prefect_server, one_torch_thread,
                                                 monkeypatch, capfd, caplog):
    from conftest import TINY_PARAMS, toy_frame
    from flows.cli import app
    from flows.retrain import retrain
    from tasks.registry.registry_s3 import Mirror
    from tasks.core.storage import list_objects, put_bytes, read_bytes, s3_client

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)  # moto takes any key; these are the ones in use
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    caplog.set_level(logging.INFO)
    mirror = f"s3://{s3_bucket}/registry"
    ws, _ = make_production(tmp_path, TINY_PARAMS + f"registry: {{mirror: '{mirror}'}}\n")
    assert s3_client().meta.config.retries  # a client built with the planted key

    good, bad = f"s3://{s3_bucket}/landing/b.csv", f"s3://{s3_bucket}/landing/bad.csv"
    put_bytes(good, toy_frame(["food", "travel"], per_label=20, seed=2).to_csv(index=False).encode())
    put_bytes(bad, b"text\nno label column\n")
    outcomes = [retrain(batch=good, workspace=str(ws)), retrain(batch=bad, workspace=str(ws))]
    assert [o["status"] for o in outcomes] == ["promoted", "quarantined"], [o["reasons"] for o in outcomes]
    assert "error" not in outcomes[0]["details"]["mirror"]

    # a push that fails (no such bucket) writes its error where people look
    (ws / "params.yaml").write_text(TINY_PARAMS + "registry: {mirror: 's3://no-such-bucket-ratchet/r'}\n")
    failed = CliRunner().invoke(app, ["models", "push", "--workspace", str(ws)])
    assert failed.exit_code == 1 and "NoSuchBucket" in failed.output
    status = CliRunner().invoke(app, ["status", "--workspace", str(ws)])

    console = capfd.readouterr()
    outputs = {
        "console": console.out + console.err + failed.output + status.output,
        "log records": "\n".join(f"{r.name} {r.getMessage()} {r.args}" for r in caplog.records),
        "prefect": prefect_outputs(flow_runs_of(ws)),
        "mirror objects": "\n".join(read_bytes(o.uri).decode("latin-1") for o in list_objects(mirror + "/")
                                    if not o.uri.endswith(".safetensors")),
    }
    assert Mirror(mirror).versions() == ["v0002"]
    found = {where: leaks(text) for where, text in outputs.items() if leaks(text)}
    found.update(scan_tree(ws))  # reports/, decision.json, data/ (quarantine), models/ (cards, metadata)
    assert (ws / "reports").is_dir() and list((ws / "models" / "versions").glob("*/README.md"))
    assert found == {}, f"planted credentials leaked into: {found}"


def flow_runs_of(ws: Path) -> list:
    """The ids of the flow runs that worked in this workspace (their `workspace` parameter)."""
    from prefect import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:  # the newest: the session's server holds many
        runs = client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=50)
    return [r.id for r in runs if r.parameters.get("workspace") == str(ws)]
