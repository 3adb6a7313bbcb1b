"""NER drift: new entity types, moved type shares, tokens per sentence, coverage, embeddings."""

from __future__ import annotations

import json

import pytest

from conftest import toy_ner_frame
from tasks.core.config import DriftConfig
from tasks.ner.drift import detect_ner_drift, js_distance, signals, type_shares
from tasks.ner.model import load_base_tagger
from tasks.ner.tags import labels_for

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CFG = DriftConfig(max_embed_rows=60, min_slice_rows=20)


@pytest.fixture(scope="module")
def tagger():
    return load_base_tagger("tiny", labels_for(["PER", "LOC"]), seed=0)


def test_type_shares_and_distance():
    frame = toy_ner_frame(["PER", "LOC"], sentences=30, seed=0)
    shares = type_shares(frame)
    assert set(shares) == {"PER", "LOC"} and abs(sum(shares.values()) - 1) < 1e-3
    assert js_distance(shares, shares) == 0.0
    assert js_distance({"PER": 1.0}, {"ORG": 1.0}) == 1.0


def test_signals_have_coverage_columns(tagger):
    frame = toy_ner_frame(["PER"], sentences=5, seed=0)
    sig = signals(frame, tagger)
    assert list(sig.columns) == ["label", "text", "tokens", "unk_share", "pieces_per_word"]
    assert sig["label"].unique().tolist() == ["PER"]


def test_new_types_fire_and_same_distribution_does_not(tagger, tmp_path):
    ref = toy_ner_frame(["PER", "LOC"], sentences=80, seed=1)
    same = detect_ner_drift(toy_ner_frame(["PER", "LOC"], sentences=80, seed=2), ref, CFG, champion=tagger,
                            out_dir=tmp_path / "same", seed=0, max_length=32)
    assert "new_types" not in same.signals and same.type_distance < 0.1, same.reason
    moved = detect_ner_drift(toy_ner_frame(["ORG"], sentences=80, seed=3), ref, CFG, champion=tagger,
                             out_dir=tmp_path / "moved", seed=0, max_length=32)
    assert moved.drifted and moved.new_types == ["ORG"] and "type_shares" in moved.signals
    assert moved.embeddings and moved.embeddings[0].score is not None
    written = json.loads((tmp_path / "moved" / "drift.json").read_text())
    assert written["new_types"] == ["ORG"] and (tmp_path / "moved" / "drift.html").exists()


def test_first_batch_has_no_reference(tmp_path):
    first = detect_ner_drift(toy_ner_frame(["PER"], sentences=10), None, CFG, champion=None, out_dir=tmp_path,
                             seed=0)
    assert first.drifted and first.signals == ["first_batch"]
