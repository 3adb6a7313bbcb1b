"""The Great Expectations suite of the validation gate, built from params.yaml.

`gx_checks` builds the suite for one batch from `ValidateConfig`, runs it in a
throwaway in-memory GX 1.x context (data source -> dataframe asset -> batch definition,
suite, validation definition) and returns each failed expectation as a `Check` with
every unexpected row. GX's result objects never leave this module.
"""

from __future__ import annotations

import uuid
from typing import Any

import pandas as pd

from tasks.core.config import ValidateConfig
from tasks.validate.contract import Check, show

REQUIRED = ("text", "label")
MAX_EXAMPLES = 5
BLANK = r"^\s*$"
ROW_LEVEL = {"expect_column_values_to_not_be_null", "expect_column_values_to_be_of_type",
             "expect_column_values_to_not_match_regex", "expect_column_value_lengths_to_be_between",
             "expect_column_values_to_be_unique"}


def gx_checks(df: pd.DataFrame, cfg: ValidateConfig) -> list[Check]:
    """Run the GX suite; its failures as `Check`s in suite order."""
    expectations = _build_expectations(df, cfg)
    results = _run_suite(df, expectations)
    order = {_key(e.expectation_type, getattr(e, "column", None)): i
             for i, e in enumerate(expectations)}
    checks = [_to_check(r, df) for r in results if not r.success]
    checks.sort(key=lambda c: order.get(_key(c.expectation, c.column), len(order)))
    return checks


def _key(expectation: str, column: str | None) -> tuple[str, str]:
    return expectation, "" if column is None else str(column)


def _build_expectations(df: pd.DataFrame, cfg: ValidateConfig) -> list:
    """The suite for this batch. Column checks on a missing column would raise inside
    GX, so only the existence check is kept for it."""
    import great_expectations.expectations as gxe

    suite: list = [gxe.ExpectTableRowCountToBeBetween(min_value=cfg.min_rows)]
    for col in REQUIRED:
        suite.append(gxe.ExpectColumnToExist(column=col))
        if col not in df.columns:
            continue
        suite += [
            gxe.ExpectColumnValuesToNotBeNull(column=col),
            gxe.ExpectColumnValuesToBeOfType(column=col, type_="str"),
            gxe.ExpectColumnValuesToNotMatchRegex(column=col, regex=BLANK),
        ]
    if "text" in df.columns:
        suite.append(gxe.ExpectColumnValueLengthsToBeBetween(
            column="text", min_value=cfg.min_text_chars, max_value=cfg.max_text_chars))
    if "id" in df.columns:
        suite.append(gxe.ExpectColumnValuesToBeUnique(column="id"))
    return suite


def _run_suite(df: pd.DataFrame, expectations: list) -> list:
    """Run the expectations on `df` in a throwaway in-memory GX context."""
    # Imported here: GX takes seconds to import, and most users of this module
    # (the CLI's help, other stages' tests) never validate.
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        progress_bars=ProgressBarsConfig(globally=False),  # tqdm bars on stderr otherwise
    )
    context = gx.get_context(mode="ephemeral", project_config=config)
    name = f"ratchet-{uuid.uuid4().hex[:12]}"
    batch = (context.data_sources.add_pandas(name=name)
             .add_dataframe_asset(name=name)
             .add_batch_definition_whole_dataframe(name))
    suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=name, data=batch, suite=suite))
    # COMPLETE: every unexpected row index (the row policy may drop them all); no
    # index query, which would be a string as long as the list.
    result_format = {"result_format": "COMPLETE", "partial_unexpected_count": MAX_EXAMPLES,
                     "return_unexpected_index_query": False}
    outcome = definition.run(batch_parameters={"dataframe": df}, result_format=result_format)
    return list(outcome.results)


def _to_check(r: Any, df: pd.DataFrame) -> Check:
    """Turn one failed GX ExpectationValidationResult into a `Check`."""
    kind = r.expectation_config.type
    kwargs = r.expectation_config.kwargs
    column = kwargs.get("column")
    level = "row" if kind in ROW_LEVEL else "batch"
    error = exception_message(r.exception_info)
    if error is not None:
        where = f" on column '{column}'" if column else ""
        return Check(kind, column, [], f"could not run {kind}{where}: {error}", "batch")
    result = r.result or {}
    positions = sorted(int(i) for i in result.get("unexpected_index_list") or [])
    count = int(result.get("unexpected_count") or 1)
    message = _message(kind, kwargs, result, count)
    if kind == "expect_column_to_exist":
        message += _found_columns(str(column), list(df.columns))
    return Check(kind, column, positions, message, level)


def _found_columns(wanted: str, columns: list) -> str:
    """A hint naming what the file has instead of a missing column."""
    near = [c for c in columns if str(c).strip().casefold() == wanted]
    if near:
        return f" (found {show(near[0])}; column names are lower-case)"
    listed = ", ".join(show(c, 20) for c in columns[:6]) + (", ..." if len(columns) > 6 else "")
    return f" (the file has columns: {listed or 'none'})"


def exception_message(info: Any) -> str | None:
    """GX reports an error either flat or keyed by metric id; return its message."""
    if not isinstance(info, dict):
        return None
    if info.get("raised_exception"):
        return str(info.get("exception_message") or "unknown error")
    for value in info.values():
        if isinstance(value, dict) and value.get("raised_exception", True) and (
            value.get("exception_message") or value.get("exception_traceback")
        ):
            return str(value.get("exception_message") or "unknown error")
    return None


def _message(kind: str, kwargs: dict, result: dict, count: int) -> str:
    """One human sentence for a failed expectation."""
    col = kwargs.get("column")
    values, are = ("value", "is") if count == 1 else ("values", "are")
    if kind == "expect_column_to_exist":
        return f"column '{col}' is missing"
    if kind == "expect_table_row_count_to_be_between":
        rows = result.get("observed_value")
        return f"batch has {rows} rows, fewer than the {kwargs.get('min_value')} required (min_rows)"
    if kind == "expect_column_values_to_not_be_null":
        return f"column '{col}' has {count} null or missing {values}"
    if kind == "expect_column_values_to_not_match_regex":
        return f"column '{col}' has {count} empty or whitespace-only {values}"
    if kind == "expect_column_value_lengths_to_be_between":
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        return f"column '{col}' has {count} {values} shorter than {low} or longer than {high} characters"
    if kind == "expect_column_values_to_be_of_type":
        sample = (result.get("partial_unexpected_list") or [None])[0]
        shown = f" (e.g. {repr(sample)[:40]} of type {type(sample).__name__})" if sample is not None else ""
        return f"column '{col}' has {count} {values} that {are} not strings{shown}; {col} must be text"
    if kind == "expect_column_values_to_be_unique":
        return f"column '{col}' has {count} rows sharing a duplicated value"
    return f"{kind} failed on {count} row(s)" + (f" of column '{col}'" if col else "")
