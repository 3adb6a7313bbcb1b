"""Done-when for a tagger's audit (task.type: ner): a promotion recorded in git + DVC is
rebuilt by `ratchet audit` through dvc.yaml's stages (which call the NER plug-in) and
PASSes bitwise; one changed byte of its batch in the DVC cache makes it FAIL, naming the
file. The tiny model runs in the fast tier, the real MiniLM in the slow tier."""

from __future__ import annotations

import json
import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.retrain import retrain
from tasks.registry.store import Registry

MINILM = {"model": {"base": "minilm", "max_length": 32}, "train": {"epochs": 8, "lr": 1.0e-4, "batch_size": 8}}


@pytest.mark.parametrize("model", ["tiny", pytest.param("minilm", marks=pytest.mark.slow)])
def test_a_tagger_promotion_passes_its_audit_and_a_changed_byte_fails_it(model, repo, tmp_path, prefect_server,
                                                                          one_torch_thread, monkeypatch):
    from conftest import toy_ner_frame
    from test_audit_replay import audit_repo, change_batch_in_cache, commit_all

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the rebuild's stage processes, on a shared box
    ws = audit_repo(repo, tmp_path, {"task": {"type": "ner"}, "ner": {"min_sentences": 5},
                                     "audit": {"git_commit": True}, **(MINILM if model == "minilm" else {})})
    commit_all(ws, "ratchet pipeline")
    batch = tmp_path / "a.jsonl"
    toy_ner_frame(["PER", "LOC"], sentences=60, seed=1, slice_name="A").to_json(batch, orient="records", lines=True)
    outcome = retrain(batch=str(batch), workspace=str(ws))
    assert outcome["status"] == "promoted", outcome["reasons"]
    meta = Registry(ws / "models").metadata("v0001")
    assert meta["task"] == "ner" and meta["metric"] == "f1" and meta["git_rev"]
    assert json.loads((ws / "audit" / "metrics.json").read_text())["overall_f1"] == meta["metrics"]["overall"]["f1"]

    cli = CliRunner()
    passed = cli.invoke(app, ["audit", "v0001", "--workspace", str(ws)])
    assert passed.exit_code == 0, passed.output
    assert passed.output.startswith("PASS") and "weights sha256" in passed.output

    entry, _ = change_batch_in_cache(ws, meta, lambda raw: raw.replace(b"alice", b"alicf", 1))
    failed = cli.invoke(app, ["audit", "v0001", "--workspace", str(ws)])
    assert failed.exit_code == 3, failed.output
    assert failed.output.startswith("FAIL") and f"data file {entry['relpath']}" in failed.output
