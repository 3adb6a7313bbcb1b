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


TYPES = ["PER", "LOC", "ORG", "MISC"]


def synthetic_conll(tmp_path, train: int, test: int) -> list[str]:
    """A train.txt/test.txt folder of toy sentences; the CLI arguments that read all of it."""
    data = tmp_path / "conll"
    data.mkdir()
    (data / "train.txt").write_text(write_conll(toy_ner_frame(TYPES, sentences=train, seed=1)))
    (data / "test.txt").write_text(write_conll(toy_ner_frame(TYPES, sentences=test, seed=2)))
    return ["--data", str(data), "--out", str(tmp_path), "--set", "model.base=tiny", "--train", "0", "--test", "0"]


def test_stream_naive_and_joint_on_synthetic_conll(tmp_path):
    from benchmarks.report import ner_table

    types = TYPES
    out = main(synthetic_conll(tmp_path, 60, 20) + ["--set", "train.epochs=3", "--set", "train.lr=0.002"])
    doc = json.loads(out.read_text())
    stages, naive = doc["stream"]["stages"], doc["naive"]["stages"]
    assert [s["new_types"] for s in stages] == [["LOC", "PER"], ["ORG"], ["MISC"]]
    # every delivery annotates the types that came before it: no replayed sentence adds one it
    # lacks, and those made before a type existed are left out (TaggerTraining.worth_replaying)
    assert [s["replayed"] for s in stages] == [0, 0, 0]
    assert [s["replayed"] for s in naive] == [0, 0, 0] and [s["new_types"] for s in naive] == [["LOC", "PER"], ["ORG"], ["MISC"]]
    assert sum(s["samples"] for s in stages) == sum(s["samples"] for s in naive) > 0
    assert set(stages[-1]["test"]["per_type_f1"]) <= set(types)
    assert 0 <= doc["joint"]["test"]["f1"] <= 1 and doc["reference"]["bert_base_test_f1"] == 92.4
    table = "\n".join(ner_table(doc))
    assert "| naive stage 3 (+MISC) |" in table and "| CoNLL-2003: stream micro F1 ≥ 98% of joint |" in table
    assert "| … training samples ≤ 1.5× naive's |" in table


def test_missing_data_is_skipped_with_a_reason(tmp_path, capsys):
    assert main(["--data", str(tmp_path / "nowhere")]) is None
    assert "not found" in capsys.readouterr().out


def test_stream_and_joint_side_by_side(tmp_path):
    out = main(synthetic_conll(tmp_path, 30, 10) + ["--set", "train.epochs=1", "--jobs", "2", "--modes", "stream,joint"])
    doc = json.loads(out.read_text())
    assert doc["complete"] and doc["machine"]["jobs"] == 2
    assert len(doc["stream"]["stages"]) == 3 and doc["joint"]["wall_seconds"] > 0


def test_a_mode_run_again_replaces_only_itself(tmp_path):
    from benchmarks.report import ner_table

    earlier = {"date": "2026-01-01T00:00:00+00:00", "command": "python -m benchmarks.ner_bench --scale full",
               "stream": {"stages": [{"stage": 1}]}, "naive": {"stages": [{"stage": 9}]}, "joint": {"old": True}}
    (tmp_path / "earlier.json").write_text(json.dumps(earlier))
    out = main(synthetic_conll(tmp_path, 30, 10) + ["--set", "train.epochs=1", "--modes", "joint",
                                                     "--merge", str(tmp_path / "earlier.json")])
    doc = json.loads(out.read_text())
    assert "old" not in doc["joint"] and doc["joint"]["train_sentences"] == 30
    assert doc["naive"]["stages"] == [{"stage": 9}] and doc["naive"]["measured"]["date"] == earlier["date"]
    assert any("`naive` was measured in an earlier run" in line for line in ner_table(doc | {
        "stream": {"stages": []}, "naive": {"stages": [], "measured": doc["naive"]["measured"]}}))
