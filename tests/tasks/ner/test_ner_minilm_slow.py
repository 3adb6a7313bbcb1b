"""Slow tier: the real all-MiniLM-L6-v2 (packaged, offline) as a tagger learns toy entities,
grows a type, and its saved directory works in a plain transformers pipeline."""

from __future__ import annotations

import pytest

from conftest import toy_ner_frame

pytestmark = pytest.mark.slow


def test_minilm_tagger_learns_toy_entities_and_grows(tmp_path):
    from transformers import pipeline

    from tasks.core.config import params_from_dict
    from tasks.ner.evaluate import evaluate_tagger
    from tasks.ner.model import load_tagger
    from tasks.train.finetune import train_candidate
    from tasks.ner.train import TAGGERS

    params = params_from_dict({"task": {"type": "ner"}, "model": {"base": "minilm", "max_length": 32},
                               "train": {"epochs": 6, "lr": 3e-4, "batch_size": 16}})
    frame = toy_ner_frame(["PER", "LOC"], sentences=80, seed=1).assign(slice="A", batch_id="a")
    train, test = frame[frame.split == "train"], frame[frame.split == "test"]
    first = train_candidate(training=TAGGERS, champion_dir=None, train_rows=train, out_dir=tmp_path / "v1", params=params)
    assert load_tagger(first.path).model.config.num_hidden_layers == 6
    sheet = evaluate_tagger(load_tagger(first.path), test, "a", batch_size=32, max_length=32)["all"]
    assert sheet["overall"]["f1"] > 0.8, sheet["overall"]
    more = toy_ner_frame(["ORG"], sentences=40, seed=2).assign(slice="B", batch_id="b")
    second = train_candidate(training=TAGGERS, champion_dir=first.path, train_rows=more[more.split == "train"], out_dir=tmp_path / "v2",
                          params=params)
    assert second.new_labels == ["ORG"] and second.labels[:5] == first.labels
    tagger = pipeline("token-classification", model=second.path, aggregation_strategy="first")
    assert {e["entity_group"] for e in tagger("alice flew to paris")} <= {"PER", "LOC", "ORG"}
