"""Recording promotions for audits (real git + DVC in a temp repo, no model) and the
audit's comparison rules."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from dvc.repo import Repo
from typer.testing import CliRunner

from flows.cli import app
from tasks.audit.record import (audit_frames, git, next_stage_tag, record_data, record_promotion, semver,
                         version_metadata, version_tag)
from tasks.audit.audit_run import AuditReport, Difference, compare_values, materialise, replay_params
from tasks.core.config import params_from_dict
from tasks.registry.store import Registry
from tasks.core.workspace import Workspace


def _metrics(acc: dict[str, float]) -> dict:
    return {"overall": {"accuracy": sum(acc.values()) / len(acc)}, "slices": {s: {"accuracy": a} for s, a in acc.items()}}


@pytest.fixture
def dvc_ws(tmp_path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / ".gitignore").write_text("/data\n/models/versions/\n/models/aliases.json\n/models/production\n")
    subprocess.run(["git", "init", "-q"], cwd=ws, check=True)
    Repo.init(str(ws)).close()  # in-process: the dvc CLI takes seconds just to start
    git(ws, "add", "-A")
    git(ws, "commit", "-q", "-m", "init")
    (ws / "data" / "batches" / "b-1" / "raw").mkdir(parents=True)
    (ws / "data" / "batches" / "b-1" / "raw" / "a.csv").write_text("text,label\nhello,x\n")
    return ws


def _promote(ws: Path, parent: str | None, acc: dict[str, float], params) -> str:
    candidate = ws / "cand"
    candidate.mkdir(exist_ok=True)
    (candidate / "model.safetensors").write_bytes(json.dumps(acc).encode())  # registry only hashes it
    meta = version_metadata(params, parent=parent, lineage=[], batch_id="b-1", source="a.csv", metrics=_metrics(acc),
                            gate={"promote": True, "checks": []}, train={"losses": [0.9, 0.5], "steps": 2},
                            run_id="r", root=ws, data_hash=record_data(Workspace.at(ws)))
    reg = Registry(ws / "models")
    version = reg.register(candidate, meta)
    reg.promote(version)
    return version


def test_a_promotion_is_committed_and_tagged_the_way_gto_reads_tags(dvc_ws):
    from gto.constants import tag_re

    params = params_from_dict({"audit": {"git_commit": True}})
    reg, ws = Registry(dvc_ws / "models"), Workspace.at(dvc_ws)
    first = record_promotion(ws, params, reg, _promote(dvc_ws, None, {"A": 0.9}, params))
    second = record_promotion(ws, params, reg, _promote(dvc_ws, "v0001", {"A": 0.8, "B": 0.7}, params))
    assert first.tags == ["model@v0.0.1", "model#production#1"]
    assert second.tags == ["model@v0.0.2", "model#production#2"]
    assert all(tag_re.match(t) for t in first.tags + second.tags)
    assert git(dvc_ws, "rev-parse", "model@v0.0.2^{commit}") == second.commit == git(dvc_ws, "rev-parse", "HEAD")
    assert git(dvc_ws, "cat-file", "-t", "model@v0.0.2") == "tag"  # annotated
    committed = set(git(dvc_ws, "ls-tree", "-r", "--name-only", "model@v0.0.2").splitlines())
    assert {"data.dvc", "models/versions.dvc", "audit/metrics.json", "audit/matrix.csv"} <= committed
    meta = reg.metadata("v0002")
    assert meta["dvc_data_hash"].endswith(".dir") and meta["dvc_models_hash"].endswith(".dir")
    assert meta["git_rev"] and meta["git_dirty"] is False
    assert json.loads((dvc_ws / "audit" / "metrics.json").read_text())["slices"] == {"A": 0.8, "B": 0.7}


def test_without_git_commit_the_flow_records_dvc_but_never_commits(dvc_ws):
    params = params_from_dict({})
    head = git(dvc_ws, "rev-parse", "HEAD")
    rec = record_promotion(Workspace.at(dvc_ws), params, Registry(dvc_ws / "models"), _promote(dvc_ws, None, {"A": 1.0}, params))
    assert rec.commit is None and rec.tags == [] and rec.models_hash
    assert git(dvc_ws, "rev-parse", "HEAD") == head and (dvc_ws / "models" / "versions.dvc").exists()


def test_accuracy_matrix_covers_the_lineage(dvc_ws):
    params = params_from_dict({})
    _promote(dvc_ws, None, {"A": 0.9}, params)
    _promote(dvc_ws, "v0001", {"A": 0.8, "B": 0.7}, params)
    frames = audit_frames(Registry(dvc_ws / "models"), "v0002")
    assert frames["matrix"].values.tolist() == [["v0001", "A", 0.9], ["v0002", "A", 0.8], ["v0002", "B", 0.7]]
    assert frames["loss"]["loss"].tolist() == [0.9, 0.5]


def test_a_changed_byte_in_the_cache_is_named_when_restoring(dvc_ws, tmp_path):
    data_hash = record_data(Workspace.at(dvc_ws))["dvc_data_hash"]
    assert materialise(dvc_ws, data_hash, tmp_path / "first", "data") == []
    assert (tmp_path / "first" / "batches" / "b-1" / "raw" / "a.csv").read_text() == "text,label\nhello,x\n"
    with Repo(str(dvc_ws)) as repo:
        manifest = json.loads(Path(repo.cache.local.oid_to_path(data_hash)).read_text())
        blob = Path(repo.cache.local.oid_to_path(manifest[0]["md5"]))
    blob.chmod(0o644)
    blob.write_text("text,label\nhellO,x\n")
    (diff,) = materialise(dvc_ws, data_hash, tmp_path / "second", "data")
    assert diff.what == "data file batches/b-1/raw/a.csv (md5)" and diff.recorded == manifest[0]["md5"]


def test_next_stage_tag_counts_past_the_last_assignment(dvc_ws):
    for tag in ("model#production#1", "model#production#7", "model#staging#9"):
        git(dvc_ws, "tag", tag)
    assert next_stage_tag(dvc_ws) == "model#production#8"
    assert semver("v0007") == "v0.0.7" and version_tag("v0012") == "model@v0.0.12"


def test_compare_values_names_each_leaf_and_honours_the_tolerance():
    recorded = {"overall": {"accuracy": 0.9, "rows": 10}, "labels": ["a", "b"]}
    assert compare_values("metric", recorded, recorded) == []
    near = {"overall": {"accuracy": 0.91, "rows": 10}, "labels": ["a", "b"]}
    assert compare_values("metric", recorded, near) == [Difference("metric overall.accuracy", 0.9, 0.91)]
    assert compare_values("metric", recorded, near, tolerance=0.02) == []
    assert compare_values("gate", {"promote": True}, {"promote": False})[0].what == "gate promote"


def test_replay_params_point_at_the_promotion_and_apply_what_ifs():
    meta = {"params": {"train": {"lr": 0.002}, "audit": {"batch": "x", "parent": "none", "git_commit": True}},
            "parent": "v0001"}
    params = replay_params(meta, "data/batches/b-1/raw/a.csv", {"train.lr": 0.003})
    assert params["train"]["lr"] == 0.003 and meta["params"]["train"]["lr"] == 0.002
    assert params["audit"] == {"batch": "data/batches/b-1/raw/a.csv", "parent": "v0001", "git_commit": True}


def test_report_says_pass_or_fail_and_what_differs():
    report = AuditReport("v0002", "abc", matched=["weights sha256 ff"])
    assert report.passed and report.text().startswith("PASS: audit of v0002 at abc")
    report.differences.append(Difference("param train.lr", 0.002, 0.003))
    assert report.text().startswith("FAIL") and "DIFFERS param train.lr: recorded 0.002, rebuilt 0.003" in report.text()


def test_cli_audit_of_an_unknown_version_exits_2(workspace):
    result = CliRunner().invoke(app, ["audit", "v0042", "--workspace", str(workspace)])
    assert result.exit_code == 2 and "cannot audit" in result.output


def test_a_tagger_promotion_is_recorded_with_its_f1(dvc_ws):
    """task.type: ner versions carry entity F1, not accuracy: audit/ names it so."""
    candidate = dvc_ws / "cand"
    candidate.mkdir()
    (candidate / "model.safetensors").write_bytes(b"tagger")
    params = params_from_dict({"task": {"type": "ner"}})
    metrics = {"overall": {"f1": 0.8, "precision": 0.8, "recall": 0.8}, "slices": {"news": {"f1": 0.8}}}
    meta = version_metadata(params, parent=None, lineage=[], batch_id="b-1", source="a.jsonl", metrics=metrics,
                            gate={"promote": True, "checks": []}, train={"losses": [0.5], "steps": 1},
                            run_id="r", root=dvc_ws, data_hash=record_data(Workspace.at(dvc_ws))) | {"task": "ner"}
    reg = Registry(dvc_ws / "models")
    version = reg.register(candidate, meta)
    reg.promote(version)
    record_promotion(Workspace.at(dvc_ws), params, reg, version)
    written = json.loads((dvc_ws / "audit" / "metrics.json").read_text())
    assert written["overall_f1"] == 0.8 and written["slices"] == {"news": 0.8}
    assert (dvc_ws / "audit" / "matrix.csv").read_text().splitlines()[0] == "version,slice,score"
