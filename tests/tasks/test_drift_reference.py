"""Drift's reference embeddings stored with a version (tasks/drift/reference.py): the
sample is consistent as the lineage grows, and the verdict is the same with the stored
vectors as with vectors computed afresh, for both task types (tiny models)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import toy_ner_frame
from flows.stream import clinc150_frame
from tasks.core.config import DriftConfig
from tasks.drift.detect import detect_drift, reference_rows, store_drift_reference
from tasks.drift.embed_drift import load_champion
from tasks.drift.reference import REFERENCE_FILE, reference_sample, stored_reference
from tasks.ner.drift import detect_ner_drift, store_ner_reference
from tasks.ner.model import load_base_tagger, load_tagger
from tasks.ner.tags import labels_for
from tasks.train.model import load_base

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CFG = DriftConfig(max_embed_rows=120, min_slice_rows=20)


def _verdict(result) -> list[tuple]:
    return [(e.scope, e.drifted, e.reference_rows, e.current_rows) for e in result.embeddings]


def _scores(result) -> np.ndarray:
    return np.array([e.score for e in result.embeddings], dtype=float)


def test_the_sample_keeps_its_rows_as_the_lineage_grows():
    frame = pd.DataFrame({"text": [f"sentence number {i}" for i in range(500)]})
    keys = frame["text"].tolist()
    _, before = reference_sample(frame.iloc[:300], keys[:300], 50, seed=0)
    _, after = reference_sample(frame, keys, 50, seed=0)
    assert len(before) == len(after) == 50
    # what the grown lineage samples from its old rows was all in the old sample
    assert set(after) & set(keys[:300]) <= set(before)
    shuffled = frame.sample(frac=1.0, random_state=1)
    assert set(reference_sample(shuffled, shuffled["text"].tolist(), 50, seed=0)[1]) == set(after)
    assert set(reference_sample(frame, keys, 50, seed=1)[1]) != set(after)  # the seed picks another sample
    assert reference_sample(frame, keys, 0, seed=0)[1] == keys  # 0: no cap


def test_a_sentence_classifier_judges_the_same_with_its_stored_reference(tmp_path):
    banking = clinc150_frame("banking", per_intent=20)
    model_dir = tmp_path / "v0001"
    clf = load_base("tiny", sorted(banking["label"].unique()), seed=0)
    clf.model.save_pretrained(model_dir)
    clf.tokenizer.save_pretrained(model_dir)
    heldout = banking[banking["split"] == "test"].reset_index(drop=True)
    reference = banking[banking["split"] == "train"].reset_index(drop=True)
    cards = clinc150_frame("credit_cards", per_intent=10)
    current = pd.concat([heldout.sample(100, random_state=0), cards.head(100)], ignore_index=True)
    champion = load_champion(model_dir, base="tiny", metadata={"version": "v0001"}, seed=0)

    def drift(name):
        return detect_drift(current, reference, CFG, tmp_path / name, champion=champion, heldout=heldout)

    fresh = drift("fresh")
    assert fresh.sampling["embedded_reference"] == {"rows": len(heldout), "used": 120, "sampled": True,
                                                   "stored": 0, "computed": 120}
    assert store_drift_reference(model_dir, heldout, CFG, seed=0, max_length=64) == model_dir / REFERENCE_FILE
    assert len(stored_reference(model_dir)) == 120
    again = drift("stored")
    assert again.sampling["embedded_reference"]["stored"] == 120
    assert again.sampling["embedded_reference"]["computed"] == 0
    assert _verdict(again) == _verdict(fresh) and again.drifted == fresh.drifted
    assert np.allclose(_scores(again), _scores(fresh), atol=1e-6)
    # a pending batch's held-out rows join: those the file lacks are computed, the rest read;
    # the vectors agree with a fresh computation to float rounding (other batch paddings)
    grown = pd.concat([heldout, cards[cards["split"] == "test"]], ignore_index=True)
    partial = reference_rows(grown, champion, CFG, seed=0)
    assert partial.stored > 0 and partial.computed > 0 and partial.stored + partial.computed == 120
    (model_dir / REFERENCE_FILE).unlink()
    recomputed = reference_rows(grown, champion, CFG, seed=0)
    assert (recomputed.stored, recomputed.computed) == (0, 120)
    assert recomputed.rows["text"].tolist() == partial.rows["text"].tolist()
    assert np.allclose(recomputed.vectors, partial.vectors, atol=1e-5)


def test_a_tagger_judges_the_same_with_its_stored_reference(tmp_path):
    model_dir = tmp_path / "v0001"
    tagger = load_base_tagger("tiny", labels_for(["PER", "LOC"]), seed=0)
    tagger.model.save_pretrained(model_dir)
    tagger.tokenizer.save_pretrained(model_dir)
    reference = toy_ner_frame(["PER", "LOC"], sentences=80, seed=1)
    heldout = toy_ner_frame(["PER", "LOC"], sentences=150, seed=4)
    current = toy_ner_frame(["PER", "LOC"], sentences=80, seed=2)
    champion = load_tagger(model_dir)

    def drift(name):
        return detect_ner_drift(current, reference, CFG, champion=champion, out_dir=tmp_path / name, seed=0,
                                heldout=heldout, champion_dir=model_dir)

    fresh = drift("fresh")
    assert fresh.embedded_reference == {"rows": 150, "used": 120, "sampled": True, "stored": 0, "computed": 120}
    store_ner_reference(model_dir, heldout, CFG, 0, 64, champion)
    again = drift("stored")
    assert again.embedded_reference["stored"] == 120 and again.embedded_reference["computed"] == 0
    assert _verdict(again) == _verdict(fresh) and again.drifted == fresh.drifted
    assert np.allclose(_scores(again), _scores(fresh), atol=1e-6)
