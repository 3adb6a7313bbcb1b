"""Validate: the gate of the batch path, between intake and drift.

A parsed batch is checked against an expectation suite built in code from
`ValidateConfig` with Great Expectations 1.x: `text` and `label` exist, are non-null,
non-blank strings, text lengths lie within bounds, `id` (when present) is unique, and
the batch has at least `min_rows` rows. A file intake could not parse fails here too,
as `file_parses`. The flow quarantines any batch whose result has `passed=False`.

GX's result objects never leave this module: each failed expectation becomes a
`Failure` with a count and up to five 0-based row numbers.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd
from prefect import task

from tasks.config import ValidateConfig

REQUIRED = ("text", "label")
MAX_EXAMPLES = 5
BLANK = r"^\s*$"


@dataclass(frozen=True)
class Failure:
    """One failed check: which, on which column, how many rows, and a few of them."""

    expectation: str
    column: str | None
    count: int
    examples: list[int]
    message: str


@dataclass(frozen=True)
class ValidationResult:
    passed: bool
    rows: int
    failures: list[Failure]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "rows": self.rows,
                "failures": [asdict(f) for f in self.failures]}

    def summary(self) -> str:
        """One line per failure, for the CLI; a single line when the batch passed."""
        if self.passed:
            return f"validation passed ({self.rows} rows)"
        lines = []
        for f in self.failures:
            rows = f" (rows {', '.join(map(str, f.examples))})" if f.examples else ""
            lines.append(f"FAIL {f.expectation}: {f.message}{rows}")
        return "\n".join(lines)


def validate_frame(
    frame: pd.DataFrame | None, cfg: ValidateConfig, parse_error: str | None = None
) -> ValidationResult:
    """Check a parsed batch against the suite built from `cfg`."""
    if parse_error is not None:
        failure = Failure("file_parses", None, 1, [], parse_error)
        return ValidationResult(passed=False, rows=0, failures=[failure])
    if frame is None:
        raise ValueError("validate_frame needs a frame or a parse_error")
    # Row numbers in examples are positions, whatever index the caller's frame has.
    df = frame.reset_index(drop=True)
    for col in REQUIRED:
        if col in df.columns:
            # On a numeric dtype GX's type check only compares the dtype and names no
            # rows; as object it checks value by value (and int labels fail per row).
            df[col] = df[col].astype(object)
    expectations = _build_expectations(df, cfg)
    results = _run_suite(df, expectations)
    order = {_key(e.expectation_type, getattr(e, "column", None)): i
             for i, e in enumerate(expectations)}
    failures = [_to_failure(r) for r in results if not r.success]
    failures.sort(key=lambda f: order.get(_key(f.expectation, f.column), len(order)))
    return ValidationResult(passed=not failures, rows=len(df), failures=failures)


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
    # SUMMARY with partial_unexpected_count bounds the size of the result on a bad
    # batch, and for pandas still carries partial_unexpected_index_list (row indices).
    result_format = {"result_format": "SUMMARY", "partial_unexpected_count": MAX_EXAMPLES}
    outcome = definition.run(batch_parameters={"dataframe": df}, result_format=result_format)
    return list(outcome.results)


def _to_failure(r: Any) -> Failure:
    """Turn one failed GX ExpectationValidationResult into a `Failure`."""
    kind = r.expectation_config.type
    kwargs = r.expectation_config.kwargs
    column = kwargs.get("column")
    error = _exception_message(r.exception_info)
    if error is not None:
        where = f" on column '{column}'" if column else ""
        return Failure(kind, column, 1, [], f"could not run {kind}{where}: {error}")
    result = r.result or {}
    count = int(result.get("unexpected_count") or 1)
    examples = sorted(int(i) for i in result.get("partial_unexpected_index_list") or [])
    return Failure(kind, column, count, examples[:MAX_EXAMPLES], _message(kind, kwargs, result, count))


def _exception_message(info: Any) -> str | None:
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


# --- Prefect edge ---------------------------------------------------------------------
@task(name="validate")
def validate_task(
    frame: pd.DataFrame | None, cfg: ValidateConfig, parse_error: str | None = None
) -> ValidationResult:
    return validate_frame(frame, cfg, parse_error)


def main() -> None:
    """dvc stage `validate`: GX on build/intake, then the train/dev/test split."""
    from tasks import pipeline
    from tasks.intake import split_batch

    p = pipeline.params()
    info = pipeline.read_json(pipeline.BUILD / "intake" / "batch.json")
    frame = None if info["parse_error"] else pd.read_pickle(pipeline.BUILD / "intake" / "frame.pkl")
    result = validate_frame(frame, p.validate, info["parse_error"])
    out = pipeline.stage_dir("validate")
    pipeline.write_json(out / "validation.json", result.to_dict())
    if not result.passed:
        raise SystemExit(f"validation failed:\n{result.summary()}")
    split = split_batch(frame, info["batch_id"], p.intake.test_share)
    for name in ("train", "dev", "test"):
        getattr(split, name).to_parquet(out / f"{name}.parquet", index=False)


if __name__ == "__main__":
    main()
