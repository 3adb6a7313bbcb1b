"""The NER benchmark's plumbing on synthetic CoNLL files and the tiny model (the real
CoNLL-2003 numbers come from `python -m benchmarks.ner_bench`, see README)."""

from __future__ import annotations

import json

import pytest

from benchmarks.ner_bench import main, restrict
from conftest import toy_ner_frame
from tasks.ner.conll import write_conll
from tasks.ner.tags import iob2_errors

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_restrict_keeps_iob2():
    tags = restrict(["B-ORG", "I-ORG", "O", "B-PER", "B-MISC", "I-MISC"], {"PER"})
    assert tags == ["O", "O", "O", "B-PER", "O", "O"] and iob2_errors(tags) == []


def test_stream_and_joint_on_synthetic_conll(tmp_path):
    data = tmp_path / "conll"
    data.mkdir()
    types = ["PER", "LOC", "ORG", "MISC"]
    (data / "train.txt").write_text(write_conll(toy_ner_frame(types, sentences=60, seed=1)))
    (data / "test.txt").write_text(write_conll(toy_ner_frame(types, sentences=20, seed=2)))
    out = main(["--data", str(data), "--out", str(tmp_path), "--set", "model.base=tiny",
                "--set", "train.epochs=3", "--set", "train.lr=0.002", "--train", "0", "--test", "0"])
    doc = json.loads(out.read_text())
    stages = doc["stream"]["stages"]
    assert [s["new_types"] for s in stages] == [["LOC", "PER"], ["ORG"], ["MISC"]]
    assert stages[0]["replayed"] == 0 and stages[1]["replayed"] > 0
    assert set(stages[-1]["test"]["per_type_f1"]) <= set(types)
    assert 0 <= doc["joint"]["test"]["f1"] <= 1 and doc["reference"]["bert_base_test_f1"] == 92.4


def test_missing_data_is_skipped_with_a_reason(tmp_path, capsys):
    assert main(["--data", str(tmp_path / "nowhere")]) is None
    assert "not found" in capsys.readouterr().out


def test_stream_and_joint_side_by_side(tmp_path):
    data = tmp_path / "conll"
    data.mkdir()
    types = ["PER", "LOC", "ORG", "MISC"]
    (data / "train.txt").write_text(write_conll(toy_ner_frame(types, sentences=30, seed=1)))
    (data / "test.txt").write_text(write_conll(toy_ner_frame(types, sentences=10, seed=2)))
    out = main(["--data", str(data), "--out", str(tmp_path), "--set", "model.base=tiny",
                "--set", "train.epochs=1", "--train", "0", "--test", "0", "--jobs", "2"])
    doc = json.loads(out.read_text())
    assert doc["complete"] and doc["machine"]["jobs"] == 2
    assert len(doc["stream"]["stages"]) == 3 and doc["joint"]["wall_seconds"] > 0
