"""task.type: ner's own side of the retrain flow (temporary Prefect server, tiny model):
a CoNLL file converted by the CLI is promoted, a batch bringing a new entity type grows
the head with B-/I- rows and is scored per entity type, the CLI prints entity F1, and
`ratchet validate` / `ratchet drift` judge entity types. What every task type gets from
the flow (promotion with replay, the gate on every old slice, quarantine of a malformed
batch, size limits, rejection, skips, status and card, resume after a kill) is
tests/flows/test_conformance.py.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.retrain import retrain
from tasks.ner.conll import to_jsonl, write_conll
from tasks.registry.store import Registry

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ner_run(tmp_path_factory, prefect_server):
    from conftest import ner_workspace, toy_ner_frame

    root, ws = ner_workspace(tmp_path_factory, "nerflow")
    conll = root / "a.conll"
    first = toy_ner_frame(["PER", "LOC"], sentences=60, seed=1)
    conll.write_text(write_conll(first))
    result = CliRunner().invoke(app, ["convert", "conll", str(conll), "--slice", "A"])
    assert result.exit_code == 0, result.output
    a = root / "a.jsonl"
    b = root / "b.parquet"
    toy_ner_frame(["ORG", "PER"], sentences=60, seed=2, slice_name="B").to_parquet(b)
    outcomes = [retrain(batch=str(a), workspace=str(ws)), retrain(batch=str(b), workspace=str(ws))]
    return ws, root, outcomes


def test_a_converted_conll_file_and_a_new_entity_type_are_learned(ner_run):
    ws, _, outcomes = ner_run
    assert [o["status"] for o in outcomes] == ["promoted", "promoted"], [o["reasons"] for o in outcomes]
    meta = Registry(ws / "models").metadata("v0002")
    assert set(meta["metrics"]["overall"]["per_type"]) == {"LOC", "ORG", "PER"}
    second = outcomes[1]["details"]
    assert second["new_labels"] == ["ORG"] and "new_types" in second["drift"]["signals"]
    assert json.loads((ws / "models" / "production" / "config.json").read_text())["id2label"]["5"] == "B-ORG"
    card = (ws / "models" / "production" / "README.md").read_text()  # the model card
    assert "micro F1" in card and "Entity micro F1 of each version" in card

    from transformers import pipeline

    tagger = pipeline("token-classification", model=str(ws / "models" / "production"))
    assert isinstance(tagger("alice flew to paris"), list)


def test_cli_retrain_prints_ner_drift_and_gate(ner_run):
    from conftest import toy_ner_frame

    ws, root, _ = ner_run
    c = root / "c.jsonl"
    c.write_text(to_jsonl(toy_ner_frame(["PER", "LOC", "ORG"], sentences=40, seed=9)))
    result = CliRunner().invoke(app, ["retrain", "--batch", str(c), "--workspace", str(ws)])
    assert result.exit_code in (0, 3), result.output
    assert "signals:" in result.output and "entity F1" in result.output


def test_cli_convert_names_the_bad_line(tmp_path):
    bad = tmp_path / "x.conll"
    bad.write_text("Peter B-PER\nBlackburn\n")
    result = CliRunner().invoke(app, ["convert", "conll", str(bad)])
    assert result.exit_code == 2 and "line 2" in result.output
    assert CliRunner().invoke(app, ["convert", "conll", str(tmp_path / "missing.conll")]).exit_code == 2


def test_cli_validate_and_drift_read_ner_batches(ner_run):
    from conftest import toy_ner_frame

    ws, root, _ = ner_run
    good = root / "d.jsonl"
    good.write_text(to_jsonl(toy_ner_frame(["PER", "MISC"], sentences=30, seed=11)))
    result = CliRunner().invoke(app, ["validate", str(good), "--workspace", str(ws), "--json"])
    assert result.exit_code == 0, result.output
    refused = CliRunner().invoke(app, ["validate", str(good), "--workspace", str(ws),
                                       "--set", "ner.allow_new_types=false"])
    assert refused.exit_code == 4 and "MISC" in refused.output
    drift = CliRunner().invoke(app, ["drift", str(good), "--workspace", str(ws), "--json"])
    assert drift.exit_code == 0, drift.output
    assert json.loads(drift.stdout)["new_types"] == ["MISC"]


def test_split_removes_leaks_against_earlier_batches(ner_run, tmp_path):
    from conftest import toy_ner_frame
    from tasks.kinds import NER
    from tasks.core.workspace import Workspace

    ws, _, outcomes = ner_run
    ws = Workspace.at(ws)
    first = outcomes[0]["batch_id"]
    exam = pd.read_parquet(ws.exam_dir / f"{first}.parquet")
    trained = pd.read_parquet(ws.batch_dir(first) / "train.parquet")
    frame = toy_ner_frame(["PER"], sentences=10, seed=21)
    leaked = pd.DataFrame({"tokens": [list(exam.tokens[0]), list(trained.tokens[0])],
                                             "tags": [list(exam.tags[0]), list(trained.tags[0])],
                                             "split": ["train", "test"]})
    parts, leaks = NER.split(pd.concat([frame, leaked], ignore_index=True), "b-leak", 0.3, ws,
                             [first])
    assert leaks["train_rows_in_exam"] == 1 and leaks["heldout_rows_in_past_train"] == 1
    assert len(parts.train) + len(parts.test) == len(frame)
