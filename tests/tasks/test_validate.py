"""Tests for the validation gate (tasks/validate/checks.py): GX runs in memory, offline."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tasks.core.config import ValidateConfig
from tasks.validate.gx_suite import exception_message
from tasks.validate.checks import (
    Failure,
    ValidationResult,
    validate_frame,
)

CFG = ValidateConfig(min_rows=3, min_text_chars=1, max_text_chars=50)


def good_frame(n: int = 6, **extra) -> pd.DataFrame:
    data = {
        "text": [f"review number {i} is fine" for i in range(n)],
        "label": ["pos" if i % 2 else "neg" for i in range(n)],
    }
    data.update(extra)
    return pd.DataFrame(data)


def only(result: ValidationResult, expectation: str, column: str | None = None) -> Failure:
    found = [f for f in result.failures if f.expectation == expectation and f.column == column]
    assert len(found) == 1, result.summary()
    return found[0]


def test_good_batch_passes():
    result = validate_frame(good_frame(id=list(range(6)), slice=["a"] * 6), CFG)
    assert result.passed, result.summary()
    assert result.rows == 6
    assert result.failures == []
    assert "passed" in result.summary()


def test_missing_label_column_fails_naming_it():
    result = validate_frame(good_frame().drop(columns=["label"]), CFG)
    assert not result.passed
    failure = only(result, "expect_column_to_exist", "label")
    assert "label" in failure.message and "missing" in failure.message
    # Column checks on the missing column are skipped, not reported as GX errors.
    assert [f.column for f in result.failures] == ["label"]


def test_missing_both_columns_reports_each():
    result = validate_frame(pd.DataFrame({"body": ["x"] * 5}), CFG)
    assert {f.column for f in result.failures} == {"text", "label"}


@pytest.mark.parametrize(
    "bad, expectation",
    [(None, "expect_column_values_to_not_be_null"),
     ("", "expect_column_values_to_not_match_regex"),
     ("  \t ", "expect_column_values_to_not_match_regex")],
)
def test_null_empty_or_blank_text_fails_with_row_numbers(bad, expectation):
    frame = good_frame()
    frame["text"] = frame["text"].astype(object)
    frame.loc[[1, 4], "text"] = bad
    # A non-default index must not leak into the reported row numbers.
    frame.index = frame.index + 100
    result = validate_frame(frame, CFG)
    assert not result.passed
    failure = only(result, expectation, "text")
    assert failure.count == 2
    assert failure.examples == [2, 5]  # 1-based rows


def test_examples_are_capped_at_five():
    frame = good_frame(n=12)
    frame.loc[:, "text"] = None
    failure = only(validate_frame(frame, CFG), "expect_column_values_to_not_be_null", "text")
    assert failure.count == 12
    assert failure.examples == [1, 2, 3, 4, 5]


def test_blank_label_fails():
    frame = good_frame()
    frame.loc[2, "label"] = " "
    failure = only(validate_frame(frame, CFG), "expect_column_values_to_not_match_regex", "label")
    assert failure.examples == [3]


def test_too_long_text_fails():
    frame = good_frame()
    frame.loc[3, "text"] = "x" * 51
    result = validate_frame(frame, CFG)
    failure = only(result, "expect_column_value_lengths_to_be_between", "text")
    assert failure.count == 1 and failure.examples == [4]
    assert "50" in failure.message


def test_duplicate_ids_fail():
    result = validate_frame(good_frame(id=[1, 2, 3, 3, 4, 1]), CFG)
    failure = only(result, "expect_column_values_to_be_unique", "id")
    assert failure.count == 4
    assert failure.examples == [1, 3, 4, 6]


def test_no_id_column_is_fine():
    assert validate_frame(good_frame(), CFG).passed


@pytest.mark.parametrize("labels", [[0, 1, 0, 1, 0, 1], [0.0, 1.0, np.nan, 1.0, 0.0, 1.0]])
def test_numeric_labels_fail_per_row(labels):
    # JSONL gives ints (or floats, with a null) where CSV would give strings.
    result = validate_frame(good_frame(label=labels), CFG)
    assert not result.passed
    failure = only(result, "expect_column_values_to_be_of_type", "label")
    assert failure.count == sum(pd.notna(labels))
    assert failure.examples[:2] == [1, 2]
    assert "not strings" in failure.message
    assert "int" in failure.message or "float" in failure.message


def test_mixed_labels_name_only_the_bad_rows():
    frame = good_frame(label=["pos", 1, "neg", True, "pos", "neg"])
    failure = only(validate_frame(frame, CFG), "expect_column_values_to_be_of_type", "label")
    assert failure.examples == [2, 4]


def test_pandas_string_dtype_passes():
    frame = good_frame()
    frame = frame.astype({"text": "string", "label": "string"})
    assert validate_frame(frame, CFG).passed


def test_fewer_than_min_rows_fails():
    result = validate_frame(good_frame(n=2), CFG)
    failure = only(result, "expect_table_row_count_to_be_between")
    assert failure.count == 1
    assert "2 rows" in failure.message and "3" in failure.message
    assert result.rows == 2


def test_empty_frame_fails_without_crashing():
    result = validate_frame(pd.DataFrame(columns=["text", "label"]), CFG)
    assert not result.passed
    assert {f.expectation for f in result.failures} == {"expect_table_row_count_to_be_between"}


def test_parse_error_gives_file_parses_failure():
    result = validate_frame(None, CFG, parse_error="ValueError: file is not UTF-8")
    assert not result.passed
    assert result.failures == [Failure("file_parses", None, 1, [], "ValueError: file is not UTF-8")]
    assert "file is not UTF-8" in result.summary()


def test_frame_or_parse_error_is_required():
    with pytest.raises(ValueError):
        validate_frame(None, CFG)


def test_to_dict_is_json_serialisable_and_summary_has_a_line_per_failure():
    frame = good_frame(id=[1, 1, 2, 3, 4, 5], label=[0, 1, 0, 1, 0, 1])
    frame.loc[0, "text"] = None
    result = validate_frame(frame, CFG)
    blob = json.loads(json.dumps(result.to_dict()))
    assert blob["passed"] is False and blob["rows"] == 6
    assert all(isinstance(i, int) for f in blob["failures"] for i in f["examples"])
    assert len(result.summary().splitlines()) == len(result.failures) == 3


def test_calling_twice_in_one_process_gives_the_same_answer():
    frame = good_frame(id=[1, 1, 2, 3, 4, 5])
    first, second = validate_frame(frame, CFG), validate_frame(frame, CFG)
    assert first == second and not first.passed
    assert validate_frame(good_frame(), CFG).passed


def test_the_callers_frame_is_not_modified():
    frame = good_frame(label=[0, 1, 0, 1, 0, 1])
    frame.index = frame.index + 10
    before = frame.copy()
    validate_frame(frame, CFG)
    pd.testing.assert_frame_equal(frame, before)


def test_gx_errors_in_either_shape_are_read():
    flat = {"raised_exception": True, "exception_message": "boom", "exception_traceback": "tb"}
    keyed = {"MetricConfigurationID(x)": {"exception_traceback": "tb", "exception_message": "bang"}}
    clean = {"raised_exception": False, "exception_message": None, "exception_traceback": None}
    assert exception_message(flat) == "boom"
    assert exception_message(keyed) == "bang"
    assert exception_message(clean) is None
    assert exception_message(None) is None


