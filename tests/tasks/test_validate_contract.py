"""The contract checks beside the GX suite, verdicts, row policy, leakage, parsing and
the quarantine report, as plain functions (no flow, no model)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tasks.core.config import ConfigError, LabelsConfig, ValidateConfig, load_params
from tasks.validate.contract import Context, label_kl, show
from tasks.intake.batch import Intake, raw_file_name
from tasks.intake.parsing import parse_table, sniff_delimiter
from tasks.validate.quarantine import quarantine_rows, render_html
from tasks.validate.checks import validate_frame
from tasks.core.workspace import Workspace

CFG = ValidateConfig(min_rows=3, max_text_chars=200)
DROP = ValidateConfig(min_rows=3, max_text_chars=200, on_bad_rows="drop_rows")


def frame(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["text", "label"])


GOOD = [(f"rain {i}", "weather") for i in range(4)] + [(f"guitar {i}", "music") for i in range(4)]


def names(items) -> set[str]:
    return {f.expectation for f in items}


def test_clean_batch_is_accepted():
    result = validate_frame(frame(GOOD), CFG, context=Context(known_labels=frozenset({"weather", "music"})))
    assert (result.verdict, result.passed, result.failures, result.warnings) == ("accepted", True, [], [])
    assert result.counts()["kept_rows"] == 8


def test_drop_rows_turns_row_failures_into_dropped_rows():
    rows = GOOD + [("rain 0", "weather"), ("", "music"), ("Rain 1", "music")]
    reject = validate_frame(frame(rows), CFG)
    assert reject.verdict == "rejected" and not reject.dropped
    assert {"rows_are_unique", "text_has_one_label"} <= names(reject.failures)
    drop = validate_frame(frame(rows), DROP)
    assert drop.verdict == "accepted_with_warnings" and drop.passed and drop.failures == []
    # the repeat (pos 8), the blank (9) and both rows of the conflicting text (1, 10)
    assert sorted(drop.dropped) == [1, 8, 9, 10]
    assert all("dropped" in w.message for w in drop.warnings)
    kept = drop.kept(frame(rows))
    assert len(kept) == 7 and "rain 1" not in set(kept["text"])
    assert drop.counts()["dropped_bad_rows"] == 4


def test_drop_rows_still_rejects_when_too_few_rows_remain():
    rows = GOOD[:3] + [("", "weather")] * 2
    result = validate_frame(frame(rows), ValidateConfig(min_rows=4, on_bad_rows="drop_rows"))
    assert result.verdict == "rejected"
    assert "rows_after_dropping" in names(result.failures)


def test_batch_level_failures_are_never_dropped():
    result = validate_frame(frame(GOOD).rename(columns={"label": "y"}), DROP)
    assert result.verdict == "rejected" and "expect_column_to_exist" in names(result.failures)


def test_new_labels_policy_and_near_duplicates():
    ctx = Context(known_labels=frozenset({"weather", "music"}))
    rows = GOOD + [("pizza 1", "food"), ("pizza 2", "food"), ("snow", "WEATHER"),
                   ("x1", "new-intent"), ("x2", "new_intent"), ("x3", "new_intent")]
    result = validate_frame(frame(rows), CFG, context=ctx)
    near = next(f for f in result.failures if f.expectation == "label_is_not_near_duplicate")
    assert near.examples == [11, 12] and "'WEATHER'" in near.message and "'new-intent'" in near.message
    assert result.passed is False and "label_is_known" not in names(result.failures)
    closed = validate_frame(frame(GOOD + [("pizza 1", "food")]), CFG,
                            labels=LabelsConfig(allow_new=False), context=ctx)
    assert names(closed.failures) == {"label_is_known"}
    rare = validate_frame(frame(GOOD + [("pizza 1", "food")] * 1), CFG, labels=LabelsConfig(min_examples_new=2),
                          context=ctx)
    assert names(rare.failures) == {"new_label_has_min_examples"}


def test_unicode_look_alike_labels_are_near_duplicates():
    """Cyrillic 'а' for Latin 'a', full-width forms and a zero-width space render like a
    known label; a label merely written in another script is not flagged."""
    ctx = Context(known_labels=frozenset({"weather", "music", "card_arrival"}))
    rows = GOOD + [("x1", "c\u0430rd_arrival"), ("x2", "ｃａｒｄ＿ａｒｒｉｖａｌ"), ("x3", "mus\u200bic"),
                   ("x4", "погода"), ("x5", "погода")]
    result = validate_frame(frame(rows), CFG, context=ctx)
    near = next(f for f in result.failures if f.expectation == "label_is_not_near_duplicate")
    assert near.examples == [9, 10, 11] and "Unicode look-alikes" in near.message
    assert "known label 'card_arrival'" in near.message and "known label 'music'" in near.message
    assert "погода" not in near.message


def test_label_share_and_kl_warn_or_fail():
    rows = GOOD[:4] + [(f"storm {i}", "weather") for i in range(12)] + GOOD[4:5]
    ctx = Context(known_labels=frozenset({"weather", "music"}), reference_labels={"weather": 50, "music": 50})
    warn = validate_frame(frame(rows), CFG, labels=LabelsConfig(max_kl=0.1), context=ctx)
    assert warn.verdict == "accepted_with_warnings" and names(warn.warnings) == {"label_distribution_kl"}
    fail = validate_frame(frame(rows), CFG, labels=LabelsConfig(max_kl=0.1, kl_action="fail"), context=ctx)
    assert fail.verdict == "rejected" and names(fail.failures) == {"label_distribution_kl"}
    share = validate_frame(frame(rows), CFG, labels=LabelsConfig(max_label_share=0.5), context=ctx)
    assert "label_share_at_most" in names(share.failures)


def test_kl_is_zero_for_the_same_distribution_and_skipped_for_new_labels():
    assert label_kl(pd.Series(["a", "b"] * 10), {"a": 5, "b": 5}) == pytest.approx(0.0)
    assert label_kl(pd.Series(["c"] * 10), {"a": 5, "b": 5}) is None
    assert label_kl(pd.Series(["a"] * 10), {}) is None


def test_token_length_under_a_tokenizer():
    ctx = Context(count_tokens=lambda texts: [len(t.split()) + 2 for t in texts])
    rows = GOOD + [("a " * 20, "weather")]
    result = validate_frame(frame(rows), ValidateConfig(min_rows=3, max_tokens=10), context=ctx)
    assert names(result.failures) == {"text_token_length_at_most"}
    assert result.failures[0].examples == [9]
    assert validate_frame(frame(rows), ValidateConfig(min_rows=3, max_tokens=0), context=ctx).passed


def test_leakage_is_a_warning_and_leaking_rows_do_not_go_on():
    rows = [("rain 0", "weather", "train"), ("guitar 0", "music", "test"), ("Rain  1", "weather", "train"),
            ("Same  Here", "music", "train"), ("same here", "music", "test")] + \
           [(f"fresh {i}", "music", "train") for i in range(4)]
    df = pd.DataFrame(rows, columns=["text", "label", "split"])
    ctx = Context(exam_texts=frozenset({"rain 0", "rain 1"}), past_train_texts=frozenset({"guitar 0"}))
    result = validate_frame(df, CFG, context=ctx)
    assert result.verdict == "accepted_with_warnings"
    assert result.leakage == {"train_rows_in_exam": [0, 2], "heldout_rows_in_past_train": [1],
                              "train_rows_in_own_heldout": [3]}
    assert result.counts()["leakage"] == {"train_rows_in_exam": 2, "heldout_rows_in_past_train": 1,
                                          "train_rows_in_own_heldout": 1}
    assert list(result.kept(df)["text"]) == ["same here"] + [f"fresh {i}" for i in range(4)]


def test_file_row_numbers_are_used_in_examples():
    table = parse_table(b'text,label\n"multi\nline",weather\nrain,weather\n\n,music\nx,y\n', "b.csv")
    assert table.rows == [2, 4, 6, 7]
    result = validate_frame(table.frame, CFG, rows=table.rows)
    null = next(f for f in result.failures if f.expectation == "expect_column_values_to_not_be_null")
    assert null.examples == [6]


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_csv_delimiter_is_sniffed(delimiter):
    body = f"text{delimiter}label\n\"a, b; c\"{delimiter}x\nplain text{delimiter}y\n"
    assert sniff_delimiter(body) == delimiter
    df = parse_table(body.encode(), "b.csv").frame
    assert list(df["text"]) == ["a, b; c", "plain text"] and list(df["label"]) == ["x", "y"]


def test_encoding_from_params_and_errors():
    raw = "text,label\ncafé,food\n".encode("cp1252")
    with pytest.raises(ValueError, match="offset 14 .*validate.encoding"):
        parse_table(raw, "b.csv")
    assert list(parse_table(raw, "b.csv", "cp1252").frame["text"]) == ["café"]
    with pytest.raises(ConfigError, match="validate.encoding"):
        load_params("nowhere.yaml", {"validate.encoding": "klingon-8"})
    with pytest.raises(ConfigError, match="validate.on_bad_rows"):
        load_params("nowhere.yaml", {"validate.on_bad_rows": "ignore"})
    with pytest.raises(ConfigError, match="labels.kl_action"):
        load_params("nowhere.yaml", {"labels.kl_action": "shout"})


def test_malformed_rows_are_rows_not_crashes():
    table = parse_table(b'{"text": "a", "label": "x"}\n[1, 2]\nnot json\n{"text": "b", "label": "y"}\n', "b.jsonl")
    assert table.rows == [1, 2, 3, 4] and set(table.malformed) == {1, 2}
    with pytest.raises(ValueError, match="no line is a JSON object"):
        parse_table(b"text,label\nhello,x\n", "b.jsonl")


def test_raw_file_names_never_come_from_hostile_strings():
    assert raw_file_name("batch_01.csv", "b-1") == "batch_01.csv"
    for name in ("..", "../../x.csv", ".hidden.csv", "a b.csv", "x\x00.csv", "é.csv", "a" * 200 + ".csv"):
        assert raw_file_name(name, "b-1").startswith("b-1.")
    assert raw_file_name("weird name.CSV", "b-1") == "b-1.csv"


def test_show_makes_user_strings_inert():
    assert show("\x1b[31m[/x]<b>") == repr("\x1b[31m[/x]<b>")
    assert len(show("x" * 10_000)) < 60


def test_report_escapes_and_dropped_rows_are_json(tmp_path):
    rows = GOOD + [("<script>alert(1)</script>", "weather"), ("<script>alert(1)</script>", "=cmd()"),
                   ("\x00\x07 ctrl", "music")]
    df = frame(rows)
    result = validate_frame(df, DROP, rows=list(range(2, 13)))
    page = render_html(result, "b-123", "../../etc/passwd <i>", df)
    assert "<script" not in page and "&lt;script&gt;" in page and "<i>" not in page and "\x00" not in page
    ws = Workspace.at(tmp_path)
    got = Intake("b-123", tmp_path / "raw.csv", df, rows=list(range(2, 13)))
    target = quarantine_rows(got, result, "src.csv", ws)
    dropped = [json.loads(line) for line in (target / "dropped_rows.jsonl").read_text().splitlines()]
    assert [d["row"] for d in dropped] == [10, 11, 12]
    assert dropped[1]["record"] == {"text": "<script>alert(1)</script>", "label": "=cmd()"}
    assert all(d["reasons"] for d in dropped)
    assert json.loads((target / "validation.json").read_text())["counts"]["dropped_bad_rows"] == 3
    assert sorted(p.name for p in target.iterdir()) == ["dropped_rows.jsonl", "report.html", "validation.json"]
