"""NER batches: CoNLL conversion, reading JSONL/Parquet/CoNLL, IOB2 rules, validation errors
with sentence and token index, and entity-level scoring (CoNLL convention)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from conftest import toy_ner_frame
from tasks.core.config import NerConfig, ValidateConfig
from tasks.ner.conll import ConllError, convert_conll, parse_ner_bytes, read_conll, to_jsonl, write_conll
from tasks.ner.evaluate import counts, score
from tasks.ner.tags import iob2_errors, labels_for, spans, types_of
from tasks.ner.validate import validate_ner

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER


BRUSSELS NNP B-NP B-LOC
"""


def test_read_conll_four_columns_docstart_and_blank_lines():
    frame = read_conll(CONLL)
    assert frame["tokens"].tolist() == [["EU", "rejects", "German", "call"], ["Peter", "Blackburn"], ["BRUSSELS"]]
    assert frame["tags"].tolist() == [["B-ORG", "O", "B-MISC", "O"], ["B-PER", "I-PER"], ["B-LOC"]]
    assert frame["line"].tolist() == [3, 8, 12]


def test_read_conll_one_column_line_names_the_line():
    with pytest.raises(ConllError, match="line 2"):
        read_conll("Peter B-PER\nBlackburn\n")


def test_convert_conll_writes_jsonl_that_round_trips(tmp_path):
    src = tmp_path / "batch.conll"
    src.write_text(CONLL)
    out = convert_conll(src, slice_name="news", split="train")
    assert out == tmp_path / "batch.jsonl"
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records[1] == {"tokens": ["Peter", "Blackburn"], "tags": ["B-PER", "I-PER"], "slice": "news",
                          "split": "train"}
    back = parse_ner_bytes(out.read_bytes(), out.name)
    assert read_conll(write_conll(back))[["tokens", "tags"]].equals(back[["tokens", "tags"]])


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ".conll"])
def test_parse_ner_bytes_reads_every_format(tmp_path, suffix):
    frame = toy_ner_frame(["PER", "LOC"], sentences=6)
    path = tmp_path / f"b{suffix}"
    if suffix == ".jsonl":
        path.write_text(to_jsonl(frame))
    elif suffix == ".parquet":
        frame.to_parquet(path)
    else:
        path.write_text(write_conll(frame))
    got = parse_ner_bytes(path.read_bytes(), path.name)
    assert got["tokens"].tolist() == frame["tokens"].tolist()
    assert got["tags"].tolist() == frame["tags"].tolist()
    assert all(isinstance(t, list) for t in got["tokens"])


def test_parse_ner_bytes_names_missing_columns():
    with pytest.raises(ValueError, match="missing column.*tags"):
        parse_ner_bytes(b'{"tokens": ["a"]}\n', "b.jsonl")


# --- IOB2 ----------------------------------------------------------------------------

def test_iob2_errors_give_token_index():
    assert iob2_errors(["B-PER", "I-PER", "O", "B-LOC"]) == []
    errors = iob2_errors(["O", "I-PER", "B-LOC", "I-ORG", "X-Y"])
    assert [i for i, _ in errors] == [1, 3, 4]
    assert "follows O" in errors[0][1] and "follows B-LOC" in errors[1][1]


def test_spans_follow_conlleval():
    assert spans(["B-PER", "I-PER", "O", "B-LOC", "B-LOC"]) == {("PER", 0, 2), ("LOC", 3, 4), ("LOC", 4, 5)}
    # an I-X not continuing an X starts an entity, as conlleval and seqeval count it
    assert spans(["O", "I-PER", "I-PER", "I-LOC"]) == {("PER", 1, 3), ("LOC", 3, 4)}


def test_labels_for_keeps_old_ids():
    first = labels_for(["PER", "LOC"])
    assert first == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert labels_for(["ORG", "PER"], first) == first + ["B-ORG", "I-ORG"]
    assert types_of(["O", "B-ORG", "I-ORG", "B-PER"]) == ["ORG", "PER"]


# --- validation --------------------------------------------------------------------

def _frame(*sentences) -> pd.DataFrame:
    return pd.DataFrame({"tokens": [s[0] for s in sentences], "tags": [s[1] for s in sentences]})


GOOD = (["Peter", "lives", "in", "Paris"], ["B-PER", "O", "O", "B-LOC"])
CFG = NerConfig(min_sentences=1, max_sentence_tokens=6)


def test_clean_batch_is_accepted():
    result = validate_ner(_frame(GOOD, GOOD), CFG, ValidateConfig())
    assert result.passed and result.verdict == "accepted"


def test_validation_errors_name_sentence_and_token():
    frame = _frame(GOOD, (["a", "b"], ["O"]), (["x", "Smith"], ["O", "I-PER"]), ([], []),
                   (["w"] * 7, ["O"] * 7), (["Acme", "Corp"], ["B-ORG", "I-LOC"]))
    result = validate_ner(frame, CFG, ValidateConfig(on_bad_rows="reject_batch"))
    assert not result.passed and result.verdict == "rejected"
    by = {f.expectation: f for f in result.failures}
    assert by["tokens_and_tags_same_length"].examples == [2]
    assert by["tags_are_iob2"].examples == [3, 6]
    assert "sentence 3: token 1: I-PER follows O" in by["tags_are_iob2"].message
    assert "sentence 6: token 1: I-LOC follows B-ORG" in by["tags_are_iob2"].message
    assert by["sentence_not_empty"].examples == [4]
    assert by["sentence_length_at_most"].examples == [5]


def test_drop_rows_keeps_good_sentences_and_warns():
    frame = _frame(GOOD, (["x", "Smith"], ["O", "I-PER"]), GOOD)
    result = validate_ner(frame, CFG, ValidateConfig(on_bad_rows="drop_rows"))
    assert result.passed and result.verdict == "accepted_with_warnings"
    assert set(result.dropped) == {1}
    assert len(result.kept(frame)) == 2


def test_new_entity_types_follow_params():
    frame = _frame(GOOD, (["Acme"], ["B-ORG"]))
    assert validate_ner(frame, CFG, ValidateConfig(), known_types=["LOC", "PER"]).passed
    refused = validate_ner(frame, NerConfig(min_sentences=1, allow_new_types=False), ValidateConfig(),
                           known_types=["LOC", "PER"])
    assert [f.expectation for f in refused.failures] == ["entity_type_is_known"]
    assert "ORG" in refused.failures[0].message
    few = validate_ner(frame, NerConfig(min_sentences=1, min_mentions_new=2), ValidateConfig(),
                       known_types=["LOC", "PER"])
    assert [f.expectation for f in few.failures] == ["new_entity_type_has_min_mentions"]


def test_too_few_sentences_and_unparsed_file_reject():
    assert validate_ner(_frame(GOOD), NerConfig(min_sentences=2), ValidateConfig()).failures[0].expectation \
        == "sentence_count_at_least"
    assert validate_ner(None, CFG, ValidateConfig(), parse_error="bad").failures[0].expectation == "file_parses"


# --- entity-level scores -------------------------------------------------------------

def test_entity_scores_need_exact_span_and_type():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "O", "O", "B-LOC"], ["B-LOC", "O"]]  # PER span cut short; ORG typed as LOC
    sheet = score([counts(g, p) for g, p in zip(gold, pred)])
    assert sheet["per_type"]["LOC"] == {"precision": 0.5, "recall": 1.0, "f1": 0.6667, "support": 1}
    assert sheet["per_type"]["PER"]["f1"] == 0.0 and sheet["per_type"]["ORG"]["recall"] == 0.0
    assert (sheet["precision"], sheet["recall"]) == (0.3333, 0.3333)
    assert sheet["macro_f1"] == round(0.6667 / 3, 4)


def test_scoring_only_annotated_types():
    c = counts(["O", "B-PER"], ["B-ORG", "B-PER"], types={"PER"})
    assert sum(c["fp"].values()) == 0 and sum(c["tp"].values()) == 1


def test_scores_equal_seqeval_when_installed():
    """seqeval is not a dependency; where it is installed, the scorer must agree with its
    default (conlleval) mode on random, partly ill-formed predictions."""
    import random

    metrics = pytest.importorskip("seqeval.metrics")
    rng = random.Random(0)
    tags = ["O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
    for _ in range(100):
        gold = [[rng.choice(tags) for _ in range(rng.randint(1, 10))] for _ in range(rng.randint(1, 10))]
        pred = [[t if rng.random() < 0.6 else rng.choice(tags) for t in s] for s in gold]
        mine = score([counts(g, p) for g, p in zip(gold, pred)])
        assert mine["f1"] == round(metrics.f1_score(gold, pred), 4)
        assert mine["macro_f1"] == round(metrics.f1_score(gold, pred, average="macro", zero_division=0), 4)
