"""Drift stage, table signals only (no model): same distribution passes, a new domain
drifts, the first batch is new, degenerate batches never crash."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from tasks.core.config import DriftConfig
from tasks.drift.detect import NO_REFERENCE, SIGNALS, DriftResult, detect_drift, text_signals

VOCAB = ["the", "order", "arrived", "late", "great", "service", "refund", "please", "thanks", "box"]
LONG_VOCAB = ["extraordinarily", "disappointing", "unbelievable", "communication", "responsiveness"]


def make_batch(seed: int, rows: int = 200, labels=("pos", "neg", "neutral"), words=(4, 12), vocab=VOCAB):
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(vocab, size=rng.integers(*words))) for _ in range(rows)]
    return pd.DataFrame({"text": texts, "label": rng.choice(list(labels), size=rows)})


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return make_batch(seed=1)


def assert_files(result: DriftResult) -> dict:
    assert result.html_path and result.json_path
    with open(result.html_path, encoding="utf-8") as fh:
        assert "<html" in fh.read(2000).lower()
    with open(result.json_path, encoding="utf-8") as fh:
        data = json.load(fh)
    assert data["drifted"] == result.drifted and data["reason"] == result.reason
    return data


def test_same_distribution_is_not_drift(tmp_path, reference):
    result = detect_drift(make_batch(seed=2), reference, DriftConfig(), tmp_path)
    assert not result.drifted, result.reason
    assert [c.column for c in result.columns] == ["label", "text", *SIGNALS[1:]]
    assert result.new_labels == [] and result.signals == []
    assert result.reason.startswith(f"0 of {len(result.columns)} column tests drifted")
    assert (result.reference_rows, result.current_rows) == (200, 200)
    data = assert_files(result)
    assert data["evidently"]["metrics"], "Evidently's own results are kept"


def test_new_domain_drifts_and_names_new_labels(tmp_path, reference):
    current = make_batch(seed=3, labels=("billing", "shipping"), words=(20, 40), vocab=LONG_VOCAB)
    result = detect_drift(current, reference, DriftConfig(), tmp_path)
    assert result.drifted
    assert result.new_labels == ["billing", "shipping"]
    by_name = {c.column: c for c in result.columns}
    assert by_name["text_length"].drifted and by_name["label"].drifted
    assert {"label", "text_length", "new_labels"} <= set(result.signals)
    assert "text_length" in result.reason and "billing" in result.reason
    for col in result.columns:
        assert col.method and col.threshold > 0
    assert_files(result)


def test_no_reference_is_drift_and_still_writes_reports(tmp_path):
    for reference in (None, pd.DataFrame(columns=["text", "label"])):
        out = tmp_path / ("none" if reference is None else "empty")
        result = detect_drift(make_batch(seed=4), reference, DriftConfig(), out)
        assert result.drifted and result.reason == NO_REFERENCE
        assert result.columns == [] and result.reference_rows == 0
        assert result.new_labels == ["neg", "neutral", "pos"]
        assert assert_files(result)["evidently"] is None


def test_reference_is_sampled_down_reproducibly(tmp_path):
    big = make_batch(seed=5, rows=1500)
    cfg = DriftConfig(max_reference_rows=300)
    first = detect_drift(make_batch(seed=6), big, cfg, tmp_path / "a", seed=7)
    again = detect_drift(make_batch(seed=6), big, cfg, tmp_path / "b", seed=7)
    assert first.reference_rows == 300
    assert first.columns == again.columns


def test_rare_reference_label_is_not_new_after_sampling(tmp_path):
    big = make_batch(seed=8, rows=2000)
    big.loc[0, "label"] = "rare"
    current = make_batch(seed=9, labels=("rare", "pos"))
    result = detect_drift(current, big, DriftConfig(max_reference_rows=50), tmp_path)
    assert result.new_labels == []


@pytest.mark.parametrize(
    "ref_labels,cur_labels,rows",
    [(("a",), ("b",), 30), (("a",), ("a",), 30), (("a", "b"), ("x", "y", "z"), 30), (("a", "b"), ("c",), 1)],
)
def test_degenerate_label_sets_do_not_crash(tmp_path, ref_labels, cur_labels, rows):
    current, reference = make_batch(10, rows, cur_labels), make_batch(11, rows, ref_labels)
    result = detect_drift(current, reference, DriftConfig(), tmp_path)
    assert {c.column for c in result.columns} >= set(SIGNALS)
    assert result.new_labels == sorted(set(cur_labels) - set(ref_labels))
    if not set(cur_labels) & set(ref_labels):
        assert {c.column: c for c in result.columns}["label"].drifted
    json.dumps(result.to_dict(), allow_nan=False)


def test_to_dict_is_json_serialisable(tmp_path, reference):
    result = detect_drift(make_batch(seed=12), reference, DriftConfig(), tmp_path)
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["columns"][0]["column"] == "label" and data["sampled"] is False
    head = result.headline()
    assert set(head) >= {"drifted", "quality_dropped", "signals", "reason", "scores", "sampled"}
    json.dumps(head, allow_nan=False)
    assert all(c["score"] is None or math.isfinite(c["score"]) for c in data["columns"])


def test_text_signals():
    frame = pd.DataFrame({"text": ["ab c1!", "", None], "label": ["x", "y", 3]})
    signals = text_signals(frame)
    assert signals["text"].tolist() == ["ab c1!", "", ""]
    assert signals["text_length"].tolist() == [6, 0, 0]
    assert signals["word_count"].tolist() == [2, 0, 0]
    assert signals["non_letter_share"].tolist() == [2 / 6, 0, 0]
    assert signals["label"].tolist() == ["x", "y", "3"]
    with pytest.raises(ValueError, match="label"):
        text_signals(frame.drop(columns="label"))


def _texts(rng, n: int) -> list[str]:
    words = "account balance transfer money card bank savings loan interest payment deposit routing".split()
    return [" ".join(rng.choice(words, size=int(rng.integers(3, 9)))) for _ in range(n)]


def test_rich_vocabulary_gets_evidently_text_test(tmp_path):
    rng = np.random.default_rng(0)
    ref = pd.DataFrame({"text": [f"{t} {i} w{i % 97}" for i, t in enumerate(_texts(rng, 300))], "label": "a"})
    cur = pd.DataFrame({"text": [f"{t} {i} w{i % 97}" for i, t in enumerate(_texts(rng, 200))], "label": "a"})
    result = detect_drift(cur, ref, DriftConfig(), tmp_path)
    text = {c.column: c for c in result.columns}["text"]
    assert text.method == "abs_text_content_drift" and not text.drifted
    assert not result.notes


@pytest.mark.parametrize("kind", ["one_label", "identical_text", "non_english", "tiny_vocabulary"])
def test_degenerate_batches_are_reported_not_raised(tmp_path, reference, kind):
    rows = 60
    current = {
        "one_label": make_batch(20, rows, labels=("pos",)),
        "identical_text": pd.DataFrame({"text": ["refund please"] * rows, "label": ["neg"] * rows}),
        "non_english": pd.DataFrame({"text": ["Заказ пришёл поздно, верните деньги 🙁"] * 30
                                     + ["订单迟到了，请退款"] * 30, "label": ["neg"] * rows}),
        "tiny_vocabulary": pd.DataFrame({"text": ["a b"] * rows, "label": ["pos", "neg"] * (rows // 2)}),
    }[kind]
    result = detect_drift(current, reference, DriftConfig(), tmp_path)
    assert {c.column for c in result.columns} >= set(SIGNALS)
    if kind in ("identical_text", "non_english", "tiny_vocabulary"):
        assert result.drifted, result.reason  # the text descriptors moved
    json.dumps(result.to_dict(), allow_nan=False)
    assert_files(result)


def test_big_batches_are_sampled_and_say_so(tmp_path, reference):
    cfg = DriftConfig(max_current_rows=150, max_reference_rows=120)
    result = detect_drift(make_batch(seed=21, rows=600), reference, cfg, tmp_path)
    assert (result.current_rows, result.reference_rows) == (150, 120)
    assert result.sampled and result.sampling["current"] == {"rows": 600, "used": 150, "sampled": True}
    assert result.to_dict()["sampled"] is True and result.headline()["sampled"] is True
