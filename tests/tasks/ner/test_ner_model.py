"""The tagger: first-sub-word label alignment, head growth for new entity types, a tiny
model learning toy entities with replay, and the gate on a sentence bootstrap of F1."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import toy_ner_frame
from tasks.core.config import GateConfig, load_params
from tasks.train.model import save_classifier
from tasks.ner.evaluate import evaluate_tagger, predict_tags
from tasks.judge.gate import decide
from tasks.judge.gate_stats import EntityF1
from tasks.ner.model import IGNORE, align_labels, encode_words, grow_types, load_base_tagger, load_tagger
from tasks.ner.tags import labels_for
from tasks.train.finetune import train_candidate
from tasks.ner.train import PARTIAL, TAGGERS, TokenLabels, from_buffer_rows, to_buffer_rows, unannotated_types
from tasks.train.replay import ReplayBuffer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def tiny():
    return load_base_tagger("tiny", labels_for(["PER", "LOC"]), seed=0)


F1 = EntityF1(n_resamples=300)


def test_align_labels_first_subword_only():
    #            [CLS] w0   w0   w1   w2   w2   w2  [SEP]
    word_ids = [None, 0, 0, 1, 2, 2, 2, None]
    assert align_labels(word_ids, [3, 0, 1]) == [IGNORE, 3, IGNORE, 0, 1, IGNORE, IGNORE, IGNORE]


def test_alignment_with_the_real_tokenizer(tiny):
    words = ["Kadyrovtsy", "visited", "Zhytomyr"]
    ids, word_ids = encode_words(tiny, [words], max_length=32)
    aligned = align_labels(word_ids[0], [3, 0, 1])
    pieces = tiny.tokenizer.convert_ids_to_tokens(ids[0])
    assert len(pieces) > len(words) + 2  # the names are split into sub-words
    kept = [(p, a) for p, a in zip(pieces, aligned) if a != IGNORE]
    assert [a for _, a in kept] == [3, 0, 1]
    assert all(not p.startswith("##") for p, _ in kept)


def test_truncated_words_are_predicted_o(tiny):
    tags = predict_tags(tiny, [["word"] * 40], batch_size=4, max_length=16)
    assert len(tags[0]) == 40 and tags[0][20:] == ["O"] * 20


def test_grow_types_keeps_old_rows_and_ids(tiny, tmp_path):
    probe = tiny.tokenizer([["alice", "in", "paris"]], is_split_into_words=True, return_tensors="pt")
    tiny.model.eval()
    with torch.inference_mode():
        before = tiny.model(**probe).logits
    grown, new = grow_types(tiny, ["ORG", "PER"], seed=1)
    assert new == ["ORG"]
    assert grown.labels == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER", "B-ORG", "I-ORG"]
    with torch.inference_mode():
        after = grown.model(**probe).logits
    assert torch.equal(after[..., :5], before)
    save_classifier(grown, tmp_path / "m")
    assert load_tagger(tmp_path / "m").labels == grown.labels
    assert grow_types(grown, ["PER"], seed=1)[1] == []


def test_a_delivery_says_nothing_about_the_types_it_did_not_annotate():
    frame = pd.DataFrame({"tokens": [["Ann", "in", "Rome"], ["Acme", "hired", "Bob"], ["a", "b"], ["x"]],
                          "tags": [["B-PER", "O", "B-LOC"], ["B-ORG", "O", "B-PER"], ["O", "O"], ["O"]],
                          "batch_id": ["one", "two", "one", "three"]})
    got = unannotated_types(frame, ["LOC", "ORG", "PER"])
    assert got == [frozenset({"ORG"}), frozenset({"LOC"}), frozenset({"ORG"}), frozenset({"LOC", "ORG", "PER"})]


def test_partial_words_are_trained_on_o_or_an_unannotated_type_and_full_ones_as_before(tiny):
    clf, _ = grow_types(tiny, ["ORG"], seed=0)
    label2id = clf.model.config.label2id
    frame = pd.DataFrame({"tokens": [["Ann", "met", "Acme", "in", "Rome"], ["Bob", "works", "at", "Acme", "Rome"]],
                          "tags": [["B-PER", "O", "O", "O", "B-LOC"], ["B-PER", "O", "O", "B-ORG", "B-LOC"]],
                          "batch_id": ["old", "new"]})
    head = TokenLabels()
    ids, labels = head.encode(clf, frame, 32)
    old_o = [t for t in labels[0] if t <= PARTIAL]
    assert len(old_o) == 3 and set(head._allowed[PARTIAL - old_o[0]]) == {label2id[t] for t in ("O", "B-ORG", "I-ORG")}
    assert label2id["B-PER"] in labels[0] and all(t > PARTIAL for t in labels[1])  # the new delivery: as before
    inputs, target = head.collate(clf, ids, labels, np.arange(2), "cpu")
    logits = torch.randn(*target.shape, len(label2id))
    got = head.loss(logits, target, reduction="sum")
    flat, tgt = logits.reshape(-1, logits.shape[-1]), target.reshape(-1)
    want = 0.0
    for row, t in zip(flat, tgt.tolist()):
        if t == IGNORE:
            continue
        allowed = list(head._allowed[PARTIAL - t]) if t <= PARTIAL else [t]
        want += float(torch.logsumexp(row, -1) - torch.logsumexp(row[allowed], -1))
    assert float(got) == pytest.approx(want, rel=1e-5)
    assert float(head.loss(logits, target)) == pytest.approx(want / int((tgt != IGNORE).sum()), rel=1e-5)
    # without partial words the loss is the plain cross-entropy, bit for bit
    plain = torch.where(tgt <= PARTIAL, torch.full_like(tgt, label2id["O"]), tgt).reshape(target.shape)
    assert torch.equal(head.loss(logits, plain), torch.nn.functional.cross_entropy(
        flat, plain.reshape(-1), ignore_index=IGNORE))


def test_replay_keeps_what_the_delivery_does_not_cover(tiny):
    clf, _ = grow_types(tiny, ["ORG"], seed=0)  # knows LOC, ORG, PER
    replay = pd.DataFrame({"tokens": [["Ann", "in", "Rome"], ["Bob", "at", "Acme", "Oslo"]],
                           "tags": [["B-PER", "O", "B-LOC"], ["B-PER", "O", "B-ORG", "B-LOC"]],
                           "batch_id": ["before-org", "after-org"], "slice": ["s", "s"]})
    everything = pd.DataFrame({"tokens": [["Cid", "of", "Acme", "Lima"]], "tags": [["B-PER", "O", "B-ORG", "B-LOC"]],
                               "batch_id": ["new"], "slice": ["s"]})
    only_org = everything.assign(tags=[["O", "O", "B-ORG", "O"]])
    # the delivery annotates every type: the sentence made before ORG existed is left out
    assert TAGGERS.worth_replaying(replay, everything, clf)["batch_id"].tolist() == ["after-org"]
    # it annotates ORG only: replay is what keeps LOC and PER, every sentence is used
    assert TAGGERS.worth_replaying(replay, only_org, clf)["batch_id"].tolist() == ["before-org", "after-org"]


def test_buffer_rows_round_trip():
    frame = toy_ner_frame(["PER", "ORG"], sentences=4).assign(slice="s", batch_id="b")
    rows = to_buffer_rows(frame)
    assert set(rows["label"]) <= {"PER", "ORG", "ORG+PER"}
    back = from_buffer_rows(rows)
    assert back["tokens"].tolist() == frame["tokens"].tolist() and back["tags"].tolist() == frame["tags"].tolist()


def _split(frame: pd.DataFrame, batch_id: str, slice_name: str):
    frame = frame.assign(slice=slice_name, batch_id=batch_id)
    return frame[frame["split"] == "train"].reset_index(drop=True), frame[frame["split"] == "test"].reset_index(drop=True)


@pytest.fixture(scope="module")
def two_stages(tmp_path_factory):
    """PER+LOC learned, then ORG arrives: candidates of both stages and their exams."""
    from conftest import TINY_PARAMS

    root = tmp_path_factory.mktemp("ner")
    (root / "params.yaml").write_text(TINY_PARAMS)
    params = load_params(root / "params.yaml", {"train.epochs": 30})
    train_a, test_a = _split(toy_ner_frame(["PER", "LOC"], sentences=80, seed=1), "a", "A")
    first = train_candidate(training=TAGGERS, champion_dir=None, train_rows=train_a, out_dir=root / "v1", params=params)
    train_b, test_b = _split(toy_ner_frame(["ORG", "PER"], sentences=80, seed=2), "b", "B")
    second = train_candidate(training=TAGGERS, champion_dir=first.path, train_rows=train_b, out_dir=root / "v2", params=params)
    return first, second, pd.concat([test_a, test_b], ignore_index=True)


def test_tiny_tagger_learns_and_keeps_old_types_with_replay(two_stages):
    first, second, exam = two_stages
    assert first.new_labels == ["LOC", "PER"] and second.new_labels == ["ORG"]
    assert second.train.replay_rows > 0
    assert ReplayBuffer.load(second.path).seen == first.train.new_rows + second.train.new_rows
    sheet = evaluate_tagger(load_tagger(second.path), exam, "b", batch_size=16, max_length=32)["all"]
    assert sheet["batches"]["b"]["per_type"]["ORG"]["f1"] > 0.8
    assert sheet["batches"]["a"]["f1"] > 0.8, sheet["batches"]["a"]


def test_gate_promotes_the_learner_and_rejects_a_forgetter(two_stages, tmp_path):
    first, second, exam = two_stages
    cfg = GateConfig(tolerance=0.05, min_new_slice_score=0.5, min_slice_size=10, n_resamples=300)
    kw = {"batch_size": 16, "max_length": 32}
    champ = evaluate_tagger(load_tagger(first.path), exam, "b", **kw)
    good = decide(evaluate_tagger(load_tagger(second.path), exam, "b", **kw), champ, cfg, 0, None, F1)
    assert good.promote, good.reasons
    assert [c.kind for c in good.checks] == ["old_slice", "old_overall", "flips", "new_batch"]
    # a tagger that never learned PER/LOC (fresh head) fails the old slice
    fresh = load_base_tagger("tiny", second.labels, seed=3)
    bad = decide(evaluate_tagger(fresh, exam, "b", **kw), champ, cfg, 0, None, F1)
    assert not bad.promote
    assert any(c.name == "slice:A" and c.verdict == "FAIL" for c in bad.checks)


def test_paired_f1_bootstrap_bounds():
    rng = np.random.default_rng(0)
    same = rng.integers(0, 3, size=(200, 3))
    lb, p = EntityF1(n_resamples=200).test(same, same, 0.05, 0.05, 0)
    assert lb == 0.0 and p == 0.0
    worse = same.copy()
    worse[:, 0], worse[:, 2] = 0, same[:, 0] + same[:, 2]  # finds nothing
    lb, p = EntityF1(n_resamples=200).test(worse, same, 0.05, 0.05, 0)
    assert lb < -0.05 and p > 0.05


def test_gate_without_champion_judges_only_the_new_batch(two_stages):
    first, _, exam = two_stages
    sheet = evaluate_tagger(load_tagger(first.path), exam[exam["batch_id"] == "a"], "a", batch_size=16,
                            max_length=32)
    decision = decide(sheet, None, GateConfig(min_new_slice_score=0.5), 0, None, F1)
    assert decision.promote and [c.kind for c in decision.checks] == ["new_batch"]
