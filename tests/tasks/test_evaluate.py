"""Evaluate: score sheets per slice and per batch, the old/new split of the exam, and
predictions that come back in input order."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer

from tasks.judge.evaluate import evaluate, load_exam, predict, score, sheet
from tasks.train.model import Classifier, minilm_path

LABELS = ["weather", "music", "food"]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(minilm_path())


class FirstTokenModel(torch.nn.Module):
    """A stand-in classifier whose answer depends only on the first word piece, so it is
    the same whatever the batch or padding: predictions are checkable by hand."""

    def __init__(self, labels):
        super().__init__()
        self.config = SimpleNamespace(id2label=dict(enumerate(labels)))

    def forward(self, input_ids, attention_mask=None, **_):
        n = len(self.config.id2label)
        return SimpleNamespace(logits=torch.nn.functional.one_hot(input_ids[:, 1] % n, n).float())


@pytest.fixture
def stub(tokenizer) -> Classifier:
    return Classifier(FirstTokenModel(LABELS), tokenizer)


def stub_answer(tokenizer, text: str) -> str:
    return LABELS[tokenizer(text)["input_ids"][1] % len(LABELS)]


def exam_frame(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["text", "label", "slice", "batch_id"])


# --- score and sheet ------------------------------------------------------------------

def test_score_by_hand():
    s = score(pd.Series(["a", "a", "b", "b"]), pd.Series(["a", "b", "b", "b"]))
    assert s.rows == 4
    assert s.accuracy == 0.75
    # F1(a) = 2*1*0.5/1.5 = 0.6667, F1(b) = 2*(2/3)*1/(5/3) = 0.8
    assert s.macro_f1 == pytest.approx((2 / 3 + 0.8) / 2, abs=1e-4)


def test_score_perfect_and_empty_and_unseen_labels():
    gold = pd.Series(["x", "y", "z"])
    assert score(gold, gold.copy()) == score(gold, gold.copy())
    assert score(gold, gold.copy()).accuracy == 1.0 and score(gold, gold.copy()).macro_f1 == 1.0
    empty = score(pd.Series([], dtype=str), pd.Series([], dtype=str))
    assert (empty.rows, empty.accuracy, empty.macro_f1) == (0, 0.0, 0.0)
    never = score(gold, pd.Series(["", "", ""]))
    assert never.accuracy == 0.0 and never.macro_f1 == 0.0


def test_score_ignores_index_alignment():
    """Scores compare by position: a gold Series and its predictions may carry different
    indexes (sheets slice both with the same mask)."""
    gold = pd.Series(["a", "b"], index=[10, 11])
    pred = pd.Series(["a", "b"], index=[0, 1])
    assert score(gold, pred).accuracy == 1.0


def test_sheet_per_slice_and_batch_by_hand():
    exam = exam_frame([
        ("t1", "a", "web", "b1"), ("t2", "b", "web", "b1"), ("t3", "a", "app", "b1"),
        ("t4", "b", "app", "b2"), ("t5", "a", "app", "b2"), ("t6", "b", "web", "b2"),
    ])
    pred = pd.Series(["a", "a", "a", "b", "b", "b"])
    out = sheet(exam, pred)
    assert out["overall"] == {"rows": 6, "accuracy": round(4 / 6, 4), "macro_f1": round(4 / 6, 4)}
    assert out["slices"]["web"] == {"rows": 3, "accuracy": round(2 / 3, 4), "macro_f1": 0.6667}
    assert out["slices"]["app"]["rows"] == 3 and out["slices"]["app"]["accuracy"] == round(2 / 3, 4)
    assert out["batches"]["b1"] == {"rows": 3, "accuracy": round(2 / 3, 4), "macro_f1": 0.4}  # F1(a)=0.8, F1(b)=0
    assert out["batches"]["b2"] == {"rows": 3, "accuracy": round(2 / 3, 4), "macro_f1": 0.4}  # F1(a)=0, F1(b)=0.8
    assert list(out["slices"]) == ["app", "web"]  # sorted, stable for diffs


def test_sheet_invariants_on_random_exams():
    """Slice and batch rows add up to the whole; overall accuracy is their weighted mean."""
    rng = np.random.default_rng(0)
    for _ in range(30):
        n = int(rng.integers(1, 200))
        exam = exam_frame({
            "text": [f"t{i}" for i in range(n)],
            "label": rng.choice(list("abc"), n),
            "slice": rng.choice(["s1", "s2", "s3", "s4"], n),
            "batch_id": rng.choice(["b1", "b2"], n),
        })
        pred = pd.Series(rng.choice(list("abcd"), n))
        out = sheet(exam, pred)
        correct = (exam["label"] == pred).sum()
        assert out["overall"]["accuracy"] == round(correct / n, 4)
        for key in ("slices", "batches"):
            assert sum(v["rows"] for v in out[key].values()) == n
            weighted = sum(v["rows"] * v["accuracy"] for v in out[key].values()) / n
            assert weighted == pytest.approx(correct / n, abs=1e-3)
            for v in out[key].values():
                assert 0 <= v["accuracy"] <= 1 and 0 <= v["macro_f1"] <= 1


# --- predict --------------------------------------------------------------------------

def test_predict_keeps_input_order_for_any_batch_size(stub, tokenizer):
    rng = np.random.default_rng(1)
    words = "rain guitar pizza flight money football doctor engine the a my please".split()
    texts = [" ".join(rng.choice(words, int(rng.integers(1, 12)))) for _ in range(57)]
    expected = [stub_answer(tokenizer, t) for t in texts]
    assert len(set(expected)) == 3  # the check is not vacuous
    for batch_size in (1, 4, 16, 57, 500):
        assert predict(stub, texts, batch_size=batch_size, max_length=16) == expected


def test_predict_empty(stub):
    assert predict(stub, [], batch_size=8, max_length=16) == []


# --- evaluate -------------------------------------------------------------------------

def _exam(tokenizer, n_old=12, n_new=8):
    rng = np.random.default_rng(2)
    words = "rain guitar pizza flight money football".split()
    rows = []
    for i in range(n_old + n_new):
        text = f"{rng.choice(words)} {i}"
        right = stub_answer(tokenizer, text)
        label = right if i % 3 else "food" if right != "food" else "music"  # every third is wrong
        rows.append((text, label, "web" if i % 2 else "app", "b-old" if i < n_old else "b-new"))
    return exam_frame(rows)


def test_evaluate_old_new_all(stub, tokenizer):
    exam = _exam(tokenizer)
    out = evaluate(stub, exam, "b-new", batch_size=5, max_length=16)
    assert out["all"]["overall"]["rows"] == 20
    assert out["old"]["overall"]["rows"] == 12 and out["new"]["overall"]["rows"] == 8
    assert set(out["old"]["batches"]) == {"b-old"} and set(out["new"]["batches"]) == {"b-new"}
    # every third row (i % 3 == 0) is labelled against the stub's answer
    assert out["old"]["overall"]["accuracy"] == round(8 / 12, 4)
    assert out["new"]["overall"]["accuracy"] == round(5 / 8, 4)
    assert out["all"]["overall"]["accuracy"] == round(13 / 20, 4)
    assert out["all"]["batches"]["b-old"] == out["old"]["overall"]
    assert out["all"]["batches"]["b-new"] == out["new"]["overall"]


def test_evaluate_without_model_is_zero(tokenizer):
    exam = _exam(tokenizer)
    out = evaluate(None, exam, "b-new", batch_size=8, max_length=16)
    for part in ("all", "old", "new"):
        assert out[part]["overall"]["accuracy"] == 0.0
        assert out[part]["overall"]["macro_f1"] == 0.0
        assert all(v["accuracy"] == 0.0 for v in out[part]["slices"].values())
    assert out["all"]["overall"]["rows"] == 20


def test_evaluate_old_is_none_when_exam_is_only_new(stub, tokenizer):
    exam = _exam(tokenizer, n_old=0, n_new=9)
    out = evaluate(stub, exam, "b-new", batch_size=4, max_length=16)
    assert out["old"] is None
    assert out["new"] == out["all"]
    assert evaluate(None, exam, "b-new", batch_size=4, max_length=16)["old"] is None


def test_evaluate_duplicate_index(stub, tokenizer):
    """An exam glued together without ignore_index has repeated index labels."""
    exam = _exam(tokenizer)
    glued = pd.concat([exam.iloc[:12], exam.iloc[12:].reset_index(drop=True)])
    assert not glued.index.is_unique
    assert evaluate(stub, glued, "b-new", batch_size=5, max_length=16) == \
        evaluate(stub, exam, "b-new", batch_size=5, max_length=16)
    shuffled_index = exam.set_index(pd.Index([3] * len(exam)))
    assert evaluate(None, shuffled_index, "b-new", batch_size=5, max_length=16)["all"]["overall"]["rows"] == 20


def test_evaluate_result_independent_of_row_order(stub, tokenizer):
    exam = _exam(tokenizer)
    a = evaluate(stub, exam, "b-new", batch_size=5, max_length=16)
    b = evaluate(stub, exam.sample(frac=1, random_state=0), "b-new", batch_size=5, max_length=16)
    rows_a, rows_b = a.pop("rows"), b.pop("rows")
    assert a == b  # the score sheets do not depend on order; per-row outcomes follow the exam's order
    as_set = lambda r: sorted(zip(r["slice"], r["is_new"], r["correct"]))  # noqa: E731
    assert as_set(rows_a) == as_set(rows_b)


# --- load_exam ------------------------------------------------------------------------

def test_load_exam_concatenates_in_order(tmp_path, tokenizer):
    exam = _exam(tokenizer)
    for batch_id, part in exam.groupby("batch_id"):
        part.to_parquet(tmp_path / f"{batch_id}.parquet", index=False)
    loaded = load_exam(tmp_path, ["b-old", "b-new"])
    pd.testing.assert_frame_equal(loaded, exam)
    assert list(loaded.index) == list(range(len(exam)))
    reverse = load_exam(tmp_path, ["b-new", "b-old"])
    assert list(reverse["batch_id"]) == ["b-new"] * 8 + ["b-old"] * 12


def test_load_exam_empty_and_missing(tmp_path):
    empty = load_exam(tmp_path, [])
    assert empty.empty and list(empty.columns) == ["text", "label", "slice", "batch_id"]
    with pytest.raises(FileNotFoundError):
        load_exam(tmp_path, ["b-nope"])


# --- per-label scores -----------------------------------------------------------------

def test_per_label_scores_by_hand_per_slice_and_batch():
    exam = exam_frame([
        ("t1", "a", "web", "b1"), ("t2", "b", "web", "b1"), ("t3", "a", "app", "b1"),
        ("t4", "b", "app", "b2"), ("t5", "a", "app", "b2"), ("t6", "b", "web", "b2"),
    ])
    pred = pd.Series(["a", "a", "a", "b", "b", "b"])
    per = sheet(exam, pred)["per_label"]
    # overall: a predicted 3x (2 right), gold a 3x; b predicted 3x (2 right), gold b 3x
    assert per["overall"]["a"] == {"precision": 0.6667, "recall": 0.6667, "f1": 0.6667, "support": 3}
    # batch b1: gold a,b,a; pred a,a,a -> a: P 2/3 R 1; b: never predicted
    assert per["batches"]["b1"] == {"a": {"precision": 0.6667, "recall": 1.0, "f1": 0.8, "support": 2},
                                    "b": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}}
    assert set(per["slices"]) == {"app", "web"} and set(per["batches"]) == {"b1", "b2"}
    for part in per["slices"].values():
        assert sum(s["support"] for s in part.values()) == 3
    assert sheet(exam_frame([]), pd.Series([], dtype=str))["per_label"]["overall"] == {}


def test_evaluate_with_known_answers_asks_the_model_only_the_other_rows(stub, tokenizer, monkeypatch):
    """A champion's stored answers stand for its predictions on their rows: the sheets are
    those of predicting every row, and only the rest are predicted."""
    import tasks.judge.evaluate as ev

    exam = _exam(tokenizer)
    whole = evaluate(stub, exam, "b-new", batch_size=5, max_length=16)
    asked = []
    monkeypatch.setattr(ev, "predict", lambda clf, texts, **kw: asked.extend(texts) or predict(clf, texts, **kw))
    known = {i: whole["rows"]["pred"][i] for i in range(12)}
    assert evaluate(stub, exam, "b-new", batch_size=5, max_length=16, known=known) == whole
    assert asked == list(exam["text"][12:])
