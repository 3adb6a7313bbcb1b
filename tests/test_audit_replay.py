"""Done-when for DVC audits: two promotions recorded in git + DVC (pushed to an S3 remote
on moto's server), then `ratchet audit v0002` rebuilds the second one bitwise after the
local cache is wiped; one changed byte of a training batch in the cache, or one changed
param, makes the audit fail and name what differs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from flows.retrain import retrain
from tasks.registry.store import Registry
from tasks.core.storage import s3_client

pytestmark = pytest.mark.slow  # two tiny trainings in-process plus two `dvc repro` rebuilds (~2-3 min)


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{cmd}: {done.stdout}{done.stderr}"
    return done


def audit_repo(repo: Path, root: Path, params: dict | None = None) -> Path:
    """A git + DVC repository with Ratchet's pipeline, tiny params and git_commit on."""
    from conftest import TINY_PARAMS

    ws = root / "ws"
    ws.mkdir()
    shutil.copytree(repo / "tasks", ws / "tasks", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copyfile(repo / name, ws / name)
    full = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in {**yaml.safe_load(TINY_PARAMS), **(params or {})}.items():
        full[section].update(values)
    (ws / "params.yaml").write_text(yaml.safe_dump(full))
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "config", "user.email", "t@example.com"],
                ["git", "config", "user.name", "test"]):
        run(cmd, ws)
    shutil.copyfile(repo / ".dvcignore", ws / ".dvcignore")  # __pycache__ is not a code change
    shutil.copytree(repo / ".dvc" / "plots", ws / ".dvc" / "plots")  # the heatmap template
    return ws


def commit_all(ws: Path, message: str) -> None:
    run(["git", "add", "-A"], ws)
    run(["git", "commit", "-q", "-m", message], ws)


def test_audit_rebuilds_a_promotion_and_names_what_differs(repo, tmp_path, toy, prefect_server, s3_bucket,
                                                           one_torch_thread, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the rebuild's stage processes, on a shared box
    ws = audit_repo(repo, tmp_path, {"audit": {"git_commit": True}})
    run(["dvc", "remote", "add", "-d", "storage", f"s3://{s3_bucket}/dvc"], ws)
    run(["dvc", "remote", "modify", "storage", "endpointurl", os.environ["AWS_ENDPOINT_URL"]], ws)
    commit_all(ws, "ratchet pipeline")
    for name, labels, seed in (("a", ["weather", "music"], 5), ("b", ["food", "travel"], 6)):
        batch = tmp_path / f"{name}.csv"
        toy(labels, per_label=30, seed=seed, slice_name=name.upper()).to_csv(batch, index=False)
        assert retrain(batch=str(batch), workspace=str(ws))["status"] == "promoted"

    meta = Registry(ws / "models").metadata("v0002")
    assert meta["parent"] == "v0001" and meta["dvc_data_hash"] and meta["dvc_models_hash"] and meta["git_rev"]
    tags = run(["git", "tag", "--list"], ws).stdout.split()
    assert {"model@v0.0.1", "model@v0.0.2", "model#production#1", "model#production#2"} <= set(tags)
    assert json.loads((ws / "audit" / "metrics.json").read_text())["version"] == "v0002"
    diff = run(["dvc", "metrics", "diff", "model@v0.0.1", "model@v0.0.2", "--all", "--json"], ws).stdout
    assert "overall_accuracy" in diff and "slices.B" in diff
    run(["dvc", "plots", "diff", "model@v0.0.1", "model@v0.0.2", "-o", str(tmp_path / "plots")], ws)
    assert "audit_matrix_csv" in (tmp_path / "plots" / "index.html").read_text()

    # everything the audit needs now lives only on the S3 remote (pushed by each promotion)
    shutil.rmtree(ws / ".dvc" / "cache")
    cli = CliRunner()
    passed = cli.invoke(app, ["audit", "v0002", "--workspace", str(ws)])
    assert passed.exit_code == 0, passed.output
    assert passed.output.startswith("PASS") and "weights sha256" in passed.output

    # one byte of the second training batch, changed in the DVC cache and on the remote
    # (a cache-only change DVC heals by itself: fetch re-downloads an object whose hash fails)
    entry, honest = change_batch_in_cache(ws, meta, lambda raw: raw[:-2] + b"X\n")
    blob = _cache_path(ws, entry["md5"])
    key = f"dvc/files/md5/{entry['md5'][:2]}/{entry['md5'][2:]}"
    s3_client().put_object(Bucket=s3_bucket, Key=key, Body=blob.read_bytes())
    flipped = cli.invoke(app, ["audit", "v0002", "--workspace", str(ws)])
    assert flipped.exit_code == 3, flipped.output
    assert flipped.output.startswith("FAIL") and f"data file {entry['relpath']}" in flipped.output

    s3_client().put_object(Bucket=s3_bucket, Key=key, Body=honest)  # the honest bytes back
    shutil.rmtree(ws / ".dvc" / "cache")
    changed = cli.invoke(app, ["audit", "v0002", "--workspace", str(ws), "--set", "train.lr=0.003"])
    assert changed.exit_code == 3, changed.output
    assert "DIFFERS param train.lr" in changed.output and "DIFFERS weights sha256" in changed.output


def change_batch_in_cache(ws: Path, meta: dict, change) -> tuple[dict, bytes]:
    """Rewrite the cached raw bytes of the version's batch with `change(raw)`; returns its
    manifest entry (relpath, md5) and the honest bytes."""
    manifest = json.loads(_cache_path(ws, meta["dvc_data_hash"]).read_text())
    (entry,) = [e for e in manifest if e["relpath"].startswith(f"batches/{meta['batch_id']}/raw/")]
    blob = _cache_path(ws, entry["md5"])
    blob.chmod(0o644)
    honest = blob.read_bytes()
    blob.write_bytes(change(honest))
    assert blob.read_bytes() != honest
    return entry, honest


def _cache_path(ws: Path, md5: str) -> Path:
    return ws / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
